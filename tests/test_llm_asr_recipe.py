"""The LLM-ASR entry points end to end on a miniature fbank corpus in the recipe's
on-disk layout: train (MoSE, two different encoders) -> decode from averaged epochs."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from speechadapt.bin import decode_llm_asr, train_llm_asr
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.hf.fixtures import make_tiny_qwen2
from speechadapt.models.zipformer import get_preset

TEXTS = ["turn on the lights", "call alice now", "play some music", "open the door",
         "set an alarm for seven", "what time is it", "call bob", "stop the music"]


def write_fbank_split(root, split, texts, seed):
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    from speechadapt.data.features import featurise_split

    rng = np.random.default_rng(seed)
    recordings, supervisions = [], []
    for i, text in enumerate(texts):
        path = root / "wav" / f"{split}-{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * (1.0 + 0.2 * (i % 4))))).astype(np.float32), 16000)
        rec = Recording.from_file(path, recording_id=f"{split}-{i}")
        recordings.append(rec)
        supervisions.append(SupervisionSegment(f"{split}-{i}", rec.id, 0.0, rec.duration, text=text))
    cuts = CutSet.from_manifests(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions))
    featurise_split(cuts, root / "fbank", split)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("synth")
    write_fbank_split(root, "source_train", TEXTS, 0)
    write_fbank_split(root, "source_dev", TEXTS[:2], 1)
    write_fbank_split(root, "source_test", TEXTS[2:5], 2)
    llm_dir = make_tiny_qwen2(root / "qwen2", TEXTS, tokenizer_vocab_size=300, hidden_size=64, intermediate_size=128)
    ckpts = []
    for seed in (0, 1):  # two encoders that differ (seed)
        torch.manual_seed(seed)
        ckpts.append(root / f"ctc{seed}" / "epoch-2-avg-1.pt")
        ckpts[-1].parent.mkdir()
        torch.save({"model": ZipformerCtc(get_preset("tiny"), vocab_size=40).state_dict()}, ckpts[-1])
    return root, llm_dir, ckpts


def test_train_then_decode_mose(recipe):
    root, llm_dir, ckpts = recipe
    model = ["--llm-dir", str(llm_dir), "--encoder-ckpt", *map(str, ckpts), "--encoder-preset", "tiny",
             "--lora-r", "4", "--lora-alpha", "8"]
    data = ["--manifest-dir", str(root / "fbank"), "--max-duration", "6", "--num-workers", "0",
            "--enable-spec-aug", "false", "--num-buckets", "2"]
    exp = root / "exp"
    train_llm_asr.main(["--exp-dir", str(exp), *model, *data, "--num-epochs", "2", "--base-lr", "1e-3",
                        "--mose-slot-dropout", "0.3", "--average-period", "1", "--tensorboard", "false"])
    saved = torch.load(exp / "epoch-2.pt", weights_only=True)
    assert saved["params"]["encoder_ckpts"] == [str(p) for p in ckpts]
    assert saved["params"]["llm_asr_config"]["mose_slot_dropout"] == 0.3
    assert not any(k.startswith("encoders.") for k in saved["model"])
    assert any(k.startswith("projectors.1.") for k in saved["model"])

    wers = decode_llm_asr.main(["--exp-dir", str(exp), "--epoch", "2", "--avg", "1", "--use-averaged-model", "true",
                                *model, *data, "--test-sets", "source_test", "--max-new-tokens", "8"])
    key = "greedy-epoch-2-avg-1-use-averaged-model"
    assert set(wers) == {"source_test"} and wers["source_test"] >= 0
    for kind in ("recogs", "errs", "wer-summary"):
        assert (exp / "decode" / f"{kind}-source_test-{key}.txt").is_file()
    recogs = (exp / "decode" / f"recogs-source_test-{key}.txt").read_text().splitlines()
    assert len(recogs) == 2 * 3  # ref + hyp line per utterance
    record = json.loads((exp / "results.jsonl").read_text().splitlines()[-1])
    assert record["method"] == "mose" and record["test_set"] == "source_test"
    assert record["wer"] == pytest.approx(wers["source_test"], abs=1e-3)
    assert record["ref_words"] == sum(len(t.split()) for t in TEXTS[2:5])

    beam = decode_llm_asr.main(["--exp-dir", str(exp), "--checkpoint", str(exp / "epoch-2.pt"), *model, *data,
                                "--test-sets", "source_test", "--decoding-method", "beam", "--beam-size", "2",
                                "--max-new-tokens", "8"])
    assert (exp / "decode" / "errs-source_test-beam2-epoch-2.txt").is_file() and beam["source_test"] >= 0
