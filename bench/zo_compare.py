"""MeZO vs ZO-ASR vs HiZOO on small tasks at an equal budget of forward passes.

Each method gets the same number of forwards (MeZO: 2 per step, ZO-ASR with q
queries: 2q, HiZOO: 3). Its learning rate is picked from a log grid on tuning
seeds (lowest mean final loss; a diverged run counts as infinite), then the picked
lr is run on separate evaluation seeds, whose final losses are reported.

Tasks:
  * ``illcond-regression``: least squares, 32 features whose scales span 10^1.5
    (curvatures span ~1000x), a linear model.
  * ``mlp-classification``: 4 Gaussian classes in 16-D, a 16-32-4 tanh MLP,
    cross-entropy.

    PYTHONPATH=src python3 bench/zo_compare.py --budget 1200
Prints one JSON object and a table.
"""

import argparse
import json
import math
import statistics
import sys
from typing import Callable, Dict, Tuple

import torch
from torch import nn
from tqdm import tqdm

from speechadapt.training.optim import OptimizerConfig, build_optimizer

METHODS = {
    "mezo": dict(optimizer="mezo"),
    "zo-asr(q=4)": dict(optimizer="zo-asr", zo_num_queries=4),
    "hizoo": dict(optimizer="hizoo"),
}
LR_GRID = [10.0 ** (k / 2) for k in range(-10, 3)]  # 1e-5 ... 10, half decades


def illcond_regression(seed: int) -> Tuple[nn.Module, Callable]:
    gen = torch.Generator().manual_seed(seed)
    dim = 32
    scales = torch.logspace(0, 1.5, dim)
    x = torch.randn(256, dim, generator=gen) * scales
    w_true = torch.randn(dim, 1, generator=gen) / scales[:, None]
    y = x @ w_true + 0.1 * torch.randn(256, 1, generator=gen)
    torch.manual_seed(seed)
    model = nn.Linear(dim, 1)
    return model, lambda grad_enabled=False: ((model(x) - y) ** 2).mean()


def mlp_classification(seed: int) -> Tuple[nn.Module, Callable]:
    gen = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(4, 16, generator=gen)
    labels = torch.arange(256) % 4
    x = centres[labels] + torch.randn(256, 16, generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    return model, lambda grad_enabled=False: nn.functional.cross_entropy(model(x), labels)


TASKS = {"illcond-regression": illcond_regression, "mlp-classification": mlp_classification}


def final_loss(task: Callable, method: Dict, lr: float, seed: int, budget: int) -> Tuple[float, float]:
    """(initial loss, loss after ``budget`` forwards); inf when the run diverged."""
    model, loss_fn = task(seed)
    with torch.inference_mode():
        initial = float(loss_fn())
    opt = build_optimizer(model.named_parameters(), OptimizerConfig(base_lr=lr, zo_seed=seed, **method))
    per_step = opt.forwards_per_step
    for _ in range(budget // per_step):
        loss = opt.step(loss_fn)
        if not math.isfinite(loss) or loss > 1e6 * initial:
            return initial, math.inf
    with torch.inference_mode():
        final = float(loss_fn())
    return initial, final if math.isfinite(final) else math.inf


def tune_and_evaluate(task_name: str, method_name: str, args: argparse.Namespace, bar) -> Dict:
    task, method = TASKS[task_name], METHODS[method_name]
    tuning = {}
    for lr in LR_GRID:
        losses = [final_loss(task, method, lr, s, args.budget)[1] for s in range(args.seeds)]
        tuning[lr] = statistics.fmean(losses) if all(map(math.isfinite, losses)) else math.inf
        bar.update(1)
    best_lr = min(tuning, key=tuning.get)
    eval_seeds = range(100, 100 + args.seeds)
    runs = [final_loss(task, method, best_lr, s, args.budget) for s in eval_seeds]
    finals = [f for _, f in runs]
    return dict(
        task=task_name, method=method_name, lr=best_lr, budget_forwards=args.budget,
        initial_mean=statistics.fmean(i for i, _ in runs),
        final_mean=statistics.fmean(finals), final_std=statistics.pstdev(finals),
        finals=finals, tuning={f"{lr:.1e}": v for lr, v in tuning.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=1200, help="forward passes per run")
    parser.add_argument("--seeds", type=int, default=3, help="tuning seeds, and as many evaluation seeds")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; choose from {list(TASKS)}")
    total = len(tasks) * len(METHODS) * len(LR_GRID)
    with tqdm(total=total, disable=not sys.stderr.isatty(), desc="lr grid") as bar:
        results = [tune_and_evaluate(t, m, args, bar) for t in tasks for m in METHODS]
    print(json.dumps(dict(budget=args.budget, seeds=args.seeds, results=results), indent=1))
    print(f"\n{'task':20} {'method':12} {'lr':>8} {'initial':>9} {'final (mean +- std, eval seeds)':>32}")
    for r in results:
        final = f"{r['final_mean']:.4g} +- {r['final_std']:.2g}"
        print(f"{r['task']:20} {r['method']:12} {r['lr']:>8.1e} {r['initial_mean']:>9.4g} {final:>32}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(budget=args.budget, seeds=args.seeds, results=results), f, indent=1)


if __name__ == "__main__":
    main()
