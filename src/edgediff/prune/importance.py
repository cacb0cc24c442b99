"""Which channels matter: Diff-Pruning's Taylor importance, and weight magnitude as the baseline.

    taylor     gradients of the diffusion loss summed over timesteps t = 0, s, 2s, ... (s = stride),
               stopping at the first t whose loss L_t falls below `threshold` x max_{t' <= t} L_t'
               (Diff-Pruning's early-step threshold: the late, noisy steps carry a small loss and
               mostly coarse content, so they are left out of the expansion); then each group
               of coupled channels is scored by its first-order Taylor term |w . dL/dw|
               (Torch-Pruning's GroupTaylorImportance reads the accumulated .grad)
    magnitude  L2 norm of each group's weights (GroupMagnitudeImportance), no data

The loss at timestep t uses one fixed batch of clean images and one fixed noise draw, both
from `seed`, so the importance (and the pruned architecture) is a pure function of the
model, the data and the seed.

To add an importance, add a function returning a Torch-Pruning importance to IMPORTANCES.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec
from edgediff.training.diffusion import alphas_cumprod, call

ImportanceKind = Literal["taylor", "magnitude"]


@dataclass(frozen=True)
class TaylorRecord:
    timesteps: list[int]  # the timesteps whose gradients were summed
    losses: list[float]  # L_t at each of them
    stopped_at: int | None  # the first t below the threshold (not accumulated), None: ran to T
    threshold: float

    def to_dict(self) -> dict:
        return {
            "timesteps_used": len(self.timesteps),
            "first": self.timesteps[0],
            "last": self.timesteps[-1],
            "stopped_at": self.stopped_at,
            "threshold": self.threshold,
            "loss_max": max(self.losses),
            "loss_last": self.losses[-1],
        }


def accumulate_taylor_gradients(
    model: ModelSpec,
    data: dict[str, torch.Tensor],
    *,
    threshold: float = 0.05,
    batch: int = 32,
    stride: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> TaylorRecord:
    """Sum dL_t/dw into every parameter's .grad over t = 0, stride, ... until L_t < threshold * max L."""

    if not 0 <= threshold < 1:
        raise EdgediffError(f"prune: taylor threshold must lie in [0, 1), got {threshold}")
    module = model.module
    g = torch.Generator().manual_seed(seed)
    n = len(data["x0"])
    idx = torch.randperm(n, generator=g)[: min(batch, n)]
    x0 = data["x0"][idx]
    label = data["label"][idx] if "label" in data else None
    eps = torch.randn(x0.shape, generator=g)
    abar = alphas_cumprod(model)
    v_pred = model.schedule.prediction_type == "v_prediction"
    for p in module.parameters():
        p.requires_grad_(True)
    module.zero_grad(set_to_none=True)
    module.eval()  # no dropout; the UNets here have no batch norm
    used, losses, loss_max, stopped = [], [], 0.0, None
    steps = range(0, len(abar), stride)
    # at most len(steps) timesteps: the threshold usually stops the pass earlier (the bar then ends short)
    bar = tqdm(total=len(steps), desc="taylor importance", unit="t", disable=not progress, dynamic_ncols=True)
    for t_int in steps:
        a = abar[t_int]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        t = torch.full((len(x0),), t_int, dtype=torch.long)
        target = a.sqrt() * eps - (1 - a).sqrt() * x0 if v_pred else eps
        loss = F.mse_loss(call(module, model, xt, t, label), target)
        value = float(loss.detach())
        loss_max = max(loss_max, value)
        if value < threshold * loss_max:
            stopped = t_int
            break
        loss.backward()
        used.append(t_int)
        losses.append(value)
        bar.update(1)
    bar.close()
    return TaylorRecord(timesteps=used, losses=losses, stopped_at=stopped, threshold=threshold)


def _taylor():
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance()


def _magnitude():
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=2)


IMPORTANCES = {"taylor": _taylor, "magnitude": _magnitude}


def get_importance(kind: str):
    if kind not in IMPORTANCES:
        raise EdgediffError(f"prune: importance {kind!r} is not known (choose {', '.join(IMPORTANCES)})")
    return IMPORTANCES[kind]()
