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
