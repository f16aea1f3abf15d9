"""Out-of-memory safety of the Trainer, icefall-style.

* :func:`scan_pessimistic_batches`: before training on a GPU, the batches of the epoch
  that are the worst by each of lhotse's criteria (longest total duration, most cuts,
  longest cut, ... : ``lhotse.dataset.find_pessimistic_batches``) go through what a step
  runs, without the update (``optimizer.probe``: forward + backward for first-order
  optimisers, the 2q perturbed forwards, restored, for zeroth-order ones); running out of memory
  there stops with the batch named and a smaller ``--max-duration`` suggested, before
  hours of training are spent.
* :func:`handle_out_of_memory`: an OOM during training. In one process the batch is
  skipped, logged and counted, up to ``--max-oom-batches``; under DDP it stops (the other
  ranks would wait for this one in the next all-reduce forever).
"""

import logging

import torch

from speechadapt.training.state import find_epoch_sampler


def describe_batch(batch) -> str:
    durations = list(getattr(batch, "durations", []) or [])
    ids = list(getattr(batch, "cut_ids", []) or [])
    if not durations:
        return f"{type(batch).__name__}"
    return (f"{len(durations)} utterances, {sum(durations):.1f} s of audio, the longest {max(durations):.1f} s"
            + (f", first cut {ids[0]}" if ids else ""))


def suggested_max_duration(batch) -> str:
    seconds = sum(getattr(batch, "durations", []) or [])
    return f"--max-duration about {0.75 * seconds:.0f}" if seconds else "a smaller --max-duration"


def _free(trainer) -> None:
    if hasattr(trainer.optimizer, "drop_gradients"):  # first-order: the accumulation cycle too
        trainer.optimizer.drop_gradients()
    else:
        trainer.optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def handle_out_of_memory(trainer, batch, error: BaseException) -> None:
    """Skip and count the batch (one process, within the limit) or raise with what to change."""
    _free(trainer)
    b = int(trainer.params["batch_idx_train"])
    count = trainer.params["num_oom_batches"] = int(trainer.params.get("num_oom_batches", 0)) + 1
    limit = trainer.config.max_oom_batches
    what = f"out of GPU memory on batch {b} ({describe_batch(batch)})"
    if trainer.dist.world_size > 1:
        raise RuntimeError(f"{what} on rank {trainer.dist.rank}: under DDP the batch cannot be skipped alone; "
                           f"lower the batch size ({suggested_max_duration(batch)})") from error
    if count > limit:
        raise RuntimeError(f"{what}: {count} such batches, more than --max-oom-batches {limit}; "
                           f"try {suggested_max_duration(batch)}") from error
    logging.warning(f"{what}: skipped ({count} of at most {limit})")


def scan_pessimistic_batches(trainer) -> int:
    """Probe the worst batches of the epoch; returns how many were probed (0: no lhotse sampler)."""
    from lhotse.dataset import find_pessimistic_batches
    from lhotse.dataset.sampling.base import CutSampler

    sampler = find_epoch_sampler(trainer.train_dl)
    dataset = getattr(trainer.train_dl, "dataset", None)
    if not isinstance(sampler, CutSampler) or dataset is None:
        return 0
    batches, values = find_pessimistic_batches(sampler)
    for criterion, cuts in batches.items():
        batch = dataset[cuts]
        loss_fn, _ = trainer._loss_fn(batch)
        try:
            trainer.optimizer.probe(loss_fn)
        except torch.OutOfMemoryError as error:
            _free(trainer)
            raise RuntimeError(f"out of GPU memory on the most pessimistic batch by {criterion} "
                               f"({describe_batch(batch)}): try {suggested_max_duration(batch)}") from error
    _free(trainer)
    logging.info(f"memory scan: the {len(batches)} most pessimistic batches fit ({', '.join(batches)})")
    return len(batches)
