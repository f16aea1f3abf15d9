"""Decode a Zipformer-CTC model (greedy, batched) and score it (egs/synth stage 12).

    python -m speechadapt.bin.decode_ctc --exp-dir exp/full/ctc --epoch 8 --avg 3 \
        --use-averaged-model true --lang-dir data/lang_bpe_500 --manifest-dir data/fbank \
        --test-sets source_test,target_test

The weights come from --checkpoint FILE or from the exp dir's epoch/checkpoint files
averaged in memory (the flags of ``speechadapt.bin.average_checkpoints``); the model's
shape from exp_dir/model_config.json (written by train_ctc). Writes
exp_dir/decode/{recogs,errs,wer-summary}-SET-greedy-NAME.txt and appends one record per
set (and per ``SET_unseen`` subset) to --results (default exp_dir/results.jsonl).
"""

import argparse
import logging
from pathlib import Path
from typing import Dict

import torch

from speechadapt.bin.average_checkpoints import add_model_selection_arguments, select_weights
from speechadapt.bin.train_ctc import load_model_config
from speechadapt.data.datamodule import AsrDataModule
from speechadapt.decoding.ctc import ctc_greedy_texts, load_bpe
from speechadapt.decoding.results import Stopwatch, decode_dataloader, unseen_subset, write_decode_results
from speechadapt.utils.log import setup_logger


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, default=None, help="a file with a 'model' entry (overrides --epoch)")
    add_model_selection_arguments(p)
    p.add_argument("--lang-dir", type=Path, required=True)
    p.add_argument("--test-sets", type=lambda s: [t for t in s.split(",") if t], default=["source_test"])
    p.add_argument("--method", default="zipformer-ctc", help="the results.jsonl method name")
    p.add_argument("--results", type=Path, default=None, help="default: exp_dir/results.jsonl")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    AsrDataModule.add_arguments(p)
    return p


def main(argv=None) -> Dict[str, float]:
    args = get_parser().parse_args(argv)
    setup_logger(args.exp_dir, "decode-ctc")
    device = torch.device(args.device)
    model = load_model_config(args.exp_dir)
    state, name, files = select_weights(args)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    logging.info(f"decoding with {name} (from {len(files)} files)")
    sp = load_bpe(args.lang_dir)
    if sp.get_piece_size() != model.vocab_size:
        raise ValueError(f"{args.lang_dir} has {sp.get_piece_size()} pieces, the model {model.vocab_size}")
    data = AsrDataModule(args)
    wers = {}
    for test_set in args.test_sets:
        cuts = data.load_cuts(test_set)
        with Stopwatch() as clock:
            results, audio_s = decode_dataloader(ctc_greedy_texts(model, sp), data.test_dataloaders(cuts), device)
        wers.update(write_decode_results(
            results, args.exp_dir, test_set, f"greedy-{name}", args.method, args.results,
            clock.seconds, audio_s, extra={"family": "asr", "decoding_method": "greedy"},
            subsets=unseen_subset(cuts)))
    return wers


if __name__ == "__main__":
    main()
