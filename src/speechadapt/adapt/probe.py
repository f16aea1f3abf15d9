"""A speaker-identification linear probe on a frozen encoder (forgetting on a second task).

Speech-FT measures what fine-tuning costs a pre-trained encoder beyond ASR with SUPERB
tasks; here the one such task is speaker identification: every cut's encoder output
frames are mean-pooled over its valid frames (:func:`pooled_features`, the model in
eval mode under ``torch.inference_mode`` and checked unchanged afterwards), a linear
classifier is trained on the pooled vectors of some splits (:func:`train_linear_probe`:
features standardised with the training mean and deviation, full-batch AdamW or
L-BFGS, deterministic under its seed) and scored on others (:func:`probe_accuracy`).
The same probe settings for every encoder put pre-trained, fine-tuned and merged
encoders on one footing: only the features differ.

``layer``: ``final`` is the encoder's output (what the CTC head reads); an integer
``i`` is the output of the Zipformer's stack ``i`` (at the front end's frame rate).
"""

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from speechadapt.data.datamodule import is_padding_duplicate

PROBE_OPTIMIZERS = ("adamw", "lbfgs")


@dataclass
class ProbeOptions:
    """What the probe reads and how it is trained: keep them fixed across the encoders compared."""

    layer: str = field(default="final", metadata={
        "help": "encoder output pooled: 'final' (what the CTC head reads) or a Zipformer stack index"})
    probe_optimizer: str = field(default="adamw", metadata={
        "choices": PROBE_OPTIMIZERS, "help": "full-batch AdamW or L-BFGS (strong-Wolfe line search)"})
    probe_epochs: int = field(default=500, metadata={
        "help": "full-batch updates (L-BFGS: iterations)"})
    probe_lr: float = field(default=0.01, metadata={"help": "AdamW rate (L-BFGS: its step size, 1 is usual)"})
    probe_weight_decay: float = field(default=0.01, metadata={
        "help": "AdamW's decoupled decay; for L-BFGS an L2 penalty wd/2*|W|^2 on the loss"})
    probe_seed: int = field(default=0, metadata={"help": "the classifier's initial weights"})

    def validate(self) -> None:
        layer_index(self.layer)
        if self.probe_optimizer not in PROBE_OPTIMIZERS:
            raise ValueError(f"--probe-optimizer must be one of {PROBE_OPTIMIZERS}, got {self.probe_optimizer!r}")
        if self.probe_epochs < 1:
            raise ValueError(f"--probe-epochs must be >= 1, got {self.probe_epochs}")
        if not self.probe_lr > 0:
            raise ValueError(f"--probe-lr must be > 0, got {self.probe_lr}")
        if self.probe_weight_decay < 0:
            raise ValueError(f"--probe-weight-decay must be >= 0, got {self.probe_weight_decay}")

    def train_kwargs(self) -> dict:
        return dict(epochs=self.probe_epochs, lr=self.probe_lr, weight_decay=self.probe_weight_decay,
                    seed=self.probe_seed, optimizer=self.probe_optimizer)


def layer_index(layer) -> Optional[int]:
    """None for the final output, else the stack index (``"2"`` -> 2)."""
    text = str(layer).strip()
    if text == "final":
        return None
    if not text.isdigit():
        raise ValueError(f"--layer must be 'final' or a stack index (0, 1, ...), got {layer!r}")
    return int(text)


# ---- labels ------------------------------------------------------------------------
def cut_speaker(cut, split: str = "") -> str:
    """The speaker of a cut's first supervision; a missing one is an error naming the cut."""
    sups = getattr(cut, "supervisions", None) or []
    speaker = sups[0].speaker if sups else None
    if speaker is None or not str(speaker).strip():
        where = f" of split '{split}'" if split else ""
        raise ValueError(f"cut '{cut.id}'{where} has no speaker label (supervisions[0].speaker): "
                         f"the speaker probe needs one on every cut")
    return str(speaker)


def speaker_labels(cuts: Iterable, split: str = "") -> Dict[str, str]:
    """cut id -> speaker for every cut (padding duplicates excluded)."""
    out = {c.id: cut_speaker(c, split) for c in cuts if not is_padding_duplicate(c.id)}
    if not out:
        raise ValueError(f"split '{split}' holds no cuts")
    return out


def encode_labels(train: Sequence[str], tests: Optional[Dict[str, Sequence[str]]] = None
                  ) -> Tuple[List[str], Tensor, Dict[str, Tensor]]:
    """(sorted class names, train indices, {test split: indices}); fewer than 2 training
    speakers, or a test speaker absent from training, is an error naming it."""
    classes = sorted(set(train))
    if len(classes) < 2:
        raise ValueError(f"the probe's training cuts hold {len(classes)} speaker(s) {classes}: at least 2 are needed")
    index = {name: i for i, name in enumerate(classes)}
    out = {}
    for split, names in (tests or {}).items():
        unseen = sorted(set(names) - set(index))
        if unseen:
            raise ValueError(f"test split '{split}': speaker(s) {unseen} do not occur in the probe's training "
                             f"cuts (a closed-set probe cannot name them); training speakers: {classes}")
        out[split] = torch.tensor([index[n] for n in names], dtype=torch.long)
    return classes, torch.tensor([index[n] for n in train], dtype=torch.long), out


# ---- features ----------------------------------------------------------------------
class PooledFeatures(NamedTuple):
    cut_ids: List[str]
    features: Tensor  # (N, D) float64 on the CPU, rows in cut_ids order
    speakers: List[str]


def state_fingerprint(model: torch.nn.Module) -> Tensor:
    """Per-tensor float64 sums and sums of squares of every parameter and buffer: an
    update shows, without holding a second copy of the weights (a pure permutation would not)."""
    rows = []
    for t in model.state_dict().values():
        if torch.is_tensor(t) and t.numel():
            d = t.detach().double()
            rows.append(torch.stack([d.sum(), (d * d).sum()]).cpu())
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def encoder_frames(model, inputs: Tensor, input_lens: Tensor, layer=None) -> Tuple[Tensor, Tensor]:
    """((N, T, D) frames, (N,) valid lengths) of the encoder's output or of stack ``layer``."""
    if not hasattr(model, "encode"):
        raise ValueError(f"{type(model).__name__} has no encode(x, x_lens): the speaker probe reads the "
                         f"encoder output of models that expose it (Zipformer-CTC)")
    index = layer_index("final" if layer is None else layer)
    if index is None:
        return model.encode(inputs, input_lens)
    stacks = getattr(getattr(model, "encoder", None), "encoders", None)
    embed = getattr(model, "encoder_embed", None)
    if stacks is None or embed is None:
        raise ValueError(f"--layer {index}: {type(model).__name__} has no Zipformer stacks; use --layer final")
    if index >= len(stacks):
        raise ValueError(f"--layer {index}: the encoder has {len(stacks)} stacks (0-{len(stacks) - 1})")
    seen: Dict[str, Tensor] = {}
    # hooks only read: the front end's lengths and the stack's (T, N, D) output
    hooks = [embed.register_forward_hook(lambda m, i, out: seen.__setitem__("lens", out[1])),
             stacks[index].register_forward_hook(lambda m, i, out: seen.__setitem__("out", out))]
    try:
        model.encode(inputs, input_lens)
    finally:
        for h in hooks:
            h.remove()
    return seen["out"].permute(1, 0, 2), seen["lens"]


def mean_pool(frames: Tensor, lens: Tensor) -> Tensor:
    """(N, T, D), (N,) -> (N, D): the mean over each row's first ``lens`` frames."""
    lens = lens.to(frames.device).long()
    if int(lens.min()) < 1:
        raise ValueError(f"an utterance has no encoder frames (lengths {lens.tolist()})")
    mask = (torch.arange(frames.shape[1], device=frames.device)[None, :] < lens[:, None]).to(frames.dtype)
    return (frames * mask[..., None]).sum(1) / lens[:, None].to(frames.dtype)


def pooled_features(model, loader, layer="final", split: str = "",
                    speakers: Optional[Dict[str, str]] = None) -> PooledFeatures:
    """Mean-pooled encoder output of every cut the loader yields, sorted by cut id, with
    the speakers (from ``speakers`` or the batch's cuts). The model's weights and
    buffers are checked unchanged afterwards and its train/eval mode is restored."""
    was_training = model.training
    before = state_fingerprint(model)
    device = model.device
    rows: Dict[str, Tuple[Tensor, str]] = {}
    model.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                if speakers is None and len(batch.cuts) != len(batch):
                    raise ValueError("the batches carry no cuts to read speakers from: pass speakers=")
                frames, lens = encoder_frames(model, batch.inputs.to(device), batch.input_lens.to(device), layer)
                pooled = mean_pool(frames.float(), lens).double().cpu()
                for i, cut_id in enumerate(batch.cut_ids):
                    if is_padding_duplicate(cut_id):
                        continue
                    if speakers is not None:
                        if cut_id not in speakers:
                            raise ValueError(f"cut '{cut_id}' of split '{split}' has no speaker label")
                        who = speakers[cut_id]
                    else:
                        who = cut_speaker(batch.cuts[i], split)
                    rows[cut_id] = (pooled[i], who)
    finally:
        model.train(was_training)
    after = state_fingerprint(model)
    if before.shape != after.shape or not torch.equal(before, after):
        raise RuntimeError(f"{type(model).__name__}'s weights or buffers changed while extracting probe features")
    if not rows:
        raise ValueError(f"split '{split}': the loader yielded no cuts")
    if not all(torch.isfinite(v).all() for v, _ in rows.values()):
        bad = [c for c, (v, _) in rows.items() if not torch.isfinite(v).all()]
        raise ValueError(f"split '{split}': non-finite encoder output for {len(bad)} cuts, e.g. {bad[:3]}")
    ids = sorted(rows)
    return PooledFeatures(ids, torch.stack([rows[c][0] for c in ids]), [rows[c][1] for c in ids])


# ---- the classifier ----------------------------------------------------------------
@dataclass
class LinearProbe:
    """Standardisation (train mean, deviation) then ``x @ weight.T + bias``."""

    mean: Tensor
    std: Tensor
    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)
    final_loss: float = math.nan

    def logits(self, x: Tensor) -> Tensor:
        z = (x.to(self.mean.dtype) - self.mean) / self.std
        return z @ self.weight.T + self.bias

    def predict(self, x: Tensor) -> Tensor:
        return self.logits(x).argmax(-1)


def _check_xy(x: Tensor, y: Tensor, num_classes: int) -> None:
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected features (N, D) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no training examples for the probe")
    if num_classes < 2:
        raise ValueError(f"a probe needs at least 2 classes, got {num_classes}")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    if not torch.isfinite(x).all():
        raise ValueError("non-finite probe features")


def train_linear_probe(x: Tensor, y: Tensor, num_classes: int, epochs: int = 500, lr: float = 0.01,
                       weight_decay: float = 0.01, seed: int = 0, optimizer: str = "adamw") -> LinearProbe:
    """A softmax classifier on standardised features, full batch, on the CPU in float64
    (the same numbers on every machine and for every encoder); the initial weights
    come from ``seed`` alone."""
    _check_xy(x, y, num_classes)
    if optimizer not in PROBE_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {PROBE_OPTIMIZERS}, got {optimizer!r}")
    x = x.detach().to("cpu", torch.float64)
    y = y.detach().to("cpu", torch.long)
    mean = x.mean(0)
    # constant dimensions (dead channels) carry nothing: keep them at 0, not inf
    std = x.std(0, unbiased=False).clamp_min(1e-8) if x.shape[0] > 1 else torch.ones_like(mean)
    z = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(num_classes, x.shape[1], generator=gen, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    loss_fn = torch.nn.functional.cross_entropy
    with torch.enable_grad():
        if optimizer == "adamw":
            from speechadapt.training.optim import FirstOrderOptimizer

            opt = FirstOrderOptimizer(torch.optim.AdamW([dict(params=[weight]), dict(params=[bias], weight_decay=0.0)],
                                                        lr=lr, weight_decay=weight_decay), [weight, bias])
            for _ in range(epochs):
                opt.step(lambda grad_enabled: loss_fn(z @ weight.T + bias, y))
        else:
            # L-BFGS re-evaluates the loss inside its line search, so it takes torch's
            # closure (forward and backward) rather than the project's step(loss_fn).
            opt = torch.optim.LBFGS([weight, bias], lr=lr, max_iter=epochs, tolerance_grad=1e-9,
                                    tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(z @ weight.T + bias, y) + 0.5 * weight_decay * (weight * weight).sum()
                loss.backward()
                return loss

            opt.step(closure)
    with torch.no_grad():
        final = float(loss_fn(z @ weight.T + bias, y))
    if not math.isfinite(final):
        raise RuntimeError(f"the probe's loss is not finite ({final}): lower --probe-lr")
    return LinearProbe(mean, std, weight.detach(), bias.detach(), final)


def probe_accuracy(probe: LinearProbe, x: Tensor, y: Tensor) -> float:
    """Percent of rows classified as their label."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{x.shape[0]} feature rows for {y.shape[0]} labels")
    return 100.0 * float((probe.predict(x) == y.to(torch.long)).double().mean())


def per_class_accuracy(probe: LinearProbe, x: Tensor, y: Tensor, classes: Sequence[str]) -> Dict[str, float]:
    """Speaker -> percent correct, for the speakers present in ``y``."""
    hits = probe.predict(x) == y
    return {classes[c]: round(100.0 * float(hits[y == c].double().mean()), 2) for c in sorted(set(y.tolist()))}
