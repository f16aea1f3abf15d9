"""Generate a recipe's RESULTS.md and PNG plots from its results.jsonl (never edit by hand).

    python -m speechadapt.bin.report --exp-dir egs/synth/exp --out egs/synth/RESULTS.md

With ``--gain-set`` (the adapted-to domain's test set), first the comparison of every
adaptation method against one zero-shot row per source model, with a plot of that set's
gain against cost (``decoding/overview.py``). Then tables: one per stage family (a record's ``extra["family"]``, else the part of its
method before the first "/"), rows = (method, model), columns = test sets, the latest
record of each cell; fine-tuning and test-time adaptation records (families
``finetune``, ``tta``) get one table per source model with their cost (tuned
parameters, updates, forward and backward passes, wall time, peak memory) and the
relative change of each test set's WER against the zero-shot / no-TTA row; then
the stage wall times from ``stage_times.tsv``. Plots: WER per family, the training
curves found in TensorBoard logs under the exp dir, and the dev WER of every
fine-tuning run (``dev_curve.jsonl``) against forward passes and against wall time.
"""

import argparse
import csv
import logging
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Tuple

from speechadapt.decoding.overview import plot_gain_vs_cost, story_rows, story_table
from speechadapt.decoding.scoring import read_results
from speechadapt.utils.io import atomic_write_text


def family_of(record: dict) -> str:
    extra = record.get("extra") or {}
    return str(extra.get("family") or record["method"].split("/")[0])


def latest_cells(records: List[dict]) -> Dict[str, "OrderedDict[Tuple[str, str], Dict[str, dict]]"]:
    """family -> (method, model) -> test_set -> latest record, in first-seen order. A
    fine-tuning row is its run directory (``ft_ctc/lozo_all``): a rerun replaces it,
    whichever weights its dev set chose."""
    tables: Dict[str, OrderedDict] = OrderedDict()
    for rec in sorted(records, key=lambda r: r.get("timestamp", 0)):
        family = family_of(rec)
        model = rec.get("model", "")
        if family in COST_TABLES or family == "forgetting":  # a row is the run directory: a rerun replaces it
            model = "/".join(model.split("/")[:2])
        rows = tables.setdefault(family, OrderedDict())
        cells = rows.setdefault((rec["method"], model), {})
        cells[rec["test_set"]] = rec
    return tables


def markdown_table(rows: "OrderedDict[Tuple[str, str], Dict[str, dict]]") -> str:
    sets: List[str] = []
    for cells in rows.values():
        sets += [s for s in cells if s not in sets]
    out = ["| method | model | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
    for (method, model), cells in rows.items():
        vals = [f"{cells[s]['wer']:.2f}" if s in cells else "" for s in sets]
        out.append(f"| {method} | {model} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def _finetune_cost(e: dict) -> list:
    return [f"{e.get('tuned_params', 0):,}", e.get("steps", ""), f"{e.get('forwards', 0):,}",
            f"{e.get('backwards', 0):,}", e.get("train_wall_s", ""), e.get("peak_train_mb") or "",
            e.get("train_to_infer_memory") or ""]


def _tta_cost(e: dict) -> list:
    q = e.get("zo_num_queries")
    adapts = bool(e.get("steps_per_utt"))  # a 0-step row has no optimiser, rate or loss weight
    return [e.get("mode", "") if adapts else "", (e.get("optimizer", "") + (f" q{q}" if q else "")) if adapts else "",
            f"{e.get('tuned_params', 0):,}", e.get("steps_per_utt", ""),
            f"{e.get('base_lr', 0):g}" if adapts else "", f"{e.get('em_coef', 0):g}" if adapts else "",
            f"{e.get('forwards', 0):,}", f"{e.get('backwards', 0):,}", e.get("seconds_per_utt", ""),
            e.get("adapt_rtf", ""), e.get("peak_mb", ""), e.get("resets", 0),
            f"{e.get('short', 0)}/{e.get('non_finite', 0)}"]


# family -> (cost columns, their values from a record's extra, the baseline method)
COST_TABLES = {
    "finetune": (("tuned params", "updates", "forwards", "backwards", "train s", "peak MB", "train/infer mem"),
                 _finetune_cost, "zero-shot"),
    "tta": (("mode", "optimizer", "tuned params", "steps/utt", "lr", "em_coef", "forwards", "backwards", "s/utt",
             "RTF", "peak MB", "resets", "short/non-finite"), _tta_cost, "no-tta"),
}


def cost_tables(rows: "OrderedDict[Tuple[str, str], Dict[str, dict]]", family: str) -> List[str]:
    """One table per source model: cost columns, WER per test set, change vs the baseline row."""
    columns, cost_of, baseline = COST_TABLES[family]
    by_source: Dict[str, OrderedDict] = OrderedDict()
    for key, cells in rows.items():
        extra = next(iter(cells.values())).get("extra") or {}
        by_source.setdefault(str(extra.get("source", "")), OrderedDict())[key] = cells
    out = []
    for source, group in by_source.items():
        sets: List[str] = []
        for cells in group.values():
            sets += [t for t in cells if t not in sets]
        zero = next((cells for (method, _), cells in group.items() if method == baseline), {})
        head = ["method", *columns, *sets, *[f"{t} vs {baseline}" for t in sets if t in zero]]
        lines = [f"Source: `{source}`", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for (method, _), cells in group.items():
            cost = cost_of(next(iter(cells.values())).get("extra") or {})
            wers = [f"{cells[t]['wer']:.2f}" if t in cells else "" for t in sets]
            change = [f"{100 * (cells[t]['wer'] - zero[t]['wer']) / zero[t]['wer']:+.1f}%"
                      if t in cells and zero[t]["wer"] else "" for t in sets if t in zero]
            lines.append("| " + " | ".join(map(str, [method, *cost, *wers, *change])) + " |")
        out += lines + [""]
    return out


def steps_table(rows: "OrderedDict[Tuple[str, str], Dict[str, dict]]") -> List[str]:
    """TTA runs that also decoded after fewer steps (``--decode-at``): WER by step count, with
    the seconds one utterance took for the full run (equal-time comparisons)."""
    lines = []
    for (method, _), cells in rows.items():
        for test_set, rec in cells.items():
            e = rec.get("extra") or {}
            curve = dict(e.get("wer_at_steps") or {})
            if not curve:
                continue
            curve[str(e.get("steps_per_utt"))] = rec["wer"]
            points = ", ".join(f"{k}: {float(v):.2f}" for k, v in sorted(curve.items(), key=lambda kv: int(kv[0])))
            lines.append(f"| {method} | {test_set} | {points} | {e.get('seconds_per_utt', '')} |")
    if not lines:
        return []
    return ["WER after each number of steps (one run, decoded at each point):", "",
            "| method | set | steps: WER | s/utt (all steps) |", "|---|---|---|---|", *lines, ""]


# ---- fine-tuning without forgetting (synth stages 50-59) ------------------------------
SIDE_FAMILIES = ("probe", "merge-sweep")  # records that are not one WER cell of a table


def probe_cells(records: List[dict]) -> Dict[str, dict]:
    """method -> the latest speaker-probe record (over all its test speakers)."""
    out: Dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: r.get("timestamp", 0)):
        if family_of(rec) == "probe" and rec.get("test_set") == "all":
            out[rec["method"]] = rec
    return out


def forgetting_table(rows, probes: Dict[str, dict], baseline: str = "pre-trained",
                     plain: str = "plain-ft") -> List[str]:
    """Source kept, target gained (as a share of plain FT's gain) and the speaker probe."""
    sets = [s for s in ("source_test", "target_test") if any(s in cells for cells in rows.values())]
    cells_of = {method: cells for (method, _), cells in rows.items()}
    base, ft = cells_of.get(baseline, {}), cells_of.get(plain, {})
    head = ["method", "updates", "train s", *sets, "source_test vs pre-trained", "target gain kept",
            "speaker probe acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, _), cells in rows.items():
        extra = next(iter(cells.values())).get("extra") or {}
        wer = {s: cells[s]["wer"] for s in sets if s in cells}
        src = (f"{100 * (wer['source_test'] - base['source_test']['wer']) / base['source_test']['wer']:+.1f}%"
               if "source_test" in wer and "source_test" in base and base["source_test"]["wer"] else "")
        gain = ""
        if "target_test" in wer and "target_test" in base and "target_test" in ft:
            full = base["target_test"]["wer"] - ft["target_test"]["wer"]
            gain = f"{100 * (base['target_test']['wer'] - wer['target_test']) / full:.0f}%" if full > 0 else ""
        probe = probes.get(method)
        acc = f"{probe['extra']['accuracy']:.1f}" if probe else ""
        label = method + (f" (alpha {extra['alpha']:g})" if "alpha" in extra else "")
        lines.append("| " + " | ".join(map(str, [label, extra.get("steps", ""), extra.get("train_wall_s", ""),
                                                  *[f"{wer[s]:.2f}" if s in wer else "" for s in sets],
                                                  src, gain, acc])) + " |")
    notes = ["", "target gain kept: (pre-trained - row) / (pre-trained - plain-ft) on target_test. "
             "Speaker probe: a linear classifier of the speaker on the frozen encoder's mean-pooled output "
             "(stage 55), accuracy in percent on the test speakers.", ""]
    return lines + notes


def sweep_points(records: List[dict]) -> Dict[str, Dict[float, Dict[str, float]]]:
    """merge method -> alpha -> set -> WER (the latest record of each)."""
    out: Dict[str, Dict[float, Dict[str, float]]] = {}
    for rec in sorted(records, key=lambda r: r.get("timestamp", 0)):
        if family_of(rec) == "merge-sweep":
            method = rec["method"].removesuffix("-sweep")
            out.setdefault(method, {}).setdefault(float(rec["extra"]["alpha"]), {})[rec["test_set"]] = rec["wer"]
    return out


def sweep_section(points, picked: Dict[str, float]) -> List[str]:
    lines = []
    for method, by_alpha in points.items():
        sets = sorted({s for wers in by_alpha.values() for s in wers})
        lines += [f"Alpha sweep of `{method}` (the pick: alpha {picked.get(method, float('nan')):g})", "",
                  "| alpha | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
        for alpha in sorted(by_alpha):
            mark = " *" if picked.get(method) == alpha else ""
            lines.append(f"| {alpha:g}{mark} | " + " | ".join(f"{by_alpha[alpha].get(s, float('nan')):.2f}"
                                                              for s in sets) + " |")
        lines.append("")
    return lines


def plot_merge_sweeps(points, picked: Dict[str, float], plot_dir: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for method, by_alpha in points.items():
        alphas = sorted(by_alpha)
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for s in sorted({s for wers in by_alpha.values() for s in wers}):
            ax.plot(alphas, [by_alpha[a].get(s, float("nan")) for a in alphas], marker="o", label=s)
        if method in picked:
            ax.axvline(picked[method], color="grey", linestyle="--", label=f"pick {picked[method]:g}")
        ax.set_xlabel("alpha (0: pre-trained, 1: fine-tuned)")
        ax.set_ylabel("WER (%)")
        ax.set_title(f"merging: {method}")
        ax.legend(fontsize=7)
        paths.append(_save(fig, plot_dir / f"merge-alpha-{method.replace('+', '-')}.png"))
    return paths


def plot_dev_curves(exp_dir: Path, plot_dir: Path) -> List[Path]:
    """Dev WER against forward passes and against wall time, one figure per folder of runs."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: Dict[Path, List[Path]] = {}
    for path in sorted(exp_dir.rglob("dev_curve.jsonl")):
        groups.setdefault(path.parent.parent, []).append(path)
    paths = []
    for folder, files in groups.items():
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for path in files:
            points = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for ax, key in zip(axes, ("forwards", "wall_s")):
                ax.plot([p[key] for p in points], [p["wer"] for p in points], marker=".", label=path.parent.name)
        axes[0].set_xlabel("forward passes")
        axes[1].set_xlabel("training wall time (s)")
        axes[0].set_ylabel("dev WER (%)")
        axes[0].set_xscale("symlog")
        axes[1].legend(fontsize=6)
        name = "-".join(folder.relative_to(exp_dir).parts) or "finetune"
        fig.suptitle(f"dev WER while fine-tuning: {name}")
        paths.append(_save(fig, plot_dir / f"dev-{name}.png"))
    return paths


def read_stage_times(path: Path) -> List[List[str]]:
    """Latest wall time of each (profile, stage), in stage order."""
    if not path.exists():
        return []
    latest: Dict[Tuple[str, str], List[str]] = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t"):
            if len(row) >= 5:
                latest[(row[4], row[1])] = row
    return sorted(latest.values(), key=lambda r: (r[4], int(r[1]) if r[1].isdigit() else 0))


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_family_wers(tables, plot_dir: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for family, rows in tables.items():
        sets = sorted({s for cells in rows.values() for s in cells})
        labels = [m if not mdl else f"{m}\n{Path(mdl).name}" for m, mdl in rows]
        fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(rows)), 4.2))
        width = 0.8 / max(1, len(sets))
        for i, s in enumerate(sets):
            ys = [cells.get(s, {}).get("wer", float("nan")) for cells in rows.values()]
            ax.bar([x + i * width for x in range(len(rows))], ys, width, label=s)
        ax.set_xticks([x + width * (len(sets) - 1) / 2 for x in range(len(rows))], labels, fontsize=7,
                      rotation=15, ha="right")
        ax.set_ylabel("WER (%)")
        ax.set_title(family)
        ax.legend(fontsize=7)
        paths.append(_save(fig, plot_dir / f"wer-{family}.png"))
    return paths


def plot_training_curves(exp_dir: Path, plot_dir: Path) -> List[Path]:
    """One PNG per TensorBoard run found under exp_dir: every scalar tag, against step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    run_dirs = sorted({p.parent for p in exp_dir.rglob("events.out.tfevents.*")})
    for run in run_dirs:
        acc = EventAccumulator(str(run))
        acc.Reload()
        # per-batch and validation losses share the batch axis; per-epoch tags do not
        tags = [t for t in acc.Tags().get("scalars", []) if "loss" in t and "epoch" not in t]
        if not tags:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for tag in tags:
            ev = acc.Scalars(tag)
            ax.plot([e.step for e in ev], [e.value for e in ev], label=tag, marker="." if len(ev) < 30 else None)
        ax.set_xlabel("batch")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        name = "-".join(run.relative_to(exp_dir).parts).replace("tensorboard", "").strip("-") or "train"
        ax.set_title(f"training curve: {name}")
        ax.legend(fontsize=7)
        paths.append(_save(fig, plot_dir / f"curve-{name}.png"))
    return paths


def render(exp_dir: Path, results: Path, stage_times: Path, out: Path, plot_dir: Path, title: str,
           gain_set: str = "") -> str:
    records = read_results(results)
    side = [r for r in records if family_of(r) in SIDE_FAMILIES]
    tables = latest_cells([r for r in records if family_of(r) not in SIDE_FAMILIES])
    probes, sweeps = probe_cells(side), sweep_points(side)
    picked = {m: float(c["extra"]["alpha"]) for (m, _), cells in tables.get("forgetting", {}).items()
              for c in list(cells.values())[:1] if "alpha" in (c.get("extra") or {})}
    plot_dir.mkdir(parents=True, exist_ok=True)
    story = story_rows(tables, probes, gain_set) if gain_set else []
    story_plot = plot_gain_vs_cost(story, plot_dir, gain_set) if story else None
    plots = [story_plot] if story_plot else []
    plots += plot_family_wers(tables, plot_dir) if tables else []
    plots += plot_merge_sweeps(sweeps, picked, plot_dir) if sweeps else []
    plots += plot_training_curves(exp_dir, plot_dir) if exp_dir.exists() else []
    plots += plot_dev_curves(exp_dir, plot_dir) if exp_dir.exists() else []
    lines = [
        f"# {title}",
        "",
        f"Generated by `python -m speechadapt.bin.report` from `{results.name}` "
        f"({len(records)} records) on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Do not edit by hand.",
        "",
        "WER in percent. Dev and test sentences are held out from the training text by construction; "
        "where a set does share sentences with it, a `SET_unseen` column scores only those it does not.",
        "",
    ]
    if story:
        lines += ["## Every method on one footing", "", *story_table(story, gain_set)]
    for family, rows in tables.items():
        if family == "forgetting":
            body = forgetting_table(rows, probes) + sweep_section(sweeps, picked)
        else:
            body = cost_tables(rows, family) if family in COST_TABLES else [markdown_table(rows), ""]
        body += steps_table(rows) if family == "tta" else []
        lines += [f"## {family}", "", *body]
    times = read_stage_times(stage_times)
    if times:
        lines += ["## Stage wall times", "", "| profile | stage | what | seconds |", "|---|---|---|---|"]
        lines += [f"| {r[4]} | {r[1]} | {r[2]} | {r[3]} |" for r in times]
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(out.parent).as_posix() if p.is_relative_to(out.parent) else p})" for p in plots]
        lines.append("")
    text = "\n".join(lines)
    atomic_write_text(text, out)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--results", type=Path, default=None, help="default: EXP_DIR/results.jsonl")
    p.add_argument("--stage-times", type=Path, default=None, help="default: EXP_DIR/stage_times.tsv")
    p.add_argument("--out", type=Path, required=True, help="RESULTS.md to write")
    p.add_argument("--plot-dir", type=Path, default=None, help="default: OUT's folder/plots")
    p.add_argument("--title", default="Results")
    p.add_argument("--gain-set", default="", help="the test set of the domain adapted to: with it, RESULTS.md "
                   "opens with every method on one footing and a plot of its gain against cost")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    results = args.results or args.exp_dir / "results.jsonl"
    if not results.exists():
        raise SystemExit(f"report: no results file {results}; run the decoding stages first")
    render(
        args.exp_dir, results, args.stage_times or args.exp_dir / "stage_times.tsv", args.out,
        args.plot_dir or args.out.parent / "plots", args.title, args.gain_set,
    )
    logging.info(f"wrote {args.out}")


if __name__ == "__main__":
    main()
