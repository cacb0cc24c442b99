"""What pruning recovery and distillation train on: data, and the diffusion loss.

training_data(model, data=None)
    builtin:digits        -> the zoo's "diffusion" split (the images the model was trained on)
    --data images.npz     -> arrays "images" (N, C, H, W) float32 in [-1, 1], optional "labels" (N,) int
diffusion_loss(...)     -> MSE(eps_pred, eps) at t ~ U{0..T-1}, labels dropped to the null label
                           with probability `label_dropout` (keeps classifier-free guidance working)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec
from edgediff.training.trainer import StepRandom


def training_data(model: ModelSpec, data: str | Path | None = None) -> dict[str, torch.Tensor]:
    """{"x0": images, ["label": labels]} for `model`, checked against its sample shape."""
    if data is None:
        if model.source == "builtin:digits":
            from edgediff.training.data import digits_splits  # deferred: scikit-learn loads only for builtin:digits

            x, y = digits_splits()["diffusion"]
            return {"x0": torch.from_numpy(x), "label": torch.from_numpy(y)}
        raise EdgediffError(
            f"source {model.source!r}: no builtin training data; pass --data images.npz "
            "(arrays 'images' (N, C, H, W) in [-1, 1] and, for class-conditional models, 'labels')"
        )
    path = Path(data)
    try:
        npz = np.load(path)
    except (OSError, ValueError) as e:
        raise EdgediffError(f"{path}: cannot read training data: {e}") from None
    if "images" not in npz:
        raise EdgediffError(f"{path}: no array 'images' (found {', '.join(npz.files) or 'none'})")
    x = np.asarray(npz["images"], dtype=np.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(model.sample_shape):
        raise EdgediffError(
            f"{path}: field images has shape {x.shape}; the model needs (N, {', '.join(map(str, model.sample_shape))})"
        )
    if len(x) == 0 or not np.all(np.isfinite(x)):
        raise EdgediffError(f"{path}: field images is empty or holds NaN/inf")
    out = {"x0": torch.from_numpy(x)}
    if model.conditioning.kind == "class":
        if "labels" not in npz:
            raise EdgediffError(f"{path}: the model is class-conditional; add an array 'labels' (N,) of ints")
        y = np.asarray(npz["labels"])
        n = model.conditioning.num_classes
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n:
            raise EdgediffError(f"{path}: field labels must be {len(x)} integers in [0, {n})")
        out["label"] = torch.from_numpy(y.astype(np.int64))
    return out


def alphas_cumprod(model: ModelSpec) -> torch.Tensor:
    return torch.from_numpy(np.asarray(model.schedule.alphas_cumprod, dtype=np.float32))


def drop_labels(label: torch.Tensor, model: ModelSpec, rng: StepRandom, p: float) -> torch.Tensor:
    """Labels with a fraction `p` replaced by the null label (classifier-free guidance training)."""
    null = model.conditioning.null_label
    if p <= 0 or null is None:
        return label
    return torch.where(rng.rand() < p, torch.full_like(label, null), label)


def call(module, model: ModelSpec, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None):
    """module(x, t[, cond]) with t as float (the exported graphs take float timesteps)."""
    if model.conditioning.kind == "none":
        return module(x, t.float())
    return module(x, t.float(), label)


def noised_batch(model: ModelSpec, abar: torch.Tensor, batch: dict, rng: StepRandom, label_dropout: float):
    """(x_t, t, label, target) for a batch: t ~ U{0..T-1}, x_t = sqrt(abar) x0 + sqrt(1-abar) eps,
    labels dropped to the null label with probability `label_dropout`; target eps (or v)."""
    x0 = batch["x0"]
    t = rng.randint(0, len(abar)).to(x0.device)
    eps = rng.randn(*x0.shape[1:]).to(x0.device)
    a = abar.to(x0.device)[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    label = drop_labels(batch["label"], model, rng, label_dropout) if "label" in batch else None
    target = a.sqrt() * eps - (1 - a).sqrt() * x0 if model.schedule.prediction_type == "v_prediction" else eps
    return xt, t, label, target


def diffusion_loss(model: ModelSpec, *, label_dropout: float = 0.1):
    """loss_fn for Trainer: epsilon- (or v-) prediction MSE at uniformly drawn timesteps."""
    abar = alphas_cumprod(model)

    def loss_fn(module, batch, rng: StepRandom):
        xt, t, label, target = noised_batch(model, abar, batch, rng, label_dropout)
        return F.mse_loss(call(module, model, xt, t, label), target)

    return loss_fn
