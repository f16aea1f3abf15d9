"""WER scoring against an independent edit distance; errs file layout; CLI."""

import io
import json
import random

import pytest

from speechadapt.bin import score as score_cli
from speechadapt.decoding.scoring import (
    ResultRecord,
    append_result,
    compute_wer,
    count_errors,
    read_results,
    store_transcripts,
    write_error_stats,
)
from speechadapt.decoding.text_norm import TextNormConfig, normalize_text


def levenshtein(ref, hyp) -> int:
    """Plain dynamic programme, written independently of kaldialign."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


CASES = [
    ("same", "a b c".split(), "a b c".split()),
    ("sub", "a b c".split(), "a x c".split()),
    ("del", "a b c d".split(), "a d".split()),
    ("ins", "a b".split(), "x a b y z".split()),
    ("empty-hyp", "turn on the light".split(), []),
    ("empty-ref", [], "noise word".split()),
    ("both-empty", [], []),
]


@pytest.mark.parametrize("name,ref,hyp", CASES)
def test_single_utterance_errors_match_levenshtein(name, ref, hyp):
    c = count_errors([(name, ref, hyp)])
    assert c.errors == levenshtein(ref, hyp)
    assert c.ref_words == len(ref)


def test_corpus_wer_matches_independent_computation():
    rng = random.Random(3)
    vocab = "one two three four five six seven".split()
    results = []
    for i in range(60):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        hyp = list(ref)
        for _ in range(rng.randint(0, 3)):
            op = rng.choice("sid")
            if op == "s" and hyp:
                hyp[rng.randrange(len(hyp))] = rng.choice(vocab)
            elif op == "i":
                hyp.insert(rng.randint(0, len(hyp)), rng.choice(vocab))
            elif op == "d" and hyp:
                hyp.pop(rng.randrange(len(hyp)))
        results.append((f"utt{i}", ref, hyp))
    expected = 100.0 * sum(levenshtein(r, h) for _, r, h in results) / sum(len(r) for _, r, _ in results)
    assert compute_wer(results) == pytest.approx(expected)
    f = io.StringIO()
    assert write_error_stats(f, "rand", results, enable_log=False) == pytest.approx(expected)


def test_errs_file_sections_and_consistent_counts():
    results = [
        ("u1", "set a timer for ten minutes".split(), "set the timer for ten".split()),
        ("u2", "call alice".split(), "call alice now".split()),
        ("u3", "stop".split(), [])
    ]
    f = io.StringIO()
    wer = write_error_stats(f, "toy", results, enable_log=False)
    text = f.getvalue()
    lines = text.splitlines()
    assert lines[0] == f"%WER = {wer:.2f}"
    for section in ("PER-UTT DETAILS:", "SUBSTITUTIONS:", "DELETIONS:", "INSERTIONS:", "PER-WORD STATS:"):
        assert any(line.startswith(section) for line in lines), section
    c = count_errors(results)
    assert f"Errors: {c.ins} insertions, {c.dels} deletions, {c.subs} substitutions, over {c.ref_words} reference words" in text

    def section(name):
        start = next(i for i, line in enumerate(lines) if line.startswith(name)) + 1
        body = []
        for line in lines[start:]:
            if not line.strip():
                break
            body.append(line)
        return body

    assert sum(int(line.split()[0]) for line in section("SUBSTITUTIONS:")) == c.subs
    assert sum(int(line.split()[0]) for line in section("DELETIONS:")) == c.dels
    assert sum(int(line.split()[0]) for line in section("INSERTIONS:")) == c.ins
    assert "u1:\tset (a->the) timer for ten (minutes->)" in text
    # per-word stats: count_in_ref summed over words equals the reference length
    per_word = section("PER-WORD STATS:")
    assert sum(int(line.split()[3]) for line in per_word) == c.ref_words


def test_store_transcripts_and_results_jsonl(tmp_path):
    store_transcripts(tmp_path / "recogs.txt", [("u1", ["a", "b"], ["a"])])
    assert (tmp_path / "recogs.txt").read_text() == "u1:\tref=['a', 'b']\nu1:\thyp=['a']\n"
    c = count_errors([("u1", ["a", "b"], ["a"])])
    append_result(tmp_path / "results.jsonl", ResultRecord.from_counts("ctc", "test", c, model="m", step=3))
    append_result(tmp_path / "results.jsonl", ResultRecord.from_counts("ctc", "dev", c))
    recs = read_results(tmp_path / "results.jsonl")
    assert [r["test_set"] for r in recs] == ["test", "dev"]
    assert recs[0]["wer"] == 50.0 and recs[0]["dels"] == 1 and recs[0]["step"] == 3
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_results(tmp_path / "bad.jsonl")


def test_text_normalisation():
    assert normalize_text("Turn ON the Lights, please!") == "turn on the lights please"
    assert normalize_text("It's 10:30 -- isn't it?") == "it's 10 30 isn't it"
    assert normalize_text("Hello, World", TextNormConfig(lower=False)) == "Hello World"


def test_score_cli(tmp_path, capsys):
    (tmp_path / "ref").write_text("u1 Turn on the light\nu2 call Bob\nu3 stop\n")
    (tmp_path / "hyp").write_text("u1 turn on the lights\nu2 call bob\n")
    wer = score_cli.main([
        "--ref", str(tmp_path / "ref"), "--hyp", str(tmp_path / "hyp"),
        "--errs", str(tmp_path / "errs.txt"), "--results", str(tmp_path / "r.jsonl"), "--method", "x",
    ])
    # u1: 1 sub, u3: missing hypothesis -> 1 deletion; 7 reference words
    assert wer == pytest.approx(100 * 2 / 7)
    assert "%WER 28.57" in capsys.readouterr().out
    assert (tmp_path / "errs.txt").read_text().startswith("%WER = 28.57")
    assert json.loads((tmp_path / "r.jsonl").read_text())["method"] == "x"
    with pytest.raises(FileNotFoundError, match="nope"):
        score_cli.main(["--ref", str(tmp_path / "nope"), "--hyp", str(tmp_path / "hyp")])
