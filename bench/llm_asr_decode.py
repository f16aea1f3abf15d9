"""LLM-ASR speed in the tiny configuration: batched decoding vs one-by-one, and the
training step.

Model: random-init tiny Zipformer (frozen) + projector + the tiny Qwen2 fixture with
LoRA (r 64 on q,k,v,o,up,gate,down). Inputs: synthetic 80-dim fbank of 3-5 s.
Decoding generates exactly --new-tokens tokens per utterance (min = max), so batch
sizes do the same work; throughput is utterances/s and the real-time factor is
wall time / audio time. The training step is forward + backward + AdamW step, timed
twice side by side: encoder run every step, and encoder outputs served from the
frozen-output store (what `bin/train` does from the second epoch on).

    PYTHONPATH=src python3 bench/llm_asr_decode.py [--device cuda] [--json out.json]

Prints a JSON object and a table.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from speechadapt.models.hf.fixtures import make_tiny_qwen2  # noqa: E402
from speechadapt.models.llm_asr import LlmAsrConfig, LlmAsrModel  # noqa: E402
from speechadapt.models.llm_asr_build import load_llm_for_asr  # noqa: E402
from speechadapt.models.zipformer import ZipformerEncoder, get_preset  # noqa: E402

TEXTS = ["set an alarm for seven thirty", "call alice at nine fifteen", "turn on the kitchen lights",
         "remind me to buy milk tomorrow"]


def synthetic_batch(num: int, seed: int, device):
    """Features of 3-5 s (300-500 frames) and transcripts."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(300, 501, (num,), generator=g)
    x = torch.randn(num, int(lens.max()), 80, generator=g)
    return x.to(device), lens.to(device), [TEXTS[i % len(TEXTS)] for i in range(num)]


def build_model(llm_dir: Path, device) -> LlmAsrModel:
    torch.manual_seed(0)
    encoder = ZipformerEncoder(get_preset("tiny", pad_invariant=True))
    llm, tokenizer = load_llm_for_asr(llm_dir, device="cpu")
    return LlmAsrModel([encoder], llm, tokenizer, LlmAsrConfig()).to(device)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_decoding(model, x, lens, batch_size: int, new_tokens: int, device) -> float:
    """Seconds to decode every utterance of (x, lens) in batches of batch_size."""
    _sync(device)
    start = time.perf_counter()
    for i in range(0, x.size(0), batch_size):
        lens_b = lens[i : i + batch_size]
        model.decode(x[i : i + batch_size, : int(lens_b.max())], lens_b, max_new_tokens=new_tokens,
                     min_new_tokens=new_tokens)
    _sync(device)
    return time.perf_counter() - start


def time_training_step(model, batch, steps: int, device, cut_ids=None) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(*batch, cut_ids=cut_ids)
        (out.loss / out.num_tokens).backward()
        optimizer.step()

    step()  # warm-up (fills the store when cut_ids are given)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    model.eval()
    return (time.perf_counter() - start) / steps


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(make_tiny_qwen2(Path(tmp) / "qwen2", None), args.device).eval()
    x, lens, texts = synthetic_batch(args.num_utts, seed=0, device=args.device)
    audio_s = float(lens.sum()) * 0.01
    time_decoding(model, x[:2], lens[:2], 2, 2, args.device)  # warm-up
    decode = {}
    for bs in (1, 16):
        wall = time_decoding(model, x, lens, bs, args.new_tokens, args.device)
        decode[f"batch_{bs}"] = {"utt_per_s": args.num_utts / wall, "rtf": wall / audio_s, "wall_s": wall}
    train_x, train_lens, train_texts = synthetic_batch(args.train_batch, seed=1, device=args.device)
    step_s = time_training_step(model, (train_x, train_lens, train_texts), args.train_steps, args.device)
    model.keep_frozen_outputs(2**30)
    ids = [f"utt{i}" for i in range(args.train_batch)]
    store_step_s = time_training_step(model, (train_x, train_lens, train_texts), args.train_steps, args.device, ids)
    return {
        "device": str(args.device) if args.device == "cpu" else torch.cuda.get_device_name(),
        "torch_threads": args.threads,
        "host": platform.node(),
        "num_utterances": args.num_utts,
        "audio_seconds": audio_s,
        "new_tokens_per_utt": args.new_tokens,
        "decode": decode,
        "batch16_speedup": decode["batch_16"]["utt_per_s"] / decode["batch_1"]["utt_per_s"],
        "train_step_s": step_s,
        "train_step_stored_encoder_s": store_step_s,
        "store_speedup": step_s / store_step_s,
        "train_batch": args.train_batch,
        "trainable_params": model.num_trainable(),
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def table(result: dict) -> str:
    rows = [f"| decoding batch | utt/s | RTF | wall s |", "|---|---|---|---|"]
    for name, d in result["decode"].items():
        rows.append(f"| {name.split('_')[1]} | {d['utt_per_s']:.2f} | {d['rtf']:.4f} | {d['wall_s']:.2f} |")
    rows.append(f"\ntraining step (batch {result['train_batch']}, 3-5 s each): {result['train_step_s'] * 1000:.0f} ms; "
                f"{result['train_step_stored_encoder_s'] * 1000:.0f} ms with the encoder outputs stored "
                f"(x{result['store_speedup']:.2f}); batch-16 decoding speed-up x{result['batch16_speedup']:.2f} "
                f"on {result['device']}")
    return "\n".join(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-utts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    print(table(result))
    if args.json:
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
