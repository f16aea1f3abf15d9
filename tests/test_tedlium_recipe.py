"""The TED-LIUM recipe (Speech-FT with HuBERT): the miniature release in the real layout
(NIST SPHERE talks, STM lines with segment times, TED-LIUM's tokenisation and
``ignore_time_segment_in_scoring``), its parser and what it must count or name (a segment
outside its audio, a reversed one, a talk without audio, a malformed line), the speaker-probe
halves, a CTC head on a head-less HuBERT, the merge that keeps a fresh head, the probe on a
wav2vec2/HuBERT encoder, a wrong model folder, and the --smoke recipe end to end."""

import argparse
import json
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


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_mini_tedlium(tmp_path_factory.mktemp("ted"))


@pytest.fixture
def copy(release, tmp_path):
    out = tmp_path / "TEDLIUM_release-3"
    shutil.copytree(release, out)
    return out


def test_the_miniature_has_the_legacy_layout_and_stm_lines(release):
    import soundfile as sf

    for split, (talks, segs) in TED_SIZES.items():
        sphs = sorted((release / "legacy" / split / "sph").glob("*.sph"))
        stms = sorted((release / "legacy" / split / "stm").glob("*.stm"))
        assert len(sphs) == len(stms) == talks and [p.stem for p in sphs] == [p.stem for p in stms]
        info = sf.info(sphs[0])
        assert info.format == "NIST" and info.samplerate == 16000
        lines = stms[0].read_text().splitlines()
        assert sum(IGNORE in line for line in lines) == 1 and len(lines) == segs + 1
        starts = [parse_stm_line(line)[2] for line in lines]
        assert starts == sorted(starts) and parse_stm_line(lines[-1])[3] <= info.duration + 0.01
    text = " ".join(p.read_text() for p in release.rglob("*.stm"))
    assert " 're " in text and "<unk>" in text and "<o,f0,male>" in text


def test_prepare_gives_one_cut_per_scored_segment_with_kaldi_style_text(release, tmp_path):
    from speechadapt.data.manifests import open_manifest

    reports = prepare_tedlium(release, ["dev", "test"], tmp_path / "m")
    talks, segs = TED_SIZES["test"]
    assert reports["test"].kept == talks * segs and reports["test"].ignored == talks and not reports["test"].skipped
    cuts = list(open_manifest(tmp_path / "m" / "tedlium_cuts_test.jsonl.gz"))
    texts = [c.supervisions[0].text for c in cuts]
    assert len(cuts) == talks * segs and not any("<unk>" in t or " 're" in t for t in texts)
    assert any("they're" in t for t in texts)
    cut = cuts[1]
    assert cut.id == cut.supervisions[0].id and cut.supervisions[0].speaker == cut.recording_id
    assert cut.start > 0 and cut.supervisions[0].start == 0
    with sphere_readable():
        audio = cut.load_audio()
    assert audio.shape == (1, cut.num_samples)


def test_bad_segments_are_counted_with_their_line_and_a_malformed_line_is_named(copy):
    stm = sorted((copy / "legacy" / "test" / "stm").glob("*.stm"))[0]
    talk = stm.stem
    lines = stm.read_text().splitlines()
    lines.append(f"{talk} 1 {talk} 50.00 52.00 <o,f0,male> beyond the end of the talk")
    lines.append(f"{talk} 1 {talk} 3.00 2.00 <o,f0,male> ends before it starts")
    lines.append(f"OtherTalk_2099 1 OtherTalk_2099 1.00 2.00 <o,f0,male> no such talk")
    stm.write_text("\n".join(lines) + "\n")
    _, sups, report = prepare_split(copy, "test")
    assert report.skipped == {"segment outside its audio": 1, "reversed or empty segment": 1,
                              "talk without audio": 1}
    assert f"{stm}:{len(lines) - 2}" in report.examples["segment outside its audio"][0]
    assert len(sups) == report.kept and report.rows == report.kept + 3
    with pytest.raises(SystemExit, match="3 of 9 rows skipped"):
        report.check(0.01)
    stm.write_text(lines[0] + "\n" + f"{talk} 1 {talk} 1.0\n")
    with pytest.raises(ValueError, match=rf"{stm.name}:2: expected"):
        prepare_split(copy, "test")
    with pytest.raises(FileNotFoundError, match="no TED-LIUM split 'eval'"):
        prepare_split(copy, "eval")


def test_speaker_halves_share_every_speaker(release, tmp_path):
    from speechadapt.data.manifests import open_manifest

    prepare_tedlium(release, ["test"], tmp_path / "m")
    first, second, note = speaker_halves(open_manifest(tmp_path / "m" / "tedlium_cuts_test.jsonl.gz"))
    speakers = lambda cuts: {c.supervisions[0].speaker for c in cuts}  # noqa: E731
    assert speakers(first) == speakers(second) and note is None
    assert not {c.id for c in first} & {c.id for c in second}


def test_a_ctc_head_is_added_to_a_headless_encoder_and_a_whisper_folder_refused(tmp_path):
    from transformers import HubertConfig, HubertModel

    from speechadapt.models.hf.fixtures import make_tiny_whisper
    from speechadapt.models.hf.loading import load_hf_ctc

    enc = tmp_path / "hubert-base"
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(16, 16), conv_kernel=(10, 8), conv_stride=(5, 4),
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)).save_pretrained(enc)
    script = ROOT / "egs" / "tedlium" / "local" / "add_ctc_head.py"
    out = tmp_path / "ctc"
    subprocess.run([sys.executable, str(script), "--encoder-dir", str(enc), "--out-dir", str(out)], check=True,
                   capture_output=True)
    model = load_hf_ctc(out)
    assert model.vocab_size == 32 and model.blank_id == 0 and model.method_name == "hubert-ctc"
    assert model.encode_texts(["it's a test"])[0]
    bad = subprocess.run([sys.executable, str(script), "--encoder-dir", str(make_tiny_whisper(tmp_path / "w")),
                          "--out-dir", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode != 0 and "model_type 'whisper', expected a HuBERT or wav2vec2 encoder" in bad.stderr


def test_the_smoke_recipe_runs_every_stage_fine_tunes_merges_and_probes(tmp_path):
    from test_commonvoice_recipe import read_records, run_smoke

    exp = run_smoke("tedlium", tmp_path)
    stages = [line.split("\t")[1] for line in (exp / "stage_times.tsv").read_text().splitlines()]
    assert stages == ["0", "1", "2", "9", "50", "51", "52", "55", "90"]
    records = read_records(exp)
    tests = {(r["method"], r["test_set"]) for r in records if r["extra"].get("family") in ("forgetting", "merge")}
    for method in ("pre-trained", "plain-ft", "stable-ft", "plain-ft+merge", "speech-ft"):
        assert {(method, "test"), (method, "test-clean")} <= tests, method
    stable = next(r for r in records if r["method"] == "stable-ft")["extra"]
    assert stable["freeze_frontend"] and stable["upstream_held_steps"] == 1
    sweep = [json.loads(line) for line in (exp / "forget" / "merge_stable_ft" / "sweep.jsonl").read_text().splitlines()]
    assert [p["alpha"] for p in sweep] == [0.0, 0.5, 1.0]
    merged = torch.load(exp / "forget" / "merge_stable_ft" / "merged.pt", weights_only=True)["model"]
    tuned = torch.load(exp / "forget" / "stable_ft" / "best.pt", weights_only=True)["model"]
    assert torch.equal(merged["model.lm_head.weight"], tuned["model.lm_head.weight"])  # the head whole
    probes = {r["method"] for r in records if r["extra"].get("task") == "speaker-probe"}
    assert probes == {"pre-trained", "speech-ft"}


@pytest.mark.gpu
def test_real_size_hubert_base_ctc_step(tmp_path):
    """HuBERT-base shapes (random weights) + a CTC head: one AdamW step on 200 s of audio."""
    import time

    from speechadapt.data.batch import SpeechBatch
    from speechadapt.models.hf.fixtures import make_tiny_ctc
    from speechadapt.models.hf.loading import load_hf_ctc

    base = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, feat_extract_norm="group",
                do_stable_layer_norm=False)
    model = load_hf_ctc(make_tiny_ctc(tmp_path / "hubert", kind="hubert", **base), device="cuda").train()
    n = 20
    batch = SpeechBatch(torch.randn(n, 160000) * 0.1, torch.full((n,), 160000), ["SO WE BEGAN THE TALK"] * n,
                        [f"u{i}" for i in range(n)], [10.0] * n, "waveform")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, info = model.compute_loss(batch)
    (loss / info["frames"]).backward()
    optimizer.step()
    torch.cuda.synchronize()
    print(f"\nHuBERT-base shapes + CTC, batch {n} x 10 s: {time.time() - start:.2f} s/step, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    assert torch.isfinite(loss)
