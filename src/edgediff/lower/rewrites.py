"""Source-level rewrites applied while a converter traces the model (TFLite, Core ML).

    REWRITES[name] = Rewrite(modules, attribute, replacement, formats)
        with rewritten(fmt): every listed module's attribute is the replacement, restored after

Some diffusers functions trace into graphs a converter cannot take, although the math is plain:
diffusers' `upfirdn2d_native` (the FIR resampling of Skip*Block2D and FirUp/Downsample2D) makes
6-D tensors, and LiteRT (PAD, at most 5-D) and Core ML (rank <= 5) refuse them. The replacement
computes the same numbers with 4-D ops; the compile's verification against the unmodified PyTorch
model checks that (TFLite), and the ONNX path needs no rewrite.

To add a rewrite: one entry in REWRITES (and a test that the replacement equals the original).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def upfirdn2d_4d(
    tensor: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """diffusers' upfirdn2d_native (upsample by zero insertion, pad, FIR filter, downsample) in 4-D ops."""
    n, c, h, w = tensor.shape
    x = tensor.reshape(n * c, h, w, 1)
    if up > 1:  # zero insertion after every sample: pad a trailing axis, fold it into the spatial one
        x = F.pad(x, [0, up - 1]).reshape(n * c, h, 1, w * up)
        x = F.pad(x, [0, 0, 0, up - 1]).reshape(n * c, 1, h * up, w * up)
    else:
        x = x.reshape(n * c, 1, h, w)
    p0, p1 = pad
    if max(p0, 0) or max(p1, 0):
        x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:  # a negative pad crops
        x = x[:, :, max(-p0, 0) : x.shape[2] - max(-p1, 0), max(-p0, 0) : x.shape[3] - max(-p1, 0)]
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).reshape(1, 1, kh, kw).to(x.dtype)
    x = F.conv2d(x, weight, stride=down)
    return x.reshape(n, c, x.shape[2], x.shape[3])


@dataclass(frozen=True)
class Rewrite:
    modules: tuple[str, ...]  # every module that holds the function under `attribute`
    attribute: str
    replacement: Callable
    formats: tuple[str, ...]  # the formats whose converters need it


REWRITES: dict[str, Rewrite] = {
    "diffusers upfirdn2d_native (6-D tensors)": Rewrite(
        ("diffusers.models.upsampling", "diffusers.models.downsampling", "diffusers.models.resnet"),
        "upfirdn2d_native",
        upfirdn2d_4d,
        ("tflite", "coreml"),
    ),
}


@contextlib.contextmanager
def rewritten(fmt: str):
    """Apply every rewrite for `fmt` for the duration of a conversion; returns the names applied."""
    saved = []
    applied = []
    try:
        for name, r in REWRITES.items():
            if fmt not in r.formats:
                continue
            for mod_name in r.modules:
                try:
                    mod = importlib.import_module(mod_name)
                except ImportError:
                    continue
                if hasattr(mod, r.attribute):
                    saved.append((mod, r.attribute, getattr(mod, r.attribute)))
                    setattr(mod, r.attribute, r.replacement)
            applied.append(name)
        yield applied
    finally:
        for mod, attr, orig in reversed(saved):
            setattr(mod, attr, orig)
