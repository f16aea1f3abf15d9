"""Per-rank training state of DDP vs FSDP (``--fsdp true``) through the project's Trainer.

A random Qwen2 causal LM (full fine-tuning, AdamW) trains a few batches of random tokens
on N gloo ranks (CPU) or NCCL ranks (GPUs), once with DDP and once with FSDP. Each rank
reports the bytes it holds of parameters and of AdamW state (the local shards under
FSDP), and the time per update. Gradients are as large as the trainable parameters
(sharded alike under FSDP). On a CPU the seconds say nothing about GPUs; the bytes do.

    PYTHONPATH=src python3 bench/fsdp_memory.py --world-size 2 --hidden 512 --layers 8
Prints one JSON object and a table.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechadapt.training.dist import cleanup_dist, launch, setup_dist
from speechadapt.training.loop import Trainer
from speechadapt.training.metrics import MetricsTracker
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig


class CausalLm(nn.Module):
    def __init__(self, hidden: int, layers: int, vocab: int):
        super().__init__()
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                             num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                             num_key_value_heads=max(1, hidden // 128), tie_word_embeddings=False)
        self.lm = Qwen2ForCausalLM(config)

    def compute_loss(self, batch):
        logits = self.lm(input_ids=batch).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum")
        info = MetricsTracker()
        info["frames"] = float(batch[:, 1:].numel())
        info["loss"] = float(loss.detach())
        return loss, info


def local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def worker(rank, world_size, args, mode, out_path):
    torch.set_num_threads(args.threads)
    dist_info = setup_dist(rank, world_size)
    torch.manual_seed(0)
    model = CausalLm(args.hidden, args.layers, args.vocab)
    g = torch.Generator().manual_seed(1 + rank)
    batches = [torch.randint(0, args.vocab, (args.batch, args.tokens), generator=g) for _ in range(args.steps + 1)]
    with tempfile.TemporaryDirectory() as exp_dir:
        config = TrainingConfig(exp_dir=exp_dir, num_epochs=1, save_every_n=0, average_period=0, valid_interval=0,
                                tensorboard=False, log_interval=0, scan_oom=False, fsdp=mode == "fsdp",
                                preemption_signals=[])
        trainer = Trainer(config, model, batches[:1], None, dist_info,
                          optimizer_config=OptimizerConfig(optimizer="adamw", base_lr=1e-4),
                          scheduler_config=SchedulerConfig(scheduler="constant"))
        trainer.fit()  # one warm-up update (lazy FSDP initialisation, allocator)
        start = time.perf_counter()
        for batch in batches[1:]:
            trainer.train_step(batch)
        seconds = (time.perf_counter() - start) / args.steps
    row = {"mode": mode, "rank": rank, "world_size": world_size,
           "param_bytes": local_bytes(model.parameters()),
           "adam_state_bytes": local_bytes(v for s in trainer.optimizer.state.values() for v in s.values()
                                           if torch.is_tensor(v) and v.dim() > 0),
           "seconds_per_update": seconds}
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, row)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    cleanup_dist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="per rank")
    args = p.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    rows = []
    for mode in ("ddp", "fsdp"):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            launch(worker, args.world_size, args, mode, out.name)
            rows += json.load(open(out.name))
    total_params = next(r["param_bytes"] for r in rows if r["mode"] == "ddp")
    result = {"config": vars(args), "full_param_bytes": total_params, "rows": rows}
    print(json.dumps(result))
    print(f"\n{'mode':6} {'rank':>4} {'params MiB':>11} {'AdamW state MiB':>16} {'s/update':>9}", file=sys.stderr)
    for r in rows:
        print(f"{r['mode']:6} {r['rank']:>4} {r['param_bytes'] / 2**20:>11.1f} {r['adam_state_bytes'] / 2**20:>16.1f} "
              f"{r['seconds_per_update']:>9.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
