"""Supervised adaptation of a trained model: what to tune, how to follow it, what to record.

Used by ``speechadapt.bin.finetune`` (and the adaptation stages built on it):

* :func:`select_tuned` marks the parameters ``--params`` names (a group of the model
  interface or a regex) as the only trainable ones; nothing matched, or a part the model
  keeps frozen by design (LLM-ASR's encoders), is an error before any step;
* :class:`DevEvaluator` is a Trainer step hook: every N updates it decodes the dev set,
  logs the WER (and TensorBoard's ``valid/wer``), writes the curve (updates, forward and
  backward passes, wall time, WER) to ``exp_dir/dev_curve.jsonl`` and keeps the best
  weights in ``exp_dir/best.pt``;
* :func:`run_record` is what every results.jsonl record of a fine-tuning run carries.
"""

import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from speechadapt.adapt.param_select import count_elements, mark_trainable, parameter_groups
from speechadapt.decoding.results import decode_dataloader
from speechadapt.decoding.scoring import compute_wer
from speechadapt.utils.io import atomic_save, atomic_write_text


@dataclass
class FinetuneOptions:
    params: str = field(default="all", metadata={
        "help": "what to tune: a parameter group (all, norms, lora, frontend, encoder, decoder, projector) "
                "or a regex"})
    objective: str = field(default="loss", metadata={
        "choices": ("loss", "wer"), "help": "the model's training loss, or the expected WER of sampled hypotheses"})
    wer_samples: int = field(default=8, metadata={"help": "--objective wer: hypotheses per utterance"})
    wer_temperature: float = field(default=1.0, metadata={"help": "--objective wer: sampling temperature"})
    eval_every: int = field(default=0, metadata={"help": "decode the dev set every N updates (0: at the end)"})
    lr_scales: str = field(default="", metadata={
        "help": "per-group learning-rate factors, e.g. encoder=0.1,decoder=1 (Whisper's encoder and decoder)"})
    method: str = field(default="", metadata={"help": "the results.jsonl method name (default from the optimiser)"})

    def validate(self) -> None:
        if self.eval_every < 0:
            raise ValueError(f"--eval-every must be >= 0, got {self.eval_every}")
        parse_lr_scales(self.lr_scales)


def parse_lr_scales(text: str) -> Dict[str, float]:
    scales = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            scales[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or scales.get(name.strip(), -1.0) < 0:
            raise ValueError(f"--lr-scales takes group=factor pairs (factor >= 0), got {item!r}")
    return scales


def lr_scale_function(model, text: str):
    """name -> factor from ``--lr-scales`` (a parameter in no named group keeps 1)."""
    scales = parse_lr_scales(text)
    if not scales:
        return None
    groups = parameter_groups(model)
    unknown = sorted(set(scales) - set(groups))
    if unknown:
        raise ValueError(f"--lr-scales names groups {unknown} that {type(model).__name__} does not have "
                         f"(it has {sorted(groups)})")
    of = {}
    for group, factor in scales.items():
        for name, _ in groups[group]:
            of[name] = factor
    return lambda name: of.get(name, 1.0)


def select_tuned(model, selector: str):
    """Mark the parameters ``selector`` names trainable (the rest frozen); returns them."""
    groups = parameter_groups(model)
    if selector in groups:
        chosen = groups[selector]
    else:
        try:
            regex = re.compile(selector)
        except re.error as e:
            raise ValueError(f"--params {selector!r} is neither a group ({sorted(groups)}) nor a regex: {e}") from None
        chosen = [(n, p) for n, p in model.named_parameters() if regex.search(n)]
    if not chosen:
        raise ValueError(f"--params {selector!r} matched none of the {len(groups['all'])} parameters of "
                         f"{type(model).__name__} (groups: {sorted(groups)}); tuning nothing is an error")
    frozen = tuple(getattr(model, "frozen_by_design", ()))
    refused = [n for n, _ in chosen if n.startswith(frozen)] if frozen else []
    if refused:
        raise ValueError(f"--params {selector!r} selects {len(refused)} parameters {type(model).__name__} keeps "
                         f"frozen by design (e.g. {refused[0]}); choose lora, projector or a narrower regex")
    mark_trainable(model, chosen)
    logging.info(f"tuning {len(chosen)} tensors, {count_elements(chosen):,} parameters ({selector})")
    return chosen


class DevEvaluator:
    """A Trainer step hook: the dev WER every ``every`` updates, the curve, the best weights."""

    def __init__(self, model, loader, exp_dir, every: int, options, save_keys, is_main: bool = True):
        self.model, self.loader, self.every, self.options = model, loader, every, options
        self.memory = None  # a PeakMemory of the training run: decoding is left out of its peak
        self.exp_dir = Path(exp_dir)
        self.save_keys = set(save_keys)
        self.is_main = is_main
        self.best_wer, self.best_step = float("inf"), -1
        self.curve: List[Dict[str, Any]] = []
        self.start = time.time()

    def weights(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items() if k in self.save_keys}

    def evaluate(self, step: int, forwards: int, backwards: int, tb_writer=None) -> float:
        was_training = self.model.training
        self.model.eval()
        results, _ = decode_dataloader(lambda b: self.model.transcribe(b, self.options), self.loader,
                                       desc=f"dev at update {step}")
        self.model.train(was_training)
        wer = compute_wer(results)
        point = dict(step=step, forwards=forwards, backwards=backwards, wall_s=round(time.time() - self.start, 2),
                     wer=round(wer, 4))
        self.curve.append(point)
        atomic_write_text("".join(json.dumps(p) + "\n" for p in self.curve), self.exp_dir / "dev_curve.jsonl")
        if tb_writer is not None:
            tb_writer.add_scalar("valid/wer", wer, step)
        improved = wer < self.best_wer
        if improved:
            self.best_wer, self.best_step = wer, step
            atomic_save({"model": self.weights(), "step": step, "dev_wer": wer}, self.exp_dir / "best.pt")
        logging.info(f"dev WER {wer:.2f}% at update {step}" + (" (best so far)" if improved else
                                                                f" (best {self.best_wer:.2f}% at {self.best_step})"))
        return wer

    def __call__(self, trainer) -> None:
        step = int(trainer.params["batch_idx_train"])
        if not self.is_main or self.every <= 0 or step % self.every:
            return
        with self.memory.paused() if self.memory is not None else contextlib.nullcontext():
            self.evaluate(step, trainer.optimizer.num_forwards, trainer.optimizer.num_backwards, trainer.tb_writer)


def run_record(optimizer_name: str, tuned: int, steps: int, forwards: int, backwards: int, train_s: float,
               peak_train: float, peak_infer: float, memory_method: str, extra: Optional[dict] = None) -> Dict[str, Any]:
    """The fields every fine-tuning record carries (results.jsonl ``extra``)."""
    record = dict(family="finetune", optimizer=optimizer_name, tuned_params=int(tuned), steps=int(steps),
                  forwards=int(forwards), backwards=int(backwards), train_wall_s=round(train_s, 2),
                  peak_train_mb=round(peak_train, 1), peak_infer_mb=round(peak_infer, 1),
                  memory_method=memory_method,
                  train_to_infer_memory=round(peak_train / peak_infer, 3) if peak_infer and peak_train else None)
    record.update(extra or {})
    return record
