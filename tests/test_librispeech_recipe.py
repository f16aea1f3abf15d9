"""The LibriSpeech recipe's data path on a miniature tree in the real on-disk layout:
what the parser faces in the release (upper case, apostrophes, speakers with several
chapters, files other than flac, SPEAKERS.TXT), what it must name (a missing part, a
flac that does not decode, an id of another chapter) or skip and count (a transcript
line without audio), the training parts combined, icefall's upper-case BPE models, and
the stand-in icefall checkpoints. A GPU-marked test runs one real-size training step."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "local"))
sys.path.insert(0, str(ROOT / "egs" / "librispeech" / "local"))
import parse_librispeech  # noqa: E402
from make_mini_librispeech import PARTS, write_tree  # noqa: E402


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("ls") / "LibriSpeech")


@pytest.fixture
def copy(tree, tmp_path):
    out = tmp_path / "LibriSpeech"
    shutil.copytree(tree, out)
    return out


def test_the_miniature_tree_has_the_release_layout(tree):
    assert (tree / "SPEAKERS.TXT").is_file() and (tree / "CHAPTERS.TXT").is_file()
    for part in PARTS:
        for trans in (tree / part).rglob("*.trans.txt"):
            speaker, chapter = trans.parent.parent.name, trans.parent.name
            assert trans.name == f"{speaker}-{chapter}.trans.txt"
            for line in trans.read_text().splitlines():
                utt, text = line.split(" ", 1)
                assert (trans.parent / f"{utt}.flac").is_file() and text == text.upper()


def test_parse_keeps_case_apostrophes_speakers_chapters_and_sexes(tree):
    sexes = parse_librispeech.read_speaker_sexes(tree)
    rows, report = parse_librispeech.parse_part(tree, "train-clean-100", sexes)
    speakers, chapters, utts = PARTS["train-clean-100"]
    assert report["rows"] == len(rows) == speakers * chapters * utts and report["missing_audio"] == 0
    assert report["speakers"] == speakers and report["chapters"] == speakers * chapters
    assert any("'" in r["text"] for r in rows) and all(r["text"] == r["text"].upper() for r in rows)
    assert all(r["gender"] in ("M", "F") and r["split"] == "train-clean-100" for r in rows)
    assert all(Path(r["audio"]).name == r["id"] + ".flac" and r["id"].startswith(r["voice"] + "-") for r in rows)


def test_missing_audio_is_skipped_and_counted_other_files_are_counted(copy, tmp_path):
    rows, _ = parse_librispeech.parse_part(copy, "dev-other", {})
    gone = Path(rows[0]["audio"])
    gone.unlink()
    (gone.parent / "notes.txt").write_text("not audio")
    shutil.copy(rows[1]["audio"], gone.parent / "999-0-0000.flac")  # a flac no transcript names
    rows2, report = parse_librispeech.parse_part(copy, "dev-other", {})
    assert len(rows2) == len(rows) - 1 and report["missing_audio"] == 1 and report["missing_audio_ids"] == [rows[0]["id"]]
    assert report["other_files"] == 1 and report["untranscribed_flac"] == 1
    out = tmp_path / "meta"
    parse_librispeech.main(["--corpus-dir", str(copy), "--parts", "dev-other", "--out-dir", str(out),
                            "--max-missing", "0.5"])
    assert len((out / "dev-other.jsonl").read_text().splitlines()) == len(rows) - 1
    with pytest.raises(SystemExit, match="dev-other: 1 of 4 utterances have no audio"):
        parse_librispeech.main(["--corpus-dir", str(copy), "--parts", "dev-other", "--out-dir", str(out),
                                "--max-missing", "0"])


def test_a_missing_part_and_a_foreign_id_are_named(copy):
    with pytest.raises(FileNotFoundError, match=r"'train-other-500' not found \(found: \['dev-clean'"):
        parse_librispeech.parse_part(copy, "train-other-500", {})
    trans = next((copy / "test-clean").rglob("*.trans.txt"))
    trans.write_text(trans.read_text() + "1-2-0003 A LINE OF ANOTHER CHAPTER\n")
    with pytest.raises(ValueError, match=rf"{trans.name}:\d+: id '1-2-0003' does not belong"):
        parse_librispeech.parse_part(copy, "test-clean", {})


def test_a_flac_that_does_not_decode_is_named_by_the_manifest_stage(copy, tmp_path):
    from speechadapt.data.manifests import AudioFileError, write_split_manifests

    rows, _ = parse_librispeech.parse_part(copy, "test-other", {})
    Path(rows[2]["audio"]).write_bytes(b"fLaC" + b"\x00" * 64)
    with pytest.raises(AudioFileError, match=rows[2]["id"] + ".flac"):
        write_split_manifests(rows, "test-other", tmp_path / "manifests", "librispeech")


def test_training_parts_are_combined_shuffled_and_counted(tmp_path):
    fbank = tmp_path / "fbank"
    fbank.mkdir()
    for split, ids in (("a", ["x1", "x2", "x3"]), ("b", ["y1", "y2"])):
        with gzip.open(fbank / f"p_cuts_{split}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"id": i}) + "\n" for i in ids)
    cmd = [sys.executable, str(ROOT / "local" / "combine_cuts.py"), "--fbank-dir", str(fbank), "--prefix", "p",
           "--splits", "a,b", "--out-split", "all"]
    subprocess.run(cmd, check=True, capture_output=True)
    with gzip.open(fbank / "p_cuts_all.jsonl.gz", "rt") as f:
        ids = [json.loads(line)["id"] for line in f]
    assert sorted(ids) == ["x1", "x2", "x3", "y1", "y2"]
    shutil.copy(fbank / "p_cuts_a.jsonl.gz", fbank / "p_cuts_c.jsonl.gz")
    bad = subprocess.run(cmd[:-4] + ["--splits", "a,c", "--out-split", "dup"], capture_output=True, text=True)
    assert bad.returncode != 0 and "'x1' already read" in bad.stderr


def test_an_upper_case_bpe_model_like_icefalls_encodes_any_case(tmp_path):
    import sentencepiece as spm

    from speechadapt.models.ctc_base import BpeTokenizer

    text = tmp_path / "text.txt"
    text.write_text("\n".join(["TURN ON THE LIGHTS", "CALL ALICE NOW", "IT'S SEVEN O'CLOCK", "OPEN THE DOOR"] * 20))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "bpe"), vocab_size=24,
                                   model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1)
    tokenizer = BpeTokenizer(tmp_path / "bpe.model")
    assert tokenizer.upper_case
    ids = tokenizer.encode(["turn on the lights", "IT'S SEVEN"])
    assert tokenizer.sp.unk_id() not in ids[0] + ids[1] and not tokenizer.unknown_characters("call alice")
    assert tokenizer.decode(ids[0]) == "TURN ON THE LIGHTS"


def test_stand_in_icefall_checkpoints_load_as_encoders_and_a_wrong_preset_is_named(tmp_path):
    from make_tiny_icefall_encoders import write_checkpoint

    from speechadapt.models.llm_asr_build import load_frozen_encoder

    path = write_checkpoint(tmp_path, "transducer", 0)
    state = torch.load(path, weights_only=True)["model"]
    assert any(k.startswith("joiner.") for k in state) and any(k.startswith("encoder_embed.") for k in state)
    encoder = load_frozen_encoder(path, "tiny")
    assert not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(Exception, match="does not fit the Zipformer preset 'large'"):
        load_frozen_encoder(path, "large")


@pytest.mark.gpu
def test_one_real_size_training_step_in_bf16_and_its_memory(tmp_path):
    """Zipformer-large + Qwen2-1.5B shapes (random weights), LoRA r 64, one step on 200 s of audio."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from speechadapt.data.batch import SpeechBatch
    from speechadapt.models.hf.fixtures import make_tiny_qwen2
    from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel
    from speechadapt.models.llm_asr_build import load_llm_for_asr
    from speechadapt.models.zipformer import ZipformerEncoder, get_preset

    _, tokenizer = load_llm_for_asr(make_tiny_qwen2(tmp_path / "tok"))
    config = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096)
    with torch.device("cuda"):
        llm = Qwen2ForCausalLM(config).to(torch.bfloat16)
        encoder = ZipformerEncoder(get_preset("large")).eval()
    model = LlmAsrModel([encoder], llm, tokenizer, LlmAsrConfig(lora_r=64, lora_alpha=16)).cuda()
    n, seconds = 20, 10.0  # 200 s: max-duration 200
    frames = int(100 * seconds)
    batch = SpeechBatch(torch.randn(n, frames, 80), torch.full((n,), frames), ["turn on the lights"] * n,
                        [f"u{i}" for i in range(n)], [seconds] * n)
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, info = model.compute_loss(batch)
    (loss / info["frames"]).backward()
    peak_gb = torch.cuda.max_memory_allocated() / 2**30
    print(f"\nreal-size LLM-ASR step, batch {n} x {seconds} s, bf16: loss {float(loss):.1f}, peak {peak_gb:.1f} GiB")
    assert torch.isfinite(loss) and any(p.grad is not None for p in model.parameters() if p.requires_grad)
    hyps = model.transcribe(batch)
    assert len(hyps) == n


def test_musan_wavs_become_a_noise_split_and_on_the_fly_cuts_need_no_fbank(tree, tmp_path):
    import soundfile as sf

    from speechadapt.data.datamodule import AsrDataModule, DataConfig

    musan = tmp_path / "musan"
    for kind in ("noise", "music"):
        (musan / kind / "free-sound").mkdir(parents=True)
        sf.write(musan / kind / "free-sound" / f"{kind}-0001.wav", 0.01 * torch.randn(16000).numpy(), 16000)
    meta = tmp_path / "meta"
    parse_librispeech.main(["--corpus-dir", str(tree), "--parts", "dev-clean", "--out-dir", str(meta),
                            "--musan-dir", str(musan)])
    rows = [json.loads(line) for line in (meta / "musan.jsonl").read_text().splitlines()]
    assert sorted(r["noise_type"] for r in rows) == ["music", "noise"]
    run = [sys.executable, str(ROOT / "local" / "prepare_manifests.py"), "--audio-dir", str(meta), "--manifest-dir",
           str(tmp_path / "manifests"), "--prefix", "librispeech", "--splits", "dev-clean", "--noise-splits", "musan"]
    subprocess.run(run, check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / "local" / "compute_fbank.py"), "--manifest-dir",
                    str(tmp_path / "manifests"), "--fbank-dir", str(tmp_path / "fbank"), "--prefix", "librispeech",
                    "--splits", "dev-clean", "--no-features", "true"], check=True, capture_output=True)
    assert not list((tmp_path / "fbank").glob("*.lca"))  # nothing stored
    data = AsrDataModule(DataConfig(manifest_dir=str(tmp_path / "fbank"), cuts_prefix="librispeech",
                                    on_the_fly_feats=True, num_workers=0, bucketing_sampler=False))
    batch = next(iter(data.test_dataloaders(data.load_cuts("dev-clean"))))
    assert batch.inputs.shape[-1] == 80 and len(batch) == 4
