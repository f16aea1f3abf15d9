"""The Common Voice recipe: the miniature release in the real layout (TSV columns, 48 kHz
mp3 clips), its parser and what it must count or name (a row without its clip, an mp3 that
does not decode, an empty sentence, a TSV without the required columns, older releases'
columns), Whisper in another language than English, a wrong model folder, and the --smoke
recipe end to end. A GPU-marked test times one real-size ZO-ASR and one AdamW step."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechadapt.data.corpora.commonvoice import TSV_COLUMNS, prepare_commonvoice, prepare_split, read_tsv
from speechadapt.data.corpora.miniature import CV_SIZES, write_mini_commonvoice

ROOT = Path(__file__).resolve().parents[1]


def test_the_tiny_whisper_speaks_hindi_with_the_real_prefix(tmp_path):
    from speechadapt.models.hf.fixtures import make_tiny_whisper
    from speechadapt.models.hf.loading import load_whisper_adapter

    model = load_whisper_adapter(make_tiny_whisper(tmp_path / "w"), language="hi")
    tokens = model.tokenizer.convert_ids_to_tokens(model.prefix_ids)
    assert tokens == ["<|startoftranscript|>", "<|hi|>", "<|transcribe|>", "<|notimestamps|>"]
    inputs, labels = model.label_ids(["नमस्ते"])
    assert inputs[0, 1].item() == model.tokenizer.convert_tokens_to_ids("<|hi|>")
    assert len(model.generate([torch.zeros(16000)], max_new_tokens=3)) == 1
