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


def test_the_estimate_from_a_reference_run_counts_side_by_side_stages_once(tmp_path):
    (tmp_path / "conf").mkdir()
    # stage 23 ran beside 10-20 (its 140 s overlap theirs); column 6: seconds since the run began
    rows = [("10", "a", "100", "100"), ("12", "decode", "10", "110"), ("23", "b", "140", "150"),
            ("20", "lm", "50", "160"), ("90", "r", "40", "200")]
    (tmp_path / "conf" / "stage_times_default.tsv").write_text(
        "".join(f"synth\t{s}\t{n}\t{secs}\tdefault\t{end}\n" for s, n, secs, end in rows))
    script = (f'cd {tmp_path}; profile=default stage=10 stop_stage=$1 stage_times={tmp_path}/st.tsv; '
              f'. {ROOT}/tools/recipe_lib.sh; stage_begin 12 "decode"; stage_end')
    assert "about 90 s left" in bash(script, "100").stdout  # 200 - 110, not the sum 230
    assert "about 50 s left" in bash(script, "25").stdout  # up to stage 23's end: 160 - 110
    row = (tmp_path / "st.tsv").read_text().splitlines()[0].split("\t")
    assert len(row) == 6 and row[1] == "12" and int(row[5]) >= 0


SIDE = """
f() {{
  if stage_in 23; then stage_begin 23 "beside"; echo "side ${{OMP_NUM_THREADS:-unset}}" > {d}/side; sleep 1; {fail}; stage_end; fi
}}
side_start f
if stage_in 10; then stage_begin 10 "front"; echo "front ${{OMP_NUM_THREADS:-unset}}" > {d}/front; stage_end; fi
side_join f
echo "after ${{OMP_NUM_THREADS:-unset}}"
stages_done
"""


def test_side_by_side_stages_run_on_one_thread_each_and_report_where_they_would_have_run(tmp_path):
    head = (f'set -euo pipefail; cd {tmp_path}; unset OMP_NUM_THREADS; profile=default stage=10 stop_stage=30 '
            f'exp_root={tmp_path}/exp stage_times={tmp_path}/st.tsv side_by_side=$1; . {ROOT}/tools/recipe_lib.sh; ')
    out = bash(head + SIDE.format(d=tmp_path, fail="true"), "true")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "side").read_text().split() == ["side", "1"]
    assert (tmp_path / "front").read_text().split() == ["front", "1"]  # the foreground shares the cores
    lines = out.stdout.splitlines()
    started = next(i for i, line in enumerate(lines) if "f: started side by side" in line)
    front = next(i for i, line in enumerate(lines) if "stage 10 done" in line)
    beside = next(i for i, line in enumerate(lines) if line.startswith("[f] ") and "stage 23 done" in line)
    assert started < front < beside
    assert "after unset" in out.stdout and "2 stage(s) of 10..30 done" in out.stdout  # threads restored
    assert (tmp_path / "exp" / "logs" / "f.log").is_file()

    out = bash(head + SIDE.format(d=tmp_path, fail="true"), "false")  # one at a time: f runs at side_join
    assert out.returncode == 0 and "started side by side" not in out.stdout
    assert out.stdout.index("stage 10 done") < out.stdout.index("stage 23 done")

    out = bash(head + SIDE.format(d=tmp_path, fail="exit 3"), "true")
    assert out.returncode == 3 and "f (side by side) failed with exit 3" in out.stderr
    assert "after" not in out.stdout
