"""Zipformer2 layers and stacks, and ``ZipformerEncoder`` (front end + stacks).

Module names and nesting mirror icefall's so that state_dict keys are identical:
``encoder_embed.*`` (Conv2dSubsampling) and ``encoder.*`` (Zipformer2), where
``encoder.encoders.i`` is a Zipformer2Encoder (``.layers.j``) for a stack at the base
rate and a DownsampledZipformer2Encoder (``.downsample``, ``.encoder.layers.j``,
``.out_combiner``) otherwise; ``encoder.downsample_output`` halves the output rate.
"""

import copy
import random
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from speechadapt.models.zipformer.attention import (
    CompactRelPositionalEncoding,
    NonlinAttention,
    RelPositionMultiheadAttentionWeights,
    SelfAttention,
)
from speechadapt.models.zipformer.config import ZipformerConfig, config_from_any
from speechadapt.models.zipformer.modules import (
    BypassModule,
    ConvolutionModule,
    FeedforwardModule,
    SimpleDownsample,
    SimpleUpsample,
)
from speechadapt.models.zipformer.scaling import (
    BiasNorm,
    FloatLike,
    ScheduledFloat,
    coin,
    constant_rate,
    convert_num_channels,
    make_pad_mask,
    sequence_mask,
)
from speechadapt.models.zipformer import scaling
from speechadapt.models.zipformer.subsampling import Conv2dSubsampling


def _layer_schedules() -> dict:
    # icefall's per-layer training schedules (batch counts before schedule_scale).
    return dict(
        attention_skip_rate=ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000.0, 0.0)),
        conv_skip_rate=ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000.0, 0.0)),
        const_attention_rate=ScheduledFloat((0.0, 0.25), (4000.0, 0.025)),
        ff2_skip_rate=ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0)),
        ff3_skip_rate=ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0)),
    )


def repeat_last_valid(x: Tensor, padding_mask: Tensor) -> Tensor:
    """x (T, N, C): padded frames (mask (N, T) True) become each input's last valid frame.

    A lone input is padded this way by SimpleDownsample, so downsampling groups that
    straddle the end then see the same frames in a batch as alone.
    """
    lengths = (~padding_mask).sum(dim=1).clamp(min=1)
    last = x[lengths - 1, torch.arange(x.shape[1], device=x.device)]  # (N, C)
    return torch.where(padding_mask.t().unsqueeze(-1), last.unsqueeze(0), x)


def _masked(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    return x if mask is None else x * mask


class Zipformer2EncoderLayer(nn.Module):
    """ff1, nonlin-attn, self-attn1, conv1, ff2, mid-bypass, self-attn2, conv2, ff3,
    BiasNorm, bypass; one set of attention weights serves all three attention uses."""

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int,
                 pos_head_dim: int, value_head_dim: int, feedforward_dim: int,
                 dropout: FloatLike, cnn_module_kernel: int, causal: bool = False):
        super().__init__()
        self.bypass = BypassModule(embed_dim, skip_rate=0.0)  # skip rate set by the stack
        self.bypass_mid = BypassModule(embed_dim)
        for name, schedule in _layer_schedules().items():
            setattr(self, name, schedule)
        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim, pos_dim=pos_dim, num_heads=num_heads, query_head_dim=query_head_dim,
            pos_head_dim=pos_head_dim, dropout=0.0,
        )
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        # Unused in icefall's forward too; kept so checkpoints load strictly. Frozen so
        # DDP and optimisers do not treat it as a trainable parameter without gradient.
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5), requires_grad=False)
        self.norm = BiasNorm(embed_dim)

    def _rate(self, schedule: ScheduledFloat) -> float:
        return float(schedule) if self.training else 0.0

    def _nonlin_weights(self, attn_weights: Tensor) -> Tensor:
        first_head = attn_weights[0:1]
        if self.training and coin(float(self.const_attention_rate)):
            # Occasionally replace by uniform weights over the unmasked keys.
            nonzero = (first_head > 0.0).to(first_head.dtype)
            first_head = nonzero / nonzero.sum(dim=-1, keepdim=True)
        return first_head

    def forward(self, src: Tensor, pos_emb: Tensor, chunk_size: int = -1,
                attn_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        src_orig = src
        batch_size = src.shape[1]
        attn_weights = self.self_attn_weights(src, pos_emb=pos_emb, attn_mask=attn_mask,
                                              key_padding_mask=src_key_padding_mask)
        src = src + self.feed_forward1(src)

        attn_skip = sequence_mask(batch_size, self._rate(self.attention_skip_rate),
                                      src, self.training)
        na = self.nonlin_attention(src, self._nonlin_weights(attn_weights))
        src = src + _masked(na, attn_skip)
        src = src + _masked(self.self_attn1(src, attn_weights), attn_skip)
        src = src + self._conv(self.conv_module1, src, chunk_size, src_key_padding_mask)
        src = src + _masked(self.feed_forward2(src),
                            sequence_mask(batch_size, self._rate(self.ff2_skip_rate), src,
                                          self.training))
        src = self.bypass_mid(src_orig, src)

        src = src + _masked(self.self_attn2(src, attn_weights), attn_skip)
        src = src + self._conv(self.conv_module2, src, chunk_size, src_key_padding_mask)
        src = src + _masked(self.feed_forward3(src),
                            sequence_mask(batch_size, self._rate(self.ff3_skip_rate), src,
                                          self.training))
        src = self.norm(src)
        return self.bypass(src_orig, src)

    def _conv(self, module: ConvolutionModule, src: Tensor, chunk_size: int,
              src_key_padding_mask: Optional[Tensor]) -> Tensor:
        out = module(src, src_key_padding_mask=src_key_padding_mask, chunk_size=chunk_size)
        skip = sequence_mask(src.shape[1], self._rate(self.conv_skip_rate), src, self.training)
        return _masked(out, skip)


class Zipformer2Encoder(nn.Module):
    """A stack of layers sharing one positional encoding, with per-layer skip warm-up."""

    def __init__(self, encoder_layer: Zipformer2EncoderLayer, num_layers: int, pos_dim: int,
                 warmup_begin: float, warmup_end: float,
                 initial_layerdrop_rate: float = 0.5, final_layerdrop_rate: float = 0.05):
        super().__init__()
        if not 0 <= warmup_begin <= warmup_end:
            raise ValueError(f"bad warm-up interval ({warmup_begin}, {warmup_end})")
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim, dropout_rate=0.15,
                                                        length_factor=1.0)
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers
        # Layer i's skip rate falls from initial to final over its slice of the warm-up.
        delta = (warmup_end - warmup_begin) / num_layers
        for i, layer in enumerate(self.layers):
            begin = warmup_begin + i * delta
            layer.bypass.skip_rate = ScheduledFloat(
                (begin, initial_layerdrop_rate), (begin + delta, final_layerdrop_rate),
                default=0.0,
            )

    def forward(self, src: Tensor, chunk_size: int = -1,
                feature_mask: Union[Tensor, float] = 1.0, attn_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        pos_emb = self.encoder_pos(src)
        output = src * feature_mask
        for layer in self.layers:
            output = layer(output, pos_emb, chunk_size=chunk_size, attn_mask=attn_mask,
                           src_key_padding_mask=src_key_padding_mask)
            output = output * feature_mask
        return output


class DownsampledZipformer2Encoder(nn.Module):
    """Runs a Zipformer2Encoder at 1/ds of the frame rate and combines with the input."""

    def __init__(self, encoder: Zipformer2Encoder, dim: int, downsample: int):
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = SimpleDownsample(dim, downsample)
        self.num_layers = encoder.num_layers
        self.encoder = encoder
        self.upsample = SimpleUpsample(dim, downsample)
        self.out_combiner = BypassModule(dim)

    def forward(self, src: Tensor, chunk_size: int = -1,
                feature_mask: Union[Tensor, float] = 1.0, attn_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        src_orig = src
        ds = self.downsample_factor
        if attn_mask is not None:
            attn_mask = attn_mask[::ds, ::ds]
        src = self.encoder(self.downsample(src), chunk_size=chunk_size // ds,
                           feature_mask=feature_mask, attn_mask=attn_mask,
                           src_key_padding_mask=src_key_padding_mask)
        src = self.upsample(src)[: src_orig.shape[0]]
        return self.out_combiner(src_orig, src)


class Zipformer2(nn.Module):
    """Stacks at several frame rates; the output concatenates the widest pieces.

    forward(x (T, N, C0), x_lens, src_key_padding_mask (N, T)) ->
    ((ceil(T/2), N, max(encoder_dim)), (x_lens + 1) // 2).
    """

    def __init__(self, config: ZipformerConfig):
        super().__init__()
        self.config = config
        self.encoder_dim = config.per_stack("encoder_dim")
        self.encoder_unmasked_dim = config.per_stack("encoder_unmasked_dim")
        self.downsampling_factor = config.per_stack("downsampling_factor")
        self.output_downsampling_factor = config.output_downsampling_factor
        self.pad_invariant = config.pad_invariant
        # Whole-sequence feature masking of the upper channels (icefall: 0.125).
        self.feature_mask_rate = constant_rate(0.125)
        dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1))
        self.encoders = nn.ModuleList(
            self._make_stack(config, i, dropout) for i in range(config.num_stacks)
        )
        self.downsample_output = SimpleDownsample(max(self.encoder_dim),
                                                  config.output_downsampling_factor)

    @staticmethod
    def _make_stack(config: ZipformerConfig, i: int, dropout: ScheduledFloat) -> nn.Module:
        num_stacks = config.num_stacks
        ds = config.per_stack("downsampling_factor")[i]
        layer = Zipformer2EncoderLayer(
            embed_dim=config.per_stack("encoder_dim")[i], pos_dim=config.pos_dim,
            num_heads=config.per_stack("num_heads")[i],
            query_head_dim=config.per_stack("query_head_dim")[i],
            pos_head_dim=config.per_stack("pos_head_dim")[i],
            value_head_dim=config.per_stack("value_head_dim")[i],
            feedforward_dim=config.per_stack("feedforward_dim")[i], dropout=dropout,
            cnn_module_kernel=config.per_stack("cnn_module_kernel")[i], causal=config.causal,
        )
        warmup = config.warmup_batches
        stack = Zipformer2Encoder(
            layer, config.per_stack("num_encoder_layers")[i], pos_dim=config.pos_dim,
            warmup_begin=warmup * (i + 1) / (num_stacks + 1),
            warmup_end=warmup * (i + 2) / (num_stacks + 1),
            final_layerdrop_rate=0.035 * (ds ** 0.5),
        )
        if ds == 1:
            return stack
        return DownsampledZipformer2Encoder(stack, dim=config.per_stack("encoder_dim")[i],
                                            downsample=ds)

    def _feature_masks(self, x: Tensor) -> List[Union[Tensor, float]]:
        rate = float(self.feature_mask_rate)
        if not self.training or rate <= 0.0:
            return [1.0] * len(self.encoder_dim)
        batch_size = x.shape[1]
        keep1 = (torch.rand(1, batch_size, 1, device=x.device) > rate).to(x.dtype)
        keep2 = keep1 * (torch.rand(1, batch_size, 1, device=x.device) > rate).to(x.dtype)
        masks = []
        for dim, unmasked in zip(self.encoder_dim, self.encoder_unmasked_dim):
            # Channels [u1, u2) dropped with keep1, [u2, dim) with keep2 (more often).
            mid = unmasked + (dim - unmasked) // 2
            mask = torch.ones(1, batch_size, dim, dtype=x.dtype, device=x.device)
            mask[:, :, unmasked:mid] *= keep1
            mask[:, :, mid:] *= keep2
            masks.append(mask)
        return masks

    def _chunk_info(self) -> Tuple[int, int]:
        """(chunk_size, left_context_chunks); (-1, -1) means full context."""
        if not self.config.causal:
            return -1, -1
        pick = random.choice if self.training else (lambda values: values[0])
        chunk_size = pick(self.config.chunk_size)
        if chunk_size == -1:
            return -1, -1
        left_frames = pick(self.config.left_context_frames)
        return chunk_size, max(1, left_frames // chunk_size) if left_frames >= 0 else -1

    def _attn_mask(self, seq_len: int, chunk_size: int, left_chunks: int,
                   device: torch.device) -> Optional[Tensor]:
        if chunk_size <= 0:
            return None
        if any(chunk_size % d for d in self.downsampling_factor):
            raise ValueError(f"chunk_size {chunk_size} must be a multiple of every "
                             f"downsampling factor {self.downsampling_factor}")
        chunk = torch.arange(seq_len, device=device) // chunk_size
        left = left_chunks if left_chunks >= 0 else seq_len
        # True = masked: keys in a later chunk, or too many chunks back.
        return (chunk.unsqueeze(0) > chunk.unsqueeze(1)) | (
            chunk.unsqueeze(0) < chunk.unsqueeze(1) - left
        )

    def _full_dim_output(self, outputs: List[Tensor]) -> Tensor:
        # The last stack gives the first channels; earlier, wider stacks add the rest.
        pieces = [outputs[-1]]
        cur_dim = self.encoder_dim[-1]
        for i in range(len(outputs) - 2, -1, -1):
            if self.encoder_dim[i] > cur_dim:
                pieces.append(outputs[i][..., cur_dim: self.encoder_dim[i]])
                cur_dim = self.encoder_dim[i]
        return torch.cat(pieces, dim=-1)

    def first_trainable_stack(self) -> int:
        """Index of the lowest stack with a parameter that requires grad (len if none)."""
        for i, module in enumerate(self.encoders):
            if any(p.requires_grad for p in module.parameters()):
                return i
        return len(self.encoders)

    def forward(self, x: Tensor, x_lens: Tensor, src_key_padding_mask: Optional[Tensor] = None,
                cache: Optional[dict] = None) -> Tuple[Tensor, Tensor]:
        """``cache`` (a dict kept for one batch): the output of the frozen stacks below
        the lowest trainable one is stored on the first call and reused afterwards, so
        the repeated evaluations of a zeroth-order step skip them (eval mode only)."""
        feature_masks = self._feature_masks(x)
        chunk_size, left_chunks = self._chunk_info()
        attn_mask = self._attn_mask(x.shape[0], chunk_size, left_chunks, x.device)
        fill_padding = self.pad_invariant and src_key_padding_mask is not None
        outputs, first = [], 0
        use_cache = cache is not None and not self.training
        if use_cache and "stacks" in cache:
            first, x, outputs = cache["stacks"]
            outputs = list(outputs)
        keep_at = self.first_trainable_stack() if use_cache and "stacks" not in cache else -1
        for i, module in enumerate(self.encoders):
            if i < first:
                continue
            if i == keep_at and i > 0:
                cache["stacks"] = (i, x, list(outputs))
            ds = self.downsampling_factor[i]
            x = convert_num_channels(x, self.encoder_dim[i])
            if fill_padding:
                x = repeat_last_valid(x, src_key_padding_mask)
            x = module(
                x, chunk_size=chunk_size, feature_mask=feature_masks[i],
                src_key_padding_mask=(
                    None if src_key_padding_mask is None else src_key_padding_mask[..., ::ds]
                ),
                attn_mask=attn_mask,
            )
            outputs.append(x)
        x = self._full_dim_output(outputs)
        if fill_padding:
            x = repeat_last_valid(x, src_key_padding_mask)
        x = self.downsample_output(x)
        return x, torch.div(x_lens + 1, 2, rounding_mode="floor")


class ZipformerBase(nn.Module):
    """icefall's ``encoder_embed`` + ``encoder`` children, built from a config.

    Subclasses (ZipformerEncoder, the CTC model) add their own ``forward``.
    """

    def __init__(self, config: Union[ZipformerConfig, dict, str]):
        super().__init__()
        config = config_from_any(config)
        self.config = config
        self.encoder_embed = Conv2dSubsampling(
            config.feature_dim, config.per_stack("encoder_dim")[0],
            layer1_channels=config.layer1_channels, layer2_channels=config.layer2_channels,
            layer3_channels=config.layer3_channels, pad_invariant=config.pad_invariant,
        )
        self.encoder = Zipformer2(config)
        self.output_dim = config.output_dim
        self.set_regularize(config.regularize)

    def set_regularize(self, enabled: bool) -> None:
        """Switch every training-time dropout/skip schedule on or off."""
        self.config.regularize = bool(enabled)
        for module in self.modules():
            if isinstance(module, ScheduledFloat):
                module.enabled = bool(enabled)

    def set_batch_count(self, batch_count: float) -> None:
        """The training loop's hook before each batch (``scaling.set_batch_count``)."""
        scaling.set_batch_count(self, batch_count)

    def set_schedule_batch_count(self, batch_count: Optional[float]) -> None:
        """Point every schedule at ``batch_count * config.schedule_scale`` (None: defaults)."""
        scaled = None if batch_count is None else float(batch_count) * self.config.schedule_scale
        for module in self.modules():
            if isinstance(module, ScheduledFloat):
                module.batch_count = scaled

    def encode(self, x: Tensor, x_lens: Tensor, cache: Optional[dict] = None) -> Tuple[Tensor, Tensor]:
        """x: (N, T, feature_dim), x_lens: (N,) valid frames -> ((N, T', D), (N,)).

        ``cache``: see ``Zipformer2.forward``; a fully frozen encoder's output is cached whole."""
        use_cache = cache is not None and not self.training
        if use_cache and "encoder_out" in cache:
            return cache["encoder_out"]
        out = self._encode(x, x_lens, cache if use_cache else None)
        if use_cache and not any(p.requires_grad for m in (self.encoder_embed, self.encoder) for p in m.parameters()):
            cache["encoder_out"] = out
        return out

    def _encode(self, x: Tensor, x_lens: Tensor, cache: Optional[dict]) -> Tuple[Tensor, Tensor]:
        if x.ndim != 3:
            raise ValueError(f"expected features (N, T, F), got shape {tuple(x.shape)}")
        if x_lens.ndim != 1 or x_lens.shape[0] != x.shape[0]:
            raise ValueError(f"x_lens must have shape ({x.shape[0]},), got {tuple(x_lens.shape)}")
        if int(x_lens.max()) > x.shape[1]:
            raise ValueError(f"x_lens max {int(x_lens.max())} > number of frames {x.shape[1]}")
        if int(x_lens.min()) < 9:
            raise ValueError(f"every input needs >= 9 frames, got x_lens {x_lens.tolist()}")
        if cache is not None and "embed" in cache:
            x, x_lens = cache["embed"]
        else:
            x, x_lens = self.encoder_embed(x, x_lens.to(x.device), cache)
            if cache is not None and not any(p.requires_grad for p in self.encoder_embed.parameters()):
                cache["embed"] = (x, x_lens)
        padding_mask = make_pad_mask(x_lens, max_len=x.shape[1])
        out, out_lens = self.encoder(x.permute(1, 0, 2), x_lens, padding_mask, cache=cache)
        return out.permute(1, 0, 2), out_lens


class ZipformerEncoder(ZipformerBase):
    """icefall's encoder_embed + encoder: (N, T, feature_dim) fbank -> (N, T', D).

    T' = ((T - 7) // 2 + 1) // 2 (about T/4), D = max(encoder_dim) = ``output_dim``.
    state_dict keys equal icefall's ``encoder_embed.*`` and ``encoder.*``. Non-causal
    and causal (chunked; eval uses the first chunk_size/left_context_frames value)
    configs both work. Training-time schedules: see ``scaling.set_batch_count``.
    """

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        return self.encode(x, x_lens)
