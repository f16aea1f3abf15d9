"""Metrics tracker in icefall's spirit: sums of per-batch values, normalised by frames.

``tracker["loss"] += loss_sum; tracker["frames"] += num_frames`` accumulates; ``str``,
``norm_items`` and ``write_summary`` report every item divided by the frame count
(items named in ``unnormalised`` are reported as sums). ``reduce`` sums across ranks.
"""

from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from speechadapt.training.dist import all_reduce_sum


class MetricsTracker(defaultdict):
    def __init__(self, normaliser: str = "frames", unnormalised: Iterable[str] = ()):
        super().__init__(float)
        self.normaliser = normaliser
        self.unnormalised = set(unnormalised) | {normaliser}

    def __add__(self, other: "MetricsTracker") -> "MetricsTracker":
        out = MetricsTracker(self.normaliser, self.unnormalised)
        for src in (self, other):
            for k, v in src.items():
                out[k] += v
        return out

    def __mul__(self, alpha: float) -> "MetricsTracker":
        out = MetricsTracker(self.normaliser, self.unnormalised)
        for k, v in self.items():
            out[k] = v * alpha
        return out

    def norm_items(self) -> List[Tuple[str, float]]:
        denom = self.get(self.normaliser, 0.0) or 1.0
        items = []
        for k, v in self.items():
            if k == self.normaliser:
                continue
            items.append((k, float(v) if k in self.unnormalised else float(v) / denom))
        return items

    def __str__(self) -> str:
        parts = [f"{k}={v:.4g}" for k, v in self.norm_items()]
        parts.append(f"over {self.get(self.normaliser, 0.0):.0f} {self.normaliser}")
        return ", ".join(parts)

    def reduce(self, device: Optional[torch.device] = None) -> "MetricsTracker":
        """Sum every item across ranks (in place); a no-op in one process."""
        keys = sorted(self.keys())
        if not keys:
            return self
        t = torch.tensor([float(self[k]) for k in keys], dtype=torch.float64, device=device)
        all_reduce_sum(t)
        for k, v in zip(keys, t.tolist()):
            self[k] = v
        return self

    def write_summary(self, tb_writer, prefix: str, step: int) -> None:
        if tb_writer is None:
            return
        for k, v in self.norm_items():
            tb_writer.add_scalar(prefix + k, v, step)

    def as_dict(self) -> Dict[str, float]:
        return dict(self.norm_items())
