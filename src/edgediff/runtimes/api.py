"""`edgediff.generate`: images from a bundle in one call (what `edgediff generate` does, without the file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from edgediff.runtimes.bundle import Bundle, load_bundle
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels
from edgediff.runtimes.runner import generate as _generate


def generate(
    bundle: str | Path | Bundle,
    *,
    n: int,
    seed: int = 0,
    label: int | None = None,
    loop: Literal["c", "python"] = "c",
    threads: int = 0,
    progress=None,
) -> np.ndarray:
    """Sample `n` images with a bundle; float32 (n, C, H, W) in [-1, 1].

    Class-conditional bundles draw labels 0, 1, 2, ... (or all `label`); image k uses noise
    stream k of `seed`, so the result equals `edgediff generate` and the C runner's.
    """
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    setup = SamplingSetup.from_bundle(b)
    labels = default_labels(setup, n, label)
    return _generate(
        bundle_denoiser(b, threads=threads), setup, n=n, seed=seed, labels=labels, progress=progress, loop=loop
    )
