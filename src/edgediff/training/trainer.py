"""The one trainer behind pruning recovery and step distillation.

    Trainer(model, loss_fn, data, TrainConfig)
        for step k:
            global batch  = indices k of a seeded epoch permutation       (same on every rank)
            this rank's   = global batch [rank::world]
            rng           = StepRandom(seed, k, global batch, rank slice)  (draws for the global
                            batch, hands back this rank's rows)
            loss          = loss_fn(model, batch, rng)                     (mean over the rows)
            backward (DDP averages gradients over ranks), clip, AdamW, LR schedule, EMA
            every `checkpoint_every` steps rank 0 writes last.pt atomically

Because every random draw is made for the whole global batch and then sliced, a run with 2
processes sees exactly the batches and noise of a run with 1 process: the results differ only
by the rounding of the gradient all-reduce. Batches are a pure function of (seed, step), so
a resumed run continues with the batches it would have seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from edgediff.core.errors import EdgediffError
from edgediff.training.dist import DistContext

CHECKPOINT = "last.pt"


@dataclass
class TrainConfig:
    steps: int
    batch_size: int = 64  # global: split evenly over the processes
    lr: float = 1e-4
    warmup: int = 0
    lr_schedule: str = "cosine"  # cosine to 0 after warmup, or "constant"
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999  # 0 disables EMA
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 200
    threads: int | None = None  # torch intra-op threads per process (None: leave as is)
    progress: bool = True
    desc: str = "train"

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise EdgediffError(f"training: {name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise EdgediffError(f"training: lr must be a positive number, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise EdgediffError(f"training: ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise EdgediffError(f"training: lr_schedule {self.lr_schedule!r}; choose cosine or constant")


@dataclass
class TrainResult:
    steps: int
    seconds: float  # wall time of this run (not of earlier runs that were resumed)
    losses: list[float] = field(repr=False)  # loss of every step run in this process, averaged over ranks
    final_loss: float = float("nan")  # mean over the last 10 % of those steps
    resumed_from: int = 0
    world_size: int = 1

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "final_loss": self.final_loss,
            "resumed_from": self.resumed_from,
            "world_size": self.world_size,
        }


class StepRandom:
    """Random draws of one step, made for the global batch and sliced to this rank's rows.

    Every method takes the per-sample shape; the result has this rank's rows first.
    """

    def __init__(self, seed: int, step: int, global_batch: int, rows: slice):
        self.generator = torch.Generator().manual_seed(_mix(seed, step, 0x5EED))
        self.global_batch, self.rows = global_batch, rows

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn((self.global_batch, *shape), generator=self.generator)[self.rows]

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand((self.global_batch, *shape), generator=self.generator)[self.rows]

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, (self.global_batch, *shape), generator=self.generator)[self.rows]


LossFn = Callable[[nn.Module, dict, StepRandom], "torch.Tensor | tuple[torch.Tensor, dict]"]


def _mix(*xs: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so (seed, step) pairs do not collide."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h ^= (int(x) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> torch.Tensor:
    """Indices of global batch `step`: epoch-wise seeded permutations, last partial batch dropped."""
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch, 0xDA7A)))
    return perm[pos * batch_size : (pos + 1) * batch_size]


class Ema:
    """Exponential moving average of the parameters, decay min(decay, (1+k)/(10+k))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.k = decay, 0
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.k += 1
        d = min(self.decay, (1 + self.k) / (10 + self.k))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in model.parameters()], 1 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters()):
            p.copy_(s)

    def state_dict(self) -> dict:
        return {"k": self.k, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise EdgediffError("checkpoint: its EMA does not match the model (different parameter count)")
        self.k = int(state["k"])
        for s, v in zip(self.shadow, state["shadow"]):
            s.copy_(v)


class Trainer:
    """Train `model` on `data` with `loss_fn`; see the module docstring.

    data: tensors with a common first axis (for example {"x0": images, "label": labels}).
    loss_fn(model, batch, rng) returns the loss (mean over the batch rows), or (loss, logs).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: dict[str, torch.Tensor],
        config: TrainConfig,
        *,
        dist: DistContext | None = None,
        config_record: dict | None = None,
    ):
        self.cfg = config
        self.dist = dist or DistContext()
        self.loss_fn = loss_fn
        sizes = {k: len(v) for k, v in data.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise EdgediffError(f"training data: the arrays must share their first axis, got sizes {sizes}")
        self.n = next(iter(sizes.values()))
        if config.batch_size > self.n:
            raise EdgediffError(f"training: batch_size {config.batch_size} exceeds the {self.n} training examples")
        if config.batch_size % self.dist.world_size:
            raise EdgediffError(
                f"training: batch_size {config.batch_size} does not split evenly over {self.dist.world_size} processes"
            )
        self.data = data
        self.model = model.to(self.dist.device).train()
        self.ema = Ema(self.model, config.ema_decay) if config.ema_decay > 0 else None
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.step = 0
        self.record = config_record or {}
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.wrapped: nn.Module = DDP(self.model, device_ids=ids)
        else:
            self.wrapped = self.model

    def _lr_factor(self, k: int) -> float:
        cfg = self.cfg
        if k < cfg.warmup:
            return (k + 1) / cfg.warmup
        if cfg.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (k - cfg.warmup) / max(1, cfg.steps - cfg.warmup))))

    # --- checkpoints ---
    @property
    def checkpoint_path(self) -> Path | None:
        return Path(self.cfg.checkpoint_dir) / CHECKPOINT if self.cfg.checkpoint_dir else None

    def save_checkpoint(self) -> None:
        path = self.checkpoint_path
        if path is None:
            return
        if self.dist.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {
                "step": self.step,
                "model": self.model.state_dict(),
                "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None,
                "config": asdict(self.cfg),
                "record": self.record,
            }
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(path)
        self.dist.barrier()

    def maybe_resume(self) -> int:
        """Load last.pt from the checkpoint folder if there is one; returns the step resumed at."""
        path = self.checkpoint_path
        if path is None or not path.exists():
            return 0
        try:
            state = torch.load(path, map_location=self.dist.device, weights_only=False)
        except Exception as e:
            raise EdgediffError(f"{path}: not a readable edgediff checkpoint ({type(e).__name__}: {e})") from None
        saved = state.get("config", {})
        for key in ("batch_size", "seed", "steps"):
            if saved.get(key) != getattr(self.cfg, key):
                raise EdgediffError(
                    f"{path}: checkpoint was written with {key}={saved.get(key)!r}, this run has "
                    f"{key}={getattr(self.cfg, key)!r}; use the same settings or another folder"
                )
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise EdgediffError(f"{path}: checkpoint weights do not fit this model: {str(e).splitlines()[0]}") from None
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if self.ema and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        return self.step

    # --- the loop ---
    def run(self, *, stop_after: int | None = None) -> TrainResult:
        """Train to `config.steps` (or stop early after `stop_after` more steps, e.g. to test resuming).

        Leaves the EMA weights (if any) in the model, in eval mode.
        """
        cfg, dist = self.cfg, self.dist
        prev_threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            resumed = self.maybe_resume()
            end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
            per_rank = cfg.batch_size // dist.world_size
            rows = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
            losses: list[float] = []
            bar = tqdm(
                total=cfg.steps,
                initial=self.step,
                desc=cfg.desc,
                dynamic_ncols=True,
                disable=not (cfg.progress and dist.is_main),
            )
            t0 = time.perf_counter()
            while self.step < end:
                idx = batch_indices(cfg.seed, self.step, self.n, cfg.batch_size)[rows]
                batch = {k: v[idx].to(dist.device) for k, v in self.data.items()}
                rng = StepRandom(cfg.seed, self.step, cfg.batch_size, rows)
                out = self.loss_fn(self.wrapped, batch, rng)
                loss, logs = out if isinstance(out, tuple) else (out, {})
                if not torch.isfinite(loss):
                    raise EdgediffError(
                        f"training: the loss became {loss.item()} at step {self.step}; lower --lr or check the data"
                    )
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.opt.step()
                self.sched.step()
                if self.ema:
                    self.ema.update(self.model)
                self.step += 1
                value = loss.detach()
                if dist.distributed:
                    torch.distributed.all_reduce(value)
                    value = value / dist.world_size
                losses.append(float(value))
                bar.update(1)
                if len(losses) % 10 == 0 or self.step == end:
                    bar.set_postfix(
                        loss=f"{np.mean(losses[-50:]):.4f}", **{k: f"{float(v):.4g}" for k, v in logs.items()}
                    )
                if self.step % cfg.checkpoint_every == 0 or self.step == end:
                    self.save_checkpoint()
            bar.close()
            seconds = time.perf_counter() - t0
            if self.ema and self.step == cfg.steps:
                self.ema.copy_to(self.model)
            self.model.eval()
        finally:
            torch.set_num_threads(prev_threads)
        tail = losses[-max(1, len(losses) // 10) :]
        return TrainResult(
            steps=self.step,
            seconds=seconds,
            losses=losses,
            final_loss=float(np.mean(tail)) if tail else float("nan"),
            resumed_from=resumed,
            world_size=dist.world_size,
        )


def train(
    model: nn.Module,
    loss_fn: LossFn,
    data: dict[str, torch.Tensor],
    config: TrainConfig,
    *,
    dist: DistContext | None = None,
) -> TrainResult:
    """Train `model` in place (EMA weights left in it); see Trainer."""
    return Trainer(model, loss_fn, data, config, dist=dist).run()
