"""One training loop for every stage and every method (training, fine-tuning, the
text LM; first-order and zeroth-order alike).

The caller supplies a model with ``compute_loss(batch) -> (loss, info)`` (``loss`` a
scalar tensor *summed* over the batch, ``info`` a MetricsTracker holding at least
"frames", the normaliser, and "loss"), the dataloaders, and the optimiser's and the
schedule's configs (or built objects).

Every update is one ``optimizer.step(loss_fn)`` (:mod:`speechadapt.training.optim`):
``loss_fn`` runs the model on the batch and returns ``loss * world_size /
frames_all_ranks`` (``--loss-norm frames``: after DDP's gradient averaging, or the ZO
optimiser's loss averaging, this equals one process on the concatenated batch) or the
summed loss (``sum``). A first-order optimiser back-propagates and steps inside it; a
zeroth-order one evaluates it 2q (+1) times in eval mode under inference mode, on a
model that is not wrapped in DDP (the ranks share the perturbation seeds and average
the losses, so their parameters stay identical).

The loop does the rest: device placement, freezing by name pattern, DDP, AMP (CUDA
only), the schedule, the non-finite guard (all ranks skip together),
``model.set_batch_count(n)`` and user hooks before each batch, the running average
model, validation (every N batches and at epoch end, reduced over ranks),
logging/TensorBoard/progress on rank 0 (tqdm on a terminal, log lines in batch jobs),
checkpoints and exact resume (RNG states of every rank, data position, optimiser,
ZO generator, schedule).

Left to the model side: moving the batch to its device, augmentation drawn from the
global RNGs (so resume reproduces it), the loss and its metrics. Left to the entry
point: the dataloaders and pre-trained weights.
"""

import inspect
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from speechadapt.adapt.zo import ReadOnlyCache, vectorised_losses
from speechadapt.training import checkpoint as ckpt
from speechadapt.training.dist import DistInfo, all_reduce_sum, barrier, broadcast_parameters, get_world_size
from speechadapt.training.exp_dir import check_fresh_start, resolve_start
from speechadapt.training import fsdp
from speechadapt.training.metrics import MetricsTracker
from speechadapt.training.oom import handle_out_of_memory, scan_pessimistic_batches
from speechadapt.training.optim import OptimizerConfig, build_optimizer
from speechadapt.training.preemption import Preempted, PreemptionGuard, write_marker
from speechadapt.training.options import TrainingConfig
from speechadapt.training.schedulers import SchedulerConfig, build_scheduler
from speechadapt.training.state import (find_epoch_sampler, fix_random_seed, get_rng_state,
                                        iterate_from, sampler_state, set_rng_state)
from speechadapt.utils.progress import Progress

Hook = Callable[["Trainer"], None]

# Ranks get distinct seeds (different dropout/augmentation), reproducible per epoch.
_RANK_SEED_STRIDE = 100_003


class NonFiniteLossError(RuntimeError):
    pass


Objective = Callable[[nn.Module, Any, Optional[dict]], Tuple[torch.Tensor, MetricsTracker]]


class LossForward(nn.Module):
    """``forward(batch, cache)`` = the objective of the model on the batch (by default
    ``model.compute_loss``): what DDP wraps, so its gradient hooks see the loss of any
    model. ``cache`` lives for one batch: models keep there what the repeated
    evaluations of a zeroth-order step share (frozen encoders' outputs)."""

    def __init__(self, model: nn.Module, objective: Optional[Objective] = None):
        super().__init__()
        self.model = model
        self.objective = objective
        self._takes_cache = "cache" in inspect.signature(model.compute_loss).parameters

    def forward(self, batch, cache: Optional[dict] = None) -> Tuple[torch.Tensor, MetricsTracker]:
        if self.objective is not None:
            return self.objective(self.model, batch, cache)
        if self._takes_cache:
            return self.model.compute_loss(batch, cache=cache)
        return self.model.compute_loss(batch)


class Trainer:
    def __init__(
        self,
        config: TrainingConfig,
        model: nn.Module,
        train_dl,
        valid_dl=None,
        dist_info: Optional[DistInfo] = None,
        optimizer_config: Optional[OptimizerConfig] = None,
        scheduler_config: Optional[SchedulerConfig] = None,
        optimizer=None,
        scheduler=None,
        batch_hooks: Optional[List[Hook]] = None,
        valid_hooks: Optional[List[Callable[["Trainer", MetricsTracker], None]]] = None,
        step_hooks: Optional[List[Hook]] = None,
        objective: Optional[Objective] = None,
        lr_scale_of: Optional[Callable[[str], float]] = None,
    ):
        config.validate()
        if not hasattr(model, "compute_loss"):
            raise TypeError(f"{type(model).__name__} has no compute_loss(batch): see speechadapt.models.interface")
        self.config = config
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.batch_hooks = list(batch_hooks or [])
        self.valid_hooks = list(valid_hooks or [])
        self.step_hooks = list(step_hooks or [])  # after each update (evaluation, early stop)
        self.exp_dir = Path(config.exp_dir)
        self.is_main = self.dist.rank == 0
        self.should_stop = False  # hooks may set this to end training early
        self.preemption: Optional[PreemptionGuard] = None
        self.preempted_by: Optional[str] = None  # the signal that stopped training
        self.start_epoch, self.start_batch = resolve_start(self.exp_dir, config.start_epoch, config.start_batch)
        self.resuming = (self.start_epoch, self.start_batch) != (1, 0)
        if not self.resuming:
            check_fresh_start(self.exp_dir, config.archive_old_run, self.is_main)
            barrier()

        self.model = model.to(self.device)
        freeze_by_pattern(self.model, config.freeze_pattern)
        self.amp_dtype = self._amp_dtype()
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.model_avg = self._init_model_avg()  # before FSDP splits the tensors
        if config.fsdp:
            self._shard(optimizer, optimizer_config or OptimizerConfig())
        self.optimizer = optimizer or build_optimizer(
            self.model.named_parameters(), optimizer_config or OptimizerConfig(), self.grad_scaler, lr_scale_of)
        self.zeroth_order = bool(getattr(self.optimizer, "zeroth_order", False))
        self.scheduler = scheduler or build_scheduler(
            self.optimizer, scheduler_config or SchedulerConfig(), self._total_steps(scheduler_config))
        self.loss_module = self._wrap_ddp(LossForward(self.model, objective))
        if isinstance(self.loss_module, nn.parallel.DistributedDataParallel) and hasattr(self.optimizer, "no_sync"):
            self.optimizer.no_sync = self.loss_module.no_sync  # gradient accumulation syncs once per update

        self.params: Dict[str, Any] = {
            "cur_epoch": self.start_epoch, "batch_idx_train": 0, "batch_idx_in_epoch": 0,
            "avg_batch_idx": 0, "best_valid_loss": math.inf, "best_valid_epoch": -1,
            "valid_loss": math.inf, "epoch_valid_losses": {}, "bad_in_row": 0,
            "seed": config.seed, "world_size": self.dist.world_size,
            "trainable_only": config.save_trainable_only, "batches_per_epoch": 0,
        }
        self._resume_rng: Optional[Dict] = None
        self.tb_writer = self._tensorboard()

    # ---- set-up ----------------------------------------------------------------
    def _total_steps(self, scheduler_config: Optional[SchedulerConfig]) -> int:
        """The run's length in updates, when the schedule needs it and can know it."""
        if scheduler_config is None or not scheduler_config.needs_total_steps or scheduler_config.total_steps:
            return 0
        if self.config.max_steps:  # a step budget is the run's length
            return int(self.config.max_steps)
        try:
            return self.config.num_epochs * len(self.train_dl)
        except TypeError:
            return 0  # a lhotse sampler has no length: build_scheduler asks for --total-steps

    def _amp_dtype(self) -> Optional[torch.dtype]:
        wanted = torch.float16 if self.config.use_fp16 else torch.bfloat16 if self.config.use_bf16 else None
        if wanted is not None and self.device.type != "cuda":
            logging.info(f"AMP ({wanted}) requested on {self.device}: ignored, training in float32")
            return None
        return wanted

    def _shard(self, optimizer, optimizer_config: OptimizerConfig) -> None:
        if optimizer is not None:
            raise ValueError("--fsdp true builds the optimiser after sharding: give the Trainer optimizer_config")
        fsdp.check_fsdp_supported(self.dist.world_size, optimizer_config.optimizer, optimizer_config.zeroth_order,
                                  self.config.use_fp16, optimizer_config.accum_grad)
        fsdp.shard_model(self.model, self.config.fsdp_units, self.device)

    def _model_state(self) -> Dict[str, torch.Tensor]:
        """The model's (trainable) state; under FSDP gathered on rank 0, so every rank calls it."""
        if self.config.fsdp:
            return fsdp.full_model_state(self.model, self.config.save_trainable_only)
        return ckpt.model_state_dict(self.model, self.config.save_trainable_only)

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if self.dist.world_size <= 1 or self.config.fsdp:
            return model
        if self.zeroth_order:
            # No gradients to synchronise: start every rank from rank 0's weights.
            broadcast_parameters(model)
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=self.config.find_unused_parameters)

    def _init_model_avg(self) -> Optional[Dict[str, torch.Tensor]]:
        if not self.is_main or self.config.average_period <= 0:
            return None
        state = ckpt.model_state_dict(self.model, self.config.save_trainable_only)
        return {k: v.detach().to("cpu", torch.float64 if v.is_floating_point() else v.dtype).clone()
                for k, v in state.items()}

    def _tensorboard(self):
        if not (self.is_main and self.config.tensorboard):
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.exp_dir / "tensorboard"))

    # ---- resume ----------------------------------------------------------------
    def resume_path(self) -> Optional[Path]:
        if self.start_batch > 0:
            return self.exp_dir / f"checkpoint-{self.start_batch}.pt"
        if self.start_epoch > 1:
            return self.exp_dir / f"epoch-{self.start_epoch - 1}.pt"
        return None

    def resume(self) -> int:
        """Restore everything from the checkpoint named by --start-epoch/--start-batch;
        returns the epoch to continue in."""
        path = self.resume_path()
        if path is None:
            return self.start_epoch
        logging.info(f"resuming from {path}")
        scaler = self.grad_scaler if self.grad_scaler.is_enabled() else None
        if self.config.fsdp:
            saved = ckpt.load_checkpoint(path, None, None, self.scheduler, scaler)
            fsdp.load_full_states(self.model, self.optimizer, saved, path)
        else:
            saved = ckpt.load_checkpoint(path, self.model, self.optimizer, self.scheduler, scaler)
        self.params.update({k: v for k, v in saved["params"].items()
                            if k not in ("rng_states", "world_size", "trainable_only")})
        if self.model_avg is not None:
            if saved.get("model_avg_live") is not None:  # ours: the float64 average as it was in memory
                self.model_avg = dict(saved["model_avg_live"])
            elif saved.get("model_avg") is None:
                logging.warning(f"{path} has no model_avg: the running average restarts here")
                self.params["avg_batch_idx"] = self.params["batch_idx_train"]
            else:  # icefall's file: its float32 average covers every batch
                self.model_avg = {k: v.to(torch.float64) if v.is_floating_point() else v
                                  for k, v in saved["model_avg"].items()}
                self.params["avg_batch_idx"] = self.params["batch_idx_train"]
        if self.start_batch > 0:
            # Mid-epoch: continue the saved RNG streams. (At an epoch boundary the
            # epoch's own seeding already reproduces the uninterrupted run.)
            self._resume_rng = self._rng_for_this_rank(saved["params"])
            epoch = int(self.params["cur_epoch"])
            if self.start_epoch not in (1, epoch):
                logging.warning(f"--start-epoch {self.start_epoch} ignored: {path} is in epoch {epoch}")
            return epoch
        self.params["batch_idx_in_epoch"] = 0
        return self.start_epoch

    def _rng_for_this_rank(self, params: Dict) -> Optional[Dict]:
        states = params.get("rng_states") or []
        if params.get("world_size") != self.dist.world_size or len(states) != self.dist.world_size:
            logging.warning("world size changed since the checkpoint: RNG states not restored")
            return None
        return states[self.dist.rank]

    # ---- training --------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train from --start-epoch/--start-batch to --num-epochs; returns ``params``.
        Raises :class:`Preempted` after saving when a preemption signal arrived."""
        if self.config.preemption_signals:
            self.preemption = PreemptionGuard(self.config.preemption_signals).install()
        start_epoch = self.resume()
        last_epoch = self.config.num_epochs
        if self.config.max_steps and self.params["batch_idx_train"] >= self.config.max_steps:
            last_epoch = 0  # the step budget is spent already
        if start_epoch > last_epoch:
            logging.info(f"nothing to train: {self.exp_dir} already holds epoch {start_epoch - 1} "
                         f"(batch {self.params['batch_idx_train']}) of this run")
        if (self.config.scan_oom and self.device.type == "cuda" and start_epoch <= last_epoch
                and not self.params["batch_idx_in_epoch"]):
            scan_pessimistic_batches(self)
        for epoch in range(start_epoch, last_epoch + 1):
            self.params["cur_epoch"] = epoch
            self.train_one_epoch(epoch)
            if self.should_stop:
                path = self._stop()
                if self.preempted_by is not None:
                    self._exit_preempted(path)
                break
            self.end_epoch(epoch)
        if self.tb_writer is not None:
            self.tb_writer.close()
        barrier()
        if self.preemption is not None:
            self.preemption.close()
        return self.params

    def _exit_preempted(self, path: Path) -> None:
        """Every rank has saved (``save`` ends in a barrier): tell the launcher, stop."""
        if self.is_main:
            write_marker(path, self.preempted_by, int(self.params["batch_idx_train"]))
        if self.tb_writer is not None:
            self.tb_writer.close()
        barrier()
        raise Preempted(path, self.preempted_by)

    def _start_epoch_iterator(self, epoch: int):
        fix_random_seed(self.config.seed + epoch - 1 + _RANK_SEED_STRIDE * self.dist.rank)
        sampler = find_epoch_sampler(self.train_dl)
        if sampler is not None:
            sampler.set_epoch(epoch)
        self.scheduler.step_epoch(epoch - 1)
        iterator = iterate_from(self.train_dl, int(self.params["batch_idx_in_epoch"]))
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        return iterator

    def train_one_epoch(self, epoch: int) -> MetricsTracker:
        # Zeroth-order queries run in eval mode: dropout would make L+ and L- disagree.
        self.loss_module.train(not self.zeroth_order)
        iterator = self._start_epoch_iterator(epoch)
        epoch_info: Optional[MetricsTracker] = None
        self.progress = self._progress(iterator, epoch)
        for batch in self.progress:
            self.params["batch_idx_in_epoch"] += 1
            self.params["batch_idx_train"] += 1
            info = self.train_step(batch)
            if info is not None:
                epoch_info = info if epoch_info is None else epoch_info + info
                self.progress.add(frames=info.get("frames", 0.0))
                self._log_train(info, epoch)
            self._after_step()
            if self.should_stop:
                break
        if not self.should_stop:
            if self.params["batch_idx_in_epoch"] == 0:
                raise ValueError(f"epoch {epoch}: the training loader yielded no batch (with --drop-last true a "
                                 f"batch that never fills --max-duration is dropped, per bucket when bucketing: "
                                 f"lower --max-duration or --num-buckets, or pass --drop-last false)")
            self.params["batches_per_epoch"] = int(self.params["batch_idx_in_epoch"])
        epoch_info = epoch_info if epoch_info is not None else MetricsTracker()
        epoch_info.reduce(self._reduce_device())
        logging.info(f"epoch {epoch} train: {epoch_info}")
        epoch_info.write_summary(self.tb_writer, "train/epoch_", epoch)
        return epoch_info

    def _reduce_device(self) -> Optional[torch.device]:
        return self.device if self.device.type == "cuda" else None

    def _progress(self, iterator, epoch: int) -> Progress:
        try:
            total = len(self.train_dl)
        except TypeError:  # lhotse samplers: known after the first epoch
            total = int(self.params.get("batches_per_epoch") or 0) or None
        return Progress(iterator, f"epoch {epoch}", total=total, initial=int(self.params["batch_idx_in_epoch"]),
                        enabled=self.is_main, every_n=0, every_s=self.config.progress_seconds)

    def _run_batch_hooks(self) -> None:
        model = ckpt.unwrap_model(self.model)
        if hasattr(model, "set_batch_count"):
            model.set_batch_count(self.params["batch_idx_train"])
        for hook in self.batch_hooks:
            hook(self)

    def train_step(self, batch) -> Optional[MetricsTracker]:
        """One update through ``optimizer.step``. Returns the batch's metrics (None if skipped)."""
        self._run_batch_hooks()
        loss_fn, seen = self._loss_fn(batch)
        try:
            loss = self.optimizer.step(loss_fn)
        except torch.OutOfMemoryError as error:
            handle_out_of_memory(self, batch, error)
            return None
        if seen.get("preempt"):
            # Every rank read the same reduced flag: all stop after this step.
            self.preempted_by = getattr(self.preemption, "received", None) or "a signal to another rank"
            self.should_stop = True
            logging.warning(f"{self.preempted_by}: stopping after batch {self.params['batch_idx_train']} to save")
        if self.optimizer.skipped:
            self._skip_bad_batch(self.optimizer.skipped)
            return None
        info = seen["info"]
        if self.zeroth_order:
            # The step's loss (mean over the queries) in place of the first query's.
            info["loss"] = loss / seen["scale"]
        self.params["bad_in_row"] = 0
        self.scheduler.step_batch(self.params["batch_idx_train"])
        return info

    def _loss_fn(self, batch):
        """``loss_fn(grad_enabled)`` for the optimiser, and what its first call saw (the
        metrics, the global normaliser). The normaliser, the non-finite check and the
        preemption flag take one all-reduce, so every rank agrees to skip a bad batch
        (DDP would hang) and on the step after which to stop."""
        seen: Dict[str, Any] = {}
        cache: Optional[dict] = {} if self.zeroth_order and self.config.cache_frozen else None

        def loss_fn(grad_enabled: bool = True) -> torch.Tensor:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                loss, info = self.loss_module(batch, cache)
            if "scale" not in seen:
                seen["info"] = info
                frames = float(info.get("frames", 0.0)) if self.config.loss_norm == "frames" else 1.0
                preempt = 1.0 if self.preemption is not None and self.preemption.requested else 0.0
                stats = torch.tensor([frames, 0.0 if torch.isfinite(loss).item() else 1.0, preempt],
                                     dtype=torch.float64, device=self.device)
                all_reduce_sum(stats)
                if float(stats[0]) <= 0:
                    raise ValueError("compute_loss reported 0 frames on every rank: set info['frames'] "
                                     "(or train with --loss-norm sum)")
                seen["bad"] = bool(stats[1] > 0)
                seen["preempt"] = bool(stats[2] > 0)
                seen["scale"] = get_world_size() / float(stats[0]) if self.config.loss_norm == "frames" else 1.0
            if seen["bad"]:
                return torch.full((), math.nan, device=loss.device)
            return loss * seen["scale"]

        def batched(pairs) -> torch.Tensor:  # for ZO's batched queries, after one plain call
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                frozen = ReadOnlyCache(cache) if cache is not None else None
                losses = vectorised_losses(self.loss_module, lambda: self.loss_module(batch, frozen)[0], pairs)
            return torch.full_like(losses, math.nan) if seen["bad"] else losses * seen["scale"]

        loss_fn.batched = batched
        return loss_fn, seen

    def _skip_bad_batch(self, why: str) -> None:
        self.params["bad_in_row"] += 1
        self.params["num_bad_batches"] = self.params.get("num_bad_batches", 0) + 1
        logging.warning(f"batch {self.params['batch_idx_train']}: {why}, skipped "
                        f"({self.params['bad_in_row']} in a row)")
        if self.params["bad_in_row"] >= self.config.max_bad_batches:
            raise NonFiniteLossError(f"{self.params['bad_in_row']} bad batches in a row: stopping")

    def _after_step(self) -> None:
        b = int(self.params["batch_idx_train"])
        period = self.config.average_period
        if period > 0 and b % period == 0:
            self.update_model_avg()
        if self.valid_dl is not None and self.config.valid_interval > 0 and b % self.config.valid_interval == 0:
            self.validate()
        if self.config.save_every_n > 0 and b % self.config.save_every_n == 0:
            self.save(self.exp_dir / f"checkpoint-{b}.pt")
            if self.is_main:
                ckpt.remove_checkpoints(self.exp_dir, self.config.keep_last_k, up_to=b)
        for hook in self.step_hooks:
            hook(self)
        if self.config.max_steps and b >= self.config.max_steps:
            self.should_stop = True

    def _stop(self) -> Path:
        """An early stop (the step budget, a hook, a preemption signal): save where it
        stopped, so the run can be resumed or its last weights decoded."""
        b = int(self.params["batch_idx_train"])
        logging.info(f"stopping at batch {b}" + (" (--max-steps)" if b >= (self.config.max_steps or b + 1) else ""))
        path = self.exp_dir / f"checkpoint-{b}.pt"
        if not path.is_file():
            self.save(path)
        return path

    def update_model_avg(self) -> None:
        """Fold the current model into the running average, weighting it by the batches
        since the last update (so short runs and partial periods still average right)."""
        b, last = int(self.params["batch_idx_train"]), int(self.params["avg_batch_idx"])
        if self.config.average_period <= 0 or b <= last:
            return
        state = self._model_state()  # every rank: a collective under FSDP
        if self.model_avg is not None:
            ckpt.update_averaged_model(self.model_avg, state, (b - last) / b)
        self.params["avg_batch_idx"] = b

    def _model_avg_for_file(self) -> Optional[Dict[str, torch.Tensor]]:
        """The average over exactly batch_idx_train batches (icefall's ``model_avg``): the
        partial period folded into a copy, so the running average itself, and a run
        resumed from the file, go on exactly as without the save."""
        b, last = int(self.params["batch_idx_train"]), int(self.params["avg_batch_idx"])
        if self.config.average_period <= 0 or b <= last:
            return self.model_avg
        state = self._model_state()  # every rank: a collective under FSDP
        if self.model_avg is None:
            return None
        flushed = {k: v.clone() for k, v in self.model_avg.items()}
        ckpt.update_averaged_model(flushed, state, (b - last) / b)
        return flushed

    def _log_train(self, info: MetricsTracker, epoch: int) -> None:
        b = int(self.params["batch_idx_train"])
        if self.config.log_interval <= 0 or b % self.config.log_interval != 0:
            return
        lr = self.scheduler.get_last_lr()[0]
        info = (info * 1.0).reduce(self._reduce_device())  # a reduced copy
        logging.info(f"epoch {epoch}, batch {self.params['batch_idx_in_epoch']} (global {b}), "
                     f"lr {lr:.3g}: {info}; {self.progress.line()}")
        if self.tb_writer is not None:
            self.tb_writer.add_scalar("train/learning_rate", lr, b)
            info.write_summary(self.tb_writer, "train/current_", b)
            if self.grad_scaler.is_enabled():
                self.tb_writer.add_scalar("train/grad_scale", self.grad_scaler.get_scale(), b)

    # ---- validation and epoch end ----------------------------------------------
    @torch.no_grad()
    def validate(self) -> MetricsTracker:
        """Loss over valid_dl, summed over ranks. Uses the unwrapped model so ranks with
        different numbers of validation batches never wait on each other."""
        model = ckpt.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        total: Optional[MetricsTracker] = None
        batches = fsdp.lockstep(self.valid_dl, self._any_rank) if self.config.fsdp else (
            (batch, True) for batch in self.valid_dl)
        for batch, counted in batches:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                _, info = model.compute_loss(batch)
            if counted:
                total = info if total is None else total + info
        total = total if total is not None else MetricsTracker()
        total.reduce(self._reduce_device())
        model.train(was_training)
        value = dict(total.norm_items()).get("loss", math.inf)
        self.params["valid_loss"] = value
        if value < self.params["best_valid_loss"]:
            self.params["best_valid_loss"] = value
            self.params["best_valid_epoch"] = self.params["cur_epoch"]
        logging.info(f"validation at batch {self.params['batch_idx_train']}: {total}")
        total.write_summary(self.tb_writer, "valid/", int(self.params["batch_idx_train"]))
        for hook in self.valid_hooks:
            hook(self, total)
        return total

    def _any_rank(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self.device)
        return bool(all_reduce_sum(value) > 0)

    def end_epoch(self, epoch: int) -> None:
        if self.valid_dl is not None:
            self.validate()
            self.params["epoch_valid_losses"][str(epoch)] = self.params["valid_loss"]
        self.save(self.exp_dir / f"epoch-{epoch}.pt")
        self.params["batch_idx_in_epoch"] = 0

    # ---- saving ----------------------------------------------------------------
    def _gather_rng_states(self) -> List[Dict]:
        state = get_rng_state()
        if self.dist.world_size <= 1:
            return [state]
        gathered: List[Optional[Dict]] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(gathered, state)
        return gathered

    def save(self, path: Path) -> None:
        """Every rank calls this (RNG states, and FSDP's shards, are gathered); rank 0 writes."""
        rng_states = self._gather_rng_states()
        model_avg = self._model_avg_for_file()
        model_state = optimizer_state = None
        if self.config.fsdp:
            model_state = self._model_state()
            optimizer_state = fsdp.full_optimizer_state(self.model, self.optimizer)
        if self.is_main:
            params = dict(self.params, rng_states=rng_states, fsdp=self.config.fsdp)
            extra = {"model_avg_live": self.model_avg} if self.model_avg is not None else None
            ckpt.save_checkpoint(path, self.model, params, self.optimizer, self.scheduler,
                                 self.grad_scaler, sampler_state(self.train_dl), model_avg,
                                 self.config.save_trainable_only, extra=extra, model_state=model_state,
                                 optimizer_state=optimizer_state)
        barrier()


def freeze_by_pattern(model: nn.Module, patterns: List[str]) -> List[str]:
    """Set requires_grad=False on parameters whose name matches any regex; returns them."""
    if not patterns:
        return []
    compiled = [re.compile(p) for p in patterns]
    frozen = []
    for name, p in model.named_parameters():
        if any(c.search(name) for c in compiled):
            p.requires_grad_(False)
            frozen.append(name)
    if not frozen:
        raise ValueError(f"--freeze-pattern {patterns} matched no parameter")
    logging.info(f"froze {len(frozen)} parameter tensors matching {patterns}")
    return frozen
