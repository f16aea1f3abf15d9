"""Decoding split over processes (--world-size 2, gloo): rank 0 gathers every hypothesis
once and writes what one process writes."""

import json

from speechadapt.bin import decode

from mini_corpus import data_flags  # noqa: E402 (tests/ is on sys.path)


def decode_with(root, world_size, results):
    decode.main(["--exp-dir", str(root / "src"), "--epoch", "1", "--test-sets", "dev,test", *data_flags(root),
                 "--max-duration", "2", "--results", str(results), "--world-size", str(world_size)])
    files = {p.name: p.read_text() for p in (root / "src" / "decode").glob("recogs-*-greedy-epoch-1-avg-1.txt")}
    return files, [json.loads(line) for line in results.read_text().splitlines()]


def test_two_processes_decode_what_one_does(trained_mini_ctc, tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    one_files, one = decode_with(trained_mini_ctc, 1, tmp_path / "one.jsonl")
    two_files, two = decode_with(trained_mini_ctc, 2, tmp_path / "two.jsonl")
    assert set(one_files) == {"recogs-dev-greedy-epoch-1-avg-1.txt", "recogs-test-greedy-epoch-1-avg-1.txt"}
    assert one_files == two_files  # the same hypotheses, in the same order
    assert [(r["test_set"], r["wer"], r["extra"]["num_utterances"]) for r in one] == [
        (r["test_set"], r["wer"], r["extra"]["num_utterances"]) for r in two]
    assert [r["extra"]["world_size"] for r in two] == [2, 2]
