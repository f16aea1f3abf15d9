"""What exact resume needs besides the model: RNG states and the data position.

RNG states are stored as plain lists/tensors (weights_only-loadable). The data
position is the number of batches this rank consumed in the current epoch; on resume
the loop re-creates the epoch's iterator from the same seed and fast-forwards it.
For lhotse samplers only the sampler is advanced (cut metadata, no feature loading);
for any other loader the batches are drawn and dropped.
"""

import logging
import random
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch


def fix_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def get_rng_state() -> Dict[str, Any]:
    """torch (+CUDA), numpy and python RNG states as plain containers."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            logging.warning("CUDA device count changed since the checkpoint: CUDA RNG not restored")


def find_epoch_sampler(dataloader) -> Optional[Any]:
    """The object whose ``set_epoch`` decides the epoch's order, if any: the loader's
    (batch) sampler, or the sampler inside lhotse's IterableDatasetWrapper."""
    dataset = getattr(dataloader, "dataset", None)
    candidates = [getattr(dataloader, "batch_sampler", None), getattr(dataloader, "sampler", None),
                  getattr(dataset, "sampler", None)]
    for candidate in candidates:
        if candidate is not None and hasattr(candidate, "set_epoch"):
            return candidate
    return None


def _is_lhotse_sampler(sampler) -> bool:
    try:
        from lhotse.dataset.sampling.base import CutSampler
    except ImportError:
        return False
    return isinstance(sampler, CutSampler)


def sampler_state(dataloader) -> Optional[Dict]:
    """The sampler's own ``state_dict()`` (stored under icefall's "sampler" key)."""
    sampler = find_epoch_sampler(dataloader)
    if sampler is None or not hasattr(sampler, "state_dict"):
        return None
    try:
        return sampler.state_dict()
    except (AssertionError, NotImplementedError) as e:
        logging.debug(f"sampler state not saved: {e}")
        return None


def iterate_from(dataloader, num_done: int) -> Iterator:
    """An iterator over ``dataloader`` that skips its first ``num_done`` batches."""
    sampler = find_epoch_sampler(dataloader)
    if num_done > 0 and sampler is not None and _is_lhotse_sampler(sampler):
        sampler_iter = iter(sampler)
        for _ in range(num_done):
            next(sampler_iter)
        # A state round trip marks the sampler as restored, so the DataLoader's
        # iter() continues from here instead of restarting the epoch.
        sampler.load_state_dict(sampler.state_dict())
        logging.info(f"fast-forwarded the lhotse sampler by {num_done} batches")
        return iter(dataloader)
    iterator = iter(dataloader)
    for _ in range(num_done):
        next(iterator)
    if num_done:
        logging.info(f"skipped {num_done} batches already trained on")
    return iterator
