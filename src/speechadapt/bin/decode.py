"""Decode any model of the registry on test sets and score it (every decoding stage).

    python -m speechadapt.bin.decode --exp-dir exp/ctc --epoch 8 --avg 3 --use-averaged-model true \\
        --manifest-dir data/fbank --cuts-prefix synth --test-sets source_test,target_test

    python -m speechadapt.bin.decode --exp-dir exp/llm_asr --checkpoint exp/llm_asr/epoch-6-avg-3.pt \\
        --decoding-method beam --beam-size 4 ...

The model is rebuilt from exp_dir/model.json (written by the trainer) and the weights
chosen by --checkpoint or --epoch/--iter/--avg/--use-averaged-model/--best-valid, so no
training flag is repeated here. The input (fbank or waveform) follows the model.
Writes exp_dir/decode/{recogs,errs,wer-summary}-SET-KEY.txt (KEY = search + weights,
e.g. greedy-epoch-8-avg-3-use-averaged-model) and appends one record per set (and per
``SET_unseen`` subset) to --results (default exp_dir/results.jsonl).

``--world-size N`` (or torchrun) splits every test set over N processes (a GPU each);
rank 0 gathers the hypotheses, checks that every cut was decoded exactly once, and writes
the same files a single process would.
"""

import argparse
import logging
import os
from pathlib import Path
from typing import Dict

from speechadapt.data.datamodule import AsrDataModule, DataConfig, split_name
from speechadapt.data.prep_utils import comma_list
from speechadapt.decoding.results import Stopwatch, decode_dataloader, unseen_subset, write_decode_results
from speechadapt.models.interface import DecodeOptions
from speechadapt.models.registry import load_model
from speechadapt.training.averaging import WeightSelection
from speechadapt.training.dist import cleanup_dist, gather_lists, launch, launched_by_torchrun, setup_dist
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args
from speechadapt.utils.log import setup_logger


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", type=Path, required=True, help="holds model.json and the checkpoints")
    p.add_argument("--test-sets", type=comma_list, required=True,
                   help="comma-separated split names (<prefix>_cuts_<name>.jsonl.gz) or paths")
    p.add_argument("--method", default=None, help="results.jsonl method name (default: the model's)")
    p.add_argument("--results", type=Path, default=None, help="default: exp_dir/results.jsonl")
    p.add_argument("--device", default=None, help="one process: default cuda when available; ranks: their GPU")
    p.add_argument("--world-size", type=int, default=1,
                   help="processes that share each test set (or run under torchrun); results gathered on rank 0")
    add_dataclass_arguments(p, WeightSelection, "weights")
    add_dataclass_arguments(p, DecodeOptions, "search")
    add_dataclass_arguments(p, DataConfig, "data")
    return p


def run(rank: int, world_size: int, args: argparse.Namespace) -> Dict[str, float]:
    """Decode on this rank's share of every test set; rank 0 gathers, scores and writes."""
    dist_info = setup_dist(rank, world_size)
    setup_logger(args.exp_dir, "decode", dist_info.rank, dist_info.world_size)
    device = args.device if args.device and dist_info.world_size == 1 else dist_info.device
    model, weights = load_model(args.exp_dir, dataclass_from_args(WeightSelection, args), device)
    options = dataclass_from_args(DecodeOptions, args)
    method = args.method or model.method_name
    data = AsrDataModule(dataclass_from_args(DataConfig, args), model.input_kind)
    wers: Dict[str, float] = {}
    for test_set in args.test_sets:
        cuts = data.load_cuts(test_set)
        name = split_name(test_set)
        loader = data.test_dataloaders(cuts, dist_info.world_size, dist_info.rank,
                                       sort_by_duration=getattr(model, "decode_sorted", False))
        with Stopwatch() as clock:
            results, audio_s = decode_dataloader(lambda batch: model.transcribe(batch, options), loader,
                                                 desc=f"decoding {name}", normalize=options.normalizer(model))
        results = sorted(gather_lists(results))  # padding duplicates were dropped on each rank
        audio_s = sum(gather_lists([audio_s]))
        seconds = max(gather_lists([clock.seconds]))  # every rank takes part in each gather
        expected = sum(1 for _ in cuts)
        if len(results) != expected or len({r[0] for r in results}) != expected:
            raise RuntimeError(f"{name}: {len(results)} hypotheses gathered for {expected} cuts")
        if dist_info.is_main:
            wers.update(write_decode_results(
                results, args.exp_dir, name, options.key(weights), method, args.results,
                seconds, audio_s,
                extra={"family": "asr", "decoding_method": options.decoding_method,
                       "model_kind": model.spec()["kind"], "world_size": dist_info.world_size},
                subsets=unseen_subset(cuts)))
    if dist_info.is_main:
        logging.info(f"WER: {wers}")
    cleanup_dist()
    return wers


def main(argv=None) -> Dict[str, float]:
    args = parse_args(get_parser(), argv, entry_point="decode")
    if args.world_size > 1 and not launched_by_torchrun():
        launch(run, args.world_size, args)  # the files are written by rank 0; read them for the WERs
        return {}
    rank, world_size = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if launched_by_torchrun() else (0, 1)
    return run(rank, world_size, args)


if __name__ == "__main__":
    main()
