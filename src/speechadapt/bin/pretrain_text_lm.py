"""Text pre-training of the tiny Qwen2 used by the synth LLM-ASR recipe.

In the real recipe LoRA adapts a pretrained LM (Qwen2-1.5B-Instruct). The synth recipe
has no such model, so this stage builds a tiny Qwen2 with a BPE tokenizer trained on the
synth training text and trains it as a causal LM on that text, in the assistant turn
of the chat format the LLM-ASR prompt uses:

    <|im_start|>assistant\\n{text}<|im_end|>

The loss and the perplexity cover the transcript tokens and the closing <|im_end|>,
exactly what the LLM-ASR loss covers.

A real instruct LLM can copy from its context; LLM-ASR relies on that (the transcript
is in the speech slot, only in another form). A 2-layer LM trained on sentences alone
never needs to look back, and LoRA does not build that ability in a few thousand
updates: with a perfect oracle in the speech slot such an LM still misrecognised 52-86%
of the words. So, by default (``--copy-examples true``), every sentence is also a copy
example in the exact ASR prompt, with the speech tokens (added before training) around
the text in the slot and the loss on the assistant turn:

    <|im_start|>user\n<start_speech>{text}<end_speech><|im_end|>\n<|im_start|>assistant\n{text}<|im_end|>

A copy of a natural sentence can be half guessed from the LM's prior (the names and
numbers are where it fails), so ``--scrambled-copy-fraction`` of the copy examples carry
random training words instead, which only reading the slot gets right; the report gives
the copy accuracy on natural and on scrambled held-out sentences.

The stage then checks the copy accuracy (teacher-forced, next-token argmax over the
assistant turn of held-out sentences) against ``--min-copy-accuracy``: that is what makes
the tiny model a stand-in for Qwen2 in the LLM-ASR stages. Training runs through the project's one loop
(AdamW, warm-up then cosine decay by default; checkpoints in --exp-dir, resume,
TensorBoard, progress). The result is a Hugging Face directory usable as
``--llm-dir``. Held-out perplexity (of the plain sentences) must beat an add-one-smoothed
unigram model of the same tokens (counted on the training text), otherwise the stage
fails; so does a copy accuracy below the threshold.

    python -m speechadapt.bin.pretrain_text_lm \\
        --train-text data/fbank/synth_cuts_train.jsonl.gz \\
        --valid-text data/fbank/synth_cuts_dev.jsonl.gz \\
        --out-dir exp/tiny_qwen2 --exp-dir exp/tiny_qwen2_train --num-epochs 20

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

from speechadapt.models.llm_asr_prompt import IGNORE_ID, IM_END, IM_START, SPEECH_TOKENS, PromptBuilder
from speechadapt.training.metrics import MetricsTracker
from speechadapt.training.optim import OptimizerConfig
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig
from speechadapt.utils.args import str2bool
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args
from speechadapt.utils.io import atomic_write_text
from speechadapt.utils.log import setup_logger

_PREFIX = f"{IM_START}assistant\n"


class LmCheckError(RuntimeError):
    """The pre-trained LM fails one of the stage's checks."""


class PerplexityError(LmCheckError):
    """The pre-trained LM does not beat the unigram baseline."""


class CopyAccuracyError(LmCheckError):
    """The pre-trained LM cannot copy the text in the speech slot well enough."""


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
    from speechadapt.data.manifests import open_manifest

    texts = []
    for item in open_manifest(path):
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


def scrambled_texts(texts: Sequence[str], fraction: float, seed: int) -> List[str]:
    """``texts`` with a ``fraction`` of them replaced by as many words drawn uniformly from
    the word types of ``texts``: a copy of such a sentence cannot be guessed from the LM's
    prior, only read from the slot, so these examples train looking back (names, numbers)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--scrambled-copy-fraction must be in [0, 1], got {fraction}")
    words = sorted({w for t in texts for w in t.split()})
    rng = random.Random(seed)
    out = list(texts)
    for i in rng.sample(range(len(out)), round(fraction * len(out))):
        out[i] = " ".join(rng.choice(words) for _ in out[i].split())
    return out


def encode_copy_examples(tokenizer, texts: Sequence[str]) -> List[Tuple[List[int], int]]:
    """Copy examples in the ASR prompt (the text in the speech slot), as (ids, prefix length)."""
    prompt = PromptBuilder(tokenizer, num_slots=1)
    out = []
    for text in texts:
        target = prompt.target_ids(text)
        prefix = prompt.head_ids + [prompt.start_id] + target[:-1] + [prompt.end_id] + prompt.tail_ids
        out.append((prefix + target, len(prefix)))
    return out


@torch.no_grad()
def copy_accuracy(model, examples, pad_id: int, batch_size: int = 64, device="cpu") -> float:
    """Teacher-forced next-token accuracy over the targets (the assistant turn)."""
    model.eval()
    right, total = 0, 0
    for start in range(0, len(examples), batch_size):
        input_ids, mask, labels = (t.to(device) for t in collate(examples[start : start + batch_size], pad_id))
        predicted = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1].argmax(-1)
        targets = labels[:, 1:]
        scored = targets != IGNORE_ID
        right += int((predicted[scored] == targets[scored]).sum())
        total += int(scored.sum())
    return right / max(total, 1)


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


class CausalLmObjective(torch.nn.Module):
    """The text LM behind the model interface's ``compute_loss``: summed next-token NLL
    of a batch of (input ids, mask, labels), normalised by the label tokens."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def compute_loss(self, batch) -> Tuple[torch.Tensor, MetricsTracker]:
        device = next(self.lm.parameters()).device
        nll, n = batch_nll(self.lm, *[t.to(device) for t in batch])
        info = MetricsTracker()
        info["frames"] = float(n)
        info["loss"] = float(nll.detach())
        return nll, info


def text_loader(examples, pad_id: int, batch_size: int, shuffle: bool):
    """Batches of examples; shuffled from the global RNG, which the loop seeds per epoch."""
    return torch.utils.data.DataLoader(examples, batch_size=batch_size, shuffle=shuffle,
                                       collate_fn=lambda items: collate(items, pad_id))


def train_lm(model, train_examples, valid_examples, pad_id: int, args, device="cpu") -> None:
    """Train through the project's loop; ``args`` holds the training/optimiser/schedule flags."""
    from speechadapt.training.loop import Trainer

    training = dataclass_from_args(TrainingConfig, args)
    schedule = dataclass_from_args(SchedulerConfig, args)
    train_dl = text_loader(train_examples, pad_id, args.batch_size, shuffle=True)
    if schedule.warmup_batches < 0:  # default: 5% of the run
        schedule.warmup_batches = float(max(1, training.num_epochs * len(train_dl) // 20))
    trainer = Trainer(training, CausalLmObjective(model), train_dl,
                      text_loader(valid_examples, pad_id, 64, shuffle=False),
                      optimizer_config=dataclass_from_args(OptimizerConfig, args), scheduler_config=schedule)
    trainer.fit()
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
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", type=str2bool, default=True, help="rebuild an existing --out-dir")
    p.add_argument("--copy-examples", type=str2bool, default=True,
                   help="also train on every sentence as a copy example in the ASR prompt (module doc)")
    p.add_argument("--scrambled-copy-fraction", type=float, default=0.0,
                   help="share of the copy examples whose text is random training words (scrambled_texts)")
    p.add_argument("--min-copy-accuracy", type=float, default=0.9,
                   help="the stage fails below this held-out copy accuracy (with --copy-examples)")
    add_dataclass_arguments(p, TrainingConfig, "training", defaults=TRAINING_DEFAULTS)
    add_dataclass_arguments(p, OptimizerConfig, "optimizer", defaults=OPTIMIZER_DEFAULTS)
    add_dataclass_arguments(p, SchedulerConfig, "learning-rate schedule", defaults=SCHEDULE_DEFAULTS)
    return p


# A small LM trained from scratch on a few thousand sentences.
# The stage rebuilds the LM from scratch: an earlier run's checkpoints are moved aside.
TRAINING_DEFAULTS = dict(exp_dir="exp/text_lm", num_epochs=20, average_period=0, save_every_n=0,
                         valid_interval=0, log_interval=50, archive_old_run=True)
OPTIMIZER_DEFAULTS = dict(optimizer="adamw", base_lr=3e-3, weight_decay=0.01, max_grad_norm=1.0)
SCHEDULE_DEFAULTS = dict(scheduler="cosine", warmup_batches=-1.0, final_lr_scale=0.1)


def fixture_overrides(args) -> dict:
    names = ("tokenizer_vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def pretrain(args) -> dict:
    """Build, train, check and save the LM; returns the report written to --out-dir."""
    setup_logger(args.exp_dir, "pretrain-text-lm")
    torch.manual_seed(args.seed)
    if args.num_epochs < 0:
        raise ValueError(f"--num-epochs must be >= 0, got {args.num_epochs}")
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

    from speechadapt.models.hf.tokens import add_special_tokens

    make_tiny_qwen2(work_dir, train_texts, **fixture_overrides(args))
    model, tokenizer = load_qwen2(work_dir, device=args.device, dtype="float32")
    add_special_tokens(model, tokenizer, SPEECH_TOKENS)  # trained here, found in place by LLM-ASR
    pad_id = tokenizer.pad_token_id
    train_examples = encode_examples(tokenizer, train_texts)
    valid_examples = encode_examples(tokenizer, valid_texts)
    copy_texts = scrambled_texts(train_texts, args.scrambled_copy_fraction, args.seed)
    copy_train = encode_copy_examples(tokenizer, copy_texts) if args.copy_examples else []
    copy_valid = encode_copy_examples(tokenizer, valid_texts) if args.copy_examples else []
    vocab = model.get_input_embeddings().weight.shape[0]
    ppl_before = lm_perplexity(model, valid_examples, pad_id, device=args.device)
    copy_before = copy_accuracy(model, copy_valid, pad_id, device=args.device) if copy_valid else None
    if args.num_epochs > 0:
        train_lm(model, train_examples + copy_train, valid_examples + copy_valid, pad_id, args, args.device)
    ppl = lm_perplexity(model, valid_examples, pad_id, device=args.device)
    copy = copy_accuracy(model, copy_valid, pad_id, device=args.device) if copy_valid else None
    scrambled_valid = encode_copy_examples(tokenizer, scrambled_texts(valid_texts, 1.0, args.seed + 1))
    copy_scrambled = copy_accuracy(model, scrambled_valid, pad_id, device=args.device) if copy_valid else None
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
        "copy_examples": bool(args.copy_examples),
        "copy_accuracy": copy,
        "copy_accuracy_before_training": copy_before,
        "scrambled_copy_fraction": args.scrambled_copy_fraction if args.copy_examples else None,
        "copy_accuracy_scrambled": copy_scrambled,
        "min_copy_accuracy": args.min_copy_accuracy if args.copy_examples else None,
    }
    logging.info(f"held-out perplexity {ppl:.3f} (before training {ppl_before:.1f}), unigram {unigram:.3f}"
                 + (f"; copy accuracy {copy:.3f} (before training {copy_before:.3f})" if copy is not None else ""))
    if not ppl < unigram:
        raise PerplexityError(
            f"text LM held-out perplexity {ppl:.3f} does not beat the unigram baseline {unigram:.3f}; "
            f"train longer (--num-epochs) or check the text"
        )
    if copy is not None and copy < args.min_copy_accuracy:
        raise CopyAccuracyError(
            f"text LM copies the held-out sentences in the speech slot with accuracy {copy:.3f} < "
            f"--min-copy-accuracy {args.min_copy_accuracy}: it would not read the speech in LLM-ASR; "
            f"train longer (--num-epochs) or larger (--num-hidden-layers)")
    model.save_pretrained(work_dir)
    tokenizer.save_pretrained(work_dir)
    atomic_write_text(json.dumps(report, indent=2) + "\n", work_dir / "pretrain_report.json")
    return report


def main_report(argv=None) -> dict:
    """Parse flags and run the stage; raises LmCheckError when the LM fails a check."""
    args = parse_args(get_parser(), argv, entry_point="pretrain_text_lm")
    return pretrain(args)


def main(argv=None) -> None:
    try:
        report = main_report(argv)
    except LmCheckError as e:
        logging.error(str(e))
        sys.exit(1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
