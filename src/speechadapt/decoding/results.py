"""Decode a dataloader and write the result files every decoding stage shares.

icefall's ``recogs-SET-KEY.txt``, ``errs-SET-KEY.txt`` and ``wer-summary-SET-KEY.txt``
under ``exp_dir/decode/``, plus one ``results.jsonl`` record per (sub)set. Subsets
(e.g. ``SET_unseen``: sentences absent from the training text) come from cut fields.
"""

import logging
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from speechadapt.data.batch import SpeechBatch
from speechadapt.data.datamodule import is_padding_duplicate
from speechadapt.decoding.scoring import Result, ResultRecord, append_result, count_errors, store_transcripts, write_error_stats
from speechadapt.decoding.text_norm import characters, normalize_words
from speechadapt.utils.io import atomic_write_text
from speechadapt.utils.progress import Progress

TranscribeFn = Callable[[SpeechBatch], List[str]]


@torch.no_grad()
def decode_dataloader(transcribe: TranscribeFn, dataloader, desc: str = "decoding",
                      normalize: Optional[Callable[[str], List[str]]] = None) -> Tuple[List[Result], float]:
    """[(cut id, ref words, hyp words)] sorted by id, and the seconds of audio decoded.

    ``transcribe(batch)`` returns one hypothesis text per utterance (a model's
    ``transcribe``); ``normalize`` turns refs and hyps into words (default
    :func:`normalize_words`; ``DecodeOptions.normalizer`` for ``--text-norm``).
    Padding duplicates are dropped, so every cut is scored once.
    """
    normalize = normalize or normalize_words
    results, audio_s = [], 0.0
    progress = Progress(dataloader, desc, every_n=0)
    for batch in progress:
        hyps = transcribe(batch)
        if len(hyps) != len(batch):
            raise ValueError(f"{len(hyps)} hypotheses for a batch of {len(batch)}")
        for cut_id, ref, hyp, seconds in zip(batch.cut_ids, batch.texts, hyps, batch.durations):
            if is_padding_duplicate(cut_id):
                continue
            results.append((cut_id, normalize(ref), normalize(hyp)))
            audio_s += seconds
        progress.add(audio_s=batch.audio_seconds)
    return sorted(results), audio_s


def unseen_subset(cuts) -> Dict[str, Callable[[str], bool]]:
    """{"unseen": predicate} when the cuts say which sentences occur in the training text
    and some do (when none does, the whole set is already "unseen": no extra subset)."""
    unseen, total, known = set(), 0, False
    for cut in cuts:
        total += 1
        custom = cut.custom or {}
        if "seen_in_train" in custom:
            known = True
            if not custom["seen_in_train"]:
                unseen.add(cut.id)
    if known and len(unseen) == total:
        logging.info(f"all {total} sentences are absent from the training text")
    return {"unseen": unseen.__contains__} if known and len(unseen) < total else {}


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_decode_results(
    results: Sequence[Result],
    exp_dir,
    test_set: str,
    key: str,
    method: str,
    results_jsonl=None,
    wall_time_s: Optional[float] = None,
    audio_s: Optional[float] = None,
    extra: Optional[dict] = None,
    subsets: Optional[Dict[str, Callable[[str], bool]]] = None,
    model_name: Optional[str] = None,
) -> Dict[str, float]:
    """Write the files of ``test_set`` (and of ``test_set_NAME`` per subset); set -> WER.
    Each record's ``extra`` also holds the CER (``cer``, percent, over the characters of
    the normalised words joined by spaces) and ``ref_chars``."""
    out_dir = Path(exp_dir) / "decode"
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = Path(results_jsonl) if results_jsonl else Path(exp_dir) / "results.jsonl"
    sets = {test_set: list(results)}
    for name, keep in (subsets or {}).items():
        sets[f"{test_set}_{name}"] = [r for r in results if keep(r[0])]
    info = dict(extra or {})
    if wall_time_s is not None and audio_s:
        info["rtf"] = round(wall_time_s / audio_s, 4)
    wers = {}
    for name, res in sets.items():
        if not res:
            logging.warning(f"{name}: no utterances to score")
            continue
        store_transcripts(out_dir / f"recogs-{name}-{key}.txt", res)
        with open(out_dir / f"errs-{name}-{key}.txt", "w", encoding="utf-8") as f:
            wers[name] = write_error_stats(f, f"{name}-{key}", res)
        atomic_write_text(f"settings\tWER\n{key}\t{wers[name]:.2f}\n", out_dir / f"wer-summary-{name}-{key}.txt")
        counts = count_errors(res)
        chars = count_errors([(c, characters(ref), characters(hyp)) for c, ref, hyp in res])
        append_result(jsonl, ResultRecord.from_counts(
            method, name, counts, model=model_name or f"{Path(exp_dir).name}/{key}",
            wall_time_s=None if wall_time_s is None else round(wall_time_s, 3),
            peak_memory_mb=round(peak_memory_mb(), 1),
            extra=dict(info, num_utterances=len(res), cer=round(chars.wer, 4), ref_chars=chars.ref_words)))
        logging.info(f"{name} {key}: WER {wers[name]:.2f}% ({counts.errors}/{counts.ref_words})")
    return wers


class Stopwatch:
    def __enter__(self):
        self.start = time.time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.time() - self.start
