"""Cluster batch jobs: tools/slurm_launch.sh (torchrun from Slurm's environment, 2 local
gloo ranks) and preemption (a real signal, every rank saves, exit 75, the same command
resumes bit-exactly)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from speechadapt.training.preemption import PREEMPTED_EXIT_CODE, PreemptionGuard, signal_numbers

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "tools" / "slurm_launch.sh"
TOY = ["speechadapt.training.toy", "--num-epochs", "2", "--max-duration", "2", "--tensorboard", "false",
       "--num-cuts", "24", "--log-interval", "1", "--valid-interval", "0", "--optimizer", "adamw",
       "--base-lr", "0.01", "--average-period", "2", "--save-every-n", "0", "--start-epoch", "auto"]


def env_without_slurm(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SPEECHADAPT_PREEMPT"))}
    env.update(PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", PYTHON=sys.executable, **extra)
    return env


def launch_toy(exp_dir, *extra, env=None, **popen):
    cmd = ["bash", str(LAUNCHER), "--nproc-per-node", "2", "--log-dir", str(exp_dir.parent / f"{exp_dir.name}-launch"),
           *TOY, "--exp-dir", str(exp_dir), *extra]
    return subprocess.Popen(cmd, env=env or env_without_slurm(), cwd=exp_dir.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def finish(process, timeout=240):
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def wait_for_batch(exp_dir, batch, process, timeout=120):
    """Until rank 0's log shows the given global batch (the run is mid-way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be signalled"
        for log in (exp_dir / "log").glob("log-train-*-0") if (exp_dir / "log").is_dir() else []:
            if f"(global {batch})" in log.read_text():
                return
        time.sleep(0.1)
    raise AssertionError(f"batch {batch} never logged")


def assert_same_checkpoint(a, b):
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for part in ("model", "model_avg"):
        assert x[part].keys() == y[part].keys()
        for key in x[part]:
            assert torch.equal(x[part][key], y[part][key]), f"{part}.{key}"
    for key, state in x["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, y["optimizer"]["state"][key][name]), f"optimizer {key}.{name}"
    assert x["batch_idx_train"] == y["batch_idx_train"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted 2-rank run every preempted run must reproduce."""
    exp_dir = tmp_path_factory.mktemp("preempt") / "reference"
    rc, out = finish(launch_toy(exp_dir))
    assert rc == 0, out[-3000:]
    return exp_dir


def test_launcher_builds_multi_node_torchrun_from_slurm_environment(tmp_path):
    env = env_without_slurm(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="gpu[03-04,07]",
                            SLURM_GPUS_ON_NODE="8", PATH="/usr/bin:/bin")  # no scontrol: the list parsed here
    result = subprocess.run(["bash", str(LAUNCHER), "--dry-run", "speechadapt.bin.train", "--model", "llm_asr"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cmd = result.stdout
    assert cmd.startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1")
    for part in ("--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d", f"--rdzv-endpoint=gpu03:{29500 + 4242}",
                 "--rdzv-id=4242", "-m speechadapt.bin.train --model llm_asr"):
        assert part in cmd, (part, cmd)
    assert "logs " + str(tmp_path / "log" / "launch-4242") in result.stderr
    bad = subprocess.run(["bash", str(LAUNCHER), "--nnodes", "2", "speechadapt.bin.train"], env=env_without_slurm(),
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "outside a Slurm job" in bad.stderr


def test_launcher_runs_two_gloo_ranks_through_srun_with_per_rank_logs(tmp_path):
    """Inside a (simulated) one-node Slurm job: srun runs the per-node command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_srun = bin_dir / "srun"
    fake_srun.write_text('#!/usr/bin/env bash\n# one node: drop srun\'s options, run the task\n'
                         'while [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=0 SLURM_PROCID=0 exec "$@"\n')
    fake_srun.chmod(0o755)
    env = env_without_slurm(SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="1", SLURM_JOB_NODELIST="localhost",
                            PATH=f"{bin_dir}:{os.environ['PATH']}")
    exp_dir = tmp_path / "exp"
    rc, out = finish(launch_toy(exp_dir, "--num-epochs", "1", env=env))
    assert rc == 0, out[-3000:]
    assert "rendezvous localhost:" in out and "(id 77)" in out
    assert torch.load(exp_dir / "epoch-1.pt", weights_only=True)["params"]["world_size"] == 2
    rank_logs = sorted((tmp_path / "exp-launch" / "node-0").glob("*/attempt_0/*/stdout.log"))
    assert [p.parent.name for p in rank_logs] == ["0", "1"]
    assert sorted(p.name[-1] for p in (exp_dir / "log").glob("log-train-*")) == ["0", "1"]


def test_usr1_to_every_process_saves_exits_75_and_the_rerun_is_bit_exact(tmp_path, reference_run):
    """As Slurm's --signal=USR1 does: the signal goes to the launcher, torchrun and both ranks."""
    exp_dir = tmp_path / "exp"
    process = launch_toy(exp_dir, "--seconds-per-batch", "0.3", start_new_session=True)
    wait_for_batch(exp_dir, 3, process)
    os.killpg(process.pid, signal.SIGUSR1)
    rc, out = finish(process)
    assert rc == PREEMPTED_EXIT_CODE, out[-3000:]
    marker = json.loads(next((tmp_path / "exp-launch").glob("preempted-*.json")).read_text())
    saved = Path(marker["checkpoint"])
    assert marker["signal"] == "SIGUSR1" and saved.is_file() and saved.parent == exp_dir
    assert 3 <= marker["batch_idx_train"] < torch.load(reference_run / "epoch-2.pt")["batch_idx_train"]
    assert not (exp_dir / "epoch-2.pt").exists()
    rc, out = finish(launch_toy(exp_dir))  # the same command: --start-epoch auto picks checkpoint-B.pt
    assert rc == 0, out[-3000:]
    assert f"resuming from {saved}" in out
    assert_same_checkpoint(exp_dir / "epoch-2.pt", reference_run / "epoch-2.pt")


def test_sigterm_to_the_spawning_process_reaches_the_ranks(tmp_path, reference_run):
    """--world-size 2 without torchrun: the parent forwards SIGTERM to the workers it spawned."""
    exp_dir = tmp_path / "exp"
    cmd = [sys.executable, "-m", *TOY, "--exp-dir", str(exp_dir), "--world-size", "2"]
    process = subprocess.Popen(cmd + ["--seconds-per-batch", "0.3"], env=env_without_slurm(), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_batch(exp_dir, 2, process)
    process.send_signal(signal.SIGTERM)
    rc, out = finish(process)
    assert rc == PREEMPTED_EXIT_CODE, out[-3000:]
    assert "preempted by SIGTERM" in out
    rc, out = finish(subprocess.Popen(cmd, env=env_without_slurm(), cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    assert rc == 0, out[-3000:]
    assert_same_checkpoint(exp_dir / "epoch-2.pt", reference_run / "epoch-2.pt")


def test_guard_records_the_first_signal_and_restores_handlers():
    previous = signal.getsignal(signal.SIGUSR1)
    guard = PreemptionGuard(["USR1", "SIGTERM"]).install()
    assert not guard.requested
    os.kill(os.getpid(), signal.SIGUSR1)
    assert guard.requested and guard.received == "SIGUSR1"
    guard.close()
    assert signal.getsignal(signal.SIGUSR1) == previous
    with pytest.raises(ValueError, match="SIGNOPE"):
        signal_numbers(["SIGNOPE"])


def test_recipes_run_distributed_stages_through_the_chosen_launcher():
    script = ('. tools/recipe_lib.sh; launcher=local; set_launcher; echo "$dist_py"; launcher=slurm; set_launcher; '
              'echo "$dist_py"; launcher=pbs; set_launcher; echo unreachable')
    result = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == ["python -m", str(LAUNCHER)]
    assert result.returncode == 1 and "--launcher must be local or slurm, got 'pbs'" in result.stderr
    for recipe in ("synth", "librispeech"):
        text = (REPO / "egs" / recipe / "run.sh").read_text()
        assert "set_launcher" in text and "$dist_py speechadapt.bin.train" in text
