"""`edgediff.generate`: images from a bundle in one call (what `edgediff generate` does, without the file)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.bundle import Bundle, load_bundle
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels, generate_text, text_pipeline
from edgediff.runtimes.runner import generate as _generate


def generate(
    bundle: str | Path | Bundle,
    *,
    n: int | None = None,
    seed: int = 0,
    label: int | None = None,
    prompt: str | list[str] | None = None,
    negative_prompt: str = "",
    guidance: float | None = None,
    latents: np.ndarray | None = None,
    loop: Literal["c", "python"] = "c",
    threads: int = 0,
    progress=None,
) -> np.ndarray:
    """Sample `n` images with a bundle; float32 (n, C, H, W) in [-1, 1].

    Class-conditional bundles draw labels 0, 1, 2, ... (or all `label`); image k uses noise
    stream k of `seed`, so the result equals `edgediff generate` and the C runner's.
    A text-to-image bundle takes `prompt` (one string, repeated n times, or a list: one image
    each), `negative_prompt`, `guidance` (None: the bundle's scale) and optional initial
    `latents` (n, *latent shape) as diffusers' `latents=` (with loop="python"); it returns
    RGB images (n, 3, H, W) in [-1, 1].
    """
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    setup = SamplingSetup.from_bundle(b)
    if b.conditioning.get("kind") == "text":
        if prompt is None:
            raise EdgediffError(f"{b.root}: a text-to-image bundle needs prompt=")
        if label is not None:
            raise EdgediffError(f"{b.root}: label= given, but this bundle takes prompts")
        prompts = [prompt] * (1 if n is None else n) if isinstance(prompt, str) else list(prompt)
        if n is not None and n != len(prompts):
            raise EdgediffError(f"n={n} but {len(prompts)} prompts were given")
        return generate_text(
            text_pipeline(b, threads=threads),
            setup,
            prompts=prompts,
            negative_prompt=negative_prompt,
            guidance=guidance,
            seed=seed,
            latents=latents,
            loop=loop,
            progress=progress,
            warn=lambda m: warnings.warn(m, stacklevel=3),
        )
    if prompt is not None or guidance is not None or latents is not None:
        raise EdgediffError(f"{b.root}: prompt=, guidance= and latents= are for text-to-image bundles")
    if n is None:
        raise EdgediffError("n= (the number of images) is required")
    labels = default_labels(setup, n, label)
    return _generate(
        bundle_denoiser(b, threads=threads), setup, n=n, seed=seed, labels=labels, progress=progress, loop=loop
    )
