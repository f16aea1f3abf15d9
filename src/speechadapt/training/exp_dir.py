"""Which run an experiment directory holds: where to resume, and what a fresh run may not overwrite.

* ``--start-epoch auto`` resumes from the newest ``epoch-N.pt`` / ``checkpoint-B.pt``
  (by modification time: the loop writes them in order), or starts fresh when there is
  none, so a recipe stage can simply be run again.
* A fresh run (epoch 1, batch 0) refuses a directory that holds another run's
  checkpoints: their pruning, averaging (``--iter``, ``--epoch``) and curves would mix
  with the new run's. ``--archive-old-run true`` moves them into ``old-run-<time>/``.
"""

import logging
import re
import shutil
import time
from pathlib import Path
from typing import List, Optional, Tuple, Union

_CHECKPOINT = re.compile(r"^(epoch-\d+|checkpoint-\d+)\.pt$")
_RUN_FILE = re.compile(r"^(epoch-\d+|checkpoint-\d+|epoch-\d+-avg-\d+|iter-\d+-avg-\d+|best-valid-\d+)\.pt$")
# What a run leaves besides checkpoint files (moved with them when archived).
_RUN_PARTS = ("model.json", "tensorboard", "decode")


def resumable_checkpoints(exp_dir) -> List[Path]:
    """epoch-N.pt and checkpoint-B.pt files, oldest first."""
    found = [p for p in Path(exp_dir).glob("*.pt") if _CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def run_files(exp_dir) -> List[Path]:
    """Every checkpoint or averaged file of a run in ``exp_dir``."""
    return sorted(p for p in Path(exp_dir).glob("*.pt") if _RUN_FILE.match(p.name))


def resolve_start(exp_dir, start_epoch: Union[int, str], start_batch: int) -> Tuple[int, int]:
    """(epoch, batch) to start from; ``start_epoch="auto"`` picks the newest checkpoint."""
    if start_epoch != "auto":
        return int(start_epoch), int(start_batch)
    found = resumable_checkpoints(exp_dir)
    if not found:
        logging.info(f"--start-epoch auto: no checkpoint in {exp_dir}, starting a fresh run")
        return 1, 0
    latest = found[-1]
    number = int(latest.stem.split("-")[1])
    logging.info(f"--start-epoch auto: resuming from {latest}")
    return (number + 1, 0) if latest.name.startswith("epoch-") else (1, number)


def check_fresh_start(exp_dir, archive: bool, is_main: bool) -> Optional[Path]:
    """Refuse (or, with ``archive``, move aside on the main rank) an earlier run's files."""
    exp_dir = Path(exp_dir)
    files = run_files(exp_dir)
    if not files:
        return None
    if not archive:
        names = ", ".join(p.name for p in files[:6]) + (f" (+{len(files) - 6} more)" if len(files) > 6 else "")
        raise FileExistsError(
            f"{exp_dir} holds the checkpoints of an earlier run ({names}); a fresh run there would mix with "
            f"them. Resume it with --start-epoch auto (or N / --start-batch B), pass --archive-old-run true "
            f"to move them into {exp_dir}/old-run-<time>/, or choose another --exp-dir")
    if not is_main:
        return None
    target = exp_dir / time.strftime("old-run-%Y%m%d-%H%M%S")
    target.mkdir()
    for path in files + [exp_dir / part for part in _RUN_PARTS if (exp_dir / part).exists()]:
        shutil.move(str(path), str(target / path.name))
    logging.warning(f"moved the earlier run's {len(files)} checkpoint files to {target}")
    return target
