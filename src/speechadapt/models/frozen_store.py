"""What frozen encoders computed for each utterance, kept across batches and epochs.

LLM-ASR and MoSE train a projector and adapters on top of encoders that never change,
so an utterance's encoder output is the same every epoch as long as its input is: the
training stage keeps it after the first time (``bin/train`` turns this on only when no
augmentation touches the input). Rows are stored trimmed, on the CPU, up to a byte
budget; past it, new utterances are simply recomputed each time.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch

Encoded = List[Tuple[torch.Tensor, torch.Tensor]]  # per encoder: (B, T, D) outputs, (B,) lengths


class FrozenOutputStore:
    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"the store needs a positive byte budget, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.num_bytes = 0
        self.hits = 0
        self.misses = 0
        self.full = False
        # cut id -> (input frames, one trimmed (T_i, D) row per encoder)
        self._rows: Dict[str, Tuple[int, List[torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, cut_ids: Sequence[str], input_lens: torch.Tensor, device) -> Optional[Encoded]:
        """The batch's encoder outputs, padded with zeros, if every utterance is stored
        with the same input length; else None (the caller computes and ``put``s)."""
        entries = [self._rows.get(c) for c in cut_ids]
        if not entries or any(e is None or e[0] != n for e, n in zip(entries, input_lens.tolist())):
            self.misses += len(cut_ids)
            return None
        self.hits += len(cut_ids)
        out = []
        for slot in range(len(entries[0][1])):
            rows = [e[1][slot] for e in entries]
            lens = torch.tensor([r.size(0) for r in rows], dtype=torch.long)
            padded = rows[0].new_zeros(len(rows), int(lens.max()), rows[0].size(-1))
            for i, row in enumerate(rows):
                padded[i, : row.size(0)] = row
            out.append((padded.to(device), lens.to(device)))
        return out

    def put(self, cut_ids: Sequence[str], input_lens: torch.Tensor, encoded: Encoded) -> None:
        for i, (cut_id, n) in enumerate(zip(cut_ids, input_lens.tolist())):
            if cut_id in self._rows and self._rows[cut_id][0] == n:
                continue
            # copy=True: a trimmed view would keep the whole batch tensor alive
            rows = [out[i, : int(lens[i])].detach().to("cpu", copy=True) for out, lens in encoded]
            size = sum(r.numel() * r.element_size() for r in rows)
            if self.num_bytes + size > self.max_bytes:
                if not self.full:
                    logging.info(f"frozen-output store full at {len(self._rows)} utterances "
                                 f"({self.num_bytes / 2**30:.2f} GiB): the rest are recomputed each time")
                    self.full = True
                return
            self._rows[cut_id] = (int(n), rows)
            self.num_bytes += size

    def summary(self) -> str:
        total = self.hits + self.misses
        rate = 100.0 * self.hits / total if total else 0.0
        return (f"{len(self._rows)} utterances, {self.num_bytes / 2**20:.1f} MiB, "
                f"{rate:.1f}% of utterances served from the store")
