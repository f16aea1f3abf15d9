"""The speaker probe: a linear classifier that learns separable features and nothing from
shuffled labels, the same under its seed; pooled encoder features that leave the model as
it was; the entry point end to end on the mini Zipformer-CTC with a three-voice corpus
(the mini corpus has no speakers), and bad input refused with one message."""

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from speechadapt.adapt.probe import (cut_speaker, encode_labels, mean_pool, pooled_features, probe_accuracy,
                                     train_linear_probe)
from speechadapt.bin import probe
from speechadapt.data.batch import SpeechBatch
from speechadapt.decoding.scoring import read_results

from mini_corpus import PREFIX, TEXTS, data_flags  # noqa: E402 (tests/ is on sys.path)

# Three "voices": harmonic tones of distinct pitch and spectral tilt (no espeak needed).
VOICES = {"alto": (210.0, 0.6), "bass": (110.0, 0.9), "tenor": (150.0, 0.3)}


def clusters(n_per_class, num_classes=4, dim=16, seed=0, spread=0.5):
    gen = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(num_classes, dim, generator=gen)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=gen), y


# ---- the classifier ----------------------------------------------------------------
@pytest.mark.parametrize("optimizer,lr", [("adamw", 0.01), ("lbfgs", 1.0)])
def test_probe_learns_clusters_and_stays_at_chance_on_shuffled_labels(optimizer, lr):
    x, y = clusters(30, seed=0)
    x_test, y_test = clusters(50, seed=0)  # same centres (same seed), fresh points below
    x_test = x_test + 0.5 * torch.randn(x_test.shape, generator=torch.Generator().manual_seed(9))
    model = train_linear_probe(x, y, 4, epochs=200, lr=lr, weight_decay=0.01, seed=0, optimizer=optimizer)
    assert probe_accuracy(model, x, y) == 100.0 and probe_accuracy(model, x_test, y_test) >= 99.0
    # labels unrelated to the features: the training set is learnt by heart, the test set at chance
    gen = torch.Generator().manual_seed(1)
    y_rand, y_test_rand = y[torch.randperm(len(y), generator=gen)], torch.randint(0, 4, (400,), generator=gen)
    x_noise = torch.randn(400, 16, generator=gen)
    shuffled = train_linear_probe(torch.randn(120, 16, generator=gen), y_rand, 4, epochs=200, lr=lr,
                                  weight_decay=0.01, seed=0, optimizer=optimizer)
    assert 15.0 <= probe_accuracy(shuffled, x_noise, y_test_rand) <= 35.0  # chance: 25%


@pytest.mark.parametrize("optimizer,lr", [("adamw", 0.01), ("lbfgs", 1.0)])
def test_probe_is_deterministic_under_its_seed(optimizer, lr):
    x, y = clusters(10, num_classes=3, seed=3, spread=3.0)  # overlapping: the seed matters a little
    runs = [train_linear_probe(x, y, 3, epochs=50, lr=lr, seed=s, optimizer=optimizer) for s in (5, 5, 6)]
    assert torch.equal(runs[0].weight, runs[1].weight) and torch.equal(runs[0].bias, runs[1].bias)
    assert runs[0].final_loss == runs[1].final_loss
    assert not torch.equal(runs[0].weight, runs[2].weight)


def test_standardisation_uses_the_training_statistics_and_survives_constant_columns():
    x, y = clusters(20, num_classes=2, dim=4, seed=2)
    x = torch.cat([x * 1000 + 50, torch.full((len(x), 1), 7.0)], 1)  # a large scale and a dead channel
    model = train_linear_probe(x, y, 2, epochs=100, seed=0)
    assert torch.allclose(model.mean[:4], x[:, :4].double().mean(0)) and torch.isfinite(model.logits(x)).all()
    assert probe_accuracy(model, x, y) == 100.0


def test_label_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="1 speaker"):
        encode_labels(["a", "a", "a"])
    with pytest.raises(ValueError, match=r"test split 'target_test'.*\['zed'\]"):
        encode_labels(["a", "b"], {"source_test": ["a"], "target_test": ["b", "zed"]})
    classes, y, tests = encode_labels(["b", "a", "b"], {"t": ["a"]})
    assert classes == ["a", "b"] and y.tolist() == [1, 0, 1] and tests["t"].tolist() == [0]
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_linear_probe(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), 1)


# ---- features ----------------------------------------------------------------------
class _Encoder(nn.Module):
    """A stand-in encoder: frames = a linear map of the input; can tamper with itself."""

    input_kind = "fbank"

    def __init__(self, tamper=False):
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.register_buffer("calls", torch.zeros(()))
        self.tamper = tamper

    @property
    def device(self):
        return self.proj.weight.device

    def encode(self, x, x_lens):
        if self.tamper:
            self.calls += 1  # e.g. a running statistic updated at inference
        return self.proj(x), x_lens


def _batches():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    lens = torch.tensor([4, 2])
    return [SpeechBatch(x, lens, ["", ""], ["u2", "u1"], [0.04, 0.02])]


def test_pooled_features_average_the_valid_frames_and_check_the_model_is_untouched():
    enc = _Encoder().train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    ids, feats, speakers = pooled_features(enc, _batches(), speakers={"u1": "a", "u2": "b"}, split="dev")
    assert ids == ["u1", "u2"] and speakers == ["a", "b"] and feats.dtype == torch.float64
    with torch.no_grad():
        frames = enc.proj(_batches()[0].inputs)
    assert torch.allclose(feats[1].float(), frames[0].mean(0))  # u2: all 4 frames
    assert torch.allclose(feats[0].float(), frames[1, :2].mean(0))  # u1: its 2 valid frames, not the padding
    assert enc.training and all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    with pytest.raises(RuntimeError, match="changed while extracting"):
        pooled_features(_Encoder(tamper=True), _batches(), speakers={"u1": "a", "u2": "b"})
    with pytest.raises(ValueError, match="cut 'u1' of split 'dev' has no speaker"):
        pooled_features(enc, _batches(), speakers={"u2": "b"}, split="dev")
    assert mean_pool(torch.ones(1, 3, 2), torch.tensor([2])).tolist() == [[1.0, 1.0]]


def test_a_cut_without_a_speaker_is_named_with_its_split():
    from lhotse import MonoCut, Recording, SupervisionSegment
    from lhotse.audio import AudioSource

    rec = Recording("r1", [AudioSource("file", [0], "x.wav")], 16000, 16000, 1.0)
    cut = MonoCut("c1", 0.0, 1.0, 0, recording=rec, supervisions=[SupervisionSegment("s", "r1", 0.0, 1.0)])
    with pytest.raises(ValueError, match="cut 'c1' of split 'target_dev' has no speaker label"):
        cut_speaker(cut, "target_dev")


# ---- the entry point on the mini Zipformer-CTC -----------------------------------------
def write_voice_split(root, split, per_voice, seed):
    """``per_voice`` utterances of each voice, speaker labels set, fbank stored."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    from speechadapt.data.features import featurise_split

    rng = np.random.default_rng(seed)
    recordings, supervisions = [], []
    for voice, (f0, tilt) in VOICES.items():
        for i in range(per_voice):
            n = int(16000 * (1.0 + 0.1 * (i % 4)))
            t = np.arange(n) / 16000
            pitch = f0 * (1 + 0.03 * rng.standard_normal())
            wave = sum(tilt ** k * np.sin(2 * np.pi * k * pitch * t + rng.uniform(0, 6.3)) for k in range(1, 12))
            wave = 0.1 * wave / np.abs(wave).max() + 0.005 * rng.standard_normal(n)
            rid = f"{split}-{voice}-{i}"
            path = root / "wav" / f"{rid}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, wave.astype(np.float32), 16000)
            rec = Recording.from_file(path, recording_id=rid)
            recordings.append(rec)
            supervisions.append(SupervisionSegment(rid, rid, 0.0, rec.duration, text=TEXTS[i % len(TEXTS)],
                                                   speaker=voice))
    cuts = CutSet.from_manifests(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(supervisions))
    return featurise_split(cuts, root / "fbank", split, PREFIX)


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    from lhotse.utils import fastcopy

    root = tmp_path_factory.mktemp("voices")
    train = write_voice_split(root, "spk_train", 6, 0)
    write_voice_split(root, "spk_test", 3, 1)
    write_voice_split(root, "spk_test2", 2, 2)
    # the bad inputs: a cut without a speaker, one speaker only, a voice the training lacks
    train.map_supervisions(lambda s: fastcopy(s, speaker=None) if s.id == "spk_train-bass-3" else s).to_file(
        root / "fbank" / f"{PREFIX}_cuts_no_speaker.jsonl.gz")
    train.filter(lambda c: c.supervisions[0].speaker == "alto").to_file(root / "fbank" / f"{PREFIX}_cuts_one.jsonl.gz")
    train.filter(lambda c: c.supervisions[0].speaker != "tenor").to_file(
        root / "fbank" / f"{PREFIX}_cuts_no_tenor.jsonl.gz")
    return root


def run_probe(model_root, voices_root, out, *flags, train="spk_train", test="spk_test,spk_test2"):
    results = out / "results.jsonl"
    accs = probe.main(["--source-exp-dir", str(model_root / "src"), "--epoch", "1", "--exp-dir", str(out / "probe"),
                       "--method", "pre-trained", "--train-splits", train, "--test-splits", test,
                       "--results", str(results), "--device", "cpu", *data_flags(voices_root), *flags])
    return accs, read_results(results)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_entry_point_records_speaker_accuracy_and_leaves_the_weights_alone(trained_mini_ctc, voices, tmp_path,
                                                                             monkeypatch):
    from speechadapt.models.registry import load_model
    from speechadapt.training.averaging import WeightSelection

    weights = trained_mini_ctc / "src" / "epoch-1.pt"
    digest = _digest(weights)
    loaded = []
    real_load = probe.load_source
    monkeypatch.setattr(probe, "load_source", lambda *a: loaded.append(real_load(*a)) or loaded[-1])
    accs, records = run_probe(trained_mini_ctc, voices, tmp_path, "--probe-epochs", "300")
    fresh = load_model(trained_mini_ctc / "src", WeightSelection(epoch=1))[0].state_dict()
    used = loaded[0][0].state_dict()
    assert set(used) == set(fresh) and all(torch.equal(used[k], fresh[k]) for k in fresh)
    assert [r["test_set"] for r in records] == ["spk_test", "spk_test2", "all"]
    assert all(r["method"] == "pre-trained" and r["wer"] is None for r in records)
    e = records[-1]["extra"]
    assert (e["family"], e["task"], e["metric"]) == ("probe", "speaker-probe", "speaker_accuracy")
    assert (e["num_speakers"], e["num_train"], e["num_test"]) == (3, 18, 15)
    assert records[0]["extra"]["num_test"] == 9 and records[1]["extra"]["num_test"] == 6
    assert e["per_set"] == {"spk_test": accs["spk_test"], "spk_test2": accs["spk_test2"]}
    assert e["accuracy"] == round(accs["all"], 2) and e["accuracy"] > 100 / 3 + 20  # well above chance
    assert e["feature_dim"] == 80 and e["layer"] == "final" and e["probe_epochs"] == 300
    assert set(e["per_speaker"]) == set(VOICES)
    summary = json.loads((tmp_path / "probe" / probe.SUMMARY_FILE).read_text())
    assert summary["classes"] == sorted(VOICES) and summary["scores"]["all"]["num_test"] == 15
    predictions = (tmp_path / "probe" / probe.PREDICTIONS_FILE).read_text().splitlines()
    assert len(predictions) == 1 + 15 and predictions[0] == "set\tcut_id\tspeaker\tpredicted"
    assert _digest(weights) == digest and not list((tmp_path / "probe").glob("*.pt"))
    # the report's forgetting table reads the record over all test speakers
    from speechadapt.bin.report import probe_cells

    assert probe_cells(records)["pre-trained"]["extra"]["accuracy"] == e["accuracy"]
    # a lower stack of the same encoder, the same probe settings
    accs_low, records_low = run_probe(trained_mini_ctc, voices, tmp_path / "low", "--layer", "1",
                                      "--probe-epochs", "300")
    assert records_low[-1]["extra"]["feature_dim"] == 48 and set(accs_low) == set(accs)


def test_the_shipped_config_holds_the_recipe_settings():
    from pathlib import Path

    from speechadapt.utils.flags import parse_args

    conf = Path(__file__).resolve().parents[1] / "egs" / "synth" / "conf" / "probe.yaml"
    args = parse_args(probe.get_parser, ["--config", str(conf), "--exp-dir", "x", "--method", "m"],
                            entry_point="probe")
    assert args.train_splits == ["source_dev", "target_dev"] and args.test_splits == ["source_test", "target_test"]
    assert (args.layer, args.probe_optimizer, args.probe_seed) == ("final", "adamw", 0)


@pytest.mark.parametrize("train,test,message", [
    ("no_speaker", "spk_test", r"cut 'spk_train-bass-3[-\d]*' of split 'no_speaker' has no speaker label"),
    ("one", "spk_test", "1 speaker"),
    ("no_tenor", "spk_test", r"test split 'spk_test': speaker\(s\) \['tenor'\]"),
    ("spk_train", "spk_train", r"\['spk_train'\] given twice"),
    ("spk_train", "missing", "missing"),
], ids=["no-speaker", "one-speaker", "unseen-speaker", "split-twice", "missing-split"])
def test_bad_input_is_refused_before_any_work(trained_mini_ctc, voices, tmp_path, train, test, message):
    with pytest.raises(SystemExit, match=message):
        run_probe(trained_mini_ctc, voices, tmp_path, train=train, test=test)
    assert not (tmp_path / "probe").exists() and not (tmp_path / "results.jsonl").exists()
