"""Time per utterance of test-time adaptation against the passes it contains.

For one utterance of ``--seconds`` of audio and T = ``--steps`` steps this times, in
one process and alternating the order over ``--repeats`` rounds after a warm-up:

* ``passes``: T plain forward + backward passes of the SUTA loss over SUTA's
  parameters (no optimiser, no restore, no decoding): the floor of first-order SUTA;
* ``decode``: one greedy decoding forward (what every method ends with);
* ``suta``: :class:`TestTimeAdapter` episodic, AdamW: restore + T steps + decoding;
* ``zo-q1``, ``zo-q8`` (and ``zo-q8-batched``): the same with ZO-ASR at q 1 and 8.

``overhead`` = (suta - passes - decode) / passes: what the restore and the optimiser
add beyond the T passes (target <= 0.20). RTF = seconds per utterance / audio seconds.
Models: ``zipformer-ctc`` (the synth recipe's tiny preset, 500 pieces) and
``wav2vec2-tiny`` (the test fixture); ``wav2vec2-base-shapes`` (95 M parameters, random
weights) is slow on a CPU and not in the default set. With one thread (the default) on a
CPU it times process CPU time, which neighbours disturb far less than wall time.

    PYTHONPATH=src python3 bench/tta_speed.py --model zipformer-ctc --seconds 4 --steps 10
Prints one JSON object and a table.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zo_speed import timed  # noqa: E402  (one timer for the benchmarks)

from speechadapt.adapt.tta import TestTimeAdapter, TtaOptions, suta_loss, tta_parameters  # noqa: E402
from speechadapt.data.batch import SpeechBatch  # noqa: E402
from speechadapt.training.optim import OptimizerConfig  # noqa: E402

MODELS = ("zipformer-ctc", "wav2vec2-tiny", "wav2vec2-base-shapes")
WAV2VEC2_BASE_SHAPES = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                            conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                            num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)


class Pieces:
    """A stand-in BPE model: decoding only needs ids -> text."""

    vocab_size = 500
    model_file = "bench"

    def decode(self, ids):
        return " ".join(map(str, ids))


def build(name: str, seconds: float, device: str):
    """(model in eval mode, one utterance as a batch)."""
    torch.manual_seed(0)
    if name == "zipformer-ctc":
        from speechadapt.models.ctc import ZipformerCtc
        from speechadapt.models.zipformer import get_preset

        model = ZipformerCtc(get_preset("tiny", regularize=False), 500, tokenizer=Pieces())
        frames = int(100 * seconds)
        batch = SpeechBatch(torch.randn(1, frames, 80), torch.tensor([frames]), [""], ["u"], [seconds])
    else:
        from speechadapt.models.hf.fixtures import make_tiny_ctc
        from speechadapt.models.hf.loading import load_hf_ctc

        overrides = WAV2VEC2_BASE_SHAPES if name == "wav2vec2-base-shapes" else {}
        model = load_hf_ctc(make_tiny_ctc(tempfile.mkdtemp(prefix="tta_bench_"), "wav2vec2", **overrides))
        samples = int(16000 * seconds)
        batch = SpeechBatch(0.1 * torch.randn(1, samples), torch.tensor([samples]), [""], ["u"], [seconds],
                            input_kind="waveform")
    return model.to(device).eval(), batch.to(device)


def measure(args, name: str) -> dict:
    model, batch = build(name, args.seconds, args.device)
    tuned = tta_parameters(model)
    options = TtaOptions(steps=args.steps)
    clock = time.process_time if args.device == "cpu" and args.threads == 1 else time.perf_counter

    def passes():
        for _ in range(args.steps):
            logits, lens = model.ctc_logits(batch.inputs, batch.input_lens)
            suta_loss(logits, model.blank_id, lengths=lens).backward()
        for _, p in tuned:
            p.grad = None

    def decode():
        with torch.inference_mode():
            model.ctc_logits(batch.inputs, batch.input_lens)

    methods = {"passes": passes, "decode": decode}
    configs = {"suta": OptimizerConfig(optimizer="adamw", base_lr=1e-3),
               "zo-q1": OptimizerConfig(optimizer="zo-asr", zo_num_queries=1, base_lr=1e-2),
               "zo-q8": OptimizerConfig(optimizer="zo-asr", zo_num_queries=8, base_lr=1e-2),
               "zo-q8-batched": OptimizerConfig(optimizer="zo-asr", zo_num_queries=8, base_lr=1e-2,
                                                zo_batched_queries=True)}
    adapters = {}
    for key, config in configs.items():
        adapters[key] = TestTimeAdapter(model, tuned, config, options)
        methods[key] = (lambda a: lambda: a.adapt_and_decode(batch))(adapters[key])
    times = {key: [] for key in methods}
    for fn in methods.values():  # warm-up
        fn()
    for r in range(args.repeats):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        for key in order:
            if key in adapters:
                adapters[key].restore()  # the restore of the next utterance is timed inside
            times[key].append(timed(methods[key], clock))
    med = {key: statistics.median(v) for key, v in times.items()}
    return dict(
        model=name, parameters=sum(p.numel() for p in model.parameters()),
        tuned=sum(p.numel() for _, p in tuned), seconds=args.seconds, steps=args.steps,
        clock="process CPU time" if clock is time.process_time else "wall time",
        seconds_per_utt={k: round(v, 4) for k, v in med.items()},
        rtf={k: round(v / args.seconds, 4) for k, v in med.items()},
        over_passes={k: round(v / med["passes"], 3) for k, v in med.items()},
        overhead=round((med["suta"] - med["passes"] - med["decode"]) / med["passes"], 3),
        forwards_per_utt={k: a.counts["forwards"] // max(1, a.counts["utterances"]) for k, a in adapters.items()},
        times_s={k: [round(t, 4) for t in v] for k, v in times.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", choices=MODELS + ("default",),
                        help="default: zipformer-ctc and wav2vec2-tiny")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per utterance")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="1: time by process CPU time")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = MODELS[:2] if args.model == "default" else (args.model,)
    report = dict(device=args.device, threads=args.threads, repeats=args.repeats,
                  results=[measure(args, m) for m in models])
    print(json.dumps(report, indent=1))
    keys = list(report["results"][0]["seconds_per_utt"])
    print(f"\n{'model':22} " + " ".join(f"{k:>14}" for k in keys) + f" {'overhead':>9}")
    for r in report["results"]:
        cells = [f"{r['seconds_per_utt'][k]:.3f}s x{r['over_passes'][k]:.2f}" for k in keys]
        print(f"{r['model']:22} " + " ".join(f"{c:>14}" for c in cells) + f" {r['overhead']:>9.3f}")
    print("(seconds per utterance, and the ratio to T forward+backward passes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
