"""Image-fidelity metrics (docs/design.md, quality protocol). Images are float arrays in [-1, 1].

- psnr_db: 10 log10(1 / MSE) over all pixels of all images, after mapping to [0, 1].
- ssim: mean SSIM with a 7-tap Gaussian window (sigma 1.5, suits 16x16 images), data range 1.
- frechet_distance: between Gaussians fitted to two feature sets (the FID formula).
- relative_error: ||a - b||_2 / ||b||_2.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.ndimage import gaussian_filter


def psnr_db(images: np.ndarray, reference: np.ndarray) -> float:
    a = (images.astype(np.float64) + 1) / 2
    b = (reference.astype(np.float64) + 1) / 2
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def ssim(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean structural similarity over images and channels (Wang et al. 2004 constants)."""
    a = (images.astype(np.float64) + 1) / 2
    b = (reference.astype(np.float64) + 1) / 2
    c1, c2 = 0.01**2, 0.03**2
    sigma = (0, 0, 1.5, 1.5)  # blur H and W only

    def blur(z):
        return gaussian_filter(z, sigma=sigma, truncate=2.0, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = features.astype(np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(stats_a, stats_b) -> float:
    (mu1, s1), (mu2, s2) = stats_a, stats_b
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise as the FID reference code does
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-12))
