"""What a corpus reader kept and skipped, and the rule that turns too many skips into an error."""

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List


@dataclass
class PrepReport:
    """Counts of one split: rows read, kept, and skipped by reason (with example ids)."""

    split: str
    rows: int = 0
    kept: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[str]] = field(default_factory=dict)
    ignored: int = 0  # lines the format marks as not for scoring (TED-LIUM's ignore_time_segment_in_scoring)

    def skip(self, reason: str, what: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 10:
            self.examples[reason].append(what)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def check(self, max_skipped: float) -> None:
        """Log every skip reason; raise when more than ``max_skipped`` (a fraction) of the rows went."""
        for reason, n in self.skipped.items():
            logging.warning(f"{self.split}: {n} row(s) skipped ({reason}), e.g. {self.examples[reason][:3]}")
        if self.rows and self.num_skipped > max_skipped * self.rows:
            details = "; ".join(f"{n} {reason} (e.g. {self.examples[reason][0]})" for reason, n in self.skipped.items())
            raise SystemExit(f"error: {self.split}: {self.num_skipped} of {self.rows} rows skipped, more than "
                             f"--max-skipped {max_skipped}: {details}")
        if not self.kept:
            raise SystemExit(f"error: {self.split}: nothing usable ({self.rows} rows read)")

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        return path

    def line(self) -> str:
        skipped = ", ".join(f"{n} {r}" for r, n in self.skipped.items()) or "none"
        ignored = f", {self.ignored} ignored by the format" if self.ignored else ""
        return f"{self.split}: {self.kept} kept of {self.rows}, skipped: {skipped}{ignored}"
