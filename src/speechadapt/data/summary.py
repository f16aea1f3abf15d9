"""Per-split corpus summary (utterances, hours, voices, noise, unseen sentences)."""

from collections import Counter
from typing import Dict, List

from lhotse import CutSet


def summarise_cuts(split: str, cuts: CutSet) -> Dict:
    """One summary row; speed-perturbed copies (``_sp`` ids) are counted apart."""
    n = perturbed = unseen = 0
    seconds = 0.0
    voices, noise = Counter(), Counter()
    for cut in cuts:
        n += 1
        seconds += cut.duration
        perturbed += "_sp" in cut.id
        custom = cut.custom or {}
        voices[custom.get("voice", "-")] += 1
        noise[custom.get("noise_type", "-")] += 1
        unseen += custom.get("seen_in_train") is False
    return {"split": split, "cuts": n, "speed_perturbed": perturbed, "hours": round(seconds / 3600, 3),
            "unseen_sentences": unseen, "voices": dict(sorted(voices.items())),
            "noise": dict(sorted(noise.items()))}


def format_table(rows: List[Dict]) -> str:
    """Plain-text table for the console."""
    head = f"{'split':<14}{'cuts':>7}{'(sp)':>7}{'hours':>8}{'unseen':>8}  voices / noise"
    lines = [head, "-" * len(head)]
    for r in rows:
        voices = ",".join(f"{v}:{c}" for v, c in r["voices"].items())
        noise = ",".join(f"{k}:{c}" for k, c in r["noise"].items())
        lines.append(f"{r['split']:<14}{r['cuts']:>7}{r['speed_perturbed']:>7}{r['hours']:>8.3f}"
                     f"{r['unseen_sentences']:>8}  {len(r['voices'])} voices [{voices}] noise [{noise}]")
    return "\n".join(lines)
