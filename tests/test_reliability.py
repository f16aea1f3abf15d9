"""Nothing lost, nothing silent: one test per row of the reliability issue (bad inputs,
stale experiment folders, stage ranges, DDP through the models' forward)."""

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse.utils import LOG_EPSILON

from speechadapt.bin import average_checkpoints, train
from speechadapt.data.batch import SpeechBatch
from speechadapt.data.datamodule import AsrDataModule, DataConfig
from speechadapt.data.manifests import ManifestError, open_manifest
from speechadapt.models.ctc import ZipformerCtc
from speechadapt.models.zipformer import get_preset
from speechadapt.training.checkpoint import average_checkpoints as average_files
from speechadapt.training.loop import Trainer
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.training.toy import ToyModel, make_toy_cuts, make_toy_dataloader
from speechadapt.utils.io import atomic_save
from speechadapt.utils.safe_load import CorruptCheckpointError, UnsafeCheckpointError, safe_torch_load

ROOT = Path(__file__).resolve().parents[1]
from mini_corpus import PREFIX, TEXTS, write_split  # noqa: E402 (tests/ is on sys.path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from speechadapt.data.bpe import prepare_lang_bpe

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mini")
    write_split(root, "train", TEXTS * 2)
    prepare_lang_bpe(TEXTS, root / "lang", 30)
    return root


def ctc_argv(root, exp, *extra):
    return ["--model", "zipformer_ctc", "--lang-dir", str(root / "lang"), "--exp-dir", str(exp),
            "--train-split", "train", "--manifest-dir", str(root / "fbank"), "--cuts-prefix", PREFIX,
            "--max-duration", "6", "--num-workers", "0", "--enable-spec-aug", "false", "--num-buckets", "2",
            "--regularize", "false", "--tensorboard", "false", "--average-period", "1", "--save-every-n", "2",
            "--keep-last-k", "2", *extra]


# ---- 1: DDP through the models' forward --------------------------------------------

def test_row1_training_with_two_gloo_ranks_through_the_command_line(corpus, tmp_path):
    train.main(ctc_argv(corpus, tmp_path / "ddp", "--world-size", "2", "--num-epochs", "1"))
    saved = torch.load(tmp_path / "ddp" / "epoch-1.pt", weights_only=True)
    assert saved["params"]["world_size"] == 2 and len(saved["params"]["rng_states"]) == 2
    assert saved["batch_idx_train"] > 0


def _ctc_ddp_worker(rank, world_size, out_dir):
    from speechadapt.training.dist import cleanup_dist, setup_dist

    torch.set_num_threads(1)
    dist_info = setup_dist(rank, world_size)
    try:
        trained = _train_ctc(out_dir / "ddp", _ctc_batches()[rank::world_size], dist_info)
        torch.save(trained, out_dir / f"rank{rank}.pt")
    finally:
        cleanup_dist()


class Ids:
    vocab_size = 30
    model_file = "ids"

    def encode(self, texts):
        return [[int(t) for t in s.split()] for s in texts]


def _ctc_batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(8):
        lens = torch.tensor([60 + 7 * (i % 3), 41])
        texts = [" ".join(str(int(t)) for t in torch.randint(1, 30, (n,), generator=g)) for n in (6, 4)]
        x = torch.randn(2, int(lens.max()), 80, generator=g)
        x[1, int(lens[1]):] = LOG_EPSILON  # padded as the dataset pads
        out.append(SpeechBatch(x, lens, texts, [f"a{i}", f"b{i}"], [0.6, 0.4]))
    return out


def _train_ctc(exp_dir, batches, dist_info=None):
    torch.manual_seed(0)
    model = ZipformerCtc(get_preset("tiny", regularize=False, pad_invariant=True), 30, tokenizer=Ids())
    model.ctc_output[0].p = 0.0  # no dropout: one process and two ranks must agree
    config = TrainingConfig(exp_dir=str(exp_dir), num_epochs=1, save_every_n=0, average_period=0,
                            valid_interval=0, tensorboard=False, find_unused_parameters=True)
    Trainer(config, model, batches, None, dist_info, optimizer_config=OptimizerConfig(optimizer="adamw", base_lr=1e-3),
            scheduler_config=SchedulerConfig(scheduler="constant")).fit()
    return model.state_dict()


def test_row1_zipformer_ctc_under_ddp_equals_one_process_on_the_concatenated_batch(tmp_path, monkeypatch):
    from speechadapt.training.dist import launch

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "0")
    launch(_ctc_ddp_worker, 2, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    batches = _ctc_batches()
    single = _train_ctc(tmp_path / "single", [SpeechBatch.concat(batches[i:i + 2]) for i in range(0, 8, 2)])
    torch.manual_seed(0)
    initial = ZipformerCtc(get_preset("tiny", regularize=False, pad_invariant=True), 30).state_dict()
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        # AdamW normalises each update, so float rounding of tiny gradients shows up to ~lr / 50
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-3, atol=1e-4)
    moved = max((single[k] - v).abs().max().item() for k, v in initial.items() if v.is_floating_point())
    assert moved > 2e-3  # 4 steps at lr 1e-3: far beyond the tolerance


def test_row1_llm_asr_two_ranks_from_the_command_line_equal_one_process(corpus, tmp_path):
    """train --world-size 2 against one process fed, at each step, the two batches the
    ranks saw, concatenated."""
    from speechadapt.data.datamodule import DataConfig
    from speechadapt.models.hf.fixtures import make_tiny_qwen2
    from speechadapt.models.registry import get_kind
    from speechadapt.training.state import fix_random_seed
    from speechadapt.utils.flags import dataclass_from_args, parse_args

    llm_dir = make_tiny_qwen2(tmp_path / "qwen2", TEXTS, tokenizer_vocab_size=300, hidden_size=64,
                              intermediate_size=128)
    torch.manual_seed(1)
    torch.save({"model": ZipformerCtc(get_preset("tiny"), 40).state_dict()}, tmp_path / "enc.pt")
    argv = ["--model", "llm_asr", "--llm-dir", str(llm_dir), "--encoder-ckpt", str(tmp_path / "enc.pt"),
            "--lora-r", "4", "--lora-alpha", "8", "--projector-dropout", "0", "--lora-dropout", "0",
            "--train-split", "train", "--manifest-dir", str(corpus / "fbank"), "--cuts-prefix", PREFIX,
            "--max-duration", "4", "--num-workers", "0", "--enable-spec-aug", "false", "--num-buckets", "2",
            "--num-epochs", "1", "--average-period", "0", "--save-every-n", "0", "--tensorboard", "false",
            "--base-lr", "1e-3", "--scheduler", "constant"]
    train.main(argv + ["--exp-dir", str(tmp_path / "ddp"), "--world-size", "2"])
    ddp = torch.load(tmp_path / "ddp" / "epoch-1.pt", weights_only=True)

    args = parse_args(train.get_parser, argv + ["--exp-dir", str(tmp_path / "single")])
    kind = get_kind("llm_asr")
    fix_random_seed(args.seed)
    model = kind.build(dataclass_from_args(kind.options(), args), "cpu")
    initial = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    data = AsrDataModule(dataclass_from_args(DataConfig, args), model.input_kind, seed=args.seed)
    per_rank = []
    for rank in (0, 1):  # what each rank's loader gave it in epoch 1
        loader = data.train_dataloaders(data.load_cuts("train"), world_size=2, rank=rank)
        loader.sampler.set_epoch(1)
        per_rank.append(list(loader))
    steps = [SpeechBatch.concat(pair) for pair in zip(*per_rank)]
    assert len(steps) == ddp["batch_idx_train"] > 1
    Trainer(dataclass_from_args(TrainingConfig, args), model, steps,
            optimizer_config=dataclass_from_args(OptimizerConfig, args),
            scheduler_config=dataclass_from_args(SchedulerConfig, args)).fit()
    single = model.trainable_state_dict()
    assert set(single) == set(ddp["model"])
    for key, value in single.items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-3, atol=1e-4)
    assert max((single[k] - initial[k]).abs().max().item() for k in single) > 2e-3


def test_row1_root_dispatcher_forwards_options_to_the_script_that_knows_them():
    out = subprocess.run(["./run.sh", "--profile", "fast", "--world-size", "2", "--stage", "90", "--stop-stage", "1"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "--stage 90 is after --stop-stage 1" in out.stderr  # not 'unknown option'
    out = subprocess.run(["./run.sh", "--no-such-option", "1"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "unknown option --no-such-option" in out.stderr


# ---- 2 and 11: stale experiment folders, resume ------------------------------------

def test_row2_a_fresh_run_refuses_another_runs_checkpoints_and_archives_on_request(corpus, tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    for b in (30, 60, 90):
        atomic_save({"model": {}}, exp / f"checkpoint-{b}.pt")
    with pytest.raises(FileExistsError, match="earlier run.*checkpoint-30.pt.*--start-epoch auto.*--archive-old-run"):
        train.main(ctc_argv(corpus, exp, "--num-epochs", "1", "--start-epoch", "1"))
    train.main(ctc_argv(corpus, exp, "--num-epochs", "1", "--start-epoch", "1", "--archive-old-run", "true"))
    archived = list(exp.glob("old-run-*/checkpoint-*.pt"))
    assert sorted(p.name for p in archived) == ["checkpoint-30.pt", "checkpoint-60.pt", "checkpoint-90.pt"]
    kept = sorted(p.name for p in exp.glob("checkpoint-*.pt"))
    assert kept and all(int(n.split("-")[1].split(".")[0]) <= 8 for n in kept)  # this run's own, pruned to 2
    assert len(kept) == 2


def test_row2_pruning_leaves_files_beyond_the_run_alone(tmp_path):
    from speechadapt.training.checkpoint import find_checkpoints, remove_checkpoints

    for b in (2, 4, 6, 90):
        (tmp_path / f"checkpoint-{b}.pt").write_bytes(b"")
    remove_checkpoints(tmp_path, 2, up_to=6)
    assert [p.name for p in find_checkpoints(tmp_path)] == ["checkpoint-90.pt", "checkpoint-6.pt", "checkpoint-4.pt"]


def test_row11_start_epoch_auto_resumes_and_a_finished_stage_reruns_as_a_no_op(corpus, tmp_path):
    exp = tmp_path / "exp"
    train.main(ctc_argv(corpus, exp, "--num-epochs", "1", "--start-epoch", "auto"))
    first = torch.load(exp / "epoch-1.pt", weights_only=True)
    stamp = (exp / "epoch-1.pt").stat().st_mtime
    train.main(ctc_argv(corpus, exp, "--num-epochs", "2", "--start-epoch", "auto"))
    second = torch.load(exp / "epoch-2.pt", weights_only=True)
    assert second["params"]["cur_epoch"] == 2 and second["batch_idx_train"] > first["batch_idx_train"] > 0
    assert (exp / "epoch-1.pt").stat().st_mtime == stamp  # epoch 1 was resumed from, not trained again
    before = (exp / "epoch-2.pt").stat().st_mtime
    train.main(ctc_argv(corpus, exp, "--num-epochs", "2", "--start-epoch", "auto"))
    assert (exp / "epoch-2.pt").stat().st_mtime == before  # nothing left to train, nothing rewritten
    with pytest.raises(ValueError, match="another model"):  # resuming with another model is refused
        train.main(ctc_argv(corpus, exp, "--num-epochs", "3", "--start-epoch", "auto", "--encoder-preset", "small"))
    text = (ROOT / "egs" / "synth" / "run.sh").read_text()
    assert "start_epoch=auto" in text and "--start-epoch $start_epoch" in text


# ---- 3: data stages count in and out -----------------------------------------------

def test_row3_a_cut_that_yields_no_features_stops_the_stage_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"2 of 3 cuts produced no features.*bad-0, bad-1"):
        from lhotse import CutSet, Recording

        from speechadapt.data.features import featurise_split

        good = tmp_path / "good.wav"
        sf.write(good, np.zeros(16000, dtype=np.float32), 16000)
        cuts = []
        for i in range(2):
            bad = tmp_path / f"bad-{i}.wav"
            sf.write(bad, np.zeros(16000, dtype=np.float32), 16000)
            cuts.append(Recording.from_file(bad, recording_id=f"bad-{i}").to_cut())
            bad.write_bytes(b"RIFF....WAVEjunk")  # corrupted after the manifest stage
        cuts.append(Recording.from_file(good, recording_id="good").to_cut())
        featurise_split(CutSet.from_cuts(cuts), tmp_path / "fbank", "test", PREFIX)
    assert not (tmp_path / "fbank" / f"{PREFIX}_cuts_test.jsonl.gz").exists()


# ---- 4: stage ranges ---------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--stage", "200"], "--stage 200 is after --stop-stage 100"),
    (["--stage", "12", "--stop-stage", "11"], "--stage 12 is after --stop-stage 11"),
    (["--stage", "abc"], "must be integers, got 'abc'"),
    (["--stage", "80", "--stop-stage", "89"], "no stage lies in 80..89"),  # a range no capability holds
])
def test_row4_stage_ranges_are_validated(flags, message):
    out = subprocess.run(["./run.sh", "--profile", "fast", *flags], cwd=ROOT / "egs" / "synth",
                         capture_output=True, text=True)
    assert out.returncode != 0 and message in out.stderr, out.stderr


# ---- 5: an epoch without batches ---------------------------------------------------

def test_row5_a_split_smaller_than_one_batch_with_drop_last_is_an_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="yielded no batch"):
        train.main(ctc_argv(corpus, tmp_path / "exp", "--num-epochs", "1", "--max-duration", "300",
                            "--bucketing-sampler", "false"))
    assert not (tmp_path / "exp" / "epoch-1.pt").exists()


# ---- 6: unreadable files are named -------------------------------------------------

def test_row6_broken_manifests_and_checkpoints_name_the_file(corpus, tmp_path):
    source = corpus / "fbank" / f"{PREFIX}_cuts_train.jsonl.gz"
    lines = gzip.open(source, "rt").read().splitlines()
    broken = tmp_path / f"{PREFIX}_cuts_broken.jsonl.gz"
    with gzip.open(broken, "wt") as f:
        f.write("\n".join(lines[:3] + [lines[3][:40]] + lines[4:]) + "\n")
    with pytest.raises(ManifestError, match=r"mini_cuts_broken.jsonl.gz:4: not a JSON line"):
        open_manifest(broken)
    truncated = tmp_path / f"{PREFIX}_cuts_cut.jsonl.gz"
    truncated.write_bytes(source.read_bytes()[:200])
    with pytest.raises(ManifestError, match="mini_cuts_cut.jsonl.gz: truncated or corrupt"):
        AsrDataModule(DataConfig(manifest_dir=str(tmp_path), cuts_prefix=PREFIX)).load_cuts("cut")
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.ones(100)}}, good)
    (tmp_path / "half.pt").write_bytes(good.read_bytes()[:300])
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ("half.pt", "empty.pt"):
        with pytest.raises(CorruptCheckpointError, match=name) as exc:
            safe_torch_load(tmp_path / name)
        assert "weights_only=False" not in str(exc.value)
    torch.save({"module": torch.nn.Linear(1, 1)}, tmp_path / "pickled.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"pickled.pt: refused.*torch.nn.modules.linear.Linear"):
        safe_torch_load(tmp_path / "pickled.pt")


# ---- 7: averaging mismatched files -------------------------------------------------

def test_row7_averaging_two_architectures_lists_the_differences(tmp_path):
    a = {"w": torch.ones(2, 3), "b": torch.zeros(3), "only_a": torch.zeros(1)}
    b = {"w": torch.ones(4, 3), "b": torch.zeros(3), "only_b": torch.zeros(1)}
    for name, state in (("epoch-1.pt", a), ("epoch-2.pt", b)):
        torch.save({"model": state, "model_avg": state, "batch_idx_train": int(name[6]) * 10}, tmp_path / name)
    with pytest.raises(ValueError) as exc:
        average_files([tmp_path / "epoch-1.pt", tmp_path / "epoch-2.pt"])
    text = str(exc.value)
    assert "only in epoch-1.pt (1): only_a" in text and "only in epoch-2.pt (1): only_b" in text
    assert "w: (2, 3) vs (4, 3)" in text
    with pytest.raises(ValueError, match=r"w: \(2, 3\) vs \(4, 3\)"):
        average_checkpoints.main(["--exp-dir", str(tmp_path), "--epoch", "2", "--avg", "1",
                                  "--use-averaged-model", "true"])


# ---- 8: flag values at parse time; buckets -----------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--max-duration", "0"], "--max-duration must be > 0"),
    (["--max-duration", "-5"], "--max-duration must be > 0"),
    (["--start-epoch", "zero"], "expected an integer or 'auto'"),
    (["--num-buckets", "1"], "--num-buckets must be >= 2"),
    (["--optimizer", "adamw", "--base-lr", "-1"], "must be >= 0"),
])
def test_row8_bad_flag_values_are_usage_errors(corpus, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        train.main(ctc_argv(corpus, tmp_path / "exp", *flags))
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_row8_more_buckets_than_cuts_is_fine(corpus):
    dm = AsrDataModule(DataConfig(manifest_dir=str(corpus / "fbank"), cuts_prefix=PREFIX, num_buckets=100,
                                  num_workers=0, max_duration=6, drop_last=False))
    batches = list(dm.valid_dataloaders(dm.load_cuts("train")))
    assert sum(len(b) for b in batches) == 2 * len(TEXTS)


# ---- 9: transcripts the model cannot learn from ------------------------------------

def _cuts_with_texts(corpus, tmp_path, texts):
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    cuts = list(open_manifest(corpus / "fbank" / f"{PREFIX}_cuts_train.jsonl.gz"))
    edited = [fastcopy(c, supervisions=[fastcopy(c.supervisions[0], text=t)]) for c, t in zip(cuts, texts)]
    path = tmp_path / f"{PREFIX}_cuts_edited.jsonl.gz"
    CutSet.from_cuts(edited + cuts[len(texts):]).to_file(path)
    return str(path)


def test_row9_empty_transcripts_and_unknown_characters_are_reported_with_ids(corpus, tmp_path):
    few = _cuts_with_texts(corpus, tmp_path, ["", "call ålice"])
    with pytest.raises(ValueError, match=r"2 of 16 cuts.*1 with an empty transcript \(train-0-0\).*'å' x1 \(train-1-1\)"):
        train.main(ctc_argv(corpus, tmp_path / "a", "--num-epochs", "1", "--train-split", few))
    train.main(ctc_argv(corpus, tmp_path / "b", "--num-epochs", "1", "--train-split", few,
                        "--max-bad-transcripts", "0.2"))
    log = next((tmp_path / "b" / "log").glob("log-train-*")).read_text()
    assert "2 of 16 cuts are unusable" in log and "the empty ones are left out" in log
    saved = torch.load(tmp_path / "b" / "epoch-1.pt", weights_only=True)
    assert saved["batch_idx_train"] > 0


# ---- 10: temporary files of an interrupted save ------------------------------------

def test_row10_a_save_killed_mid_write_leaves_nothing_behind_after_the_next_save(tmp_path):
    target = tmp_path / "epoch-1.pt"
    atomic_save({"w": torch.ones(2)}, target)
    (tmp_path / ".epoch-1.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # a kill -9 during a save
    atomic_save({"w": torch.zeros(2)}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-1.pt"]
    assert json.dumps(torch.load(target, weights_only=True)["w"].tolist()) == "[0.0, 0.0]"
