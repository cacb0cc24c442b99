"""The digits data set, split once for the whole project.

sklearn load_digits (1797 images, 8x8, values 0..16, bundled, no download)
    -> scale to [-1, 1] -> bilinear upsample to size x size
    -> seeded stratified split:
         "diffusion"  ~55 %  the only images the diffusion model trains on
         "classifier" ~25 %  the only images the digits classifier trains on
         "heldout"    ~20 %  seen by neither: classifier test accuracy, and the
                             real-image reference set for FD-digits
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SPLITS = ("diffusion", "classifier", "heldout")
HELDOUT_FRACTION = 0.20
CLASSIFIER_FRACTION = 0.25  # of the whole set


def digits_images(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as float32 (N, 1, size, size) in [-1, 1] and int64 labels (N,)."""
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.numpy().astype(np.float32), d.target.astype(np.int64)


def split_indices(seed: int = 0) -> dict[str, np.ndarray]:
    """Sorted indices into load_digits() of each split (see digits_splits)."""
    y = load_digits().target
    idx = np.arange(len(y))
    rest, held = train_test_split(idx, test_size=HELDOUT_FRACTION, stratify=y, random_state=seed)
    diff, clf = train_test_split(
        rest, test_size=CLASSIFIER_FRACTION / (1 - HELDOUT_FRACTION), stratify=y[rest], random_state=seed + 1
    )
    return {name: np.sort(part) for name, part in zip(SPLITS, (diff, clf, held))}


def digits_splits(size: int = 16, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three disjoint, class-stratified splits: {name: (images, labels)}.

    images: float32 (N, 1, size, size) in [-1, 1] (the 8x8 originals, values 0..16, mapped
    linearly to [-1, 1] and upsampled bilinearly with align_corners=False); labels: int64 (N,).
    The split depends only on `seed` (seed 0: diffusion 987, classifier 450, heldout 360
    images), never on `size`, so every size shares the same split.

    "diffusion" (~55 %) is the only split the diffusion model trains on; "classifier"
    (~25 %) trains the digits classifier; "heldout" (~20 %) is seen by neither and serves
    both as the classifier's test set and as the real-image reference for FD-digits.
    """
    x, y = digits_images(size)
    return {name: (x[part], y[part]) for name, part in split_indices(seed).items()}
