"""Speaker-identification linear probe on a frozen encoder: what fine-tuning forgot beyond ASR.

    python -m speechadapt.bin.probe --config conf/probe.yaml --source-exp-dir exp/ctc \\
        --checkpoint exp/forget/plain_ft/best.pt --method plain-ft --exp-dir exp/forget/plain_ft/probe \\
        --train-splits source_dev,target_dev --test-splits source_test,target_test \\
        --manifest-dir data/fbank --cuts-prefix synth --results exp/results.jsonl

The source is loaded as every adaptation entry point loads it (``--source-exp-dir`` with
``--checkpoint F`` or ``--epoch/--avg``, or ``--model KIND``). Every cut of the train and
test splits is run through the encoder once (eval mode, no gradients, weights checked
unchanged), its output frames (``--layer``) mean-pooled; a linear classifier of
``supervisions[0].speaker`` is trained on the train splits' vectors and scored on each
test split. Speakers are a closed set: every test speaker must occur in training.

Writes ``exp_dir/speaker-probe.json`` (accuracies, per speaker, settings),
``exp_dir/speaker-probe-predictions.tsv`` (split, cut, speaker, predicted) and one
results.jsonl record per test split plus one over all of them (``test_set: all``), each
with ``extra.family = "probe"``, ``extra.task = "speaker-probe"``,
``extra.metric = "speaker_accuracy"``, ``extra.accuracy`` in percent and ``wer: null``
(never read as a WER). Keep the probe settings (``conf/probe.yaml``) the same for every
encoder compared.
"""

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from speechadapt.adapt.probe import (ProbeOptions, encode_labels, per_class_accuracy, pooled_features,
                                     probe_accuracy, speaker_labels, train_linear_probe)
from speechadapt.adapt.source import add_source_arguments, check_source, load_source
from speechadapt.data.datamodule import AsrDataModule, DataConfig, split_name
from speechadapt.data.prep_utils import comma_list
from speechadapt.decoding.results import peak_memory_mb
from speechadapt.decoding.scoring import ResultRecord, append_result
from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args
from speechadapt.utils.io import atomic_write_text
from speechadapt.utils.log import setup_logger

# Features only: no augmentation, every cut kept.
DATA_DEFAULTS = dict(enable_spec_aug=False, drop_last=False)
SUMMARY_FILE = "speaker-probe.json"
PREDICTIONS_FILE = "speaker-probe-predictions.tsv"


def get_parser(tokens: Sequence[str] = ()) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p, tokens)
    p.add_argument("--train-splits", type=comma_list, required=True,
                   help="splits (names or paths) the probe is trained on, e.g. source_dev,target_dev")
    p.add_argument("--test-splits", type=comma_list, required=True,
                   help="splits it is scored on, one record each, e.g. source_test,target_test")
    p.add_argument("--exp-dir", type=Path, required=True, help="where the probe's files and log go")
    p.add_argument("--method", required=True,
                   help="results.jsonl method name: the encoder's row (pre-trained, plain-ft, speech-ft ...)")
    p.add_argument("--results", type=Path, default=None, help="default: exp_dir/results.jsonl")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_dataclass_arguments(p, ProbeOptions, "speaker probe")
    add_dataclass_arguments(p, DataConfig, "data", defaults=DATA_DEFAULTS)
    return p


def check_splits(train: Sequence[str], test: Sequence[str]) -> None:
    names = [split_name(s) for s in [*train, *test]]
    if not train or not test:
        raise ValueError("give --train-splits and --test-splits (comma-separated, at least one each)")
    if "all" in names:  # the name of the record over every test split
        raise ValueError("a split named 'all' clashes with the probe's overall record (test_set 'all'): rename it")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"split(s) {repeated} given twice: the probe must be scored on cuts it was not trained on")


def read_labels(data: AsrDataModule, splits: Sequence[str]) -> Dict[str, Dict[str, str]]:
    """split name -> {cut id: speaker}, read from the manifests (before any model work)."""
    return {split_name(s): speaker_labels(data.load_cuts(s), split_name(s)) for s in splits}


def preflight(args: argparse.Namespace) -> Dict[str, Dict[str, str]]:
    """Every input checked with one message before the model is loaded; the labels."""
    try:
        check_source(args)
        check_splits(args.train_splits, args.test_splits)
        data = AsrDataModule(dataclass_from_args(DataConfig, args))
        data.require(*args.train_splits, *args.test_splits)
        labels = read_labels(data, [*args.train_splits, *args.test_splits])
        train = [who for s in args.train_splits for who in labels[split_name(s)].values()]
        encode_labels(train, {split_name(s): list(labels[split_name(s)].values()) for s in args.test_splits})
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    return labels


def extract(model, data: AsrDataModule, split: str, labels: Dict[str, str], layer: str):
    name = split_name(split)
    loader = data.test_dataloaders(data.load_cuts(split), require_text=False)
    feats = pooled_features(model, loader, layer, name, speakers=labels)
    missing = sorted(set(labels) - set(feats.cut_ids))
    if missing:  # nothing dropped silently
        raise RuntimeError(f"split '{name}': {len(missing)} cuts yielded no features, e.g. {missing[:3]}")
    logging.info(f"{name}: {len(feats.cut_ids)} cuts, {feats.features.shape[1]}-dim pooled features, "
                 f"{len(set(feats.speakers))} speakers")
    return feats


def main(argv=None) -> Dict[str, float]:
    args = parse_args(get_parser, argv, entry_point="probe")
    labels = preflight(args)
    setup_logger(args.exp_dir, "probe")
    options = dataclass_from_args(ProbeOptions, args)
    start = time.time()
    model, source = load_source(args, args.device)
    model.eval()
    data = AsrDataModule(dataclass_from_args(DataConfig, args), model.input_kind, seed=options.probe_seed)
    train_names, test_names = [split_name(s) for s in args.train_splits], [split_name(s) for s in args.test_splits]
    feats = {split_name(s): extract(model, data, s, labels[split_name(s)], options.layer)
             for s in [*args.train_splits, *args.test_splits]}
    extract_s = time.time() - start

    x_train = torch.cat([feats[n].features for n in train_names])
    classes, y_train, y_tests = encode_labels([w for n in train_names for w in feats[n].speakers],
                                              {n: feats[n].speakers for n in test_names})
    tick = time.time()
    probe = train_linear_probe(x_train, y_train, len(classes), **options.train_kwargs())
    train_s = time.time() - tick
    train_acc = probe_accuracy(probe, x_train, y_train)
    chance = 100.0 / len(classes)
    logging.info(f"probe: {len(classes)} speakers, {x_train.shape[0]} training cuts from {train_names}, "
                 f"train accuracy {train_acc:.2f}% (loss {probe.final_loss:.4f}, {train_s:.1f} s); "
                 f"chance {chance:.2f}%")

    scores = {n: split_score(probe, feats[n].features, y_tests[n], classes) for n in test_names}
    scores["all"] = split_score(probe, torch.cat([feats[n].features for n in test_names]),
                                torch.cat([y_tests[n] for n in test_names]), classes)
    scores["all"]["per_set"] = {n: round(scores[n]["accuracy"], 2) for n in test_names}
    for n, s in scores.items():
        logging.info(f"speaker accuracy {n}: {s['accuracy']:.2f}% ({s['num_correct']}/{s['num_test']})")

    common = dict(family="probe", task="speaker-probe", metric="speaker_accuracy", source=source,
                  num_speakers=len(classes), num_train=int(x_train.shape[0]), train_sets=train_names,
                  test_sets=test_names, train_accuracy=round(train_acc, 2), chance_accuracy=round(chance, 2),
                  feature_dim=int(x_train.shape[1]), probe_train_loss=round(probe.final_loss, 6),
                  extract_wall_s=round(extract_s, 2), probe_train_wall_s=round(train_s, 3), **vars_of(options))
    write_outputs(args, common, scores, classes, probe, feats, test_names)
    model_name = f"{args.exp_dir.parent.name}/{args.exp_dir.name}"
    results = args.results or args.exp_dir / "results.jsonl"
    wall = round(time.time() - start, 3)
    for n, s in scores.items():
        extra = dict(common, **dict(s, accuracy=round(s["accuracy"], 2)))
        append_result(results, ResultRecord(method=args.method, test_set=n, wer=None, model=model_name,
                                            wall_time_s=wall, peak_memory_mb=round(peak_memory_mb(), 1),
                                            extra=extra))
    return {n: s["accuracy"] for n, s in scores.items()}


def split_score(probe, x, y, classes: List[str]) -> dict:
    return dict(accuracy=probe_accuracy(probe, x, y), num_correct=int((probe.predict(x) == y).sum()),
                num_test=len(y), num_test_speakers=len(set(y.tolist())),
                per_speaker=per_class_accuracy(probe, x, y, classes))


def vars_of(options: ProbeOptions) -> dict:
    return dict(layer=options.layer, probe_optimizer=options.probe_optimizer, probe_epochs=options.probe_epochs,
                probe_lr=options.probe_lr, probe_weight_decay=options.probe_weight_decay,
                probe_seed=options.probe_seed)


def write_outputs(args, common: dict, scores: Dict[str, dict], classes: List[str], probe, feats,
                  test_names: List[str]) -> None:
    summary = dict(common, method=args.method, classes=classes, scores=scores)
    atomic_write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", args.exp_dir / SUMMARY_FILE)
    lines = ["set\tcut_id\tspeaker\tpredicted"]
    for n in test_names:
        predicted = probe.predict(feats[n].features).tolist()
        lines += [f"{n}\t{c}\t{w}\t{classes[p]}" for c, w, p in zip(feats[n].cut_ids, feats[n].speakers, predicted)]
    atomic_write_text("\n".join(lines) + "\n", args.exp_dir / PREDICTIONS_FILE)


if __name__ == "__main__":
    main()
