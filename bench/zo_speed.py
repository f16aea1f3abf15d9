"""Time of one zeroth-order step against the plain forwards it contains.

A ZO step with q queries runs 2q forwards (2q+1 for HiZOO) plus passes over the
parameters that regenerate z. This script times, on the same model and batch and in
the same process, (a) that many plain full forwards under ``torch.inference_mode``
and (b) one ZO step, alternating the order over ``--repeats`` rounds after one
warm-up, and reports the median over rounds of the ratio ZO step / forwards. With
``--params`` only part of the model is tuned (``top``: the Zipformer's two top stacks
and its head; ``lora``: LLM-ASR's LoRA); with ``--cache true`` (the Trainer's default)
the step computes what is frozen once instead of 2q times, and the ratio drops below 1.
``--batched-queries true`` evaluates the 2q perturbed copies of the tuned tensors in one
vectorised forward (after one plain L(theta) that fills the cache): it pays when the
tuned part is small and its kernels are (``head``: the Zipformer's CTC head;
``lora``/``lora+projector``). On CPU with one thread (the default) it times process CPU
time, which other jobs on a shared machine disturb far less than wall time; on GPU,
wall time.

    PYTHONPATH=src python3 bench/zo_speed.py --model whisper-tiny-shapes --batch 8 --seconds 30
Prints one JSON object and a table. Models and batches are those of zo_memory.py.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zo_memory import MODELS, build_case  # noqa: E402  (one definition of the bench cases)

from speechadapt.adapt.zo import ReadOnlyCache, vectorised_losses  # noqa: E402
from speechadapt.training.optim import OptimizerConfig, build_optimizer  # noqa: E402


def timed(fn, clock) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = clock()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return clock() - start


TUNED = {"all": None, "top": r"^(encoder\.encoders\.[45]\.|ctc_output\.)", "head": r"^ctc_output\.",
         "lora": "lora_", "lora+projector": r"lora_|^projectors\."}


def measure(args: argparse.Namespace, model_name: str) -> dict:
    from speechadapt.adapt.param_select import mark_trainable, select_parameters

    model, batch_loss = build_case(model_name, args.batch, args.seconds, args.device)
    if TUNED[args.params]:
        mark_trainable(model, select_parameters(model, "regex", TUNED[args.params]))
    opt = build_optimizer(model.named_parameters(), OptimizerConfig(
        optimizer=args.optimizer, base_lr=1e-7, zo_num_queries=args.num_queries,
        zo_batched_queries=args.batched_queries))
    loss_fn = batch_loss
    forwards = 2 * opt.num_queries + (1 if opt.estimator == "hizoo" else 0)  # the reference: 2q (+1) full
    # On a shared CPU wall time follows the neighbours; with one thread the process's
    # CPU time measures our own work. On a GPU only wall time means anything.
    clock = time.process_time if args.device == "cpu" and args.threads == 1 else time.perf_counter

    def plain_forwards():
        with torch.inference_mode():
            for _ in range(forwards):
                float(loss_fn(False))

    def zo_step():
        cache = {} if args.cache else None  # one per batch, as the Trainer does

        def step_loss(grad_enabled=False):
            return batch_loss(grad_enabled, cache)

        frozen = ReadOnlyCache(cache) if cache is not None else None
        step_loss.batched = lambda pairs: vectorised_losses(model, lambda: batch_loss(False, frozen), pairs)
        opt.step(step_loss)

    plain_forwards()  # warm-up: allocator, thread pools, kernels
    zo_step()
    plain_times, zo_times = [], []
    for r in range(args.repeats):  # back-to-back pairs, order alternating
        pair = [(plain_forwards, plain_times), (zo_step, zo_times)]
        for fn, times in pair if r % 2 == 0 else reversed(pair):
            times.append(timed(fn, clock))
    pair_ratios = [z / p for z, p in zip(zo_times, plain_times)]
    pass_s = statistics.median(timed(lambda: opt.perturb(12345, 0.0), clock) for _ in range(3))
    plain = statistics.median(plain_times)
    return dict(
        model=model_name, optimizer=args.optimizer, num_queries=opt.num_queries, params=args.params,
        cache=args.cache, batched_queries=args.batched_queries, tuned=sum(p.numel() for p in model.parameters() if p.requires_grad),
        forwards=forwards, step_forwards=opt.forwards_per_step, parameters=sum(p.numel() for p in model.parameters()),
        clock="process CPU time" if clock is time.process_time else "wall time",
        plain_forwards_s=round(plain, 3), zo_step_s=round(statistics.median(zo_times), 3),
        ratio=round(statistics.median(pair_ratios), 3),
        pair_ratios=[round(r, 3) for r in pair_ratios],
        # a step draws z 4q - 1 times over theta (the last restore is fused into the update)
        parameter_pass_s=round(pass_s, 3),
        passes_over_forwards=round((4 * opt.num_queries - 1) * pass_s / plain, 3),
        plain_times_s=[round(t, 3) for t in plain_times], zo_times_s=[round(t, 3) for t in zo_times],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all", choices=MODELS + ("all",))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--optimizer", default="mezo", choices=("mezo", "zo-asr", "hizoo", "lozo"))
    parser.add_argument("--params", default="all", choices=sorted(TUNED), help="what the step tunes")
    parser.add_argument("--cache", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                        help="compute what is frozen once per step (the Trainer's default)")
    parser.add_argument("--batched-queries", type=lambda v: v.lower() in ("1", "true", "yes"), default=False,
                        help="the 2q perturbed copies in one vectorised forward")
    parser.add_argument("--num-queries", type=int, default=None, help="default: the preset's q")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="1: time by process CPU time")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args()
    if args.num_queries is None:
        args.num_queries = 1 if args.optimizer != "zo-asr" else 8
    torch.set_num_threads(args.threads)
    models = MODELS if args.model == "all" else (args.model,)
    report = dict(device=args.device, batch=args.batch, seconds=args.seconds, threads=args.threads,
                  repeats=args.repeats, results=[measure(args, m) for m in models])
    print(json.dumps(report, indent=1))
    print(f"\n{'model':22} {'optimizer':9} {'params':14} {'cache':5} {'batch':5} {'q':>2} {'fwd':>4} "
          f"{'forwards (s)':>13} {'ZO step (s)':>12} {'ratio':>6} {'passes/fwd':>10}")
    for r in report["results"]:
        print(f"{r['model']:22} {r['optimizer']:9} {r['params']:14} {str(r['cache']):5} "
              f"{str(r['batched_queries']):5} {r['num_queries']:>2} "
              f"{r['forwards']:>4} "
              f"{r['plain_forwards_s']:>13.3f} {r['zo_step_s']:>12.3f} {r['ratio']:>6.3f} "
              f"{r['passes_over_forwards']:>10.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
