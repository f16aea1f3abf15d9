"""Environment facts recorded in logs and checkpoints (versions, git revision, host)."""

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict

_PACKAGES = ("torch", "lhotse", "transformers", "peft", "sentencepiece", "kaldialign", "numpy")


def _git(*args) -> str:
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def get_env_info() -> Dict[str, str]:
    """Plain strings only, so the dict can be stored in a checkpoint or JSON."""
    info = {
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "git_sha": _git("rev-parse", "--short", "HEAD"),
        "git_date": _git("log", "-1", "--format=%cd"),
        "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
    }
    for name in _PACKAGES:
        try:
            info[f"{name}_version"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[f"{name}_version"] = "not installed"
    try:
        import torch

        info["cuda_available"] = str(torch.cuda.is_available())
        info["cuda_version"] = str(torch.version.cuda)
    except ImportError:
        pass
    return info
