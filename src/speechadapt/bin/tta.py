"""Test-time adaptation of any CTC model (SUTA, ZO-TTA, continual), scored like a decode.

    python -m speechadapt.bin.tta --source-exp-dir exp/ctc --checkpoint exp/ctc/epoch-8-avg-3.pt \\
        --exp-dir exp/tta/suta --optimizer adamw --base-lr 1e-3 --steps 10 \\
        --tune-set target_dev --grid "base_lr=3e-4,1e-3;em_coef=0.3,1.0" \\
        --test-sets source_test,target_test --manifest-dir data/fbank --cuts-prefix synth

    python -m speechadapt.bin.tta --model hf_ctc --model-dir /models/wav2vec2-base-960h \\
        --optimizer zo-asr --zo-num-queries 8 --steps 40 ...                 # ZO-TTA on wav2vec2

Every utterance is adapted alone (``--mode episodic``: from the source each time;
``--mode continual``: the weights carry over, with reset rules) and decoded greedily.
With ``--tune-set`` and ``--grid`` (``key=v1,v2;key2=...`` over the TTA and optimiser
flags) every combination is run on the tuning set first (``exp_dir/grid.jsonl``, with the
WER after each ``--decode-at`` step count) and the test sets use the settings and step
count with the lowest WER (ties: the first, the fewer steps); with ``--guard-set
source_dev`` only those whose guard WER stays within ``--guard-tolerance`` (5%) of the
source model's qualify. Writes
``exp_dir/decode/{recogs,errs,wer-summary}-SET-KEY.txt``, one adaptation log line per
utterance (``exp_dir/tta/SET-KEY.jsonl``: steps, losses, resets, wall time) and one
results.jsonl record per set with the cost (updates, forward/backward passes, seconds
per utterance, real-time factor, peak memory) and what went wrong (utterances too
short, non-finite losses: those are decoded unadapted). ``--steps 0`` records the
source model through the same path.
"""

import argparse
import dataclasses
import itertools
import json
import logging
import typing
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from speechadapt.adapt.source import add_source_arguments, check_source, load_source
from speechadapt.adapt.tta import TestTimeAdapter, TtaOptions, check_ctc_model, tta_parameters
from speechadapt.data.datamodule import AsrDataModule, DataConfig, split_name
from speechadapt.data.prep_utils import comma_list
from speechadapt.decoding.results import unseen_subset, write_decode_results
from speechadapt.decoding.scoring import compute_wer
from speechadapt.decoding.text_norm import normalize_words
from speechadapt.models.registry import write_spec
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.state import fix_random_seed
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, field_parser, parse_args
from speechadapt.utils.io import atomic_write_text
from speechadapt.utils.log import setup_logger
from speechadapt.utils.memory import PeakMemory
from speechadapt.utils.progress import Progress

OPTIMIZER_DEFAULTS = dict(optimizer="adamw", base_lr=2e-5)  # SUTA's for wav2vec2-base
# One utterance at a time, in manifest order (a continual stream has an order).
DATA_DEFAULTS = dict(bucketing_sampler=False, enable_spec_aug=False, max_duration=100.0)
GRID_CLASSES = (TtaOptions, OptimizerConfig)


def get_parser(tokens=()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p, tokens)
    p.add_argument("--exp-dir", type=Path, required=True, help="where the results of this TTA run go")
    p.add_argument("--test-sets", type=comma_list, required=True, help="split names or paths")
    p.add_argument("--tune-set", default="", help="split the --grid is evaluated on (e.g. target_dev)")
    p.add_argument("--grid", default="", help="key=v1,v2;key2=... over TTA and optimiser flags (with --tune-set)")
    p.add_argument("--guard-set", default="", help="a split the chosen settings must not hurt (e.g. source_dev)")
    p.add_argument("--guard-tolerance", type=float, default=0.05,
                   help="relative WER rise allowed on --guard-set against the source model")
    p.add_argument("--results", type=Path, default=None, help="default: exp_dir/results.jsonl")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_dataclass_arguments(p, TtaOptions, "test-time adaptation")
    add_dataclass_arguments(p, OptimizerConfig, "optimizer", defaults=OPTIMIZER_DEFAULTS)
    add_dataclass_arguments(p, DataConfig, "data", defaults=DATA_DEFAULTS)
    return p


# ---- the grid --------------------------------------------------------------------------
def parse_grid(text: str) -> List[Dict[str, Any]]:
    """``"base_lr=1e-4,1e-3;steps=5,10"`` -> every combination, as {field: value}."""
    axes: List[Tuple[str, List[Any]]] = []
    for item in filter(None, (t.strip() for t in text.split(";"))):
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        owner = next((c for c in GRID_CLASSES if key in {f.name for f in dataclasses.fields(c)}), None)
        if not sep or owner is None or key in ("mode", "params", "method", "optimizer"):
            raise ValueError(f"--grid item {item!r}: expected key=v1,v2 with a TTA or optimiser flag as key "
                             f"(not mode, params, method, optimizer)")
        parse = field_parser(typing.get_type_hints(owner)[key])
        axes.append((key, [parse(v.strip()) for v in values.split(",") if v.strip()]))
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]


def with_settings(options: TtaOptions, optim: OptimizerConfig, point: Dict[str, Any]):
    tta_keys = {f.name for f in dataclasses.fields(TtaOptions)}
    new_options = dataclasses.replace(options, **{k: v for k, v in point.items() if k in tta_keys})
    new_optim = dataclasses.replace(optim, **{k: v for k, v in point.items() if k not in tta_keys})
    new_options.validate()
    new_optim.validate()
    return new_options, new_optim


def method_name(options: TtaOptions, optim: OptimizerConfig) -> str:
    if options.method:
        return options.method
    if options.steps == 0:
        return "no-tta"
    name = "suta" if optim.optimizer == "adamw" else f"zo-tta-{optim.optimizer}"
    return ("continual-" if options.mode == "continual" else "") + name


def run_key(options: TtaOptions, optim: OptimizerConfig) -> str:
    """The file-name key of a run's settings (``tta-adamw-s10-lr0.001-em0.3``)."""
    if options.steps == 0:
        return "tta-none"
    mode = "" if options.mode == "episodic" else "-continual"
    q = f"-q{optim.zo_num_queries}" if optim.zeroth_order and optim.zo_num_queries else ""
    return f"tta-{optim.optimizer}{q}{mode}-s{options.steps}-lr{optim.base_lr:g}-em{options.em_coef:g}"


# ---- one pass over a set -------------------------------------------------------------
def adapt_set(model, tuned, optim: OptimizerConfig, options: TtaOptions, cuts, data, desc: str):
    """Adapt and decode every utterance of ``cuts``; (results, logs, adapter, audio seconds, peak)."""
    loader = data.test_dataloaders(cuts)
    adapter = TestTimeAdapter(model, tuned, optim, options)
    results, logs, audio_s = [], [], 0.0
    progress = Progress(loader, desc, every_n=0)
    try:
        with PeakMemory(model.device) as peak:
            for batch in progress:
                for utterance in batch.utterances():
                    text, log = adapter.adapt_and_decode(utterance)
                    results.append((utterance.cut_ids[0], normalize_words(utterance.texts[0]), normalize_words(text)))
                    logs.append(dataclasses.asdict(log))
                    audio_s += utterance.audio_seconds
                progress.add(audio_s=batch.audio_seconds)
    finally:
        adapter.restore()  # the next run starts from the source, whatever happened here
    expected = sum(1 for _ in cuts)
    if expected != len(results):  # nothing dropped silently
        raise RuntimeError(f"{desc}: {len(results)} utterances scored of {expected} cuts")
    return sorted(results), logs, adapter, audio_s, peak


def curve_wers(adapter: TestTimeAdapter, results) -> Dict[str, float]:
    """WER after each ``--decode-at`` step count (utterances not adapted that far: final text)."""
    out = {}
    final = {cut_id: hyp for cut_id, _, hyp in results}
    for step, hyps in adapter.hyps_at.items():
        res = [(c, ref, normalize_words(hyps[c]) if hyps.get(c) is not None else final[c]) for c, ref, _ in results]
        out[str(step)] = round(compute_wer(res), 4)
    return out


def record_extra(adapter, options: TtaOptions, optim: OptimizerConfig, source: str, audio_s: float, peak,
                 results, point) -> Dict[str, Any]:
    summary = adapter.summary()
    n = max(1, summary["utterances"])
    return dict(family="tta", source=source, mode=options.mode, params=options.params, optimizer=optim.optimizer,
                steps_per_utt=options.steps, base_lr=optim.base_lr, em_coef=options.em_coef, tau=options.tau,
                zo_num_queries=getattr(adapter.optimizer, "num_queries", None),
                reset_every=options.reset_every, reset_factor=options.reset_factor,
                seconds_per_utt=round(summary["adapt_wall_s"] / n, 4),
                adapt_rtf=round(summary["adapt_wall_s"] / audio_s, 4) if audio_s else None,
                peak_mb=round(peak.mb, 1), memory_method=peak.method, wer_at_steps=curve_wers(adapter, results),
                grid_point=point, **summary)


def main(argv=None) -> Dict[str, float]:
    args = parse_args(get_parser, argv, entry_point="tta")
    try:
        check_source(args)
        AsrDataModule(dataclass_from_args(DataConfig, args)).require(
            *args.test_sets, *filter(None, [args.tune_set, args.guard_set]))
        grid = parse_grid(args.grid) if args.grid else []
        if grid and not args.tune_set:
            raise ValueError("--grid needs --tune-set (the split the combinations are compared on)")
        if args.guard_set and not grid:
            raise ValueError("--guard-set constrains the --grid choice: give --grid and --tune-set")
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    setup_logger(args.exp_dir, "tta")
    fix_random_seed(args.seed)
    options, optim = dataclass_from_args(TtaOptions, args), dataclass_from_args(OptimizerConfig, args)
    model, source = load_source(args, args.device)
    check_ctc_model(model)
    model.eval()
    tuned = tta_parameters(model, options.params) if options.steps > 0 or grid else []
    data = AsrDataModule(dataclass_from_args(DataConfig, args), model.input_kind, seed=args.seed)
    write_spec(args.exp_dir, model.spec())
    point: Dict[str, Any] = {}
    if grid:
        options, optim, point = tune(args, model, tuned, options, optim, grid, data)
    key = run_key(options, optim)
    wers: Dict[str, float] = {}
    for test_set in args.test_sets:
        cuts = data.load_cuts(test_set)
        name = split_name(test_set)
        results, logs, adapter, audio_s, peak = adapt_set(model, tuned, optim, options, cuts, data,
                                                          f"TTA {name}")
        write_log(args.exp_dir / "tta" / f"{name}-{key}.jsonl", logs)
        extra = record_extra(adapter, options, optim, source, audio_s, peak, results, point)
        wers.update(write_decode_results(results, args.exp_dir, name, key, method_name(options, optim), args.results,
                                         adapter.adapt_seconds, audio_s, extra=extra, subsets=unseen_subset(cuts),
                                         model_name=f"{args.exp_dir.parent.name}/{args.exp_dir.name}/{key}"))
        logging.info(f"{name}: {adapter.summary()}")
    logging.info(f"WER: {wers}")
    return wers


def set_curve(model, tuned, optim, options, cuts, data, desc: str) -> Tuple[Dict[int, float], float, int]:
    """WER of a set after each ``--decode-at`` step count and after ``--steps``; seconds; non-finite count."""
    results, _, adapter, _, _ = adapt_set(model, tuned, optim, options, cuts, data, desc)
    curve = {int(s): w for s, w in curve_wers(adapter, results).items()}
    curve[options.steps] = round(compute_wer(results), 4)
    return curve, adapter.summary()["adapt_wall_s"], adapter.counts["non_finite"]


def tune(args, model, tuned, options, optim, grid, data):
    """Every grid point on the tuning set (and on the guard set): the settings and step count
    (``--steps`` or a ``--decode-at`` point) with the lowest tuning WER among those whose guard
    WER stays within ``--guard-tolerance`` (relative) of the source's; ties: the earlier point,
    the fewer steps."""
    tune_cuts, name = data.load_cuts(args.tune_set), split_name(args.tune_set)
    guard_cuts = data.load_cuts(args.guard_set) if args.guard_set else None
    guard_base = guard_limit = None
    if guard_cuts is not None:
        source_only = dataclasses.replace(options, steps=0, decode_at="")
        guard_base = set_curve(model, tuned, optim, source_only, guard_cuts, data, "guard set, no TTA")[0][0]
        guard_limit = guard_base * (1 + args.guard_tolerance)
        logging.info(f"guard {split_name(args.guard_set)}: source WER {guard_base:.2f}%, limit {guard_limit:.2f}%")
    rows, candidates = [], []
    for i, point in enumerate(grid):
        opts, opt = with_settings(options, optim, point)
        curve, seconds, bad = set_curve(model, tuned, opt, opts, tune_cuts, data, f"grid {i + 1}/{len(grid)} on {name}")
        guard = {} if guard_cuts is None else set_curve(model, tuned, opt, opts, guard_cuts, data,
                                                        f"grid {i + 1}/{len(grid)} on the guard set")[0]
        rows.append(dict(point, wer=curve[opts.steps], wer_at_steps=curve, guard_wer_at_steps=guard, seconds=seconds,
                         non_finite=bad))
        write_log(args.exp_dir / "grid.jsonl", rows)
        logging.info(f"grid {point}: {name} WER by steps {curve}" + (f", guard {guard}" if guard else ""))
        for steps, wer in curve.items():
            breaks_guard = guard_limit is not None and guard[steps] > guard_limit + 1e-9
            candidates.append((breaks_guard, wer, i, steps))
    breaks_guard, wer, i, steps = min(candidates)
    if breaks_guard:
        logging.warning(f"no grid setting keeps {split_name(args.guard_set)} within {guard_limit:.2f}%: "
                        f"the lowest {name} WER is taken regardless")
    opts, opt = with_settings(options, optim, grid[i])
    opts = dataclasses.replace(opts, steps=steps, decode_at=",".join(str(s) for s in opts.decode_points() if s < steps))
    chosen = dict(grid[i], steps=steps, tune_wer=wer, guard_base=guard_base, guard_limit=guard_limit,
                  guard_met=None if guard_limit is None else not breaks_guard)
    logging.info(f"chosen on {name}: {chosen}")
    return opts, opt, chosen


def write_log(path: Path, rows: List[dict]) -> None:
    atomic_write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), path)


if __name__ == "__main__":
    main()
