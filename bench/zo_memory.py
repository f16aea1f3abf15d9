"""Peak memory of inference, one zeroth-order step and one AdamW step (same model, same batch).

Every measurement runs in its own child process (this script with ``--child MODE``)
so no allocator state leaks from one to the next.

How it measures:
  * CPU: peak RSS above the loaded model. After the model and the batch are built
    the child resets the kernel's high-water mark (``/proc/self/clear_refs`` <- 5),
    reads VmRSS as the baseline, does the work and reads VmHWM. Children run with
    ``MALLOC_ARENA_MAX=1``. glibc keeps freed memory around across repeated forwards,
    so inference is measured with as many forwards as the ZO step runs (2q) as well
    as with one: the ZO figure is compared with the 2q-forward one (like with like).
  * GPU: ``torch.cuda.max_memory_allocated`` above the allocation after loading.

Models: ``whisper-tiny-shapes`` (random weights with openai/whisper-tiny's shapes,
batch B x S seconds: input_features (B, 80, 100*S), 64 label tokens) and
``zipformer-ctc`` (the tiny Zipformer-CTC preset, 500-piece vocabulary, fbank-shaped
input (B, 100*S, 80), 60 targets per utterance).

    PYTHONPATH=src python3 bench/zo_memory.py --model all --batch 8 --seconds 30
Prints one JSON object and a table.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

from speechadapt.training.optim import OptimizerConfig, build_optimizer  # imported before any baseline
from speechadapt.utils.memory import PeakMemory

MODELS = ("whisper-tiny-shapes", "zipformer-ctc", "llm-asr-tiny")
WHISPER_TINY_SHAPES = dict(
    d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
    decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
    max_target_positions=448, vocab_size=51865,
)


def whisper_case(batch: int, seconds: float, gen: torch.Generator, device: str):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    try:  # the project's fixture preset, when present, is the reference for the shapes
        from speechadapt.models.hf.fixtures import WHISPER_PRESETS

        shapes = WHISPER_PRESETS["whisper-tiny-shapes"]
    except (ImportError, KeyError):
        shapes = WHISPER_TINY_SHAPES
    config = WhisperConfig(num_mel_bins=80, max_source_positions=1500, dropout=0.0, **shapes)
    model = WhisperForConditionalGeneration(config)
    frames = int(round(100 * seconds))
    if frames != 2 * config.max_source_positions:
        raise ValueError(f"Whisper needs 30 s windows ({2 * config.max_source_positions} frames)")
    features = torch.randn(batch, 80, frames, generator=gen).to(device)
    labels = torch.randint(0, config.vocab_size, (batch, 64), generator=gen).to(device)

    def loss_fn(grad_enabled: bool = False, cache=None):  # nothing of Whisper is frozen here
        return model(input_features=features, labels=labels).loss

    return model, loss_fn


def zipformer_case(batch: int, seconds: float, gen: torch.Generator, device: str):
    from speechadapt.models.ctc import ZipformerCtc
    from speechadapt.models.zipformer import get_preset

    vocab = 500
    model = ZipformerCtc(get_preset("tiny"), vocab)
    frames = int(round(100 * seconds))
    features = torch.randn(batch, frames, 80, generator=gen).to(device)
    lengths = torch.full((batch,), frames, dtype=torch.long, device=device)
    targets = torch.randint(1, vocab, (batch, 60), generator=gen).tolist()

    def loss_fn(grad_enabled: bool = False, cache=None):
        loss, num_frames = model.ctc_loss(features, lengths, targets, cache)
        return loss / num_frames

    return model, loss_fn


def llm_asr_case(batch: int, seconds: float, gen: torch.Generator, device: str):
    """The synth recipe's LLM-ASR shape: tiny Zipformer, projector, a 2-layer Qwen2 (256) with LoRA."""
    import tempfile

    from speechadapt.data.batch import SpeechBatch
    from speechadapt.models.hf.fixtures import make_tiny_qwen2
    from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel
    from speechadapt.models.llm_asr_build import load_llm_for_asr
    from speechadapt.models.zipformer import ZipformerEncoder, get_preset

    llm_dir = make_tiny_qwen2(tempfile.mkdtemp(prefix="bench-qwen2-"))
    llm, tokenizer = load_llm_for_asr(llm_dir)
    model = LlmAsrModel([ZipformerEncoder(get_preset("tiny"))], llm, tokenizer,
                        LlmAsrConfig(lora_r=64, lora_alpha=16, lora_dropout=0.0, projector_dropout=0.0))
    frames = int(round(100 * seconds))
    texts = ["set an alarm for seven thirty tomorrow morning please"] * batch
    speech = SpeechBatch(torch.randn(batch, frames, 80, generator=gen), torch.full((batch,), frames), texts,
                         [f"u{i}" for i in range(batch)], [seconds] * batch).to(device)

    def loss_fn(grad_enabled: bool = False, cache=None):
        loss, info = model.compute_loss(speech, cache=cache)
        return loss / info["frames"]

    return model, loss_fn


def build_case(name: str, batch: int, seconds: float, device: str, seed: int = 0) -> Tuple[torch.nn.Module, Callable]:
    """A model in eval mode on ``device`` and ``loss_fn(grad_enabled)`` for one fixed batch."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} asked for, but CUDA is not available")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    builders = dict(zip(MODELS, (whisper_case, zipformer_case, llm_asr_case)))
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    model, loss_fn = builders[name](batch, seconds, gen, device)
    return model.to(device).eval(), loss_fn


def run_work(mode: str, model, loss_fn, num_queries: int) -> int:
    """Do one measurement's work; returns the number of forward passes it ran."""
    if mode.startswith("infer-"):
        forwards = int(mode.split("-")[1])
        with torch.inference_mode():
            for _ in range(forwards):
                float(loss_fn(False))
        return forwards
    if mode in ("zo", "zo-hizoo"):
        name = "hizoo" if mode == "zo-hizoo" else "zo-asr"
        opt = build_optimizer(model.named_parameters(), OptimizerConfig(optimizer=name, base_lr=1e-6,
                                                                        zo_num_queries=num_queries))
        opt.step(loss_fn)
        return opt.forwards_per_step
    if mode == "adamw":
        opt = build_optimizer(model.named_parameters(), OptimizerConfig(optimizer="adamw", base_lr=1e-6))
        opt.step(loss_fn)
        return 1
    raise ValueError(f"unknown mode {mode!r}")


def preload_optimizer_modules() -> None:
    """torch.optim.Optimizer lazily imports ~800 modules (~70 MB RSS) on first use;
    pay that before the baseline, it is not working memory of either algorithm."""
    dummy = torch.nn.Parameter(torch.zeros(4))
    for name in ("mezo", "adamw"):
        build_optimizer([("dummy", dummy)], OptimizerConfig(optimizer=name, base_lr=0.0))


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    preload_optimizer_modules()
    model, loss_fn = build_case(args.model, args.batch, args.seconds, args.device)
    start = time.perf_counter()
    with PeakMemory(args.device) as meter:
        forwards = run_work(args.child, model, loss_fn, args.num_queries)
    result = dict(
        mode=args.child,
        forwards=forwards,
        peak_above_model_mb=round(meter.above_start_mb, 1),
        model_mb=round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1),
        seconds=round(time.perf_counter() - start, 2),
        method=meter.method,
    )
    print("RESULT " + json.dumps(result), flush=True)


def measure(args: argparse.Namespace, model: str, mode: str) -> Dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--child", mode, "--model", model,
        "--batch", str(args.batch), "--seconds", str(args.seconds), "--device", args.device,
        "--num-queries", str(args.num_queries), "--threads", str(args.threads),
    ]
    env = dict(os.environ, MALLOC_ARENA_MAX="1", OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {mode} on {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def modes_for(args: argparse.Namespace) -> List[str]:
    modes = ["infer-1", f"infer-{2 * args.num_queries}", "zo", "adamw"]
    if args.with_hizoo:
        modes.insert(3, f"infer-{2 * args.num_queries + 1}")
        modes.insert(4, "zo-hizoo")
    return list(dict.fromkeys(modes))


def ratios(results: Dict[str, Dict], num_queries: int) -> Dict[str, float]:
    peak = {mode: r["peak_above_model_mb"] for mode, r in results.items()}
    same = f"infer-{2 * num_queries}"
    out = dict(
        zo_over_inference_same_forwards=peak["zo"] / peak[same],
        zo_over_inference_1_forward=peak["zo"] / peak["infer-1"],
        adamw_over_inference_1_forward=peak["adamw"] / peak["infer-1"],
        adamw_over_inference_same_forwards=peak["adamw"] / peak[same],
    )
    if "zo-hizoo" in peak:
        out["hizoo_over_inference_same_forwards"] = peak["zo-hizoo"] / peak[f"infer-{2 * num_queries + 1}"]
    return {k: round(v, 3) for k, v in out.items()}


def print_table(report: Dict) -> None:
    print(f"\n{'model':22} {'mode':10} {'fwd':>4} {'peak above model (MB)':>22} {'time (s)':>9}")
    for model, entry in report["models"].items():
        for mode, r in entry["results"].items():
            print(f"{model:22} {mode:10} {r['forwards']:>4} {r['peak_above_model_mb']:>22.1f} {r['seconds']:>9.2f}")
        for name, value in entry["ratios"].items():
            print(f"{model:22} {name:45} {value:.3f}")
    print(f"method: {report['method']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all", choices=MODELS + ("all",))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--num-queries", type=int, default=1, help="q of the ZO step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--with-hizoo", action="store_true", help="also HiZOO (opt-in Hessian state)")
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    models = MODELS if args.model == "all" else (args.model,)
    report = dict(device=args.device, batch=args.batch, seconds=args.seconds,
                  num_queries=args.num_queries, threads=args.threads, models={})
    for model in models:
        results = {mode: measure(args, model, mode) for mode in modes_for(args)}
        report["models"][model] = dict(results=results, ratios=ratios(results, args.num_queries))
        report["method"] = next(iter(results.values()))["method"]
    print(json.dumps(report, indent=1))
    print_table(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
