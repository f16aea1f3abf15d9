"""Zeroth-order (back-propagation-free) optimisation at inference-level memory.

Two-point SPSA/RGE with the seed trick (MeZO). For each of q queries j a seed s_j is
drawn from the optimiser's master generator and

    theta += eps*z_j -> L+_j ;  theta -= 2*eps*z_j -> L-_j ;  theta += eps*z_j (restore)
    g_j = (L+_j - L-_j) / (2*eps)
    theta -= lr * ((1/q) * sum_j g_j z_j + weight_decay * theta)

z_j is never stored: it is regenerated from s_j in chunks (``zo_directions``), so
nothing of parameter size exists besides the model, unless momentum or HiZOO's
Hessian is asked for (opt-in state, outside the inference-level memory target).
The restore of the last query is fused into the update pass (one pass fewer).

Batched queries (``batched_queries=True``, for a small tuned set): theta is not
perturbed in place; the 2q perturbed copies of the tuned tensors are stacked and
evaluated in one vectorised forward, ``loss_fn.batched([(param, stacked), ...])``
(the Trainer's loss function has it: ``torch.func.vmap`` over ``functional_call``).
L(theta) is evaluated first, plainly (it fills the frozen-part cache and the loss
normaliser), so a step is 2q+1 forwards; it holds 2q copies of the tuned tensors
and 2q times the activations above them, hence only where those are small.

Estimators (``estimator=``):
  * ``"spsa"``: the update above (MeZO with q=1, ZO-ASR with q>1).
  * ``"hizoo"``: HiZOO (Zhao et al. 2024). A diagonal Hessian estimate h (init 1)
    shapes the directions: theta +- eps * z / sqrt(h), and the step becomes
    lr * g * z / sqrt(h), i.e. lr * grad / h in expectation. One more forward per
    step gives L0 = L(theta), and h <- (1 - a) h + a * |L+ + L- - 2 L0| / (eps^2 d)
    * z^2 * h (averaged over queries, d = number of optimised elements). The 1/d
    (HiZOO writes 1/2) keeps h on the scale of the Hessian diagonal itself, so the
    perturbation does not shrink as the model grows. Each query carries one number
    for d diagonal entries, so h is a noisy per-element estimate: keep
    ``hessian_smooth`` small (bench/zo_compare.py measures it against MeZO/ZO-ASR).

ZO-ASR note: the public ZO-ASR code sums the q estimates (no 1/q). Here they are
averaged, so its published lr 3e-6 with q=8 is lr 2.4e-5 in this optimiser.

Calling convention (the one optimiser step of :mod:`speechadapt.training.optim`):
``step(loss_fn) -> float`` where ``loss_fn(grad_enabled: bool)`` (or ``loss_fn()``)
returns the scalar loss of the current batch. A ZO step calls it with
``grad_enabled=False`` under ``torch.inference_mode`` and takes ``float()``; the
function should run the model in eval mode (dropout would make L+ and L- disagree)
and may be non-differentiable (e.g. a smoothed WER). Parameters are only changed
under ``torch.no_grad``, never inside inference mode.

Distributed: every rank must be built with the same ``seed`` (hence the same z);
the losses are averaged over ranks before the update, so parameters stay identical.
"""

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from speechadapt.adapt.zo_directions import (
    DEFAULT_CHUNK_SIZE,
    LowRankDirections,
    SeededDraws,
    Workspace,
    check_perturbable,
    state_chunk,
    walk,
)
from speechadapt.training.dist import all_reduce_sum, get_world_size

ESTIMATORS = ("spsa", "hizoo", "lozo")
LossFn = Callable[..., Any]


def call_loss_fn(loss_fn: LossFn, grad_enabled: bool) -> Any:
    """Call ``loss_fn(grad_enabled)`` when it takes an argument, else ``loss_fn()``."""
    try:
        params = inspect.signature(loss_fn).parameters.values()
    except (TypeError, ValueError):
        return loss_fn(grad_enabled)
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    if any(p.kind in positional for p in params):
        return loss_fn(grad_enabled)
    return loss_fn()


def evaluate_without_grad(loss_fn: LossFn) -> float:
    """One forward under inference mode; the loss as a Python float."""
    with torch.inference_mode():
        value = call_loss_fn(loss_fn, grad_enabled=False)
    return float(value)


def as_param_groups(params: Iterable) -> List[Any]:
    """Accept tensors, (name, tensor) pairs or param-group dicts (whose params may be pairs)."""

    def tensors(items) -> List[torch.Tensor]:
        out, seen = [], set()
        for item in items:
            tensor = item[1] if isinstance(item, (tuple, list)) else item
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"expected a tensor or a (name, tensor) pair, got {type(item)}")
            if id(tensor) not in seen:  # tied weights must be perturbed once
                seen.add(id(tensor))
                out.append(tensor)
        return out

    items = list(params)
    if items and isinstance(items[0], dict):
        return [dict(group, params=tensors(group["params"])) for group in items]
    return tensors(items)


class ReadOnlyCache(dict):
    """A copy of a filled frozen-part cache that ignores writes: made under vmap, they
    would hold batched tensors."""

    def __setitem__(self, key, value) -> None:
        pass


class _Call(torch.nn.Module):
    def __init__(self, module: torch.nn.Module, fn: Callable[[], torch.Tensor]):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self) -> torch.Tensor:
        return self.fn()


def vectorised_losses(module: torch.nn.Module, loss_of: Callable[[], torch.Tensor], pairs) -> torch.Tensor:
    """``loss_of()`` (a scalar computed with ``module``) under each of n stacked values of
    some of its parameters, ``pairs`` = [(parameter, (n, *shape) values)], in one
    ``torch.func.vmap`` over ``functional_call``: (n,) losses. Random ops are an error
    (the queries must see the same function)."""
    names = {id(p): f"module.{name}" for name, p in module.named_parameters()}
    missing = [tuple(p.shape) for p, _ in pairs if id(p) not in names]
    if missing:
        raise ValueError(f"vectorised_losses: {len(missing)} tensors are not parameters of the module: {missing[:3]}")
    stacked = {names[id(p)]: values for p, values in pairs}
    call = _Call(module, loss_of)
    return torch.func.vmap(lambda params: torch.func.functional_call(call, params, ()), randomness="error")(stacked)


@dataclass
class ZOProbe:
    """The outcome of the queries of one step (losses averaged over ranks)."""

    seeds: List[int]
    loss_plus: List[float]
    loss_minus: List[float]
    loss_zero: Optional[float] = None

    def projected_grads(self, eps: float) -> List[float]:
        return [(p - m) / (2.0 * eps) for p, m in zip(self.loss_plus, self.loss_minus)]

    def is_finite(self) -> bool:
        values = self.loss_plus + self.loss_minus
        if self.loss_zero is not None:
            values.append(self.loss_zero)
        return all(math.isfinite(v) for v in values)

    def mean_loss(self) -> float:
        if self.loss_zero is not None:
            return self.loss_zero
        pairs = [(p + m) / 2.0 for p, m in zip(self.loss_plus, self.loss_minus)]
        return sum(pairs) / len(pairs)


class ZOOptimizer(torch.optim.Optimizer):
    """Zeroth-order optimiser; see the module docstring for the algorithm.

    ``skipped`` says why the last step did not update (None when it did);
    ``num_forwards`` counts every loss evaluation (saved with the state).

    Args:
      params: tensors, (name, tensor) pairs (``select_parameters`` output) or groups.
      lr: learning rate of the averaged estimate (groups may override; schedulers
        that edit ``param_groups[i]["lr"]`` work as with any torch optimiser).
      eps: perturbation scale.
      num_queries: q, the number of two-point queries averaged per step.
      weight_decay: decoupled decay, applied only to parameters with >= 2 dims
        (MeZO's rule: biases and normalisation weights are not decayed).
      momentum: heavy-ball coefficient; > 0 keeps a buffer of parameter size.
      estimator: "spsa" or "hizoo" (keeps a Hessian estimate of parameter size).
      hessian_smooth, hessian_min: HiZOO's smoothing a and a floor on h.
      seed: seeds the master generator; must be equal on every rank.
      chunk_size: elements per chunk of z (part of the random stream).
      batched_queries: evaluate the 2q perturbed copies in one vectorised forward
        (module docstring); the same z, so the same update to float rounding.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        eps: float = 1e-3,
        num_queries: int = 1,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        estimator: str = "spsa",
        hessian_smooth: float = 1e-2,
        hessian_min: float = 1e-2,
        seed: int = 0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        lozo_rank: int = 2,
        lozo_interval: int = 50,
        batched_queries: bool = False,
    ):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose from {ESTIMATORS}")
        if not 0.0 < hessian_smooth <= 1.0 or hessian_min <= 0:
            raise ValueError("hessian_smooth must be in (0, 1] and hessian_min > 0")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if lozo_interval < 1:
            raise ValueError(f"lozo_interval must be >= 1, got {lozo_interval}")
        super().__init__(as_param_groups(params), dict(lr=lr, weight_decay=weight_decay))
        self.params = [p for group in self.param_groups for p in group["params"]]
        for p in self.params:
            check_perturbable(p)
        self.eps = float(eps)
        self.num_queries = int(num_queries)
        self.momentum = float(momentum)
        self.estimator = estimator
        self.hessian_smooth = float(hessian_smooth)
        self.hessian_min = float(hessian_min)
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        self.num_steps = 0
        self.num_skipped = 0
        self.num_forwards = 0
        self.skipped: Optional[str] = None
        self.last_probe: Optional[ZOProbe] = None
        self._master = torch.Generator()
        self._master.manual_seed(self.seed)
        self._check_same_seed_on_every_rank()
        self._num_elements = sum(p.numel() for p in self.params)
        self._workspace = Workspace(min(self.chunk_size, max(p.numel() for p in self.params)))
        if estimator == "hizoo":
            for p in self.params:
                self.state[p]["hessian"] = torch.ones_like(p, memory_format=torch.contiguous_format)
        self.lozo_interval = int(lozo_interval)
        self._lowrank = LowRankDirections(self.params, lozo_rank) if estimator == "lozo" else None
        self.batched_queries = bool(batched_queries)

    zeroth_order = True
    num_backwards = 0

    @property
    def lozo_rank(self) -> Optional[int]:
        return None if self._lowrank is None else self._lowrank.rank

    @property
    def forwards_per_step(self) -> int:
        """Forward passes one step runs: 2q, plus L(theta) for HiZOO and batched queries."""
        return 2 * self.num_queries + (1 if self.estimator == "hizoo" or self.batched_queries else 0)

    def _check_same_seed_on_every_rank(self) -> None:
        """Different seeds would give each rank its own z and silently split the model."""
        if get_world_size() == 1:
            return
        s = float(self.seed % 1_000_003)
        sums = all_reduce_sum(torch.tensor([s, s * s], dtype=torch.float64, device=self.params[0].device))
        n = get_world_size()
        if sums[0].item() != n * s or sums[1].item() != n * s * s:
            raise ValueError("ZOOptimizer: every rank must use the same seed")

    # -- directions ------------------------------------------------------------
    def _raw_direction(self, draws: SeededDraws, j: int, index: int, start: int, chunk) -> torch.Tensor:
        """z_j for this chunk: Gaussian, or LOZO's low-rank one for a matrix."""
        out = self._workspace.get(0, chunk)
        if self._lowrank is not None and self._lowrank.applies_to(self.params[index]):
            return self._lowrank.fill(draws.seeds[j], index, start, out)
        return draws.draw(j, out)

    def _direction(self, draws: SeededDraws, j: int, index: int, start: int, chunk) -> torch.Tensor:
        """z_j for this chunk, shaped by 1/sqrt(h) under HiZOO."""
        z = self._raw_direction(draws, j, index, start, chunk)
        if self.estimator == "hizoo":
            hessian = state_chunk(self.state[self.params[index]]["hessian"], start, chunk.numel())
            z.mul_(torch.rsqrt(hessian, out=self._workspace.get(1, chunk)))
        return z

    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        """theta += scale * z(seed), in place, one chunk at a time."""
        draws = SeededDraws([seed])
        for index, start, chunk in walk(self.params, self.chunk_size):
            chunk.add_(self._direction(draws, 0, index, start, chunk), alpha=scale)

    def draw_seeds(self) -> List[int]:
        """The next q seeds of the master stream (identical on every rank); under LOZO a
        new V seed first, every ``lozo_interval`` steps."""
        if self._lowrank is not None and self.num_steps % self.lozo_interval == 0:
            self._lowrank.v_seed = int(torch.randint(0, 2**62, (1,), generator=self._master))
        return torch.randint(0, 2**62, (self.num_queries,), generator=self._master).tolist()

    # -- queries ---------------------------------------------------------------
    def _reduce_mean(self, values: List[float]) -> List[float]:
        world_size = get_world_size()
        if world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.params[0].device)
        all_reduce_sum(tensor)
        return (tensor / world_size).tolist()

    def _evaluate(self, loss_fn: LossFn) -> float:
        self.num_forwards += 1
        return evaluate_without_grad(loss_fn)

    def _run_queries(self, loss_fn: LossFn, seeds: List[int], restore_last: bool) -> ZOProbe:
        loss_zero = self._evaluate(loss_fn) if self.estimator == "hizoo" else None
        plus, minus = [], []
        for j, seed in enumerate(seeds):
            self.perturb(seed, self.eps)
            plus.append(self._evaluate(loss_fn))
            self.perturb(seed, -2.0 * self.eps)
            minus.append(self._evaluate(loss_fn))
            if restore_last or j < len(seeds) - 1:
                self.perturb(seed, self.eps)
        extra = [] if loss_zero is None else [loss_zero]
        reduced = self._reduce_mean(plus + minus + extra)
        q = len(seeds)
        zero = reduced[2 * q] if loss_zero is not None else None
        return ZOProbe(seeds, reduced[:q], reduced[q : 2 * q], zero)

    @torch.no_grad()
    def _stacked_perturbations(self, seeds: List[int]) -> List[torch.Tensor]:
        """Per tuned tensor, (2q, numel): rows 2j and 2j+1 are theta + eps*z_j and theta - eps*z_j."""
        q = len(seeds)
        stacked = [p.detach().reshape(1, -1).repeat(2 * q, 1) for p in self.params]
        draws = SeededDraws(seeds)
        for index, start, chunk in walk(self.params, self.chunk_size):
            rows = stacked[index][:, start : start + chunk.numel()]
            for j in range(q):
                z = self._direction(draws, j, index, start, chunk)
                rows[2 * j].add_(z, alpha=self.eps)
                rows[2 * j + 1].add_(z, alpha=-self.eps)
        return stacked

    def _run_batched_queries(self, loss_fn: LossFn, seeds: List[int]) -> ZOProbe:
        batched = getattr(loss_fn, "batched", None)
        if batched is None:
            raise TypeError("batched queries need loss_fn.batched(pairs) -> losses (the Trainer's loss "
                            "function has it); run with --zo-batched-queries false otherwise")
        loss_zero = self._evaluate(loss_fn)  # first: it fills the cache and the normaliser
        stacked = self._stacked_perturbations(seeds)
        pairs = [(p, s.view(s.shape[0], *p.shape)) for p, s in zip(self.params, stacked)]
        with torch.inference_mode():
            losses = batched(pairs).double().tolist()
        q = len(seeds)
        self.num_forwards += 2 * q
        if len(losses) != 2 * q:
            raise ValueError(f"loss_fn.batched returned {len(losses)} losses for {2 * q} perturbed copies")
        reduced = self._reduce_mean(losses[0::2] + losses[1::2] + [loss_zero])
        return ZOProbe(seeds, reduced[:q], reduced[q : 2 * q], reduced[2 * q])

    def probe(self, loss_fn: LossFn) -> ZOProbe:
        """Run one step's queries and restore theta, without updating anything."""
        if self.batched_queries:
            return self._run_batched_queries(loss_fn, self.draw_seeds())
        return self._run_queries(loss_fn, self.draw_seeds(), restore_last=True)

    # -- update ----------------------------------------------------------------
    def _curvature_weights(self, probe: ZOProbe) -> List[float]:
        """HiZOO: per-query weights w_j of z_j^2 in the Hessian estimate (averaged over q)."""
        scale = self.eps**2 * self._num_elements * len(probe.seeds)
        return [
            abs(p + m - 2.0 * probe.loss_zero) / scale
            for p, m in zip(probe.loss_plus, probe.loss_minus)
        ]

    def _state_chunks(self, p: torch.Tensor, start: int, size: int):
        state = self.state[p]
        momentum = None
        if self.momentum > 0:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            momentum = state_chunk(state["momentum_buffer"], start, size)
        hessian = state_chunk(state["hessian"], start, size) if "hessian" in state else None
        return momentum, hessian

    @torch.no_grad()
    def _update(self, probe: ZOProbe, restore_last: bool = True) -> None:
        """One fused pass: restore the last query (theta was left at theta - eps*z_last
        unless the queries were batched), decay, step, update momentum/Hessian."""
        q = len(probe.seeds)
        coefs = [g / q for g in probe.projected_grads(self.eps)]
        curvature = self._curvature_weights(probe) if self.estimator == "hizoo" else None
        draws = SeededDraws(probe.seeds)
        group_of = {id(p): group for group in self.param_groups for p in group["params"]}
        for index, start, chunk in walk(self.params, self.chunk_size):
            p = self.params[index]
            group = group_of[id(p)]
            lr = group["lr"]
            decay = 1.0 - lr * group["weight_decay"] if p.dim() >= 2 else 1.0
            momentum, hessian = self._state_chunks(p, start, chunk.numel())
            inv_sqrt_h = curv_sum = None
            if hessian is not None:
                inv_sqrt_h = torch.rsqrt(hessian, out=self._workspace.get(1, chunk))
                curv_sum = self._workspace.get(2, chunk).zero_()
            if decay != 1.0:
                chunk.mul_(decay)
            if momentum is not None:
                momentum.mul_(self.momentum)
            for j in range(q):
                z = self._raw_direction(draws, j, index, start, chunk)
                if curv_sum is not None:
                    curv_sum.addcmul_(z, z, value=curvature[j])
                    z.mul_(inv_sqrt_h)
                # theta was left at theta - eps*z_last: put the (decayed) eps*z back.
                restore = decay * self.eps if restore_last and j == q - 1 else 0.0
                if momentum is not None:
                    momentum.add_(z, alpha=coefs[j])
                    chunk.add_(z, alpha=restore)
                else:
                    chunk.add_(z, alpha=restore - lr * coefs[j])
            if momentum is not None:
                chunk.add_(momentum, alpha=-lr)
            if hessian is not None:
                a = self.hessian_smooth
                hessian.mul_(curv_sum.mul_(a).add_(1.0 - a)).clamp_(min=self.hessian_min)

    def _all_lr_zero(self) -> bool:
        return all(group["lr"] == 0 for group in self.param_groups)

    def step(self, loss_fn: LossFn) -> float:  # type: ignore[override]
        """One ZO step; returns the loss at theta (mean of (L+ + L-)/2, or L0 for HiZOO).

        A step whose every learning rate is 0 (e.g. the first step of a warm-up from 0)
        cannot move theta: it evaluates the loss once and leaves parameters and state
        bit-exact (the perturbation cycle restores theta only to float rounding), while
        still consuming its q seeds so the seed stream does not depend on the schedule.
        """
        if loss_fn is None:
            raise ValueError("ZOOptimizer.step needs the loss function (see the module docstring)")
        seeds = self.draw_seeds()
        self.num_steps += 1
        self.skipped = None
        if self._all_lr_zero():
            return self._reduce_mean([self._evaluate(loss_fn)])[0]
        if self.batched_queries:
            probe = self._run_batched_queries(loss_fn, seeds)
        else:
            probe = self._run_queries(loss_fn, seeds, restore_last=False)
        self.last_probe = probe
        if not probe.is_finite():
            if not self.batched_queries:
                self.perturb(seeds[-1], self.eps)
            self.num_skipped += 1
            self.skipped = "non-finite loss"
            logging.warning(f"ZO step {self.num_steps}: non-finite loss, update skipped")
            return float("nan")
        self._update(probe, restore_last=not self.batched_queries)
        return probe.mean_loss()

    # -- checkpoints -----------------------------------------------------------
    def _config(self) -> Dict[str, Any]:
        return dict(
            eps=self.eps,
            num_queries=self.num_queries,
            momentum=self.momentum,
            estimator=self.estimator,
            hessian_smooth=self.hessian_smooth,
            hessian_min=self.hessian_min,
            seed=self.seed,
            chunk_size=self.chunk_size,
            lozo_interval=self.lozo_interval,
            lozo_rank=self.lozo_rank,
        )

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["zo"] = dict(
            self._config(),
            master_generator=self._master.get_state(),
            num_steps=self.num_steps,
            num_skipped=self.num_skipped,
            num_forwards=self.num_forwards,
            lozo_v_seed=None if self._lowrank is None else self._lowrank.v_seed,
        )
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "zo" not in state_dict:
            raise KeyError("not a ZOOptimizer state dict: the 'zo' entry is missing")
        zo = dict(state_dict.pop("zo"))
        for key in ("estimator", "chunk_size", "lozo_rank"):
            if zo.get(key) != getattr(self, key):
                raise ValueError(
                    f"ZO state dict has {key}={zo.get(key)!r} but this optimiser has "
                    f"{getattr(self, key)!r}: the random directions would differ"
                )
        super().load_state_dict(state_dict)
        self._master.set_state(zo["master_generator"])
        self.num_steps = int(zo["num_steps"])
        self.num_skipped = int(zo.get("num_skipped", 0))
        self.num_forwards = int(zo.get("num_forwards", 0))
        if self._lowrank is not None:
            self._lowrank.v_seed = int(zo["lozo_v_seed"])
        for key in ("eps", "num_queries", "momentum", "hessian_smooth", "hessian_min", "seed", "lozo_interval"):
            if key not in zo:
                continue
            saved = type(getattr(self, key))(zo[key])
            if saved != getattr(self, key):  # exact resume needs the saved settings
                logging.warning(f"ZOOptimizer: {key}={getattr(self, key)} replaced by the saved {saved}")
            setattr(self, key, saved)
