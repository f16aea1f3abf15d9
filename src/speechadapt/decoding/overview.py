"""The one comparison table at the top of a recipe's RESULTS.md: every adaptation method
(fine-tuning first- and zeroth-order, test-time adaptation, fine-tuning without forgetting,
merging) on one footing, against one zero-shot row per source model, and one plot of the
target-WER gain against what it cost. Built from the report's per-family cells only.

Costs are what each method spent to reach its row: a fine-tuning run's training (updates on
target_adapt; forward and backward passes, seconds, peak memory of the training), a TTA
run's adaptation of target_test (its passes and seconds over that set's utterances). A
merge adds no passes of its own beyond the alpha sweep's decodes, so its cost columns are
those of the fine-tuning run it merges, marked as such.
"""

from pathlib import Path
from typing import Dict, List, Optional, Tuple

# family -> its zero-shot row: the same source model, not adapted
BASELINES = {"finetune": "zero-shot", "tta": "no-tta", "forgetting": "pre-trained"}
SEED_SUFFIX = "-seed2"  # a rerun of a method with another seed: the seed-to-seed spread, not a row


def _extra(cells: Dict[str, dict], test_set: str) -> dict:
    rec = cells.get(test_set) or next(iter(cells.values()))  # a TTA run's cost is that of adapting this set
    return rec.get("extra") or {}


def source_label(source: str) -> str:
    """``exp/full/ctc:epoch-8-avg-3.pt`` -> ``ctc``: the source model's run folder."""
    return Path(source.split(":")[0]).name or source


def _cost(family: str, extra: dict) -> dict:
    if family == "tta":  # adapting target_test itself, utterance by utterance
        return dict(params=extra.get("tuned_params"), forwards=extra.get("forwards"),
                    backwards=extra.get("backwards"), seconds=extra.get("adapt_wall_s"), peak_mb=extra.get("peak_mb"))
    return dict(params=extra.get("tuned_params"), forwards=extra.get("forwards"), backwards=extra.get("backwards"),
                seconds=extra.get("train_wall_s"), peak_mb=extra.get("peak_train_mb"))


def story_rows(tables: Dict[str, Dict[Tuple[str, str], Dict[str, dict]]],
               probes: Dict[str, dict], gain_set: str) -> List[dict]:
    """One row per method and source model, a zero-shot row first for each source model;
    ``gain_set`` (the adapted-to domain's test set) is what the seed spread is measured on."""
    zero: Dict[str, dict] = {}
    rows: List[dict] = []
    cost_of_run: Dict[str, dict] = {}  # a forgetting run's folder name -> its cost (what a merge of it reuses)
    forgetting_source = ""
    for family, baseline in BASELINES.items():
        for (method, model), cells in tables.get(family, {}).items():
            extra = _extra(cells, gain_set)
            source = str(extra.get("source") or "")
            if family == "forgetting":
                forgetting_source = forgetting_source or source
                source = source or forgetting_source  # a merge record names its base weights instead
            wers = {s: rec["wer"] for s, rec in cells.items() if rec.get("wer") is not None}
            if method == baseline:
                zero.setdefault(source, dict(method="zero-shot", family="-", source=source, wers=wers, cost={},
                                             probe=None, spread=None))
                zero[source]["probe"] = zero[source]["probe"] or probes.get(baseline)  # stage 55: "pre-trained"
                continue
            row = dict(method=method, family=family, source=source, wers=wers, cost=_cost(family, extra),
                       probe=probes.get(method), merges=[Path(n).parent.name for n in extra.get("finetuned") or []])
            if "alpha" in extra:
                row["method"] = f"{method} (alpha {extra['alpha']:g})"
            elif family == "forgetting":
                cost_of_run[Path(model).name] = row["cost"]
            rows.append(row)
    spread_of: Dict[str, dict] = {}
    for row in [r for r in rows if r["method"].endswith(SEED_SUFFIX)]:
        rows.remove(row)
        first = next((r for r in rows if r["method"] == row["method"][:-len(SEED_SUFFIX)]
                      and r["family"] == row["family"]), None)
        if first and gain_set in first["wers"] and gain_set in row["wers"]:
            a, b = first["wers"][gain_set], row["wers"][gain_set]
            spread_of[row["family"]] = dict(method=first["method"], a=a, b=b, points=abs(a - b), set=gain_set)
    spread_of.setdefault("forgetting", spread_of.get("finetune"))  # the same kind of run: FT on target_adapt
    for row in rows:
        row["spread"] = spread_of.get(row["family"])
        if row["merges"]:
            row["cost"] = dict(next((cost_of_run[m] for m in row["merges"] if m in cost_of_run), {}), note="merge")
    ordered: List[dict] = []
    for source, base in zero.items():
        ordered += [base] + [r for r in rows if r["source"] == source]
    return ordered + [r for r in rows if r["source"] not in zero]


def _relative(row: dict, base: Optional[dict], test_set: str) -> str:
    if not base or test_set not in row["wers"] or not base["wers"].get(test_set):
        return ""
    return f"{100 * (row['wers'][test_set] - base['wers'][test_set]) / base['wers'][test_set]:+.1f}%"


def _beyond_spread(row: dict, base: Optional[dict]) -> str:
    """yes: the target gain exceeds its family's seed-to-seed spread; worse: so does the loss."""
    spread = row.get("spread")
    gain_set = (spread or {}).get("set")
    if not spread or not base or gain_set not in row["wers"] or gain_set not in base["wers"]:
        return ""
    gain = base["wers"][gain_set] - row["wers"][gain_set]
    return "yes" if gain > spread["points"] else "worse" if -gain > spread["points"] else "no"


def _num(value, fmt: str = "{:,}") -> str:
    return "" if value in (None, "") else fmt.format(value)


def story_table(rows: List[dict], gain_set: str) -> List[str]:
    if not rows:
        return []
    sets: List[str] = []
    for r in rows:
        sets += [s for s in r["wers"] if s not in sets]
    changes = [s for s in sets if s == gain_set] + [s for s in sets if s != gain_set]
    head = ["method", "family", "source model", *sets, *[f"{s} vs zero-shot" for s in changes],
            f"{gain_set} gain > seed spread", "tuned params", "forwards", "backwards", "seconds", "peak MB", "speaker probe acc"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_of = {r["source"]: r for r in rows if r["method"] == "zero-shot"}
    for r in rows:
        c, probe = r["cost"], r["probe"]
        seconds = _num(c.get("seconds"), "{:g}") + (" *" if c.get("note") else "")
        cells = [r["method"], r["family"], source_label(r["source"]),
                 *[f"{r['wers'][s]:.2f}" if s in r["wers"] else "" for s in sets],
                 *[_relative(r, base_of.get(r["source"]), s) if r["method"] != "zero-shot" else "" for s in changes],
                 _beyond_spread(r, base_of.get(r["source"])), _num(c.get("params")), _num(c.get("forwards")), _num(c.get("backwards")), seconds,
                 _num(c.get("peak_mb"), "{:g}"), f"{probe['extra']['accuracy']:.1f}" if probe else ""]
        out.append("| " + " | ".join(cells) + " |")
    spreads = {r["spread"]["method"]: r["spread"] for r in rows if r.get("spread")}
    notes = [f"Seed-to-seed spread on {sp['set']}: {name} {sp['a']:.2f} and {sp['b']:.2f} with another seed, "
             f"{sp['points']:.2f} points apart (the bar for its family; fine-tuning's for the forgetting rows)."
             for name, sp in spreads.items()]
    notes = ["", *notes, "", "WER in percent; each change is relative to the zero-shot row of the same source model. "
             "Costs: a fine-tuning run's training on target_adapt; a TTA run's adaptation of target_test "
             f"(per utterance, summed over the set). * a merge: the cost of the fine-tuning run it merges "
             f"(merging adds the alpha sweep's dev decodes).", ""]
    return out + notes


def plot_gain_vs_cost(rows: List[dict], plot_dir: Path, gain_set: str) -> Optional[Path]:
    """``gain_set`` WER gain over zero-shot (points) against forward + backward passes, per method."""
    base_of = {r["source"]: r for r in rows if r["method"] == "zero-shot"}
    points = []
    for r in rows:
        base = base_of.get(r["source"])
        passes = (r["cost"].get("forwards") or 0) + (r["cost"].get("backwards") or 0)
        if r["method"] == "zero-shot" or not base or gain_set not in r["wers"] or gain_set not in base["wers"]:
            continue
        points.append((r, passes, base["wers"][gain_set] - r["wers"][gain_set]))
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {"finetune": "o", "tta": "s", "forgetting": "^"}
    for family in markers:
        fam = [(r, x, y) for r, x, y in points if r["family"] == family]
        if fam:
            ax.scatter([x for _, x, _ in fam], [y for _, _, y in fam], marker=markers[family], label=family)
        for r, x, y in fam:
            ax.annotate(f"{r['method']} [{source_label(r['source'])}]", (x, y), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("symlog")
    ax.set_xlabel(f"forward + backward passes (training, or adapting {gain_set})")
    ax.set_ylabel(f"{gain_set} WER gain over zero-shot (points)")
    ax.set_title("what each method gains, against what it costs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = plot_dir / "story-gain-vs-cost.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
