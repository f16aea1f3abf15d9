"""Text pre-training of the tiny Qwen2 used by the synth LLM-ASR recipe.

In the real recipe LoRA adapts a pretrained LM (Qwen2-1.5B-Instruct). The synth recipe
has no such model, so this stage builds a tiny Qwen2 with a BPE tokenizer trained on the
synth training text and trains it as a causal LM on that text, in the assistant turn
of the chat format the LLM-ASR prompt uses:

    <|im_start|>assistant\\n{text}<|im_end|>

The loss and the perplexity cover the transcript tokens and the closing <|im_end|>,
exactly what the LLM-ASR loss covers. The result is a Hugging Face directory usable
as ``--llm-dir``. Held-out perplexity must beat an add-one-smoothed unigram model of
the same tokens (counted on the training text), otherwise the stage fails.

    python -m speechadapt.bin.pretrain_text_lm \\
        --train-text data/fbank/synth_cuts_train.jsonl.gz \\
        --valid-text data/fbank/synth_cuts_dev.jsonl.gz \\
        --out-dir exp/tiny_qwen2 --num-epochs 20

Text files are plain text (one sentence per line) or lhotse cut/supervision manifests
(``*.jsonl`` / ``*.jsonl.gz``), whose supervision texts are used.
"""

import argparse
import json
import logging
import math
import random
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from speechadapt.models.llm_asr_prompt import IGNORE_ID, IM_END, IM_START
from speechadapt.utils.args import str2bool
from speechadapt.utils.io import atomic_write_text

_PREFIX = f"{IM_START}assistant\n"


class PerplexityError(RuntimeError):
    """The pre-trained LM does not beat the unigram baseline."""


def read_texts(path: Path) -> List[str]:
    """Lower-cased, non-empty sentences from a text file or a lhotse manifest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such text file or manifest: {path}")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        texts = _manifest_texts(path)
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    texts = [" ".join(t.lower().split()) for t in texts]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"{path}: no text found")
    return texts


def _manifest_texts(path: Path) -> List[str]:
    from lhotse import load_manifest_lazy

    texts = []
    for item in load_manifest_lazy(path):
        supervisions = getattr(item, "supervisions", None)
        if supervisions is not None:  # a cut
            texts.extend(s.text or "" for s in supervisions)
        elif hasattr(item, "text"):  # a supervision segment
            texts.append(item.text or "")
    return texts


def encode_examples(tokenizer, texts: Sequence[str]) -> List[Tuple[List[int], int]]:
    """(token ids, number of prefix tokens) per sentence; the rest are targets."""
    prefix = list(tokenizer(_PREFIX, add_special_tokens=False)["input_ids"])
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    out = []
    for text in texts:
        target = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [im_end]
        out.append((prefix + target, len(prefix)))
    return out


def collate(examples: Sequence[Tuple[List[int], int]], pad_id: int):
    """Right-padded input ids, attention mask and labels (IGNORE_ID outside targets)."""
    max_len = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), max_len), pad_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_ID)
    mask = torch.zeros_like(input_ids)
    for i, (ids, n_prefix) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, n_prefix : len(ids)] = torch.tensor(ids[n_prefix:])
        mask[i, : len(ids)] = 1
    return input_ids, mask, labels


def batch_nll(model, input_ids, mask, labels) -> Tuple[torch.Tensor, int]:
    """Summed next-token NLL over the label positions, and their count."""
    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                          ignore_index=IGNORE_ID, reduction="sum")
    return nll, int((targets != IGNORE_ID).sum())


@torch.no_grad()
def lm_perplexity(model, examples, pad_id: int, batch_size: int = 64, device="cpu") -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = [t.to(device) for t in collate(examples[start : start + batch_size], pad_id)]
        nll, n = batch_nll(model, *batch)
        total, count = total + float(nll), count + n
    return math.exp(total / max(count, 1))


def unigram_perplexity(train_examples, valid_examples, vocab_size: int) -> float:
    """Add-one-smoothed unigram over the target tokens of the training text."""
    counts = Counter(tok for ids, n in train_examples for tok in ids[n:])
    total = sum(counts.values()) + vocab_size
    nll, n_tokens = 0.0, 0
    for ids, n in valid_examples:
        for tok in ids[n:]:
            nll -= math.log((counts.get(tok, 0) + 1) / total)
            n_tokens += 1
    return math.exp(nll / max(n_tokens, 1))


def train_lm(model, examples, pad_id: int, num_epochs: int, batch_size: int, lr: float,
             seed: int, device="cpu") -> None:
    """AdamW with linear warm-up (5% of steps) then cosine decay to 10% of lr."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = max(1, num_epochs * steps_per_epoch)
    warmup = max(1, total // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = random.Random(seed)
    order = list(range(len(examples)))
    bar = tqdm(total=total, desc="text LM", disable=not sys.stderr.isatty())
    model.train()
    for epoch in range(1, num_epochs + 1):
        rng.shuffle(order)
        total_nll, total_tokens = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start : start + batch_size]]
            nll, n = batch_nll(model, *[t.to(device) for t in collate(batch, pad_id)])
            optimizer.zero_grad(set_to_none=True)
            (nll / max(n, 1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total_nll, total_tokens = total_nll + nll.item(), total_tokens + n
            bar.update(1)
        logging.info(f"epoch {epoch}: train loss {total_nll / max(total_tokens, 1):.4f} per token")
    bar.close()
    model.eval()


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-text", type=Path, nargs="+", required=True, help="text files or cut manifests")
    p.add_argument("--valid-text", type=Path, nargs="+", required=True, help="held-out text or manifests")
    p.add_argument("--out-dir", type=Path, required=True, help="Hugging Face directory to write (--llm-dir later)")
    p.add_argument("--tokenizer-vocab-size", type=int, default=None,
                   help="BPE vocabulary size (the fixture's default if unset)")
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--intermediate-size", type=int, default=None)
    p.add_argument("--num-hidden-layers", type=int, default=None)
    p.add_argument("--num-attention-heads", type=int, default=None)
    p.add_argument("--num-key-value-heads", type=int, default=None)
    p.add_argument("--num-epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", type=str2bool, default=True, help="rebuild an existing --out-dir")
    return p


def fixture_overrides(args) -> dict:
    names = ("tokenizer_vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def pretrain(args) -> dict:
    """Build, train, check and save the LM; returns the report written to --out-dir."""
    torch.manual_seed(args.seed)
    train_texts = [t for f in args.train_text for t in read_texts(f)]
    valid_texts = [t for f in args.valid_text for t in read_texts(f)]
    logging.info(f"{len(train_texts)} training sentences, {len(valid_texts)} held-out sentences")
    if args.out_dir.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out_dir} exists; pass --overwrite true to rebuild it")
    # Built beside --out-dir and moved there only once it beats the baseline, so a
    # failed run never leaves an untrained model where --llm-dir will look.
    work_dir = args.out_dir.with_name(args.out_dir.name + ".partial")
    shutil.rmtree(work_dir, ignore_errors=True)
    try:
        report = build_and_train(args, work_dir, train_texts, valid_texts)
        shutil.rmtree(args.out_dir, ignore_errors=True)
        work_dir.rename(args.out_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return report


def build_and_train(args, work_dir: Path, train_texts: List[str], valid_texts: List[str]) -> dict:
    from speechadapt.models.hf.loading import load_qwen2
    from speechadapt.models.hf.fixtures import make_tiny_qwen2

    make_tiny_qwen2(work_dir, train_texts, **fixture_overrides(args))
    model, tokenizer = load_qwen2(work_dir, device=args.device, dtype="float32")
    pad_id = tokenizer.pad_token_id
    train_examples = encode_examples(tokenizer, train_texts)
    valid_examples = encode_examples(tokenizer, valid_texts)
    vocab = model.get_input_embeddings().weight.shape[0]
    ppl_before = lm_perplexity(model, valid_examples, pad_id, device=args.device)
    train_lm(model, train_examples, pad_id, args.num_epochs, args.batch_size, args.lr, args.seed, args.device)
    ppl = lm_perplexity(model, valid_examples, pad_id, device=args.device)
    unigram = unigram_perplexity(train_examples, valid_examples, vocab)
    report = {
        "valid_perplexity": ppl,
        "valid_perplexity_before_training": ppl_before,
        "unigram_perplexity": unigram,
        "num_train_sentences": len(train_texts),
        "num_valid_sentences": len(valid_texts),
        "vocab_size": vocab,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_epochs": args.num_epochs,
    }
    logging.info(f"held-out perplexity {ppl:.3f} (before training {ppl_before:.1f}), unigram {unigram:.3f}")
    if not ppl < unigram:
        raise PerplexityError(
            f"text LM held-out perplexity {ppl:.3f} does not beat the unigram baseline {unigram:.3f}; "
            f"train longer (--num-epochs) or check the text"
        )
    model.save_pretrained(work_dir)
    tokenizer.save_pretrained(work_dir)
    atomic_write_text(json.dumps(report, indent=2) + "\n", work_dir / "pretrain_report.json")
    return report


def main_report(argv=None) -> dict:
    """Parse flags and run the stage; raises PerplexityError when the LM loses."""
    args = get_parser().parse_args(argv)
    return pretrain(args)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(1)  # tiny models: more threads only contend on shared CPUs
    try:
        report = main_report(argv)
    except PerplexityError as e:
        logging.error(str(e))
        sys.exit(1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
