"""Observers: quantization ranges from activation or weight statistics (plain numpy).

    samples ──update()──► statistics ──kind──► (lo, hi) ──► QuantRange(scale, zero_point, ...)
                          per tensor: a zero-anchored histogram (streaming, bounded memory)
                          per channel: the values themselves (weights are seen once)

Integer grids (signed, so they map directly onto int8 kernels; an unsigned uint8 tensor is
the same grid with zero_point + 2**(bits-1)):
    symmetric   q in [-(2^(b-1) - 1), 2^(b-1) - 1], zero_point 0 (the "restricted" range TFLite
                and ONNX Runtime use for weights)
    asymmetric  q in [-2^(b-1), 2^(b-1) - 1]; the range is widened to contain 0 so that zero
                (padding, ReLU) is exact
    x_hat = (clip(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale

To add an observer, write a function `(stats, *, bits, symmetric, **options) -> (lo, hi)` below
and add it to OBSERVERS; `stats` offers min/max, quantiles and the quantize-dequantize error of
a candidate range (see `_Stats`), so the same function serves both statistics kinds.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np

from edgediff.core.errors import EdgediffError


# ---------------------------------------------------------------- the result
@dataclass(frozen=True)
class QuantRange:
    """A quantization grid: scalars (0-d arrays) per tensor, shape (C,) arrays per channel.

    `min`/`max` are the real values the grid covers (after clipping and, for asymmetric
    grids, widening to include zero); `scale` float32, `zero_point` int32 in [qmin, qmax].
    """

    scale: np.ndarray
    zero_point: np.ndarray
    min: np.ndarray
    max: np.ndarray
    bits: int = 8
    symmetric: bool = False
    axis: int | None = None

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        """Quantize then dequantize `x` (float64 maths, float32 result) on this grid."""
        x = np.asarray(x, dtype=np.float64)
        scale, zp = self._broadcast(self.scale, x), self._broadcast(self.zero_point, x)
        q = np.clip(np.round(x / scale) + zp, self.qmin, self.qmax)
        return ((q - zp) * scale).astype(np.float32)

    def _broadcast(self, v: np.ndarray, x: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        if self.axis is None:
            return v
        shape = [1] * x.ndim
        shape[self.axis] = -1
        return v.reshape(shape)

    def to_dict(self) -> dict:
        return {
            "scale": np.asarray(self.scale).tolist(),
            "zero_point": np.asarray(self.zero_point).tolist(),
            "min": np.asarray(self.min).tolist(),
            "max": np.asarray(self.max).tolist(),
            "bits": self.bits,
            "symmetric": self.symmetric,
            "axis": self.axis,
        }


def make_range(lo, hi, *, bits: int = 8, symmetric: bool = False, axis: int | None = None) -> QuantRange:
    """The grid for the real interval [lo, hi] (scalars, or arrays for per-channel)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    qmax = 2 ** (bits - 1) - 1
    if symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        scale = amax / qmax
        zp = np.zeros_like(scale)
        lo, hi = -amax, amax
    else:
        qmin = -(2 ** (bits - 1))
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zp = np.clip(np.round(qmin - lo / safe), qmin, qmax)
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero tensor or channel: any scale is exact
    return QuantRange(
        scale=np.asarray(scale, np.float32),
        zero_point=np.asarray(zp, np.int32),
        min=np.asarray(lo, np.float32),
        max=np.asarray(hi, np.float32),
        bits=bits,
        symmetric=symmetric,
        axis=axis,
    )


def _qdq_error(
    values: np.ndarray, weights: np.ndarray | None, lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool
) -> np.ndarray:
    """Sum of squared quantize-dequantize errors of `values` (..., n) for candidate ranges.

    lo, hi: (K, ...) candidates broadcasting against values[..., 0]; returns (K, ...).
    """
    r = make_range(lo, hi, bits=bits, symmetric=symmetric)
    scale = r.scale.astype(np.float64)[..., None]
    zp = r.zero_point.astype(np.float64)[..., None]
    q = np.clip(np.round(values / scale) + zp, r.qmin, r.qmax)
    err = ((q - zp) * scale - values) ** 2
    if weights is not None:
        err = err * weights
    return err.sum(axis=-1)


# ---------------------------------------------------------------- statistics
class _Stats:
    """What an observer kind may ask of the data (per tensor: floats; per channel: (C,) arrays)."""

    def min(self): ...

    def max(self): ...

    def quantile(self, q: float): ...  # of the values

    def abs_quantile(self, q: float): ...  # of |values|

    def qdq_error(self, lo, hi, bits: int, symmetric: bool): ...  # (K[, C]) candidates -> (K[, C])


class Histogram(_Stats):
    """Counts in `bins` equal bins anchored at zero: bin j covers [(j - bins/2) w, (j - bins/2 + 1) w).

    The width is the smallest power of two w with max|x| < (bins/2) w. When new values fall
    outside, the width doubles and neighbouring pairs merge, which is exact because the grid
    stays anchored at zero; so the final histogram does not depend on how the data was split
    into batches. The resolution is better than 4 * max|x| / bins (8192 bins: 1/16 of an int8
    step), plenty for percentiles and the MSE search. Min and max are exact.
    """

    def __init__(self, bins: int = 8192):
        if bins < 16 or bins % 4:
            raise EdgediffError(f"histogram bins must be a multiple of 4 and >= 16, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, np.int64)
        self.width: float | None = None
        self.n = 0
        self._zeros = 0  # values seen while everything was exactly zero (no width chosen yet)
        self._min, self._max = np.inf, -np.inf

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        amax = max(-lo, hi)
        half = self.bins // 2
        if self.width is None:
            if amax == 0.0:  # only zeros so far: count them until a width can be chosen
                self._min, self._max, self.n = min(self._min, lo), max(self._max, hi), self.n + x.size
                self._zeros += x.size
                return
            self.width = math.ldexp(1.0, math.frexp(amax / half)[1])  # smallest 2^p with amax < half * 2^p
            self.counts[half] += self._zeros  # bin `half` is [0, w)
        while amax >= half * self.width:
            merged = self.counts.reshape(half, 2).sum(axis=1)
            self.counts = np.zeros(self.bins, np.int64)
            self.counts[self.bins // 4 : self.bins // 4 + half] = merged
            self.width *= 2.0
        idx = np.clip(np.floor(x / self.width).astype(np.int64) + half, 0, self.bins - 1)
        self.counts += np.bincount(idx, minlength=self.bins)
        self._min, self._max, self.n = min(self._min, lo), max(self._max, hi), self.n + x.size

    def _check(self):
        if self.n == 0:
            raise EdgediffError("observer has seen no values")

    def min(self):
        self._check()
        return self._min

    def max(self):
        self._check()
        return self._max

    def _edges(self):
        half = self.bins // 2
        w = self.width or 1.0
        return (np.arange(self.bins + 1) - half) * w

    def quantile(self, q: float):
        self._check()
        if self.width is None:
            return 0.0
        cdf = np.concatenate([[0], np.cumsum(self.counts)]) / self.n
        v = float(np.interp(q, cdf, self._edges()))  # uniform within a bin
        return min(max(v, self._min), self._max)

    def abs_quantile(self, q: float):
        self._check()
        if self.width is None:
            return 0.0
        half = self.bins // 2
        folded = self.counts[half:] + self.counts[:half][::-1]  # bin k: |x| in [k w, (k+1) w)
        cdf = np.concatenate([[0], np.cumsum(folded)]) / self.n
        v = float(np.interp(q, cdf, np.arange(half + 1) * self.width))
        return min(v, max(abs(self._min), abs(self._max)))

    def qdq_error(self, lo, hi, bits, symmetric):
        self._check()
        if self.width is None:
            return np.zeros(np.broadcast(np.asarray(lo), np.asarray(hi)).shape)
        nz = np.nonzero(self.counts)[0]
        centres = (nz - self.bins // 2 + 0.5) * self.width
        centres = np.clip(centres, self._min, self._max)
        return _qdq_error(centres, self.counts[nz].astype(np.float64), np.asarray(lo), np.asarray(hi), bits, symmetric)


class ChannelValues(_Stats):
    """The values themselves, as a (C, n) matrix with the channel axis first (exact)."""

    def __init__(self, axis: int):
        self.axis = axis
        self.parts: list[np.ndarray] = []

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        if not -x.ndim <= self.axis < x.ndim:
            raise EdgediffError(f"observer axis {self.axis} out of range for an array of shape {x.shape}")
        m = np.moveaxis(x, self.axis, 0).reshape(x.shape[self.axis], -1)
        if self.parts and m.shape[0] != self.parts[0].shape[0]:
            raise EdgediffError(
                f"observer axis {self.axis}: got {m.shape[0]} channels, earlier {self.parts[0].shape[0]}"
            )
        self.parts.append(m)

    @property
    def values(self) -> np.ndarray:
        if not self.parts:
            raise EdgediffError("observer has seen no values")
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts, axis=1)]
        return self.parts[0]

    def min(self):
        return self.values.min(axis=1)

    def max(self):
        return self.values.max(axis=1)

    def quantile(self, q):
        return np.quantile(self.values, q, axis=1)

    def abs_quantile(self, q):
        return np.quantile(np.abs(self.values), q, axis=1)

    def qdq_error(self, lo, hi, bits, symmetric):
        lo, hi = np.broadcast_arrays(np.asarray(lo, np.float64), np.asarray(hi, np.float64))
        v = self.values
        return np.stack([_qdq_error(v, None, lo[k], hi[k], bits, symmetric) for k in range(lo.shape[0])])


# ---------------------------------------------------------------- observer kinds
def minmax_range(stats: _Stats, *, bits: int, symmetric: bool):
    """The full observed range."""
    return stats.min(), stats.max()


def percentile_range(stats: _Stats, *, bits: int, symmetric: bool, percentile: float = 99.99):
    """Clip to the `percentile`-th percentile (of |x| when symmetric; both tails otherwise)."""
    if not 50.0 < percentile <= 100.0:
        raise EdgediffError(f"observer 'percentile': percentile must be in (50, 100], got {percentile}")
    q = percentile / 100.0
    if symmetric:
        a = stats.abs_quantile(q)
        return -np.asarray(a), a
    return stats.quantile(1.0 - q), stats.quantile(q)


def mse_range(stats: _Stats, *, bits: int, symmetric: bool, grid: int = 64, min_ratio: float = 1e-3):
    """Shrink the min-max range by the ratio (geometric grid from 1 down to `min_ratio`, then a
    finer pass around the best) that minimises the quantize-dequantize squared error."""
    if not 0.0 < min_ratio < 1.0 or grid < 2:
        raise EdgediffError(f"observer 'mse': need 0 < min_ratio < 1 and grid >= 2, got {min_ratio}, {grid}")
    lo, hi = np.asarray(stats.min(), np.float64), np.asarray(stats.max(), np.float64)

    def best(ratios):
        r = ratios.reshape((-1,) + (1,) * lo.ndim)
        err = stats.qdq_error(r * lo, r * hi, bits, symmetric)
        return ratios[np.argmin(err, axis=0)]  # per channel when lo has a channel axis

    coarse = np.geomspace(1.0, min_ratio, grid)
    r0 = best(coarse)
    step = coarse[0] / coarse[1]
    fine = np.linspace(1.0 / step, step, grid)  # multiplicative neighbourhood of the coarse optimum
    if lo.ndim == 0:
        r1 = best(np.clip(r0 * fine, min_ratio, 1.0))
    else:  # per channel: search each channel's own neighbourhood
        cand = np.clip(r0[None, :] * fine[:, None], min_ratio, 1.0)
        err = stats.qdq_error(cand * lo, cand * hi, bits, symmetric)
        r1 = cand[np.argmin(err, axis=0), np.arange(lo.size)]
    return r1 * lo, r1 * hi


OBSERVERS = {
    "minmax": minmax_range,
    "percentile": percentile_range,
    "mse": mse_range,
}


def _check_kind(kind: str, opts: dict) -> None:
    if kind not in OBSERVERS:
        raise EdgediffError(f"unknown observer {kind!r}; choose one of {', '.join(OBSERVERS)}")
    params = inspect.signature(OBSERVERS[kind]).parameters
    allowed = [p for p in params if p not in ("stats", "bits", "symmetric")]
    for name in opts:
        if name not in allowed:
            raise EdgediffError(f"observer {kind!r} has no option {name!r}; options: {', '.join(allowed) or 'none'}")


class Observer:
    """Streaming observer: `update()` with batches (for example from a forward hook), then `result()`.

    axis=None: per-tensor statistics in a histogram (activations); axis=k: per-channel along k,
    keeping the values (weights). Raises EdgediffError on NaN/inf input.
    """

    def __init__(
        self,
        kind: str = "minmax",
        *,
        axis: int | None = None,
        bits: int = 8,
        symmetric: bool = False,
        bins: int = 8192,
        **options,
    ):
        _check_kind(kind, options)
        if not isinstance(bits, int) or not 2 <= bits <= 16:
            raise EdgediffError(f"observer bits must be an integer in 2..16, got {bits!r}")
        self.kind, self.axis, self.bits, self.symmetric, self.options = kind, axis, bits, symmetric, options
        self.stats: Histogram | ChannelValues = Histogram(bins) if axis is None else ChannelValues(axis)

    @property
    def count(self) -> int:
        s = self.stats
        return s.n if isinstance(s, Histogram) else sum(p.size for p in s.parts)

    def update(self, x) -> Observer:
        x = np.asarray(x)
        if x.size and not np.isfinite(x).all():
            raise EdgediffError(f"observer got non-finite values (NaN or inf) in an array of shape {x.shape}")
        self.stats.update(x)
        return self

    def result(self) -> QuantRange:
        lo, hi = OBSERVERS[self.kind](self.stats, bits=self.bits, symmetric=self.symmetric, **self.options)
        return make_range(lo, hi, bits=self.bits, symmetric=self.symmetric, axis=self.axis)


def observe(
    samples: np.ndarray,
    kind: str = "minmax",
    *,
    axis: int | None = None,
    bits: int = 8,
    symmetric: bool = False,
    **options,
) -> QuantRange:
    """One-shot: the QuantRange of `samples` (per tensor, or per channel along `axis`).

    Activations: axis=None (asymmetric by default). Weights: axis=0 (output channels of
    Conv/Linear), symmetric=True.
    """
    return Observer(kind, axis=axis, bits=bits, symmetric=symmetric, **options).update(samples).result()
