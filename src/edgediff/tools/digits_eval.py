"""Check a trained digits UNet the way the README reports it.

    unet + labels -> diffusers DDIMScheduler (eta 0), classifier-free guidance -> images
    images -> DigitsClassifier -> class accuracy, FD-digits against "heldout"

This uses diffusers' own DDIM scheduler on purpose: it is an independent check of the
zoo's weights, not a use of the project's samplers (runtimes/samplers).

    python -m edgediff.tools.digits_eval [--source builtin:digits] [--per-class 10] [--steps 50] [--guidance 3]
                                    [--seed 0] [--threads 2] [--json FILE]

--source takes builtin:digits, builtin:digits-pruned or a pruned folder (`edgediff prune -o DIR`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgediff.compiler.capture import load_source
from edgediff.core.errors import EdgediffError
from edgediff.core.files import check_writable, write_file_atomic
from edgediff.core.spec import DiffusersAdapter
from edgediff.runtimes.quality import frechet_distance, gaussian_stats
from edgediff.training.data import digits_splits
from edgediff.zoo.builtin import load_classifier
from edgediff.zoo.models import DIGITS_SCHEDULER_CONFIG, NULL_LABEL, NUM_DIGIT_CLASSES


@torch.no_grad()
def sample_digits(
    unet: nn.Module, labels: np.ndarray, *, steps: int = 50, guidance: float = 3.0, seed: int = 0, batch: int = 250
) -> np.ndarray:
    """Class-conditional DDIM (eta 0) samples, float32 (N, 1, 16, 16) clipped to [-1, 1].

    eps = eps(x, t, null) + guidance * (eps(x, t, y) - eps(x, t, null)); the initial noise
    of all N images is drawn in one call from torch.Generator().manual_seed(seed).
    """
    from diffusers import DDIMScheduler

    cfg = {k: v for k, v in DIGITS_SCHEDULER_CONFIG.items() if k not in ("_class_name", "variance_type")}
    sched = DDIMScheduler(**cfg)
    sched.set_timesteps(steps)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    noise = torch.randn((len(labels), *shape), generator=torch.Generator().manual_seed(seed))
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    out = []
    for i in range(0, len(labels), batch):
        x, y = noise[i : i + batch], y_all[i : i + batch]
        cond = torch.cat([y, torch.full_like(y, NULL_LABEL)])
        for t in sched.timesteps:
            e_c, e_u = unet(torch.cat([x, x]), t.expand(2 * len(y)), class_labels=cond).sample.chunk(2)
            eps = e_u + guidance * (e_c - e_u)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def features(classifier: nn.Module, images: np.ndarray, batch: int = 512) -> np.ndarray:
    return torch.cat(
        [
            classifier.features(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])))
            for i in range(0, len(images), batch)
        ]
    ).numpy()


def evaluate(
    unet: nn.Module,
    classifier: nn.Module,
    *,
    per_class: int = 10,
    steps: int = 50,
    guidance: float = 3.0,
    seed: int = 0,
) -> dict:
    """Class accuracy of `per_class` samples per digit, and FD-digits against "heldout"."""

    labels = np.repeat(np.arange(NUM_DIGIT_CLASSES), per_class)
    images = sample_digits(unet, labels, steps=steps, guidance=guidance, seed=seed)
    with torch.no_grad():
        pred = classifier(torch.from_numpy(images)).argmax(1).numpy()
    per = [(pred[labels == c] == c).mean() for c in range(NUM_DIGIT_CLASSES)]
    held_x, _ = digits_splits()["heldout"]
    fd = frechet_distance(gaussian_stats(features(classifier, images)), gaussian_stats(features(classifier, held_x)))
    return {
        "per_class": per_class,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "class_accuracy": float((pred == labels).mean()),
        "class_accuracy_by_digit": [round(float(a), 3) for a in per],
        "fd_digits_vs_heldout": fd,
        "images": images,
    }


def main(argv=None) -> None:

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="builtin:digits", help="a digits UNet: builtin:NAME or a pruned folder")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 on a loaded machine)")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json", metavar="FILE", help="also write the result here (checked before the run, written atomically)"
    )
    a = p.parse_args(argv)
    try:
        _run(a)
    except EdgediffError as e:
        print(f"digits_eval: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(a) -> None:
    if a.json:
        check_writable(Path(a.json))
    torch.set_num_threads(a.threads)
    m = load_source(a.source).module
    unet = m.model if isinstance(m, DiffusersAdapter) else m
    r = evaluate(unet, load_classifier(), per_class=a.per_class, steps=a.steps, guidance=a.guidance, seed=a.seed)
    r.pop("images")
    r["source"] = a.source
    text = json.dumps(r, indent=2)
    if a.json:
        write_file_atomic(Path(a.json), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
