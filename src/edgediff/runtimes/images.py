"""Write images: a grid PNG (or PGM/PPM) from float arrays in [-1, 1]."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from edgediff.core.errors import EdgediffError
from edgediff.core.files import write_file_atomic


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = np.clip((images + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def to_unit(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> float32 (N, H, W, 3) in [0, 1], as diffusers' output_type="np"."""
    return np.clip(images / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1).astype(np.float32)


def grid(images: np.ndarray, *, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images into one (rows*H, cols*W, C) uint8 array."""
    n, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    tiles = to_uint8(images)
    out = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.uint8)
    for k in range(n):
        r, q = divmod(k, ncols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = tiles[k]
    return out


def save_grid(images: np.ndarray, path: str | Path, *, ncols: int | None = None, scale: int | None = None) -> Path:
    """Save a grid; small images are enlarged (nearest neighbour) so a person can see them."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pgm", ".ppm"):
        raise EdgediffError(f"{path}: output must end in .png, .pgm or .ppm")
    g = grid(images, ncols=ncols)
    scale = scale or max(1, 256 // max(images.shape[2], 1) // max(1, math.ceil(math.sqrt(len(images))) // 2))
    img = Image.fromarray(g[..., 0] if g.shape[2] == 1 else g)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if path.suffix.lower() == ".ppm" and img.mode == "L":
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format={".png": "PNG", ".pgm": "PPM", ".ppm": "PPM"}[path.suffix.lower()])
    write_file_atomic(path, buf.getvalue())  # a full disk leaves the old file or none, never a partial one
    return path
