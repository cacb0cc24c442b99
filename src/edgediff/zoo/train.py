"""Train the builtin digits UNet and the digits classifier, reproducibly.

    digits_splits()["diffusion"]  -> train_digits_unet       -> weights/digits_unet.safetensors (EMA) + .json
    digits_splits()["classifier"] -> train_digits_classifier -> weights/digits_classifier.safetensors + .json
                                     (tested on "heldout")

All randomness (initial weights, batches, timesteps, noise, label dropout, augmentation)
comes from one torch.Generator seeded with `seed`; the global RNG is never used, and the
thread count is fixed (`THREADS`) while training, so the same command with the same seed
on the same machine gives bit-identical weights. (Another CPU or torch build may round
differently; the JSON next to the weights records the environment.)

The defaults below are what the committed weights were trained with; the CLI
(`edgediff zoo train digits|classifier`) calls these functions with no arguments.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from edgediff.training.data import digits_splits
from edgediff.training.trainer import Ema as _Ema
from edgediff.zoo.builtin import sha256_file
from edgediff.zoo.models import (
    DIGITS_SCHEDULER_CONFIG,
    NULL_LABEL,
    DigitsClassifier,
    build_classifier,
    build_digits_unet,
    digits_unet_config,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"
THREADS = 2

# --- digits UNet defaults (the committed weights) ---
UNET_STEPS = 3000
UNET_BATCH_SIZE = 64
UNET_SEED = 0
UNET_LR = 1e-3
UNET_WARMUP = 200
UNET_EMA_DECAY = 0.999
UNET_LABEL_DROPOUT = 0.1
UNET_OUT = WEIGHTS_DIR / "digits_unet.safetensors"

# --- classifier defaults (the committed weights) ---
CLASSIFIER_STEPS = 2000
CLASSIFIER_BATCH_SIZE = 64
CLASSIFIER_SEED = 0
CLASSIFIER_LR = 2e-3
CLASSIFIER_WARMUP = 100
CLASSIFIER_OUT = WEIGHTS_DIR / "digits_classifier.safetensors"


@dataclass(frozen=True)
class TrainResult:
    """What a training run did. `losses` holds the loss of every step."""

    path: Path | None
    steps: int
    seed: int
    final_loss: float  # mean loss over the last 10 % of steps
    seconds: float
    losses: list[float] = field(repr=False)
    heldout_accuracy: float | None = None  # classifier only


def train_digits_unet(
    steps: int = UNET_STEPS,
    batch_size: int = UNET_BATCH_SIZE,
    seed: int = UNET_SEED,
    out_path: str | Path | None = UNET_OUT,
    progress: bool = True,
    *,
    lr: float = UNET_LR,
    warmup: int = UNET_WARMUP,
    ema_decay: float = UNET_EMA_DECAY,
    label_dropout: float = UNET_LABEL_DROPOUT,
) -> TrainResult:
    """DDPM epsilon-prediction training of the class-conditional digits UNet.

    Each step: a batch from the "diffusion" split (epoch-wise shuffled), t ~ U{0..999},
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, loss = MSE(unet(x_t, t, y), eps), labels
    replaced by the null label 10 with probability `label_dropout` (classifier-free
    guidance). AdamW (weight decay 0), linear warmup then cosine decay to 0, EMA of the
    weights with decay min(ema_decay, (1+k)/(10+k)). Saves the EMA weights to `out_path`
    (safetensors) and a JSON record beside it; `out_path=None` saves nothing.
    """
    g = torch.Generator().manual_seed(seed)
    x0_all, y_all = (torch.from_numpy(a) for a in digits_splits()["diffusion"])
    alphas_cumprod = _alphas_cumprod(DIGITS_SCHEDULER_CONFIG)
    n_train = DIGITS_SCHEDULER_CONFIG["num_train_timesteps"]

    with _threads(THREADS):
        model = build_digits_unet(g).train()
        ema = _Ema(model, ema_decay)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        sched = _warmup_cosine(opt, warmup, steps)
        batches = _batches(len(y_all), batch_size, g)
        losses: list[float] = []
        t0 = time.perf_counter()
        bar = tqdm(range(steps), desc="digits unet", disable=not progress, dynamic_ncols=True)
        for _ in bar:
            idx = next(batches)
            x0, y = x0_all[idx], y_all[idx].clone()
            t = torch.randint(0, n_train, (len(idx),), generator=g)
            eps = torch.randn(x0.shape, generator=g)
            y[torch.rand(len(idx), generator=g) < label_dropout] = NULL_LABEL
            a = alphas_cumprod[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            loss = F.mse_loss(model(xt, t, class_labels=y).sample, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update(model)
            losses.append(loss.item())
            if len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        seconds = time.perf_counter() - t0
        ema.copy_to(model)
    model.eval()

    result = TrainResult(
        path=Path(out_path) if out_path else None,
        steps=steps,
        seed=seed,
        final_loss=_tail_mean(losses),
        seconds=seconds,
        losses=losses,
    )
    if progress:
        tqdm.write(f"digits unet: {steps} steps in {seconds:.0f} s, final loss {result.final_loss:.4f}")
    if out_path:
        _save(
            model,
            Path(out_path),
            result,
            {
                "model": "digits_unet",
                "reproduce": "edgediff zoo train digits",
                "unet_config": digits_unet_config(),
                "scheduler_config": DIGITS_SCHEDULER_CONFIG,
                "training": {
                    "steps": steps,
                    "batch_size": batch_size,
                    "seed": seed,
                    "lr": lr,
                    "warmup": warmup,
                    "lr_schedule": "linear warmup + cosine to 0",
                    "optimizer": "AdamW(weight_decay=0)",
                    "ema_decay": ema_decay,
                    "label_dropout": label_dropout,
                    "null_label": NULL_LABEL,
                    "loss": "MSE(eps_pred, eps), t ~ U{0..999}",
                    "saved": "EMA weights",
                    "data": f"digits_splits(size=16, seed=0)['diffusion'] ({len(y_all)} images)",
                },
            },
        )
    return result


def train_digits_classifier(
    steps: int = CLASSIFIER_STEPS,
    batch_size: int = CLASSIFIER_BATCH_SIZE,
    seed: int = CLASSIFIER_SEED,
    out_path: str | Path | None = CLASSIFIER_OUT,
    progress: bool = True,
    *,
    lr: float = CLASSIFIER_LR,
    warmup: int = CLASSIFIER_WARMUP,
) -> TrainResult:
    """Cross-entropy training of DigitsClassifier on the "classifier" split.

    Augmentation (every image, every step): random affine (shift up to 1.5 px, rotation up
    to 10 degrees, scale 0.9..1.1) and Gaussian pixel noise with a random sigma up to 0.15,
    so that slightly imperfect generated digits are still read correctly. Label smoothing
    0.05; AdamW (weight decay 1e-4), warmup then cosine. Test accuracy on "heldout" is
    measured once, on the final weights (no selection on heldout).
    """
    g = torch.Generator().manual_seed(seed)
    splits = digits_splits()
    x_all, y_all = (torch.from_numpy(a) for a in splits["classifier"])
    x_test, y_test = (torch.from_numpy(a) for a in splits["heldout"])

    with _threads(THREADS):
        model = build_classifier(g).train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = _warmup_cosine(opt, warmup, steps)
        batches = _batches(len(y_all), batch_size, g)
        losses: list[float] = []
        t0 = time.perf_counter()
        bar = tqdm(range(steps), desc="digits classifier", disable=not progress, dynamic_ncols=True)
        for _ in bar:
            idx = next(batches)
            x = augment_digits(x_all[idx], g)
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        seconds = time.perf_counter() - t0
        model.eval()
        acc = accuracy(model, x_test.numpy(), y_test.numpy())

    result = TrainResult(
        path=Path(out_path) if out_path else None,
        steps=steps,
        seed=seed,
        final_loss=_tail_mean(losses),
        seconds=seconds,
        losses=losses,
        heldout_accuracy=acc,
    )
    if progress:
        tqdm.write(
            f"digits classifier: {steps} steps in {seconds:.0f} s, final loss {result.final_loss:.4f}, "
            f"heldout accuracy {acc:.4f}"
        )
    if out_path:
        _save(
            model,
            Path(out_path),
            result,
            {
                "model": "digits_classifier",
                "reproduce": "edgediff zoo train classifier",
                "feature_dim": DigitsClassifier.FEATURE_DIM,
                "heldout_accuracy": acc,
                "training": {
                    "steps": steps,
                    "batch_size": batch_size,
                    "seed": seed,
                    "lr": lr,
                    "warmup": warmup,
                    "lr_schedule": "linear warmup + cosine to 0",
                    "optimizer": "AdamW(weight_decay=1e-4)",
                    "label_smoothing": 0.05,
                    "augmentation": "affine (shift<=1.5px, rot<=10deg, scale 0.9..1.1) + noise sigma<=0.15",
                    "data": f"digits_splits(size=16, seed=0)['classifier'] ({len(y_all)} images)",
                    "test": f"digits_splits(size=16, seed=0)['heldout'] ({len(y_test)} images)",
                },
            },
        )
    return result


def augment_digits(
    x: torch.Tensor,
    g: torch.Generator,
    *,
    shift_px: float = 1.5,
    rot_deg: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    noise: float = 0.15,
) -> torch.Tensor:
    """Random affine warp (background stays -1) plus Gaussian noise, drawn from `g`."""
    b, _, h, w = x.shape
    u = torch.rand(5, b, generator=g)
    ang = (u[0] * 2 - 1) * math.radians(rot_deg)
    s = scale[0] + (scale[1] - scale[0]) * u[1]
    tx, ty = (u[2] * 2 - 1) * shift_px * 2 / w, (u[3] * 2 - 1) * shift_px * 2 / h
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    sigma = (u[4] * noise).view(-1, 1, 1, 1)
    return out + sigma * torch.randn(x.shape, generator=g)


@torch.no_grad()
def accuracy(classifier: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 512) -> float:
    """Fraction of `images` (float32 (N,1,16,16) in [-1,1]) classified as `labels`."""
    preds = [
        classifier(torch.from_numpy(np.ascontiguousarray(images[i : i + batch]))).argmax(1)
        for i in range(0, len(images), batch)
    ]
    return float((torch.cat(preds).numpy() == labels).mean())


def run_digits_sd(steps: int | None = None, seed: int | None = None, out: str | Path | None = None) -> int:
    """`edgediff zoo train digits-sd`: zoo/digits_sd.py's train() with its defaults; prints where and how long."""
    from edgediff.zoo import digits_sd

    r = digits_sd.train(
        steps=steps or digits_sd.SD_STEPS,
        seed=digits_sd.SEED if seed is None else seed,
        out=out or digits_sd.FOLDER,
    )
    q = r.record.get("quality", {})
    acc = f", class accuracy {q['accuracy']:.3f} on {q['images']} images" if q else ""
    print(f"wrote {r.path}: seed {r.record['seed']}, {r.seconds:.0f} s{acc}")
    return 0


# --- helpers ---------------------------------------------------------------------------


def _alphas_cumprod(cfg: dict) -> torch.Tensor:
    """alpha_bar_t, t = 0..T-1, as float32 (accumulated in float64; diffusers accumulates in
    float32, a relative difference below 4e-7)."""
    if cfg["beta_schedule"] != "linear":
        raise ValueError(f"beta_schedule {cfg['beta_schedule']!r}: only 'linear' is used in the zoo")
    betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], cfg["num_train_timesteps"], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def _batches(n: int, batch_size: int, g: torch.Generator):
    """Endless batches of indices: each epoch a fresh permutation from `g`, last partial batch dropped."""
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the split size {n}")
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]


def _warmup_cosine(opt, warmup: int, steps: int):
    def factor(k: int) -> float:
        if k < warmup:
            return (k + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (k - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class _threads:
    """Fix torch's intra-op thread count inside a block (results depend on it)."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.prev = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.prev)


def _tail_mean(losses: list[float]) -> float:
    return float(np.mean(losses[-max(1, len(losses) // 10) :]))


def _save(model: nn.Module, path: Path, result: TrainResult, record: dict) -> None:
    import diffusers
    import sklearn

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".safetensors.tmp")
    # One metadata key only: safetensors writes metadata in hash-map order, so two keys
    # could come out in either order and the file's sha256 would vary from run to run.
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)
    tmp.replace(path)
    record = {
        **record,
        "weights_file": path.name,
        "weights_sha256": sha256_file(path),
        "parameters": sum(v.numel() for v in tensors.values()),
        "final_loss": result.final_loss,
        "final_loss_definition": "mean training loss over the last 10% of steps",
        "train_seconds": round(result.seconds, 1),
        "environment": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "threads": THREADS,
        },
    }
    path.with_suffix(".json").write_text(json.dumps(_jsonable(record), indent=2) + "\n")


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


__all__ = [
    "train_digits_unet",
    "train_digits_classifier",
    "run_digits_sd",
    "TrainResult",
    "augment_digits",
    "accuracy",
    "UNET_STEPS",
    "UNET_BATCH_SIZE",
    "UNET_SEED",
    "CLASSIFIER_STEPS",
    "CLASSIFIER_BATCH_SIZE",
    "CLASSIFIER_SEED",
]
