"""One training loop for every stage (CTC, LLM-ASR, fine-tuning).

The caller supplies the model, the dataloaders and
``compute_loss(model, batch, is_training) -> (loss, info)`` where ``loss`` is a
scalar tensor *summed* over the batch and ``info`` a MetricsTracker holding at least
"frames" (the normaliser) and "loss".

The loop does: device placement of the model, freezing by name pattern, DDP, AMP
(CUDA only), optimiser and schedule, backward on ``loss * world_size /
frames_all_ranks`` (``--loss-norm frames``: after DDP's gradient averaging this equals
one process on the concatenated batch) or on ``loss`` (``sum``), gradient clipping,
the non-finite guard (all ranks skip together), ``model.set_batch_count(n)`` and user
hooks before each batch, the running average model, validation (every N batches and
at epoch end, reduced over ranks), logging/TensorBoard/tqdm on rank 0, checkpoints
and exact resume (RNG states of every rank, data position, optimiser, schedule).

Left to the model side: moving the batch to ``trainer.device``, augmentation
(SpecAugment etc., drawn from the global RNGs so resume reproduces it), the loss and
its metrics, building the dataloaders (``--max-duration`` goes to the sampler), and
loading pre-trained weights before the loop starts.
"""

import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from speechadapt.training import checkpoint as ckpt
from speechadapt.training.dist import DistInfo, all_reduce_sum, barrier, get_world_size
from speechadapt.training.metrics import MetricsTracker
from speechadapt.training.optim import build_optimizer, build_scheduler
from speechadapt.training.options import TrainingConfig
from speechadapt.training.state import (find_epoch_sampler, fix_random_seed, get_rng_state,
                                        iterate_from, sampler_state, set_rng_state)

ComputeLoss = Callable[[nn.Module, Any, bool], Tuple[torch.Tensor, MetricsTracker]]
Hook = Callable[["Trainer"], None]

# Ranks get distinct seeds (different dropout/augmentation), reproducible per epoch.
_RANK_SEED_STRIDE = 100_003


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    def __init__(
        self,
        config: TrainingConfig,
        model: nn.Module,
        compute_loss: ComputeLoss,
        train_dl,
        valid_dl=None,
        dist_info: Optional[DistInfo] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler=None,
        batch_hooks: Optional[List[Hook]] = None,
        valid_hooks: Optional[List[Callable[["Trainer", MetricsTracker], None]]] = None,
    ):
        config.validate()
        self.config = config
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.compute_loss = compute_loss
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.batch_hooks = list(batch_hooks or [])
        self.valid_hooks = list(valid_hooks or [])
        self.exp_dir = Path(config.exp_dir)
        self.is_main = self.dist.rank == 0
        self.should_stop = False  # hooks may set this to end training early

        self.model = model.to(self.device)
        freeze_by_pattern(self.model, config.freeze_pattern)
        self.optimizer = optimizer or build_optimizer(
            self.model.parameters(), config.optimizer, config.base_lr, config.weight_decay,
            clipping_scale=config.clipping_scale)
        self.scheduler = scheduler or build_scheduler(
            self.optimizer, config.scheduler, config.lr_batches, config.lr_epochs,
            config.warmup_batches, self._total_steps())
        self.amp_dtype = self._amp_dtype()
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ddp_model = self._wrap_ddp(self.model)
        self.model_avg = self._init_model_avg()

        self.params: Dict[str, Any] = {
            "cur_epoch": config.start_epoch, "batch_idx_train": 0, "batch_idx_in_epoch": 0,
            "avg_batch_idx": 0, "best_valid_loss": math.inf, "best_valid_epoch": -1,
            "valid_loss": math.inf, "epoch_valid_losses": {}, "bad_in_row": 0,
            "seed": config.seed, "world_size": self.dist.world_size,
            "trainable_only": config.save_trainable_only,
        }
        self._resume_rng: Optional[Dict] = None
        self.tb_writer = self._tensorboard()

    # ---- set-up ----------------------------------------------------------------
    def _total_steps(self) -> int:
        if self.config.scheduler != "tri_stage" or self.config.total_steps > 0:
            return self.config.total_steps
        try:
            return self.config.num_epochs * len(self.train_dl)
        except TypeError:
            raise ValueError("--scheduler tri_stage needs --total-steps (this loader has no len)")

    def _amp_dtype(self) -> Optional[torch.dtype]:
        wanted = torch.float16 if self.config.use_fp16 else torch.bfloat16 if self.config.use_bf16 else None
        if wanted is not None and self.device.type != "cuda":
            logging.info(f"AMP ({wanted}) requested on {self.device}: ignored, training in float32")
            return None
        return wanted

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if self.dist.world_size <= 1:
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
        if self.config.start_batch > 0:
            return self.exp_dir / f"checkpoint-{self.config.start_batch}.pt"
        if self.config.start_epoch > 1:
            return self.exp_dir / f"epoch-{self.config.start_epoch - 1}.pt"
        return None

    def resume(self) -> int:
        """Restore everything from the checkpoint named by --start-epoch/--start-batch;
        returns the epoch to continue in."""
        path = self.resume_path()
        if path is None:
            return self.config.start_epoch
        logging.info(f"resuming from {path}")
        saved = ckpt.load_checkpoint(path, self.model, self.optimizer, self.scheduler,
                                     self.grad_scaler if self.grad_scaler.is_enabled() else None)
        self.params.update({k: v for k, v in saved["params"].items()
                            if k not in ("rng_states", "world_size", "trainable_only")})
        if self.model_avg is not None:
            if saved.get("model_avg") is None:
                logging.warning(f"{path} has no model_avg: the running average restarts here")
                self.params["avg_batch_idx"] = self.params["batch_idx_train"]
            else:
                self.model_avg = {k: v.to(torch.float64) if v.is_floating_point() else v
                                  for k, v in saved["model_avg"].items()}
        if self.config.start_batch > 0:
            # Mid-epoch: continue the saved RNG streams. (At an epoch boundary the
            # epoch's own seeding already reproduces the uninterrupted run.)
            self._resume_rng = self._rng_for_this_rank(saved["params"])
            epoch = int(self.params["cur_epoch"])
            if self.config.start_epoch not in (1, epoch):
                logging.warning(f"--start-epoch {self.config.start_epoch} ignored: {path} is in epoch {epoch}")
            return epoch
        self.params["batch_idx_in_epoch"] = 0
        return self.config.start_epoch

    def _rng_for_this_rank(self, params: Dict) -> Optional[Dict]:
        states = params.get("rng_states") or []
        if params.get("world_size") != self.dist.world_size or len(states) != self.dist.world_size:
            logging.warning("world size changed since the checkpoint: RNG states not restored")
            return None
        return states[self.dist.rank]

    # ---- training --------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train from --start-epoch/--start-batch to --num-epochs; returns ``params``."""
        start_epoch = self.resume()
        for epoch in range(start_epoch, self.config.num_epochs + 1):
            self.params["cur_epoch"] = epoch
            self.train_one_epoch(epoch)
            if self.should_stop:
                logging.info("stopping early at the request of a hook")
                break
            self.end_epoch(epoch)
        if self.tb_writer is not None:
            self.tb_writer.close()
        barrier()
        return self.params

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
        self.ddp_model.train()
        iterator = self._start_epoch_iterator(epoch)
        epoch_info: Optional[MetricsTracker] = None
        for batch in self._progress(iterator, epoch):
            self.params["batch_idx_in_epoch"] += 1
            self.params["batch_idx_train"] += 1
            info = self.train_step(batch)
            if info is not None:
                epoch_info = info if epoch_info is None else epoch_info + info
                self._log_train(info, epoch)
            self._after_step()
            if self.should_stop:
                break
        epoch_info = epoch_info if epoch_info is not None else MetricsTracker()
        epoch_info.reduce(self._reduce_device())
        logging.info(f"epoch {epoch} train: {epoch_info}")
        epoch_info.write_summary(self.tb_writer, "train/epoch_", epoch)
        return epoch_info

    def _reduce_device(self) -> Optional[torch.device]:
        return self.device if self.device.type == "cuda" else None

    def _progress(self, iterator, epoch: int):
        if not self.is_main or not sys.stderr.isatty():
            return iterator
        from tqdm import tqdm

        return tqdm(iterator, desc=f"epoch {epoch}", initial=int(self.params["batch_idx_in_epoch"]))

    def _run_batch_hooks(self) -> None:
        model = ckpt.unwrap_model(self.model)
        if hasattr(model, "set_batch_count"):
            model.set_batch_count(self.params["batch_idx_train"])
        for hook in self.batch_hooks:
            hook(self)

    def train_step(self, batch) -> Optional[MetricsTracker]:
        """Forward, guard, backward, step. Returns the batch's metrics (None if skipped)."""
        self._run_batch_hooks()
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            loss, info = self.compute_loss(self.ddp_model, batch, True)
        frames = float(info.get("frames", 0.0)) if self.config.loss_norm == "frames" else 1.0
        # One all-reduce gives the global normaliser and whether any rank went bad,
        # so every rank skips together (DDP would hang otherwise).
        stats = torch.tensor([frames, 0.0 if torch.isfinite(loss).item() else 1.0],
                             dtype=torch.float64, device=self.device)
        all_reduce_sum(stats)
        if stats[1] > 0:
            self._skip_bad_batch("non-finite loss")
            return None
        scale = get_world_size() / float(stats[0]) if self.config.loss_norm == "frames" else 1.0
        if scale == math.inf:
            raise ValueError("compute_loss reported 0 frames: set info['frames'] (or --loss-norm sum)")
        self.grad_scaler.scale(loss * scale).backward()
        if not self._optimizer_step():
            self._skip_bad_batch("non-finite gradient")
            return None
        self.params["bad_in_row"] = 0
        return info

    def _optimizer_step(self) -> bool:
        """Clip, check and step; False if the gradients were not finite."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.grad_scaler.is_enabled():
            self.grad_scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        if self.grad_scaler.is_enabled():
            # The scaler skips inf steps itself and lowers its scale: normal for fp16.
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        elif not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return False
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step_batch(self.params["batch_idx_train"])
        return True

    def _skip_bad_batch(self, why: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
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
                ckpt.remove_checkpoints(self.exp_dir, self.config.keep_last_k)

    def update_model_avg(self) -> None:
        """Fold the current model into the running average, weighting it by the batches
        since the last update (so short runs and partial periods still average right)."""
        b, last = int(self.params["batch_idx_train"]), int(self.params["avg_batch_idx"])
        if self.model_avg is None or b <= last:
            return
        ckpt.update_averaged_model(self.model_avg, ckpt.model_state_dict(self.model, self.config.save_trainable_only),
                                   (b - last) / b)
        self.params["avg_batch_idx"] = b

    def _log_train(self, info: MetricsTracker, epoch: int) -> None:
        b = int(self.params["batch_idx_train"])
        if self.config.log_interval <= 0 or b % self.config.log_interval != 0:
            return
        lr = self.scheduler.get_last_lr()[0]
        info = (info * 1.0).reduce(self._reduce_device())  # a reduced copy
        logging.info(f"epoch {epoch}, batch {self.params['batch_idx_in_epoch']} (global {b}), "
                     f"lr {lr:.3g}: {info}")
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
        for batch in self.valid_dl:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                _, info = self.compute_loss(model, batch, False)
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
        """Every rank calls this (RNG states are gathered); rank 0 writes."""
        rng_states = self._gather_rng_states()
        if self.is_main:
            # Flush the partial averaging period so the file's model_avg covers
            # exactly batch_idx_train batches.
            self.update_model_avg()
            params = dict(self.params, rng_states=rng_states)
            ckpt.save_checkpoint(path, self.model, params, self.optimizer, self.scheduler,
                                 self.grad_scaler, sampler_state(self.train_dl), self.model_avg,
                                 self.config.save_trainable_only)
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
