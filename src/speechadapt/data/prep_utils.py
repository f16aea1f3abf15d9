"""Small helpers for data-preparation stages: done markers, YAML configs, jsonl."""

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

PathLike = Union[str, os.PathLike]


def marker_path(out_dir: PathLike, stage: str) -> Path:
    return Path(out_dir) / f".done-{stage}"


def is_done(out_dir: PathLike, stage: str, settings: Dict[str, Any]) -> bool:
    """True when ``stage`` already finished in ``out_dir`` with exactly ``settings``.

    A marker written with other settings (another profile, seed or size) does not
    count, so a changed configuration is never silently served stale data.
    """
    path = marker_path(out_dir, stage)
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()) == json.loads(json.dumps(settings))
    except json.JSONDecodeError:
        return False


def mark_done(out_dir: PathLike, stage: str, settings: Dict[str, Any]) -> None:
    path = marker_path(out_dir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1, sort_keys=True))


def load_yaml_section(path: Optional[PathLike], section: str) -> Dict[str, Any]:
    """``section`` of a YAML file as a dict ({} when ``path`` is None)."""
    if path is None:
        return {}
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if section not in data:
        raise KeyError(f"config file {path} has no '{section}:' section")
    return dict(data[section] or {})


def dataclass_from_mapping(cls, values: Dict[str, Any], source: str = "config"):
    """Build dataclass ``cls`` from ``values``; unknown keys are an error naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise KeyError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    return cls(**values)


def write_jsonl(rows: Iterable[Dict[str, Any]], path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_jsonl(path: PathLike) -> List[Dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (did the synthesis stage run?)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def progress_disabled() -> bool:
    """tqdm bars only on a terminal."""
    return not sys.stderr.isatty()


def setup_stage_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s")


def add_dataclass_overrides(parser, cls) -> None:
    """One ``--field-name`` flag per dataclass field (default None = keep the config's).

    List fields take comma-separated values ("en-us,en+m3" or "20,30").
    """
    for f in dataclasses.fields(cls):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=f"override {f.name} (comma-separated for lists)")


def apply_overrides(cls, base: Dict[str, Any], args) -> Dict[str, Any]:
    """``base`` with every non-None ``args.<field>`` parsed to the field's default type."""
    out = dict(base)
    defaults = cls()
    for f in dataclasses.fields(cls):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        current = getattr(defaults, f.name)
        if isinstance(current, list):
            item_type = type(current[0]) if current else str
            out[f.name] = [item_type(v) for v in str(raw).split(",") if v.strip()]
        else:
            out[f.name] = type(current)(raw)
    return out
