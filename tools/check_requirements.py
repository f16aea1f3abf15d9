#!/usr/bin/env python3
"""Exit 0 when this interpreter has every pinned requirement, else list what is missing.

Used by tools/setup.sh to decide whether the active interpreter can be used as is.
"""
import re
import sys
from importlib import metadata
from pathlib import Path


def unmet(requirements_file: Path) -> list:
    problems = []
    for line in requirements_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(==|>=)?\s*([^\s;]*)", line)
        name, op, want = m.group(1), m.group(2), m.group(3)
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed")
            continue
        if op == "==" and have.split("+")[0] != want:
            problems.append(f"{name}: have {have}, want {want}")
        elif op == ">=" and _key(have) < _key(want):
            problems.append(f"{name}: have {have}, want >={want}")
    return problems


def _key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+]", version)[:3])


if __name__ == "__main__":
    req = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent.parent / "requirements.txt")
    missing = unmet(req)
    for p in missing:
        print(p)
    sys.exit(1 if missing else 0)
