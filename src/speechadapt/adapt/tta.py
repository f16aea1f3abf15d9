"""Test-time adaptation of CTC models: SUTA, zeroth-order TTA, continual TTA.

* :func:`suta_loss` is SUTA's unsupervised objective on the logits of one utterance:
  entropy over the non-blank frames plus minimum class confusion (formula below);
* :class:`TestTimeAdapter` adapts and decodes one utterance at a time. Episodic (the
  SUTA protocol): the tuned parameters and the optimiser state go back to the source
  before every utterance, the model stays in eval mode, T steps on that utterance
  alone, then greedy decoding. Continual: the weights carry over from utterance to
  utterance, reset to the source every K utterances and/or when an utterance's first
  loss exceeds ``reset_factor`` times the running mean of the first losses.

Every step goes through the one optimiser step (``optimizer.step(loss_fn)``) of the
registry, so first-order (AdamW, weight decay 0) and zeroth-order optimisers (MeZO,
ZO-ASR, HiZOO, LOZO: ZO-TTA) adapt alike. A zeroth-order step runs its 2q forwards on
one frozen-part cache, so what lies below the lowest tuned parameter (the Zipformer's
convolutional front end under SUTA's norms) is computed once per utterance. The restore
copies the tuned tensors only.

SUTA loss, logits x of shape (N, T, C), P = softmax(x / tau), H_t = -sum_c P_tc log P_tc:
  e   = mean of H_t over the frames whose argmax is not the blank (all frames with
        ``non_blank=False``; 0 when no frame is non-blank: nothing to sharpen);
  w_t = 1 + exp(-H_t) (detached) rescaled to sum to T (1 without ``reweight``);
  C   = P^T diag(w) P, each column divided by its sum; MCC = (sum(C) - trace(C)) / C;
  loss = em_coef * e + (1 - em_coef) * MCC.
It is written with masks, not indexing, so ``torch.func.vmap`` (ZO's batched queries)
can evaluate it.
"""

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from speechadapt.decoding.ctc import greedy_ctc_collapse
from speechadapt.training.optim import OptimizerConfig, build_optimizer

TTA_MODES = ("episodic", "continual")


def suta_loss(logits: torch.Tensor, blank_id: int = 0, tau: float = 2.5, em_coef: float = 0.3,
              reweight: bool = True, non_blank: bool = True, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SUTA's objective (module docstring) on logits (N, T, C) before the softmax; the
    frames of all N utterances are pooled, ``lengths`` (N,) leaves padding out."""
    if logits.dim() != 3:
        raise ValueError(f"suta_loss expects logits of shape (N, T, C), got {tuple(logits.shape)}")
    if tau <= 0 or not 0.0 <= em_coef <= 1.0:
        raise ValueError(f"suta_loss needs tau > 0 and em_coef in [0, 1], got tau={tau}, em_coef={em_coef}")
    n, t, classes = logits.shape
    x = logits.float()
    valid = torch.ones(n, t, dtype=x.dtype, device=x.device)
    if lengths is not None:
        valid = (torch.arange(t, device=x.device)[None, :] < lengths.to(x.device)[:, None]).to(x.dtype)
    valid = valid.reshape(-1)
    log_p = torch.log_softmax(x / tau, dim=-1).reshape(-1, classes)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1)  # (N*T,)
    mask = valid
    if non_blank:
        mask = mask * (x.argmax(-1).reshape(-1) != blank_id).to(x.dtype)
    e = (entropy * mask).sum() / mask.sum().clamp(min=1.0)
    weights = valid
    if reweight:
        weights = (1.0 + torch.exp(-entropy.detach())) * valid
        weights = weights * valid.sum() / weights.sum()
    cov = (p * weights[:, None]).T @ p  # (C, C), symmetric
    cov = cov / cov.sum(dim=0, keepdim=True).clamp(min=1e-12)
    mcc = (cov.sum() - torch.diagonal(cov).sum()) / classes
    return em_coef * e + (1.0 - em_coef) * mcc


@dataclass
class TtaOptions:
    steps: int = field(default=10, metadata={"help": "adaptation steps per utterance (0: decode the source)"})
    mode: str = field(default="episodic", metadata={"choices": TTA_MODES, "help": (
        "episodic: restore the source before every utterance; continual: keep adapting (reset rules)")})
    params: str = field(default="suta", metadata={"help": (
        "what adapts: suta (every norm, plus the conv front end of waveform models), a parameter group "
        "(norms, frontend, all, ...) or a regex")})
    tau: float = field(default=2.5, metadata={"help": "softmax temperature of the SUTA loss"})
    em_coef: float = field(default=0.3, metadata={"help": "weight of the entropy term (1 - it: MCC)"})
    reweight: bool = field(default=True, metadata={"help": "MCC frame weights 1 + exp(-entropy)"})
    non_blank: bool = field(default=True, metadata={"help": "entropy over non-blank frames only"})
    reset_every: int = field(default=0, metadata={"help": "continual: reset to the source every K utterances (0 off)"})
    reset_factor: float = field(default=0.0, metadata={"help": (
        "continual: reset when an utterance's first loss exceeds this times the running mean (0 off)")})
    reset_momentum: float = field(default=0.9, metadata={"help": "continual: running mean = EMA of first losses"})
    decode_at: str = field(default="", metadata={"help": (
        "also decode after these step counts (comma-separated) for WER-against-steps curves")})
    method: str = field(default="", metadata={"help": "results.jsonl method name (default from the settings)"})

    def validate(self) -> None:
        if self.steps < 0 or self.reset_every < 0 or self.reset_factor < 0:
            raise ValueError("--steps, --reset-every and --reset-factor must be >= 0")
        if self.mode not in TTA_MODES:
            raise ValueError(f"--mode must be one of {TTA_MODES}, got {self.mode!r}")
        if self.mode == "episodic" and (self.reset_every or self.reset_factor):
            raise ValueError("--reset-every / --reset-factor are continual-mode rules (--mode continual)")
        if not 0.0 <= self.reset_momentum < 1.0:
            raise ValueError(f"--reset-momentum must be in [0, 1), got {self.reset_momentum}")
        bad = [s for s in self.decode_points() if not 0 < s <= self.steps]
        if bad:
            raise ValueError(f"--decode-at {bad} outside 1..--steps {self.steps}")
        suta_loss(torch.zeros(1, 1, 2), tau=self.tau, em_coef=self.em_coef)  # checks tau / em_coef

    def decode_points(self) -> List[int]:
        return sorted({int(s) for s in self.decode_at.split(",") if s.strip()})


def check_ctc_model(model) -> None:
    missing = [a for a in ("ctc_logits", "blank_id", "decode_ids") if not hasattr(model, a)]
    if missing:
        raise ValueError(f"test-time adaptation needs a CTC model (ctc_logits, blank_id): {type(model).__name__} "
                         f"has no {', '.join(missing)}")


def tta_parameters(model, selector: str = "suta"):
    """The tuned parameters (marked trainable, the rest frozen). ``suta``: every
    normalisation layer, plus the convolutional front end of waveform models."""
    from speechadapt.adapt.finetune import select_tuned
    from speechadapt.adapt.param_select import mark_trainable, parameter_groups

    if selector != "suta":
        return select_tuned(model, selector)
    groups = parameter_groups(model)
    chosen = dict(groups.get("norms", []))
    if getattr(model, "input_kind", "fbank") == "waveform":
        chosen.update(dict(groups.get("frontend", [])))
    named = [(n, p) for n, p in model.named_parameters() if n in chosen]
    if not named:
        raise ValueError(f"{type(model).__name__} has no normalisation layer (nor front end) for SUTA to adapt; "
                         f"give --params a group or a regex")
    mark_trainable(model, named)
    logging.info(f"adapting {len(named)} tensors, {sum(p.numel() for _, p in named):,} parameters (suta)")
    return named


@dataclass
class UtteranceLog:
    """What happened to one utterance (one line of the adaptation log)."""

    cut_id: str
    status: str  # adapted, source (steps 0), short, non-finite
    steps: int = 0
    first_loss: Optional[float] = None
    last_loss: Optional[float] = None
    reset: bool = False
    seconds: float = 0.0


class TestTimeAdapter:
    """Adapts a CTC model to one utterance at a time and decodes it (module docstring)."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, model, tuned, optimizer_config: OptimizerConfig, options: TtaOptions):
        check_ctc_model(model)
        options.validate()
        self.model, self.options = model, options
        self.tuned = list(tuned)
        if options.steps > 0 and not self.tuned:
            raise ValueError("test-time adaptation with zero selected parameters")
        self.source = [p.detach().clone() for _, p in self.tuned]
        self.optimizer = build_optimizer(self.tuned, optimizer_config) if options.steps > 0 else None
        self.initial_state = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer is not None else None
        self.zeroth_order = bool(getattr(self.optimizer, "zeroth_order", False))
        self.counts = dict(utterances=0, adapted=0, short=0, non_finite=0, resets=0, steps=0, forwards=0,
                           backwards=0)
        self.adapt_seconds = 0.0
        self.hyps_at: Dict[int, Dict[str, str]] = {s: {} for s in options.decode_points()}
        self._running_loss: Optional[float] = None
        self._since_reset = 0
        model.eval()

    # ---- state ---------------------------------------------------------------------
    @torch.no_grad()
    def restore(self) -> None:
        """The source values of the tuned tensors and the optimiser's initial state."""
        for (_, p), source in zip(self.tuned, self.source):
            p.copy_(source)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(self.initial_state))
        self._since_reset = 0

    # ---- one utterance -------------------------------------------------------------
    def _loss_fn(self, batch, cache: Optional[dict]):
        opts, model = self.options, self.model

        def loss_of(frozen) -> torch.Tensor:
            logits, lens = model.ctc_logits(batch.inputs, batch.input_lens, frozen)
            return suta_loss(logits, model.blank_id, opts.tau, opts.em_coef, opts.reweight, opts.non_blank, lens)

        def loss_fn(grad_enabled: bool = True) -> torch.Tensor:
            return loss_of(cache)

        def batched(pairs) -> torch.Tensor:
            from speechadapt.adapt.zo import ReadOnlyCache, vectorised_losses

            frozen = ReadOnlyCache(cache) if cache is not None else None
            return vectorised_losses(model, lambda: loss_of(frozen), pairs)

        loss_fn.batched = batched
        return loss_fn

    def _step(self, loss_fn) -> float:
        before_f, before_b = self.optimizer.num_forwards, self.optimizer.num_backwards
        loss = self.optimizer.step(loss_fn)
        self.counts["steps"] += 1
        self.counts["forwards"] += self.optimizer.num_forwards - before_f
        self.counts["backwards"] += self.optimizer.num_backwards - before_b
        if self.optimizer.skipped or not math.isfinite(loss):
            raise FloatingPointError(self.optimizer.skipped or "non-finite loss")
        return loss

    def _continual_reset_due(self) -> bool:
        every = self.options.reset_every
        return self.options.mode == "continual" and every > 0 and self._since_reset >= every

    def _loss_too_high(self, first_loss: float) -> bool:
        factor, mean = self.options.reset_factor, self._running_loss
        return self.options.mode == "continual" and factor > 0 and mean is not None and first_loss > factor * mean

    def _track_first_loss(self, first_loss: float) -> None:
        m = self.options.reset_momentum
        self._running_loss = first_loss if self._running_loss is None else m * self._running_loss + (1 - m) * first_loss

    def _decode(self, batch) -> Tuple[Optional[str], bool]:
        """(text, finite): greedy CTC on the current weights; text None when the logits are not finite."""
        with torch.inference_mode():
            logits, lens = self.model.ctc_logits(batch.inputs, batch.input_lens)
        if not bool(torch.isfinite(logits).all()):
            return None, False
        ids = greedy_ctc_collapse(logits, lens, self.model.blank_id)[0]
        return self.model.decode_ids(ids), True

    def _decode_unadapted(self, batch) -> str:
        """The source's transcript (restoring first); "" when the encoder cannot run on it."""
        self.restore()
        return self._decode_as_is(batch)

    def adapt_and_decode(self, batch) -> Tuple[str, UtteranceLog]:
        """Adapt on one utterance (a batch of one) and decode it."""
        if len(batch) != 1:
            raise ValueError(f"test-time adaptation takes one utterance at a time, got a batch of {len(batch)}")
        start = time.time()
        batch = batch.to(self.model.device)
        cut_id = batch.cut_ids[0]
        log = UtteranceLog(cut_id, "source")
        self.counts["utterances"] += 1
        length, needed = int(batch.input_lens[0]), int(getattr(self.model, "min_input_length", 1))
        if length < needed:
            logging.warning(f"{cut_id}: {length} input frames/samples < the encoder's receptive field ({needed}): "
                            f"not adapted")
            self.counts["short"] += 1
            log.status = "short"
            text = self._decode_unadapted(batch) if self.options.mode == "episodic" else self._decode_as_is(batch)
            return text, self._finish(log, start)
        if self.options.steps == 0:
            text, _ = self._decode(batch)
            return text or "", self._finish(log, start)
        reset = self.options.mode == "episodic" or self._continual_reset_due()
        if reset:
            self.restore()
        try:
            text = self._adapt(batch, log, reset)
        except FloatingPointError as e:
            logging.warning(f"{cut_id}: {e} while adapting: restored the source, decoded unadapted")
            self.counts["non_finite"] += 1
            log.status = "non-finite"
            text = self._decode_unadapted(batch)
        return text, self._finish(log, start)

    def _decode_as_is(self, batch) -> str:
        """The transcript with the current weights; "" when the encoder cannot run on it."""
        try:
            text, finite = self._decode(batch)
        except ValueError as e:
            logging.warning(f"{batch.cut_ids[0]}: cannot be decoded ({e}); scored as an empty hypothesis")
            return ""
        return text if finite else ""

    def _adapt(self, batch, log: UtteranceLog, reset: bool) -> str:
        cache: Optional[dict] = {} if self.zeroth_order else None
        loss_fn = self._loss_fn(batch, cache)
        for step in range(1, self.options.steps + 1):
            loss = self._step(loss_fn)
            if step == 1:
                if not reset and self._loss_too_high(loss):
                    logging.info(f"{log.cut_id}: first loss {loss:.4f} > {self.options.reset_factor} x running "
                                 f"mean {self._running_loss:.4f}: reset to the source")
                    self.restore()
                    reset = True
                    loss_fn = self._loss_fn(batch, {} if self.zeroth_order else None)
                    loss = self._step(loss_fn)
                self._track_first_loss(loss)
                log.first_loss = loss
            log.last_loss, log.steps = loss, step
            if step in self.hyps_at:
                text, finite = self._decode(batch)
                self.hyps_at[step][log.cut_id] = text if finite else ""
        text, finite = self._decode(batch)
        if not finite:
            raise FloatingPointError("non-finite logits after adaptation")
        log.status, log.reset = "adapted", reset
        self.counts["adapted"] += 1
        self.counts["resets"] += int(reset and self.options.mode == "continual")
        self._since_reset += 1
        return text

    def _finish(self, log: UtteranceLog, start: float) -> UtteranceLog:
        log.seconds = round(time.time() - start, 4)
        self.adapt_seconds += log.seconds
        for step, hyps in self.hyps_at.items():  # not adapted that far: the final transcript stands in
            hyps.setdefault(log.cut_id, None)
        return log

    def summary(self) -> Dict[str, Any]:
        return dict(self.counts, tuned_params=sum(p.numel() for _, p in self.tuned),
                    zeroth_order=self.zeroth_order, adapt_wall_s=round(self.adapt_seconds, 2))
