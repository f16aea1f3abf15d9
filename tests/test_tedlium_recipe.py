"""The TED-LIUM recipe (Speech-FT with HuBERT): the miniature release in the real layout
(NIST SPHERE talks, STM lines with segment times, TED-LIUM's tokenisation and
``ignore_time_segment_in_scoring``), its parser and what it must count or name (a segment
outside its audio, a reversed one, a talk without audio, a malformed line), the speaker-probe
halves, a CTC head on a head-less HuBERT, the merge that keeps a fresh head, the probe on a
wav2vec2/HuBERT encoder, a wrong model folder, and the --smoke recipe end to end."""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechadapt.data.corpora.miniature import TED_SIZES, write_mini_tedlium
from speechadapt.data.corpora.tedlium import (IGNORE, parse_stm_line, prepare_split, prepare_tedlium,
                                              speaker_halves, sphere_readable)

ROOT = Path(__file__).resolve().parents[1]


def test_the_probe_reads_a_hubert_encoder_and_the_head_reads_the_same_frames(tmp_path):
    from speechadapt.models.hf.fixtures import make_tiny_ctc
    from speechadapt.models.hf.loading import load_hf_ctc

    model = load_hf_ctc(make_tiny_ctc(tmp_path / "h", kind="hubert")).eval()
    x, lens = torch.randn(2, 8000), torch.tensor([8000, 5000])
    with torch.no_grad():
        hidden, out_lens = model.encode(x, lens)
        logits, logit_lens = model.ctc_logits(x, lens)
        assert torch.allclose(model.model.lm_head(hidden), logits, atol=1e-5)
    assert torch.equal(out_lens, logit_lens) and hidden.shape[:2] == logits.shape[:2]


def test_merge_takes_a_fresh_head_whole_from_the_finetuned_model():
    from speechadapt.bin import merge

    base = {"enc.w": torch.zeros(3), "lm_head.weight": torch.zeros(2)}
    tuned = {"enc.w": torch.ones(3), "lm_head.weight": torch.full((2,), 5.0)}
    m = merge.Merger.__new__(merge.Merger)
    m.base, m.finetuned, m.names = base, [tuned], ["ft"]
    m.args = argparse.Namespace(include=[], exclude=[], keep_extra_keys=False, allow_extrapolation=False,
                                from_finetuned=["^lm_head\\."])
    state = m.merged(0.25)
    assert torch.allclose(state["enc.w"], torch.full((3,), 0.25)) and torch.equal(state["lm_head.weight"], tuned[
        "lm_head.weight"])
    m.args.from_finetuned = []
    assert torch.allclose(m.merged(0.25)["lm_head.weight"], torch.full((2,), 1.25))  # as before by default
