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
    family: str = field(default="finetune", metadata={"help": "the results.jsonl family (the report's table)"})
    # Stable fine-tuning (Speech-FT): --freeze-frontend true --upstream-freeze-ratio 0.1 --scheduler tri_stage
    freeze_frontend: bool = field(default=False, metadata={
        "help": "keep the convolutional front end (the 'frontend' group) frozen throughout"})
    upstream_freeze_ratio: float = field(default=0.0, metadata={
        "help": "only the head (the 'decoder' group) trains for this fraction of --max-steps, then everything "
                "tuned (Speech-FT: 0.1)"})
    # Metric-driven learning rate (Marco-ASR): on every dev evaluation
    lr_feedback: bool = field(default=False, metadata={
        "help": "multiply the rate by --lr-feedback-factor when the dev WER has not improved by "
                "--lr-feedback-delta, stop after --lr-feedback-patience such evaluations in a row"})
    lr_feedback_factor: float = 0.5
    lr_feedback_delta: float = field(default=0.1, metadata={"help": "WER points an evaluation must gain"})
    lr_feedback_patience: int = 3
    dev_subset: int = field(default=0, metadata={
        "help": "decode only the first N dev cuts (by id) at each evaluation: a fixed subset (0: all)"})

    def validate(self) -> None:
        if self.eval_every < 0:
            raise ValueError(f"--eval-every must be >= 0, got {self.eval_every}")
        parse_lr_scales(self.lr_scales)
        if not 0.0 <= self.upstream_freeze_ratio < 1.0:
            raise ValueError(f"--upstream-freeze-ratio is a fraction in [0, 1), got {self.upstream_freeze_ratio}")
        if not 0.0 < self.lr_feedback_factor <= 1.0:
            raise ValueError(f"--lr-feedback-factor must be in (0, 1], got {self.lr_feedback_factor}")
        if self.lr_feedback_patience < 1 or self.lr_feedback_delta < 0 or self.dev_subset < 0:
            raise ValueError("--lr-feedback-patience must be >= 1, --lr-feedback-delta and --dev-subset >= 0")


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


def select_tuned(model, selector: str, freeze_frontend: bool = False):
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
    if freeze_frontend:
        frontend = {n for n, _ in groups.get("frontend", [])}
        if not frontend:
            raise ValueError(f"--freeze-frontend: {type(model).__name__} has no 'frontend' group "
                             f"(groups: {sorted(groups)})")
        chosen = [(n, p) for n, p in chosen if n not in frontend]
        if not chosen:
            raise ValueError(f"--params {selector!r} with --freeze-frontend leaves nothing to tune")
    mark_trainable(model, chosen)
    logging.info(f"tuning {len(chosen)} tensors, {count_elements(chosen):,} parameters ({selector}"
                 + (", front end frozen)" if freeze_frontend else ")"))
    return chosen


def hold_upstream(model, trainer, tuned, ratio: float, max_steps: int) -> int:
    """Stable fine-tuning: for the first ``ratio`` of ``max_steps`` updates only the head
    (the model's 'decoder' group) moves; returns that number of updates (0: off)."""
    if ratio <= 0:
        return 0
    if trainer.zeroth_order or not hasattr(trainer.optimizer, "hold"):
        raise ValueError("--upstream-freeze-ratio needs a first-order optimiser (adamw, sgd, scaled_adam)")
    if not max_steps:
        raise ValueError("--upstream-freeze-ratio is a fraction of --max-steps: give --max-steps")
    head = {n for n, _ in parameter_groups(model).get("decoder", [])}
    if not head:
        raise ValueError(f"--upstream-freeze-ratio: {type(model).__name__} has no head ('decoder' group)")
    upstream = [p for n, p in tuned if n not in head]
    if not upstream or len(upstream) == len(tuned):
        raise ValueError("--upstream-freeze-ratio needs both the head and upstream parameters tuned "
                         f"({len(tuned) - len(upstream)} head, {len(upstream)} upstream tensors selected)")
    steps = max(1, int(round(ratio * max_steps)))
    # the Trainer counts the update in progress: updates 1..steps are held
    trainer.optimizer.hold(upstream, lambda: trainer.params["batch_idx_train"] <= steps)
    logging.info(f"stable fine-tuning: {len(upstream)} upstream tensors held for the first {steps} updates")
    return steps


def wer_feedback(state: Dict[str, Any], wer: float, factor: float, delta: float, patience: int) -> str:
    """One metric-driven decision on ``state`` ({"scale", "best", "bad"}, updated in place):
    "improved" (by at least ``delta`` WER points on the best so far), "cut" (the rate
    scale times ``factor``) or "stop" (``patience`` evaluations in a row without)."""
    best = state.get("best")
    if best is None or wer <= best - delta:
        state.update(best=wer, bad=0)
        return "improved"
    state["best"] = min(best, wer)
    state["bad"] = int(state.get("bad", 0)) + 1
    if state["bad"] >= patience:
        return "stop"
    state["scale"] = float(state.get("scale", 1.0)) * factor
    return "cut"


class DevEvaluator:
    """A Trainer step hook: the dev WER every ``every`` updates, the curve, the best weights."""

    def __init__(self, model, loader, exp_dir, every: int, options, save_keys, is_main: bool = True,
                 feedback: Optional[FinetuneOptions] = None):
        self.model, self.loader, self.every, self.options = model, loader, every, options
        self.feedback = feedback if feedback is not None and feedback.lr_feedback else None
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
                                       desc=f"dev at update {step}", normalize=self.options.normalizer(self.model))
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

    def baseline(self, trainer) -> float:
        """The source model's dev WER (update 0): the first point of the curve, and the
        WER the metric-driven rate must improve on (rank 0; the others learn it at the
        first evaluation)."""
        wer = self.evaluate(0, 0, 0, trainer.tb_writer)
        if self.feedback is not None:
            wer_feedback(trainer.scheduler.feedback, wer, self.feedback.lr_feedback_factor,
                         self.feedback.lr_feedback_delta, self.feedback.lr_feedback_patience)
        return wer

    def __call__(self, trainer) -> None:
        step = int(trainer.params["batch_idx_train"])
        if self.every <= 0 or step % self.every:
            return
        decision = None
        if self.is_main:
            with self.memory.paused() if self.memory is not None else contextlib.nullcontext():
                wer = self.evaluate(step, trainer.optimizer.num_forwards, trainer.optimizer.num_backwards,
                                    trainer.tb_writer)
            if self.feedback is not None:
                f = self.feedback
                decision = wer_feedback(trainer.scheduler.feedback, wer, f.lr_feedback_factor, f.lr_feedback_delta,
                                        f.lr_feedback_patience)
        if self.feedback is None:
            return
        decision = same_on_every_rank(decision, trainer.scheduler.feedback)
        trainer.scheduler.step_batch(step)  # the new scale applies from the next update
        if decision == "cut":
            logging.info(f"dev WER not {self.feedback.lr_feedback_delta:g} points better: rate scale now "
                         f"{trainer.scheduler.feedback['scale']:g}")
        elif decision == "stop":
            logging.info(f"dev WER not better for {self.feedback.lr_feedback_patience} evaluations: stopping at "
                         f"update {step} (the test sets use the best dev weights)")
            trainer.should_stop = True


def same_on_every_rank(decision: Optional[str], state: Dict[str, Any]) -> Optional[str]:
    """Rank 0 decoded the dev set: every rank takes its decision and rate scale."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return decision
    box = [decision, dict(state)]
    torch.distributed.broadcast_object_list(box, src=0)
    state.clear()
    state.update(box[1])
    return box[0]


def run_record(optimizer_name: str, tuned: int, steps: int, forwards: int, backwards: int, train_s: float,
               peak_train: float, peak_infer: float, memory_method: str, extra: Optional[dict] = None,
               family: str = "finetune") -> Dict[str, Any]:
    """The fields every fine-tuning record carries (results.jsonl ``extra``)."""
    record = dict(family=family, optimizer=optimizer_name, tuned_params=int(tuned), steps=int(steps),
                  forwards=int(forwards), backwards=int(backwards), train_wall_s=round(train_s, 2),
                  peak_train_mb=round(peak_train, 1), peak_infer_mb=round(peak_infer, 1),
                  memory_method=memory_method,
                  train_to_infer_memory=round(peak_train / peak_infer, 3) if peak_infer and peak_train else None)
    record.update(extra or {})
    return record
