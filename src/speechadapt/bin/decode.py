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
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

from speechadapt.data.datamodule import AsrDataModule, DataConfig, is_padding_duplicate, split_name
from speechadapt.data.prep_utils import comma_floats, comma_list
from speechadapt.decoding.results import Stopwatch, decode_dataloader, unseen_subset, write_decode_results
from speechadapt.models.interface import DecodeOptions
from speechadapt.models.registry import load_model
from speechadapt.training.averaging import WeightSelection
from speechadapt.training.dist import cleanup_dist, gather_lists, launch, launched_by_torchrun, setup_dist
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args
from speechadapt.utils.log import setup_logger
from speechadapt.utils.progress import Progress


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
    p.add_argument("--ctc-weight-grid", type=comma_floats, default=[],
                   help="LLM-ASR: CTC weights compared on --tune-sets (one beam pass scores them all); the best "
                        "mean WER sets --ctc-weight for the test sets (exp_dir/decode/ctc-weight-grid-KEY.json)")
    p.add_argument("--length-bonus-grid", type=comma_floats, default=[0.0],
                   help="with --ctc-weight-grid: per-word bonuses tried with each weight > 0 (the pair of the best "
                        "mean WER sets --ctc-weight and --length-bonus)")
    p.add_argument("--tune-sets", type=comma_list, default=[], help="the dev splits --ctc-weight-grid is tuned on")
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
    if options.ctc_weight > 0 and model.spec()["kind"] != "llm_asr":
        raise ValueError(f"--ctc-weight rescores LLM-ASR hypotheses with its encoders' CTC heads; the model in "
                         f"{args.exp_dir} is a {model.spec()['kind']} model")
    method = args.method or model.method_name
    data = AsrDataModule(dataclass_from_args(DataConfig, args), model.input_kind)
    if args.ctc_weight_grid:
        options = tune_ctc_weight(model, data, args, options, weights, dist_info)
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


def tune_ctc_weight(model, data, args, options: DecodeOptions, weights: str, dist_info) -> DecodeOptions:
    """Options with the (``--ctc-weight-grid``, ``--length-bonus-grid``) pair of the lowest
    mean WER over ``--tune-sets`` (candidates and scores computed once per utterance, every
    rank its share); the grid's WERs go to exp_dir/decode/ctc-weight-grid-KEY.json."""
    from speechadapt.models.llm_asr_rescore import rescoring_candidates, wer_by_setting
    from speechadapt.utils.io import atomic_write_text

    if not args.tune_sets:
        raise ValueError("--ctc-weight-grid needs --tune-sets (the dev splits the weights are compared on)")
    bad = [w for w in args.ctc_weight_grid if not 0.0 <= w <= 1.0]
    if bad:
        raise ValueError(f"--ctc-weight-grid values must be in [0, 1], got {bad}")
    # weight 0 is the LLM alone, where a bonus changes nothing
    settings = [(w, b) for w in args.ctc_weight_grid for b in (args.length_bonus_grid if w > 0 else [0.0])]
    normalize = options.normalizer(model)
    table: Dict[str, List[float]] = {}
    for tune_set in args.tune_sets:
        cuts = data.load_cuts(tune_set)
        batches = []
        loader = data.test_dataloaders(cuts, dist_info.world_size, dist_info.rank)
        for batch in Progress(loader, f"CTC weights on {tune_set}", every_n=0):
            candidates = rescoring_candidates(model, batch, options.num_beams, options.max_new_tokens)
            keep = [i for i, c in enumerate(batch.cut_ids) if not is_padding_duplicate(c)]
            batches.append(([batch.texts[i] for i in keep], candidates.subset(keep)))
        batches = gather_lists(batches)
        if sum(len(refs) for refs, _ in batches) != sum(1 for _ in cuts):
            raise RuntimeError(f"{tune_set}: candidates for {sum(len(r) for r, _ in batches)} of "
                               f"{sum(1 for _ in cuts)} cuts")
        table[split_name(tune_set)] = wer_by_setting(batches, settings, normalize)
    mean = [sum(col) / len(col) for col in zip(*table.values())]
    best = min(range(len(mean)), key=mean.__getitem__)
    chosen = replace(options, ctc_weight=settings[best][0], length_bonus=settings[best][1])
    report = {"ctc_weight_grid": args.ctc_weight_grid, "length_bonus_grid": args.length_bonus_grid,
              "settings": settings, "wer": table, "mean_wer": mean, "chosen": chosen.ctc_weight,
              "chosen_length_bonus": chosen.length_bonus, "num_beams": options.num_beams}
    logging.info(f"CTC weight grid on {args.tune_sets}: {report}")
    if dist_info.is_main:
        out = args.exp_dir / "decode" / f"ctc-weight-grid-{chosen.key(weights)}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(report, indent=1) + "\n", out)
    return chosen


def main(argv=None) -> Dict[str, float]:
    args = parse_args(get_parser(), argv, entry_point="decode")
    if args.world_size > 1 and not launched_by_torchrun():
        launch(run, args.world_size, args)  # the files are written by rank 0; read them for the WERs
        return {}
    rank, world_size = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if launched_by_torchrun() else (0, 1)
    return run(rank, world_size, args)


if __name__ == "__main__":
    main()
