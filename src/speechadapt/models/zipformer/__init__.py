"""Zipformer2 encoder compatible with icefall checkpoints, in pure torch (no k2).

Public API:
- ``ZipformerConfig`` (icefall flag names) / ``get_preset(name, **overrides)`` for
  ``tiny`` (tests, synth corpus), ``small``, ``medium``, ``large`` (icefall's values).
- ``ZipformerEncoder(config)``: children ``encoder_embed`` and ``encoder`` (state_dict
  keys equal icefall's); ``forward(x (N,T,80), x_lens) -> (out (N,T',D), out_lens)``,
  ``output_dim`` = D = max(encoder_dim). ``ZipformerBase`` is the shared parent of the
  encoder and of ``speechadapt.models.ctc.ZipformerCtc``.
- ``load_icefall_checkpoint(path, model)``, ``read_icefall_state_dict(path)``,
  ``infer_preset(state_dict)``: restricted loading of icefall ``pretrained.pt`` /
  ``epoch-N.pt`` files (see ``checkpoint.py``).

Training-time regularisers (dropout, layer/module skipping, feature masking,
positional-encoding skipping) follow icefall's ScheduledFloat schedules of the batch
count. The training loop calls ``set_batch_count(model, batch_idx_train)`` before each
step; every schedule then reads ``batch_idx_train * config.schedule_scale``. icefall's
schedules are written for tens of thousands of batches (most end by 4,000-20,000), so
a short run sets e.g. ``schedule_scale = 20000 / num_updates`` to walk them in full.
``config.regularize = False`` (or ``model.set_regularize(False)``) turns them all off.
Without any ``set_batch_count`` call the schedules use icefall's defaults (mostly 0).
Eval mode never applies any of them: it is exactly icefall's inference.
DDP: use ``find_unused_parameters=True`` as icefall does (early in training the
positional projection is skipped in random steps).
"""

from speechadapt.models.zipformer.checkpoint import (
    infer_preset,
    load_icefall_checkpoint,
    read_icefall_state_dict,
)
from speechadapt.models.zipformer.config import (
    PRESET_NAMES,
    ZipformerConfig,
    config_from_any,
    get_preset,
)
from speechadapt.models.zipformer.encoder import ZipformerBase, ZipformerEncoder
from speechadapt.models.zipformer.scaling import ScheduledFloat, set_batch_count

__all__ = [
    "PRESET_NAMES",
    "ScheduledFloat",
    "ZipformerConfig",
    "ZipformerBase",
    "ZipformerEncoder",
    "config_from_any",
    "get_preset",
    "infer_preset",
    "load_icefall_checkpoint",
    "read_icefall_state_dict",
    "set_batch_count",
]
