"""Decode LLM-ASR / MoSE with batched ``generate`` (KV cache), greedy or beam search,
and score it like every other model.

    python -m speechadapt.bin.decode_llm_asr \\
        --exp-dir exp/llm_asr --epoch 10 --avg 3 --use-averaged-model true \\
        --llm-dir exp/tiny_qwen2 --encoder-ckpt exp/ctc/epoch-20-avg-5.pt \\
        --manifest-dir data/fbank --test-sets source_test,target_test --decoding-method greedy

The model flags (--llm-dir, --encoder-ckpt, --lora-r, ...) must be the ones used in
training: checkpoints hold only the trainable parameters. The weights come from
--checkpoint FILE, or from exp_dir's epoch/checkpoint files averaged in memory as in
``speechadapt.bin.average_checkpoints`` (--epoch/--iter, --avg, --use-averaged-model).

Writes exp_dir/decode/{recogs,errs,wer-summary}-SET-METHOD-SUFFIX.txt and appends one
record per test set to exp_dir/results.jsonl.
"""

import argparse
import logging
from pathlib import Path
from typing import Dict, Sequence

import torch

from speechadapt.bin.average_checkpoints import add_model_selection_arguments, select_weights
from speechadapt.bin.train_llm_asr import check_inputs
from speechadapt.decoding.results import Stopwatch, decode_dataloader, unseen_subset, write_decode_results
from speechadapt.models.llm_asr_build import add_llm_asr_arguments, build_llm_asr_model, llm_asr_config_from_args
from speechadapt.utils.log import setup_logger
from speechadapt.utils.safe_load import safe_torch_load

def get_parser() -> argparse.ArgumentParser:
    from speechadapt.data.datamodule import AsrDataModule

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, default=None, help="a file with a 'model' entry (overrides --epoch)")
    add_model_selection_arguments(p)
    p.add_argument("--decoding-method", choices=["greedy", "beam"], default="greedy")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--method", default=None, help="results.jsonl method name (default llm-asr / mose)")
    p.add_argument("--results", type=Path, default=None, help="default: exp_dir/results.jsonl")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--test-sets", type=lambda s: [t for t in s.split(",") if t], default=["source_test"],
                   help="comma-separated splits: <manifest-dir>/synth_cuts_<split>.jsonl.gz")
    add_llm_asr_arguments(p)
    AsrDataModule.add_arguments(p)
    return p


def warn_on_model_mismatch(args: argparse.Namespace, config) -> None:
    """Compare the model flags with what training stored in its last epoch file: a
    different encoder or LLM still loads (same shapes) but decodes garbage."""
    from speechadapt.bin.train_llm_asr import model_params

    epoch = args.epoch if args.epoch > 0 else None
    path = args.exp_dir / f"epoch-{epoch}.pt" if epoch else None
    if path is None or not path.is_file():
        return
    trained = safe_torch_load(path).get("params") or {}
    for key, value in model_params(args, config).items():
        if key in trained and trained[key] != value:
            logging.warning(f"model setting {key!r}: decoding with {value}, but {path} was trained "
                            f"with {trained[key]}")


def main(argv: Sequence[str] = None) -> Dict[str, float]:
    from speechadapt.data.datamodule import AsrDataModule

    args = get_parser().parse_args(argv)
    check_inputs(args)
    setup_logger(args.exp_dir, "decode-llm-asr")
    config = llm_asr_config_from_args(args)
    model = build_llm_asr_model(args.llm_dir, args.encoder_ckpt, args.encoder_preset, config,
                                device=args.device, dtype=args.llm_dtype, pad_invariant=args.encoder_pad_invariant)
    warn_on_model_mismatch(args, config)
    state, suffix, _ = select_weights(args)
    model.load_trainable_state_dict(state)
    model.eval()
    num_beams = 1 if args.decoding_method == "greedy" else args.beam_size
    key = f"{args.decoding_method}{'' if num_beams == 1 else num_beams}-{suffix}"
    method = args.method or ("mose" if model.num_slots > 1 else "llm-asr")
    data = AsrDataModule(args)
    wers = {}
    for test_set in args.test_sets:
        cuts = data.load_cuts(test_set)
        with Stopwatch() as clock:
            results, audio_s = decode_dataloader(
                lambda x, lens: model.decode(x, lens, max_new_tokens=args.max_new_tokens, num_beams=num_beams),
                data.test_dataloaders(cuts), args.device)
        wers.update(write_decode_results(
            results, args.exp_dir, test_set, key, method, args.results, clock.seconds, audio_s,
            extra={"family": "asr", "decoding_method": args.decoding_method}, subsets=unseen_subset(cuts)))
    return wers


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny models: more threads only contend on shared CPUs
    main()
