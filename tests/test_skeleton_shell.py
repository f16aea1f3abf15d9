"""Shell helpers: parse_options.sh, the dispatchers, check_requirements."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash(script: str, *args: str):
    return subprocess.run(["bash", "-c", script, "test.sh", *args], cwd=ROOT, capture_output=True, text=True)


PARSE = 'stage=0; stop_stage=100; use_fp16=false; . tools/parse_options.sh; echo "$stage $stop_stage $use_fp16 $#"'


def test_parse_options_sets_known_variables():
    out = bash(PARSE, "--stop-stage", "3", "--use-fp16=true", "--stage", "2", "extra")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2 3 true 1"


def test_parse_options_rejects_unknown_and_missing_values():
    out = bash(PARSE, "--stop-stag", "3")
    assert out.returncode != 0 and "unknown option --stop-stag" in out.stderr
    out = bash(PARSE, "--stage")
    assert out.returncode != 0 and "needs a value" in out.stderr


def test_dispatcher_rejects_unknown_recipe():
    out = subprocess.run(["./run.sh", "--recipe", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "no recipe 'nope'" in out.stderr


def test_check_requirements_reports_missing(tmp_path):
    req = tmp_path / "req.txt"
    req.write_text("torch==2.13.0\nsurely-not-a-package-xyz==1.0\n")
    out = subprocess.run(["python3", "tools/check_requirements.py", str(req)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1
    assert "surely-not-a-package-xyz: not installed" in out.stdout
    assert "torch" not in out.stdout


def test_stage_end_says_how_long_the_rest_of_the_run_takes(tmp_path):
    (tmp_path / "conf").mkdir()
    rows = [("10", "90"), ("12", "10"), ("20", "50"), ("24", "30"), ("24", "30"), ("90", "5")]
    (tmp_path / "conf" / "stage_times_full.tsv").write_text(
        "".join(f"synth\t{s}\tname\t{secs}\tfull\n" for s, secs in rows))
    script = (f'cd {tmp_path}; profile=full stage=10 stop_stage=$1 stage_times={tmp_path}/st.tsv '
              f'SPEECHADAPT_RUN_START=$(( $(date +%s) - 7 )); . {ROOT}/tools/recipe_lib.sh; '
              f'stage_begin 12 "decode"; stage_end')
    out = bash(script, "100")
    assert out.returncode == 0, out.stderr
    assert "stage 12 done in" in out.stdout and "about 115 s left" in out.stdout  # 50 + 30 + 30 + 5
    assert "run 7 s so far" in out.stdout or "run 8 s so far" in out.stdout
    assert "about 110 s left" in bash(script, "89").stdout  # the stop stage bounds it
    (tmp_path / "conf" / "stage_times_full.tsv").unlink()
    out = bash(script, "100")
    assert "so far" in out.stdout and "left" not in out.stdout  # no reference: elapsed only
    assert (tmp_path / "st.tsv").read_text().count("\n") == 3
