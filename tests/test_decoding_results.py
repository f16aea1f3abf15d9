"""Shared decoding: padding duplicates dropped, unseen subsets, result files and records."""

import pytest
import torch
from lhotse.testing.dummies import dummy_cut

from speechadapt.data.batch import SpeechBatch
from speechadapt.decoding.results import decode_dataloader, unseen_subset, write_decode_results
from speechadapt.decoding.scoring import read_results


def _batch(ids, texts, kind="fbank"):
    inputs = torch.zeros(len(ids), 8, 80) if kind == "fbank" else torch.zeros(len(ids), 1600)
    return SpeechBatch(inputs, torch.full((len(ids),), inputs.shape[1]), texts, ids, [0.5] * len(ids), kind)


@pytest.mark.parametrize("kind", ["fbank", "waveform"])
def test_decode_dataloader_drops_padding_duplicates_and_normalises(kind):
    batches = [_batch(["a", "b"], ["Turn ON", "stop"], kind), _batch(["a_dup0"], ["Turn ON"], kind)]
    results, audio_s = decode_dataloader(lambda batch: ["turn on"] * len(batch), batches)
    assert results == [("a", ["turn", "on"], ["turn", "on"]), ("b", ["stop"], ["turn", "on"])]
    assert audio_s == 2 * 0.5  # durations, whatever the input; the duplicate is not counted
    with pytest.raises(ValueError, match="1 hypotheses for a batch of 2"):
        decode_dataloader(lambda batch: ["x"], batches)


def test_unseen_subset_only_when_some_sentences_were_seen():
    cuts = [dummy_cut(i) for i in range(3)]
    for c, seen in zip(cuts, (True, False, False)):
        c.custom = {"seen_in_train": seen}
    pred = unseen_subset(cuts)["unseen"]
    assert [pred(c.id) for c in cuts] == [False, True, True]
    for c in cuts:
        c.custom = {"seen_in_train": False}
    assert unseen_subset(cuts) == {}
    assert unseen_subset([dummy_cut(9)]) == {}


def test_write_decode_results_files_and_records(tmp_path):
    results = [("u1", ["a", "b"], ["a", "b"]), ("u2", ["c", "d"], ["c"])]
    wers = write_decode_results(results, tmp_path, "test", "greedy-epoch-1-avg-1", "m", wall_time_s=1.0,
                                audio_s=4.0, extra={"family": "asr"}, subsets={"odd": lambda i: i == "u2"})
    assert wers == {"test": 25.0, "test_odd": 50.0}
    for kind in ("recogs", "errs", "wer-summary"):
        assert (tmp_path / "decode" / f"{kind}-test-greedy-epoch-1-avg-1.txt").exists()
    recs = read_results(tmp_path / "results.jsonl")
    assert [(r["test_set"], r["wer"], r["extra"]["rtf"], r["extra"]["num_utterances"]) for r in recs] == [
        ("test", 25.0, 0.25, 2), ("test_odd", 50.0, 0.25, 1)]
