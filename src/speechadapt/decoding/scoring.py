"""WER scoring and icefall-style result files.

``write_error_stats`` writes an errs file with the same sections as icefall's
(``%WER``, error counts, PER-UTT DETAILS, SUBSTITUTIONS, DELETIONS, INSERTIONS,
PER-WORD STATS) and returns the WER in percent. Alignment and edit distance come
from kaldialign.
"""

import json
import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, TextIO, Tuple

import kaldialign

EPS = "*"
Result = Tuple[str, Sequence[str], Sequence[str]]  # (cut_id, ref_words, hyp_words)


@dataclass
class ErrorCounts:
    ins: int = 0
    dels: int = 0
    subs: int = 0
    ref_words: int = 0

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    @property
    def wer(self) -> float:
        """Percent. An empty reference set scores 0 when nothing was inserted, else 100 per insertion."""
        if self.ref_words == 0:
            return 0.0 if self.errors == 0 else 100.0 * self.errors
        return 100.0 * self.errors / self.ref_words


def align_words(ref: Sequence[str], hyp: Sequence[str]) -> List[Tuple[str, str]]:
    """Pairs (ref_word, hyp_word) with ``EPS`` for a missing side."""
    if not ref and not hyp:
        return []
    return kaldialign.align(list(ref), list(hyp), EPS)


def count_errors(results: Iterable[Result]) -> ErrorCounts:
    c = ErrorCounts()
    for _, ref, hyp in results:
        d = kaldialign.edit_distance(list(ref), list(hyp))
        c.ins += d["ins"]
        c.dels += d["del"]
        c.subs += d["sub"]
        c.ref_words += len(ref)
    return c


def compute_wer(results: Iterable[Result]) -> float:
    return count_errors(results).wer


def write_error_stats(
    f: TextIO,
    test_set_name: str,
    results: List[Result],
    enable_log: bool = True,
) -> float:
    """Write icefall-style error statistics for ``results`` to ``f``; return WER (%)."""
    subs: Counter = Counter()
    ins: Counter = Counter()
    dels: Counter = Counter()
    # word -> [correct, ref-side errors, hyp-side errors]
    words: Dict[str, List[int]] = defaultdict(lambda: [0, 0, 0])
    counts = ErrorCounts()
    details = []
    for cut_id, ref, hyp in results:
        pieces = []
        for r, h in align_words(ref, hyp):
            if r == EPS:
                ins[h] += 1
                words[h][2] += 1
                counts.ins += 1
                pieces.append(f"(->{h})")
            elif h == EPS:
                dels[r] += 1
                words[r][1] += 1
                counts.dels += 1
                pieces.append(f"({r}->)")
            elif r != h:
                subs[(r, h)] += 1
                words[r][1] += 1
                words[h][2] += 1
                counts.subs += 1
                pieces.append(f"({r}->{h})")
            else:
                words[r][0] += 1
                pieces.append(r)
        counts.ref_words += len(ref)
        details.append(f"{cut_id}:\t" + " ".join(pieces))

    wer = counts.wer
    if enable_log:
        logging.info(
            f"[{test_set_name}] %WER {wer:.2f}% [{counts.errors} / {counts.ref_words}, "
            f"{counts.ins} ins, {counts.dels} del, {counts.subs} sub ]"
        )
    correct = counts.ref_words - counts.subs - counts.dels
    print(f"%WER = {wer:.2f}", file=f)
    print(
        f"Errors: {counts.ins} insertions, {counts.dels} deletions, {counts.subs} "
        f"substitutions, over {counts.ref_words} reference words ({correct} correct)",
        file=f,
    )
    print(
        "Search below for sections starting with PER-UTT DETAILS:, SUBSTITUTIONS:, "
        "DELETIONS:, INSERTIONS:, PER-WORD STATS:",
        file=f,
    )
    print("", file=f)
    print("PER-UTT DETAILS: corr or (ref->hyp)  ", file=f)
    for line in details:
        print(line, file=f)
    print("", file=f)
    print("SUBSTITUTIONS: count ref -> hyp", file=f)
    for (r, h), n in sorted(subs.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{n}   {r} -> {h}", file=f)
    print("", file=f)
    print("DELETIONS: count ref", file=f)
    for w, n in sorted(dels.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{n}   {w}", file=f)
    print("", file=f)
    print("INSERTIONS: count hyp", file=f)
    for w, n in sorted(ins.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{n}   {w}", file=f)
    print("", file=f)
    print("PER-WORD STATS: word  corr tot_errs count_in_ref count_in_hyp", file=f)
    ordered = sorted(words.items(), key=lambda kv: (-(kv[1][1] + kv[1][2]), kv[0]))
    for w, (corr, ref_err, hyp_err) in ordered:
        print(f"{w}   {corr} {ref_err + hyp_err} {corr + ref_err} {corr + hyp_err}", file=f)
    return wer


def store_transcripts(filename, texts: Iterable[Result]) -> None:
    """One ``cut_id:\\tref=[...]`` / ``cut_id:\\thyp=[...]`` pair per utterance, like icefall."""
    Path(filename).parent.mkdir(parents=True, exist_ok=True)
    with open(filename, "w", encoding="utf-8") as f:
        for cut_id, ref, hyp in texts:
            print(f"{cut_id}:\tref={list(ref)}", file=f)
            print(f"{cut_id}:\thyp={list(hyp)}", file=f)


@dataclass
class ResultRecord:
    """One evaluation; RESULTS.md tables and plots are generated from these."""

    method: str
    test_set: str
    wer: float
    ins: int = 0
    dels: int = 0
    subs: int = 0
    ref_words: int = 0
    model: str = ""
    step: Optional[int] = None
    wall_time_s: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    extra: Dict[str, object] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)

    @classmethod
    def from_counts(cls, method: str, test_set: str, counts: ErrorCounts, **kw) -> "ResultRecord":
        return cls(
            method=method, test_set=test_set, wer=round(counts.wer, 4), ins=counts.ins,
            dels=counts.dels, subs=counts.subs, ref_words=counts.ref_words, **kw,
        )


def append_result(path, record: ResultRecord) -> None:
    """Append one JSON line (append-only: concurrent stages never rewrite the file). One
    write(2) on an O_APPEND descriptor, so lines of stages running side by side never mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(asdict(record), sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
    finally:
        os.close(fd)
    if written != len(line):
        raise OSError(f"{path}: wrote {written} of {len(line)} bytes of a result line")


def read_results(path) -> List[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON record ({e})") from None
    return out
