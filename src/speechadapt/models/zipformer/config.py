"""Zipformer configuration with icefall's flag names, and the named presets.

Per-stack fields hold one value per encoder stack (the length of
``downsampling_factor`` is the number of stacks). Like icefall's ``--flag 2,2,3``
they accept tuples, lists, comma strings ("2,2,3") or a single value, which is used
for every stack. ``query_head_dim``, ``value_head_dim`` and ``pos_head_dim`` keep a
single int when one value is given (icefall's defaults are "32", "12", "4").
"""

from dataclasses import dataclass
from typing import Optional, Tuple, Union

from speechadapt.utils.config import config_from_dict

IntOrInts = Union[int, Tuple[int, ...]]

# Fields that hold one int per stack and are always stored as tuples.
_PER_STACK_TUPLES = (
    "num_encoder_layers",
    "downsampling_factor",
    "encoder_dim",
    "encoder_unmasked_dim",
    "feedforward_dim",
    "num_heads",
    "cnn_module_kernel",
)
# Per-stack fields that icefall usually writes as a single int.
_PER_STACK_INT_OR_TUPLE = ("query_head_dim", "value_head_dim", "pos_head_dim")
# Plain int lists (not per stack): icefall's causal-training choices.
_INT_LISTS = ("chunk_size", "left_context_frames")


def parse_ints(value) -> Tuple[int, ...]:
    """'2,2,3' / [2, 2, 3] / (2,) / 7 -> tuple of ints."""
    if isinstance(value, bool):
        raise TypeError(f"expected int(s), got a bool: {value!r}")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts:
            raise ValueError(f"expected comma-separated ints, got {value!r}")
        return tuple(int(p) for p in parts)
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    raise TypeError(f"expected int(s), got {type(value).__name__}: {value!r}")


@dataclass
class ZipformerConfig:
    """Zipformer2 encoder (+ Conv2dSubsampling front end) hyper-parameters.

    Names follow icefall's ``zipformer/train.py`` flags; ``layer{1,2,3}_channels``
    are the argument names of icefall's ``Conv2dSubsampling`` (defaults 8/32/128).
    Training-only fields (no effect in eval mode):
      warmup_batches: icefall's Zipformer2 argument; spreads the per-stack
        layer-skip warm-up over this many batches.
      schedule_scale: every ScheduledFloat (dropout, layer skipping, ...) reads
        ``batch_count * schedule_scale``; > 1 walks icefall's schedules (written for
        tens of thousands of batches) faster in short runs.
      regularize: False turns every scheduled dropout/skip/feature-mask off in
        training (plain training of the same architecture).
    pad_invariant: False (default) computes exactly what icefall computes for a padded
      batch, where an utterance's output depends slightly (~1e-2 here) on the padding
      next to it (front-end kernel and downsampling groups read padded frames). True
      makes each utterance's output equal to icefall's output for it alone: frames past
      the end are zeroed after the subsampling convs and replaced by the last valid
      frame before every downsampling. No parameter changes; checkpoints load either way.
    """

    num_encoder_layers: Tuple[int, ...] = (2, 2, 3, 4, 3, 2)
    downsampling_factor: Tuple[int, ...] = (1, 2, 4, 8, 4, 2)
    encoder_dim: Tuple[int, ...] = (192, 256, 384, 512, 384, 256)
    encoder_unmasked_dim: Tuple[int, ...] = (192, 192, 256, 256, 256, 192)
    feedforward_dim: Tuple[int, ...] = (512, 768, 1024, 1536, 1024, 768)
    num_heads: Tuple[int, ...] = (4, 4, 4, 8, 4, 4)
    query_head_dim: IntOrInts = 32
    value_head_dim: IntOrInts = 12
    pos_head_dim: IntOrInts = 4
    pos_dim: int = 48
    cnn_module_kernel: Tuple[int, ...] = (31, 31, 15, 15, 15, 31)
    causal: bool = False
    chunk_size: Tuple[int, ...] = (-1,)
    left_context_frames: Tuple[int, ...] = (-1,)
    feature_dim: int = 80
    output_downsampling_factor: int = 2
    layer1_channels: int = 8
    layer2_channels: int = 32
    layer3_channels: int = 128
    warmup_batches: float = 4000.0
    schedule_scale: float = 1.0
    regularize: bool = True
    pad_invariant: bool = False

    def __post_init__(self):
        for name in _PER_STACK_TUPLES + _INT_LISTS:
            setattr(self, name, parse_ints(getattr(self, name)))
        for name in _PER_STACK_INT_OR_TUPLE:
            values = parse_ints(getattr(self, name))
            setattr(self, name, values[0] if len(values) == 1 else values)
        num_stacks = len(self.downsampling_factor)
        for name in _PER_STACK_TUPLES:
            values = getattr(self, name)
            if len(values) == 1:
                setattr(self, name, values * num_stacks)
        self.validate()

    @property
    def num_stacks(self) -> int:
        return len(self.downsampling_factor)

    @property
    def output_dim(self) -> int:
        return max(self.encoder_dim)

    def per_stack(self, name: str) -> Tuple[int, ...]:
        """Any per-stack field as a tuple with one entry per stack."""
        values = parse_ints(getattr(self, name))
        return values * self.num_stacks if len(values) == 1 else values

    def validate(self) -> None:
        n = self.num_stacks
        if n == 0:
            raise ValueError("downsampling_factor must name at least one stack")
        for name in _PER_STACK_TUPLES + _PER_STACK_INT_OR_TUPLE:
            if len(self.per_stack(name)) != n:
                raise ValueError(
                    f"{name} has {len(self.per_stack(name))} values, expected 1 or "
                    f"{n} (one per stack, as in downsampling_factor)"
                )
        for u, d in zip(self.encoder_unmasked_dim, self.encoder_dim):
            if u > d:
                raise ValueError(f"encoder_unmasked_dim {u} > encoder_dim {d}")
        for k in self.cnn_module_kernel:
            if k % 2 != 1:
                raise ValueError(f"cnn_module_kernel must be odd, got {k}")
        if self.pos_dim % 2 != 0:
            raise ValueError(f"pos_dim must be even, got {self.pos_dim}")
        if self.output_downsampling_factor != 2:
            raise ValueError("output_downsampling_factor must be 2 (as in icefall)")
        if self.feature_dim < 7:
            raise ValueError(f"feature_dim must be >= 7, got {self.feature_dim}")
        if self.schedule_scale <= 0:
            raise ValueError(f"schedule_scale must be > 0, got {self.schedule_scale}")
        if not self.causal and (
            self.chunk_size != (-1,) or self.left_context_frames != (-1,)
        ):
            raise ValueError("chunk_size/left_context_frames need causal=True")


# icefall's values: `small`/`large` from egs/librispeech/ASR/zipformer's README and
# RESULTS.md flags, `medium` = train.py defaults. `tiny` is our test/synth size
# (the shape of tests/data/reference/zipformer_tiny_reference.pt, with the front end's
# last width narrowed for speed on CPUs).
_ICEFALL_STACKS = dict(downsampling_factor=(1, 2, 4, 8, 4, 2))
_PRESETS = {
    "tiny": dict(
        num_encoder_layers=(1, 1, 2, 1, 1, 1),
        downsampling_factor=(1, 2, 4, 8, 4, 2),
        encoder_dim=(32, 48, 64, 80, 64, 48),
        encoder_unmasked_dim=(32, 32, 48, 48, 48, 32),
        feedforward_dim=(64, 96, 128, 192, 128, 96),
        num_heads=(2, 2, 2, 4, 2, 2),
        query_head_dim=8,
        value_head_dim=4,
        pos_head_dim=4,
        pos_dim=16,
        cnn_module_kernel=(15, 15, 7, 7, 7, 15),
        layer3_channels=32,
    ),
    "small": dict(
        _ICEFALL_STACKS,
        num_encoder_layers=(2, 2, 2, 2, 2, 2),
        feedforward_dim=(512, 768, 768, 768, 768, 768),
        encoder_dim=(192, 256, 256, 256, 256, 256),
        encoder_unmasked_dim=(192, 192, 192, 192, 192, 192),
    ),
    "medium": dict(_ICEFALL_STACKS),
    "large": dict(
        _ICEFALL_STACKS,
        num_encoder_layers=(2, 2, 4, 5, 4, 2),
        feedforward_dim=(512, 768, 1536, 2048, 1536, 768),
        encoder_dim=(192, 256, 512, 768, 512, 256),
        encoder_unmasked_dim=(192, 192, 256, 320, 256, 192),
    ),
}

# The synth MoSE's second encoder: tiny's widths, every stack two layers deep.
_PRESETS["tiny-deep"] = dict(_PRESETS["tiny"], num_encoder_layers=(2, 2, 2, 2, 2, 2))

PRESET_NAMES = tuple(_PRESETS)


def get_preset(name: str, **overrides) -> ZipformerConfig:
    """ZipformerConfig for ``tiny``/``tiny-deep``/``small``/``medium``/``large`` (+ overrides)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown Zipformer preset {name!r}; choose from {PRESET_NAMES}")
    return ZipformerConfig(**{**_PRESETS[name], **overrides})


def config_from_any(config: Optional[Union[ZipformerConfig, dict, str]]) -> ZipformerConfig:
    """A config, a dict of its fields (e.g. from a checkpoint) or a preset name."""
    if isinstance(config, ZipformerConfig):
        return config
    if isinstance(config, str):
        return get_preset(config)
    if isinstance(config, dict):
        return config_from_dict(ZipformerConfig, config)
    raise TypeError(f"expected ZipformerConfig, dict or preset name, got {type(config).__name__}")
