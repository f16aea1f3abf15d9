"""Small helpers for data-preparation stages: done markers, input stamps, jsonl."""

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Union

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


def file_stamp(path: PathLike) -> Dict[str, Any]:
    """Path, size and modification time: what a done marker compares to notice a
    changed input file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime": stat.st_mtime}


def comma_list(value: str) -> List[str]:
    """'a,b,,c' -> ['a', 'b', 'c'] (argparse type of split lists)."""
    return [v.strip() for v in str(value).split(",") if v.strip()]


def comma_floats(value: str) -> List[float]:
    """'0,0.3,0.5' -> [0.0, 0.3, 0.5] (argparse type of grids)."""
    try:
        return [float(v) for v in comma_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


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
