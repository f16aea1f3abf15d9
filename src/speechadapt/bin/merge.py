"""Merge a pre-trained model with fine-tuned ones in weight space (Speech-FT), or sweep alpha.

    python -m speechadapt.bin.merge --base exp/ctc/epoch-8-avg-3.pt \\
        --finetuned exp/ft/stable/best.pt [more ...] --alpha 0.25 --out exp/merge/alpha-0.25/merged.pt

    python -m speechadapt.bin.merge --base exp/ctc/epoch-8-avg-3.pt --finetuned exp/ft/stable/best.pt \\
        --alphas 0:1:0.1 --tune-sets source_dev,target_dev --test-sets source_test,target_test \\
        --out exp/merge/stable/merged.pt --manifest-dir data/fbank --cuts-prefix synth

Every checkpoint's model comes from the ``model.json`` beside it (``--base-exp-dir`` to
say otherwise); the fine-tuned ones must describe the same model (kind, sizes, files),
else the command stops naming the fields that differ. LoRA adapters are folded into
their base weights before interpolating. The output file holds what the inputs store
(all weights of a full model; for an adapter-only LLM-ASR its trained parts plus the
folded LoRA base weights) and a ``model.json`` is written beside it, so ``bin.decode
--exp-dir DIR --checkpoint F``, ``bin.tta``, ``bin.finetune`` and ``bin.probe
--source-exp-dir DIR --checkpoint F`` load it like any checkpoint.

Sweep (``--alphas``): each alpha is decoded on the tuning sets (records of family
``merge-sweep``, also ``exp_dir/sweep.jsonl``); the pick is the alpha with the lowest WER
on the target tuning set (the last of ``--tune-sets``) among those whose WER on the
source tuning set (the first) stays within ``--source-tolerance`` (relative, 5%) of
alpha 0's, the pre-trained model (ties: the smaller alpha). The picked model is
written to ``--out`` and decoded on ``--test-sets``. ``--from-finetuned lm_head`` takes
those keys from the fine-tuned model(s) at every alpha: a CTC head trained from scratch
on a pre-trained encoder (HuBERT-base) has no pre-trained value worth interpolating with.
"""

import argparse
import json
import logging
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from speechadapt.adapt.merge import (check_alpha, extra_keys, fold_lora, folded_keys, lora_layers,
                                     merge_state_dicts, selected_keys, without_lora)
from speechadapt.data.datamodule import AsrDataModule, DataConfig, split_name
from speechadapt.data.prep_utils import comma_list
from speechadapt.decoding.results import Stopwatch, decode_dataloader, unseen_subset, write_decode_results
from speechadapt.models.interface import DecodeOptions
from speechadapt.models.registry import SPEC_FILE, model_from_spec, read_spec, write_spec
from speechadapt.training.averaging import WeightSelection, select_weights
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args
from speechadapt.utils.io import atomic_save, atomic_write_text
from speechadapt.utils.log import setup_logger

DATA_DEFAULTS = dict(enable_spec_aug=False)


def get_parser(tokens=()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="the pre-trained model's checkpoint")
    p.add_argument("--base-exp-dir", type=Path, default=None, help="its model.json (default: the file's directory)")
    p.add_argument("--finetuned", type=Path, nargs="+", required=True,
                   help="fine-tuned checkpoints (each with a model.json beside it)")
    p.add_argument("--out", type=Path, required=True, help="the merged checkpoint (model.json written beside it)")
    p.add_argument("--alpha", type=float, default=None, help="one merge: 0 = the base, 1 = the fine-tuned mean")
    p.add_argument("--alphas", default="", help="a sweep: 'a,b,c' or 'start:stop:step' (inclusive)")
    p.add_argument("--allow-extrapolation", action="store_true", help="accept alpha outside [0, 1]")
    p.add_argument("--include", type=comma_list, default=[], help="regexes of the keys to merge (default: all)")
    p.add_argument("--exclude", type=comma_list, default=[], help="regexes of keys kept from the base")
    p.add_argument("--from-finetuned", type=comma_list, default=[],
                   help="regexes of keys taken whole from the fine-tuned mean at every alpha: a task head the "
                        "fine-tuning trained from scratch on a base without one (e.g. 'lm_head')")
    p.add_argument("--keep-extra-keys", action="store_true",
                   help="keys only the fine-tuned models have (a new head) come from the first of them")
    p.add_argument("--tune-sets", type=comma_list, default=[], help="sweep: source then target tuning set")
    p.add_argument("--source-tolerance", type=float, default=0.05,
                   help="sweep: relative source WER increase over alpha 0 allowed for the pick")
    p.add_argument("--test-sets", type=comma_list, default=[], help="decoded with the merged (picked) model")
    p.add_argument("--method", default="speech-ft-merge", help="results.jsonl method name")
    p.add_argument("--family", default="", help="results.jsonl family of the test records (default: merge)")
    p.add_argument("--results", type=Path, default=None, help="default: the output directory's results.jsonl")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_dataclass_arguments(p, DataConfig, "data (sweep and test sets)", defaults=DATA_DEFAULTS)
    add_dataclass_arguments(p, DecodeOptions, "search")
    return p


def parse_alphas(text: str) -> List[float]:
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"--alphas start:stop:step, got {text!r}")
        start, stop, step = map(float, parts)
        if step <= 0 or stop < start:
            raise ValueError(f"--alphas {text!r}: needs step > 0 and stop >= start")
        n = int(round((stop - start) / step))
        return [round(start + i * step, 10) for i in range(n + 1)]
    try:
        return [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--alphas takes numbers, got {text!r}") from None


def spec_dir(checkpoint: Path, override=None) -> Path:
    return Path(override) if override else checkpoint.parent


def load_member(checkpoint: Path, exp_dir: Path, device) -> Tuple[torch.nn.Module, dict, List[str]]:
    """(model with the checkpoint's weights, its spec, the keys the file stores)."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} does not exist")
    spec = read_spec(exp_dir)
    model = model_from_spec(spec, device)
    state, _, _ = select_weights(exp_dir, WeightSelection(checkpoint=str(checkpoint)))
    try:
        model.load_weights(state)
    except (KeyError, ValueError) as e:
        raise type(e)(f"{checkpoint} does not fit the model of {exp_dir / SPEC_FILE}: {e}") from None
    return model.eval(), spec, list(state)


def check_same_architecture(base_spec: dict, spec: dict, name: Path) -> None:
    if spec == base_spec:
        return
    differ = sorted(k for k in set(base_spec) | set(spec) if base_spec.get(k) != spec.get(k))
    details = "; ".join(f"{k}: {base_spec.get(k)!r} vs {spec.get(k)!r}" for k in differ)
    raise ValueError(f"{name} is a different model from the base (differing fields of model.json: {details}); "
                     f"only models of one architecture can be merged")


def model_state(model) -> Dict[str, torch.Tensor]:
    if lora_layers(model):
        return without_lora(fold_lora(model))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Merger:
    """The base and fine-tuned states loaded once; ``merged(alpha)`` -> a full state."""

    def __init__(self, args, device):
        base_dir = spec_dir(args.base, args.base_exp_dir)
        missing = [str(p) for p in (args.base, *args.finetuned) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)} does not exist")
        base_spec = read_spec(base_dir)
        for path in args.finetuned:  # before building anything
            check_same_architecture(base_spec, read_spec(spec_dir(path)), path)
        self.model, self.spec, stored = load_member(args.base, base_dir, device)
        self.spec_dir = base_dir
        self.base = model_state(self.model)
        self.finetuned, self.names = [], []
        self.stored = set(stored)
        for path in args.finetuned:
            model, _, stored = load_member(path, spec_dir(path), "cpu")
            self.finetuned.append(model_state(model))
            self.names.append(str(path))
            self.stored.update(stored)
            del model
        self.lora_keys = set(folded_keys(self.model))
        self.stored.update(self.lora_keys)  # folded base weights of LoRA layers, their zeroed B
        self.args = args
        extra = extra_keys(self.base, self.finetuned)
        if extra:
            logging.info(f"{len(extra)} keys only the fine-tuned models have (e.g. {extra[0]}): "
                         + ("taken from the first" if args.keep_extra_keys else "dropped (--keep-extra-keys keeps them)"))

    def merged(self, alpha: float) -> Dict[str, torch.Tensor]:
        args = self.args
        whole = getattr(args, "from_finetuned", None) or []
        state = merge_state_dicts(self.base, self.finetuned, alpha, args.include, list(args.exclude) + whole,
                                  args.keep_extra_keys, args.allow_extrapolation, self.names)
        if whole:  # alpha 1 on these keys: the fine-tuned (mean) values
            head = merge_state_dicts(self.base, self.finetuned, 1.0, whole, [], False, False, self.names)
            state.update({k: head[k] for k in selected_keys(self.base, whole)})
        return state

    def load(self, alpha: float) -> None:
        """Put the merged weights into the decoding model (LoRA factors stay as folded)."""
        state = self.merged(alpha)
        for key in self.lora_keys:
            if ".lora_B." in key:
                state[key] = torch.zeros_like(self.model.state_dict()[key])
        self.model.load_state_dict(state, strict=False)

    def save(self, alpha: float, out: Path) -> Path:
        state = self.merged(alpha)
        own = self.model.state_dict()
        for key in self.lora_keys:  # folded: B = 0, so the LoRA layers add nothing
            if ".lora_B." in key:
                state[key] = torch.zeros_like(own[key])
        for key in self.stored - set(state):  # LoRA A factors (inert with B = 0): the base's
            if key in own:
                state[key] = own[key].detach().clone()
        keep = {k: v for k, v in state.items() if k in self.stored or k not in own}
        out.parent.mkdir(parents=True, exist_ok=True)
        info = dict(alpha=alpha, base=str(self.args.base), finetuned=self.names, include=self.args.include,
                    exclude=self.args.exclude)
        atomic_save({"model": keep, "merge": info}, out)
        write_spec(out.parent, self.spec)
        logging.info(f"wrote {out} ({len(keep)} tensors, alpha {alpha:g}) and {out.parent / SPEC_FILE}")
        return out


def decode_sets(merger: Merger, data: AsrDataModule, sets: Sequence[str], opts: DecodeOptions, out_dir: Path,
                method: str, results: Path, key: str, extra: dict) -> Dict[str, float]:
    wers: Dict[str, float] = {}
    for name in sets:
        cuts = data.load_cuts(name)
        with Stopwatch() as clock:
            res, audio_s = decode_dataloader(lambda b: merger.model.transcribe(b, opts), data.test_dataloaders(cuts),
                                             desc=f"decoding {split_name(name)} ({key})",
                                             normalize=opts.normalizer(merger.model))
        wers.update(write_decode_results(res, out_dir, split_name(name), key, method, results, clock.seconds,
                                         audio_s, extra=extra, subsets=unseen_subset(cuts),
                                         model_name=f"{out_dir.parent.name}/{out_dir.name}/{key}"))
    return wers


def pick_alpha(points: List[dict], source: str, target: str, tolerance: float) -> dict:
    """The lowest target WER among the alphas whose source WER is within ``tolerance``
    (relative) of alpha 0's; ties: the smaller alpha."""
    reference = next((p for p in points if p["alpha"] == 0.0), None)
    if reference is None:
        raise ValueError("the sweep needs alpha 0 (the pre-trained model) as the source reference")
    limit = reference[source] * (1 + tolerance)
    allowed = [p for p in points if p[source] <= limit + 1e-9]
    return min(allowed, key=lambda p: (p[target], p["alpha"]))


def sweep(merger: Merger, args, data: AsrDataModule, opts: DecodeOptions, results: Path) -> float:
    if len(args.tune_sets) != 2:
        raise ValueError(f"--alphas needs --tune-sets SOURCE,TARGET (two sets), got {args.tune_sets}")
    source, target = (split_name(s) for s in args.tune_sets)
    out_dir = args.out.parent
    points = []
    for alpha in parse_alphas(args.alphas):
        check_alpha(alpha, args.allow_extrapolation)
        merger.load(alpha)
        wers = decode_sets(merger, data, args.tune_sets, opts, out_dir, f"{args.method}-sweep", results,
                           f"alpha-{alpha:g}", dict(family="merge-sweep", alpha=alpha, base=str(args.base),
                                                    finetuned=merger.names))
        points.append(dict(alpha=alpha, **{s: wers[s] for s in (source, target)}))
        logging.info(f"alpha {alpha:g}: {source} {wers[source]:.2f}%, {target} {wers[target]:.2f}%")
    atomic_write_text("".join(json.dumps(p) + "\n" for p in points), out_dir / "sweep.jsonl")
    best = pick_alpha(points, source, target, args.source_tolerance)
    logging.info(f"picked alpha {best['alpha']:g}: lowest {target} with {source} within "
                 f"{args.source_tolerance:.0%} of alpha 0's")
    return best["alpha"]


def main(argv=None) -> float:
    args = parse_args(get_parser, argv, entry_point="merge")
    if (args.alpha is None) == (not args.alphas):
        raise SystemExit("error: give --alpha A (one merge) or --alphas LIST (a sweep)")
    try:
        if args.alpha is not None:
            check_alpha(args.alpha, args.allow_extrapolation)
        else:
            parse_alphas(args.alphas)
        data = AsrDataModule(dataclass_from_args(DataConfig, args))
        data.require(*args.tune_sets, *args.test_sets)
        setup_logger(args.out.parent, "merge")
        merger = Merger(args, args.device)
        # the model's input (fbank, or waveform for Hugging Face models) for the decoding below
        data = AsrDataModule(dataclass_from_args(DataConfig, args), merger.model.input_kind)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {e}") from None
    opts = dataclass_from_args(DecodeOptions, args)
    results = args.results or args.out.parent / "results.jsonl"
    alpha = args.alpha if args.alpha is not None else sweep(merger, args, data, opts, results)
    merger.save(alpha, args.out)
    if args.test_sets:
        merger.load(alpha)
        extra = dict(family=args.family or "merge", alpha=alpha, base=str(args.base), finetuned=merger.names,
                     picked_by=f"lowest {args.tune_sets[-1]} with {args.tune_sets[0]} within "
                               f"{args.source_tolerance:.0%} of alpha 0" if args.alphas else "given")
        wers = decode_sets(merger, data, args.test_sets, opts, args.out.parent, args.method, results,
                           f"alpha-{alpha:g}", extra)
        logging.info(f"{args.method} (alpha {alpha:g}): {wers}")
    return alpha


if __name__ == "__main__":
    main()
