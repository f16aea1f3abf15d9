#!/usr/bin/env python3
"""Stage: a HuBERT (or wav2vec2) encoder folder + a character vocabulary -> a CTC model folder.

    python3 local/add_ctc_head.py --encoder-dir download/hubert-base-ls960 --out-dir exp/models/hubert-base-ctc

``facebook/hubert-base-ls960`` is a pre-trained encoder without a head or tokenizer; the
``hf_ctc`` model kind needs ``vocab.json`` and a processor. This writes ``<out-dir>`` with the
encoder's weights, a freshly initialised CTC head over wav2vec2-base-960h's 32 characters
(``--vocab``: another ``vocab.json``), a CTC tokenizer and the feature extractor (the
encoder's ``preprocessor_config.json`` when it has one; else waveform normalisation, an
attention mask only for layer-norm front ends). ``--fresh-head true`` re-initialises a head
the folder already has. Loads with ``local_files_only=True``.
"""

import argparse
import json
from pathlib import Path

import torch

from speechadapt.models.hf.fixtures import CTC_CHARS
from speechadapt.models.hf.loading import read_model_type
from speechadapt.utils.args import str2bool


def main(argv=None) -> None:
    from transformers import (AutoConfig, AutoModelForCTC, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor,
                              Wav2Vec2Processor)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--vocab", type=Path, default=None, help="a vocab.json (default: wav2vec2-base-960h's characters)")
    p.add_argument("--fresh-head", type=str2bool, default=True, help="re-initialise an existing lm_head")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    kind = read_model_type(args.encoder_dir)
    if kind not in ("hubert", "wav2vec2"):
        raise SystemExit(f"error: {args.encoder_dir}: model_type {kind!r}, expected a HuBERT or wav2vec2 encoder "
                         f"(config.json)")
    vocab = json.loads(args.vocab.read_text()) if args.vocab else {c: i for i, c in enumerate(CTC_CHARS)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "vocab.json").write_text(json.dumps(vocab))
    config = AutoConfig.from_pretrained(args.encoder_dir, local_files_only=True, vocab_size=len(vocab),
                                        pad_token_id=vocab["<pad>"], ctc_loss_reduction="sum", ctc_zero_infinity=True)
    torch.manual_seed(args.seed)
    model = AutoModelForCTC.from_pretrained(args.encoder_dir, config=config, local_files_only=True,
                                            ignore_mismatched_sizes=True)
    if args.fresh_head:
        model.lm_head.reset_parameters()
    tokenizer = Wav2Vec2CTCTokenizer(str(args.out_dir / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     bos_token="<s>", eos_token="</s>", word_delimiter_token="|")
    if (args.encoder_dir / "preprocessor_config.json").is_file():
        features = Wav2Vec2FeatureExtractor.from_pretrained(args.encoder_dir, local_files_only=True)
    else:
        features = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                            return_attention_mask=config.feat_extract_norm == "layer")
    model.save_pretrained(args.out_dir)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(args.out_dir)
    print(f"{args.out_dir}: {kind} encoder + CTC head over {len(vocab)} symbols")


if __name__ == "__main__":
    main()
