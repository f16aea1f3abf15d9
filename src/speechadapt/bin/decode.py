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
"""

import argparse
import logging
from pathlib import Path
from typing import Dict

import torch

from speechadapt.data.datamodule import AsrDataModule, DataConfig, split_name
from speechadapt.data.prep_utils import comma_list
from speechadapt.decoding.results import Stopwatch, decode_dataloader, unseen_subset, write_decode_results
from speechadapt.models.interface import DecodeOptions
from speechadapt.models.registry import load_model
from speechadapt.training.averaging import WeightSelection
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args
from speechadapt.utils.log import setup_logger


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", type=Path, required=True, help="holds model.json and the checkpoints")
    p.add_argument("--test-sets", type=comma_list, required=True,
                   help="comma-separated split names (<prefix>_cuts_<name>.jsonl.gz) or paths")
    p.add_argument("--method", default=None, help="results.jsonl method name (default: the model's)")
    p.add_argument("--results", type=Path, default=None, help="default: exp_dir/results.jsonl")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_dataclass_arguments(p, WeightSelection, "weights")
    add_dataclass_arguments(p, DecodeOptions, "search")
    add_dataclass_arguments(p, DataConfig, "data")
    return p


def main(argv=None) -> Dict[str, float]:
    args = parse_args(get_parser(), argv, entry_point="decode")
    setup_logger(args.exp_dir, "decode")
    model, weights = load_model(args.exp_dir, dataclass_from_args(WeightSelection, args), args.device)
    options = dataclass_from_args(DecodeOptions, args)
    method = args.method or model.method_name
    data = AsrDataModule(dataclass_from_args(DataConfig, args), model.input_kind)
    wers: Dict[str, float] = {}
    for test_set in args.test_sets:
        cuts = data.load_cuts(test_set)
        name = split_name(test_set)
        with Stopwatch() as clock:
            results, audio_s = decode_dataloader(lambda batch: model.transcribe(batch, options),
                                                 data.test_dataloaders(cuts), desc=f"decoding {name}")
        wers.update(write_decode_results(
            results, args.exp_dir, name, options.key(weights), method, args.results, clock.seconds, audio_s,
            extra={"family": "asr", "decoding_method": options.decoding_method, "model_kind": model.spec()["kind"]},
            subsets=unseen_subset(cuts)))
    logging.info(f"WER: {wers}")
    return wers


if __name__ == "__main__":
    main()
