#!/usr/bin/env python3
"""Zipformer encoder speed: eval forward and training forward+backward per preset.

Input: a batch of N utterances x T frames of 80-dim features (default 8 x 1000
frames = 8 x 10 s of 10 ms fbank). Each measurement: --warmup untimed runs, then the
median of --repeats timed runs. Prints one JSON object, then a table.

``--kernels fast,plain`` times the same model with the project's CPU kernels (fused
Swoosh, channels-last front-end convolutions) and with plain autograd ops
(``scaling.plain_kernels``), their runs interleaved so both see the same machine load.

    PYTHONPATH=src python3 bench/zipformer_speed.py --threads 2 --repeats 3
    PYTHONPATH=src python3 bench/zipformer_speed.py --threads 1 --presets tiny --kernels fast,plain
"""

import argparse
import contextlib
import json
import platform
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

from speechadapt.models.zipformer import ZipformerEncoder, get_preset, set_batch_count
from speechadapt.models.zipformer.scaling import plain_kernels

KERNELS = {"fast": contextlib.nullcontext, "plain": plain_kernels}


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small", help="comma-separated presets")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median kept)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernels", default="fast",
                        help=f"comma-separated, from {sorted(KERNELS)}: timed side by side")
    return parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn: Callable[[], None], warmup: int, repeats: int,
              device: torch.device) -> Tuple[List[float], List[float]]:
    """(wall-clock seconds, process CPU seconds) per timed run.

    CPU seconds (all threads) are reported too because on a shared machine the wall
    time also counts waiting for cores that other processes hold.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def interleaved_runs(fns: Dict[str, Callable[[], None]], warmup: int, repeats: int,
                     device: torch.device) -> Dict[str, Tuple[List[float], List[float]]]:
    """time_runs for several variants, one run of each per round."""
    runs = {k: ([], []) for k in fns}
    for k, fn in fns.items():
        time_runs(fn, warmup, 0, device)
    for _ in range(repeats):
        for k, fn in fns.items():
            wall, cpu = time_runs(fn, 0, 1, device)
            runs[k][0].extend(wall)
            runs[k][1].extend(cpu)
    return runs


def bench_preset(name: str, args, device: torch.device, kernels: List[str]) -> List[Dict]:
    model = ZipformerEncoder(get_preset(name)).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, args.num_frames, 80, generator=generator).to(device)
    x_lens = torch.full((args.batch_size,), args.num_frames, device=device)

    def forward(kernel: str):
        with torch.inference_mode(), KERNELS[kernel]():
            model(x, x_lens)

    def forward_backward(kernel: str):
        with KERNELS[kernel]():
            out, _ = model(x, x_lens)
            out.pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    def bind(fn, kernel):
        return lambda: fn(kernel)

    model.eval()
    fwd = interleaved_runs({k: bind(forward, k) for k in kernels}, args.warmup, args.repeats, device)
    model.train()
    set_batch_count(model, 20000)  # schedules at their late (light) values
    fwd_bwd = interleaved_runs({k: bind(forward_backward, k) for k in kernels},
                               args.warmup, args.repeats, device)
    audio_seconds = args.batch_size * args.num_frames / 100.0
    rows = []
    for k in kernels:
        (f, f_cpu), (fb, fb_cpu) = fwd[k], fwd_bwd[k]
        rows.append({
            "preset": name,
            "kernels": k,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "forward_s": round(statistics.median(f), 4),
            "forward_backward_s": round(statistics.median(fb), 4),
            "forward_cpu_s": round(statistics.median(f_cpu), 4),
            "forward_backward_cpu_s": round(statistics.median(fb_cpu), 4),
            "forward_runs_s": [round(t, 4) for t in f],
            "forward_backward_runs_s": [round(t, 4) for t in fb],
            "forward_rtf": round(statistics.median(f) / audio_seconds, 5),
        })
    return rows


def format_table(rows: List[Dict]) -> str:
    header = (f"{'preset':<9} {'kernels':<7} {'params(M)':>9} {'fwd(s)':>8} {'fwd+bwd(s)':>11} "
              f"{'fwd cpu(s)':>11} {'fwd+bwd cpu(s)':>15} {'fwd RTF':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['preset']:<9} {r['kernels']:<7} {r['params_m']:>9.2f} {r['forward_s']:>8.3f} "
                     f"{r['forward_backward_s']:>11.3f} {r['forward_cpu_s']:>11.3f} "
                     f"{r['forward_backward_cpu_s']:>15.3f} {r['forward_rtf']:>8.4f}")
    return "\n".join(lines)


def main() -> None:
    args = get_parser().parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    unknown = sorted(set(kernels) - set(KERNELS))
    if unknown or not kernels:
        raise SystemExit(f"--kernels: unknown {unknown or 'empty'}; choose from {sorted(KERNELS)}")
    rows = [row for name in args.presets.split(",") if name.strip()
            for row in bench_preset(name.strip(), args, device, kernels)]
    report = {
        "benchmark": "zipformer_speed",
        "batch_size": args.batch_size,
        "num_frames": args.num_frames,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": str(device),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "results": rows,
    }
    print(json.dumps(report))
    print(format_table(rows))


if __name__ == "__main__":
    main()
