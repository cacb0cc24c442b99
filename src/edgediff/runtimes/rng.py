"""Counter-based Gaussian noise that the C runtime reproduces bit for bit.

Every noise value is a pure function of (seed, stream, call, index): no state is carried
from one draw to the next, so a sampler can ask for "the noise of step 7 of image 3" in
any order, on any machine, in Python or in C, and get the same float32 bits.

Specification (enough to write the C version from this text alone)
--------------------------------------------------------------------
All integers are unsigned 32-bit words (uint32) unless said otherwise; all real
arithmetic is IEEE-754 binary64 (double) with round-to-nearest-even, one rounding per
operation listed, evaluated in the order written.  In C, compile with
``-ffp-contract=off`` (no fused multiply-add) and no ``-ffast-math``.

1. Philox-4x32-10 (Salmon, Moraes, Dror, Shaw, SC'11; Random123's ``philox4x32_10``).
   Input: counter (c0, c1, c2, c3), key (k0, k1).  Constants::

       M0 = 0xD2511F53   M1 = 0xCD9E8D57   W0 = 0x9E3779B9   W1 = 0xBB67AE85

   One round: with 64-bit products ``p0 = (uint64)M0 * c0`` and ``p1 = (uint64)M1 * c2``,
   ``hi(p) = p >> 32``, ``lo(p) = p & 0xFFFFFFFF``::

       (c0, c1, c2, c3) <- (hi(p1) ^ c1 ^ k0,  lo(p1),  hi(p0) ^ c3 ^ k1,  lo(p0))

   Ten rounds; between consecutive rounds (9 times) the key is bumped:
   ``k0 += W0; k1 += W1`` (mod 2^32).  The output is the final (c0, c1, c2, c3) = u0..u3.
   Known answers: counter 0,0,0,0 key 0,0 -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8.

2. normal(seed, stream, call, n) -> n float32 values.
   seed is a uint64, stream and call are uint32.  key = (seed & 0xFFFFFFFF, seed >> 32).
   For block b = 0, 1, ..., ceil(n/4)-1: counter = (b, call, stream, 0), giving u0..u3.
   Each pair (u0, u1) and (u2, u3) gives two values by Box-Muller; per block the order is
   z0(u0,u1), z1(u0,u1), z0(u2,u3), z1(u2,u3); the whole sequence is truncated to n.

3. Box-Muller for one pair (ua, ub)::

       a  = ((double)ua + 0.5) * 0x1p-32          # exact; 0 < a < 1
       b  = ((double)ub + 0.5) * 0x1p-32          # exact
       L  = LOG(a)                                 # below
       r  = sqrt(-2.0 * L)                         # IEEE sqrt, correctly rounded
       (c, s) = COSSIN(b)                          # cos(2 pi b), sin(2 pi b), below
       z0 = (float)(r * c)      z1 = (float)(r * s)

   LOG and COSSIN are defined here with +, -, *, / only (not libm's log/sin/cos, whose last
   bits differ between libraries), so the bits are the same everywhere.  Both are accurate
   to a few units in the last place of a double, far below float32 resolution.

   LOG(a), 0 < a < 1::

       (m, e) = frexp(a)                           # a = m * 2^e, 0.5 <= m < 1, exact
       if m < SQRT_HALF: m = m * 2.0; e = e - 1    # exact; now SQRT_HALF <= m < 2 SQRT_HALF
       s = (m - 1.0) / (m + 1.0)
       z = s * s
       q = LOG_C[9]
       for k = 8 down to 0: q = LOG_C[k] + z * q   # LOG_C[k] = 2 / (2k + 3)
       L = (double)e * LN2 + s * (2.0 + z * q)     # i.e. t1 = e*LN2; t2 = z*q; t3 = 2+t2;
                                                   #      t4 = s*t3; L = t1 + t4

   COSSIN(b), 0 < b < 1::

       q = b * 4.0                                 # exact
       k = floor(q + 0.5)                          # exact; k in 0..4 (as a double)
       f = q - k                                   # exact; -0.5 <= f <= 0.5
       t = f * HALF_PI                             # the angle 2 pi b = k pi/2 + t
       z = t * t
       sp = SIN_C[7];  for j = 6 down to 0: sp = SIN_C[j] + z * sp
       cp = COS_C[8];  for j = 7 down to 0: cp = COS_C[j] + z * cp
       sin_t = t + (t * z) * sp                    # SIN_C[j] = (-1)^(j+1) / (2j+3)!
       cos_t = 1.0 + z * cp                        # COS_C[j] = (-1)^(j+1) / (2j+2)!
       quadrant = (int)k mod 4:
           0: (c, s) = ( cos_t,  sin_t)      1: (c, s) = (-sin_t,  cos_t)
           2: (c, s) = (-cos_t, -sin_t)      3: (c, s) = ( sin_t, -cos_t)

   Constants (C99 hexadecimal floating literals, exact)::

       SQRT_HALF = 0x1.6a09e667f3bcdp-1     LN2 = 0x1.62e42fefa39efp-1
       HALF_PI   = 0x1.921fb54442d18p+0
       LOG_C[0..9] = 2/3, 2/5, ..., 2/21     SIN_C[0..7] = -1/3!, +1/5!, ..., +1/17!
       COS_C[0..8] = -1/2!, +1/4!, ..., +1/18!
   each the double nearest the rational; their hex spellings are printed by
   ``python -m edgediff.runtimes.rng`` and pinned in tests/test_rng.py.

4. NoiseSource(seed, streams).draw(call, shape): image k of the batch gets
   ``normal(seed, streams[k], call, prod(shape))`` reshaped to ``shape`` (C order).
   Calls: 0 is the initial latent x_T; call i + 1 is the noise a solver uses at step i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgediff.core.errors import EdgediffError

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
_MASK = np.uint64(0xFFFFFFFF)
_U32 = 0xFFFFFFFF

SQRT_HALF = float.fromhex("0x1.6a09e667f3bcdp-1")
LN2 = float.fromhex("0x1.62e42fefa39efp-1")
HALF_PI = float.fromhex("0x1.921fb54442d18p+0")
LOG_C = tuple(2.0 / (2 * k + 3) for k in range(10))
SIN_C = tuple((-1) ** (j + 1) / math.factorial(2 * j + 3) for j in range(8))
COS_C = tuple((-1) ** (j + 1) / math.factorial(2 * j + 2) for j in range(9))


def philox4x32_10(counter, key) -> np.ndarray:
    """Philox-4x32-10 on arrays: counter (4, N) and key (2,) of uint32 -> (4, N) uint32."""
    c = [np.asarray(w, dtype=np.uint64) & _MASK for w in counter]
    k0, k1 = np.uint64(int(key[0]) & _U32), np.uint64(int(key[1]) & _U32)
    for rnd in range(10):
        if rnd:
            k0, k1 = (k0 + np.uint64(W0)) & _MASK, (k1 + np.uint64(W1)) & _MASK
        p0, p1 = np.uint64(M0) * c[0], np.uint64(M1) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _MASK, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _MASK]
    return np.stack(c).astype(np.uint32)


def _log(a: np.ndarray) -> np.ndarray:
    """LOG of the specification: natural log on (0, 1) from +, -, *, / only."""
    m, e = np.frexp(a)
    low = m < SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    q = np.full_like(z, LOG_C[9])
    for c in LOG_C[8::-1]:
        q = c + z * q
    return e * LN2 + s * (2.0 + z * q)


def _cossin(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COSSIN of the specification: (cos 2 pi b, sin 2 pi b) on (0, 1)."""
    q = b * 4.0
    k = np.floor(q + 0.5)
    t = (q - k) * HALF_PI
    z = t * t
    sp = np.full_like(z, SIN_C[7])
    for c in SIN_C[6::-1]:
        sp = c + z * sp
    cp = np.full_like(z, COS_C[8])
    for c in COS_C[7::-1]:
        cp = c + z * cp
    sin_t, cos_t = t + (t * z) * sp, 1.0 + z * cp
    quadrant = k.astype(np.int64) % 4
    cos = np.choose(quadrant, [cos_t, -sin_t, -cos_t, sin_t])
    sin = np.choose(quadrant, [sin_t, cos_t, -sin_t, -cos_t])
    return cos, sin


def _check_word(name: str, value: int, bits: int) -> int:
    if not isinstance(value, (int, np.integer)) or not 0 <= int(value) < 2**bits:
        raise EdgediffError(f"rng {name} must be an integer in [0, 2^{bits}), got {value!r}")
    return int(value)


def normal(seed: int, stream: int, call: int, n: int) -> np.ndarray:
    """n standard-normal float32 values for (seed, stream, call); see the module docstring."""
    seed = _check_word("seed", seed, 64)
    stream, call = _check_word("stream", stream, 32), _check_word("call", call, 32)
    n = _check_word("n", n, 34)
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    zero = np.zeros_like(blocks)
    u = philox4x32_10((blocks, zero + call, zero + stream, zero), (seed & _U32, seed >> 32))
    pairs = u.T.reshape(-1, 2).astype(np.float64)  # rows (u0,u1), (u2,u3) of each block
    a = (pairs[:, 0] + 0.5) * 2.0**-32
    b = (pairs[:, 1] + 0.5) * 2.0**-32
    r = np.sqrt(-2.0 * _log(a))
    cos, sin = _cossin(b)
    z = np.stack([r * cos, r * sin], axis=1).reshape(-1)
    return z[:n].astype(np.float32)


@dataclass(frozen=True)
class NoiseSource:
    """The noise of one batch: image k draws from stream ``streams[k]`` of ``seed``."""

    seed: int
    streams: tuple[int, ...]

    def __post_init__(self):
        _check_word("seed", self.seed, 64)
        object.__setattr__(self, "streams", tuple(_check_word("stream", s, 32) for s in self.streams))
        if not self.streams:
            raise EdgediffError("NoiseSource needs at least one stream, got streams=()")

    @classmethod
    def for_batch(cls, seed: int, n: int, first_stream: int = 0) -> NoiseSource:
        return cls(seed, tuple(range(first_stream, first_stream + n)))

    def draw(self, call: int, shape: tuple) -> np.ndarray:
        """Unit normals of shape (len(streams), *shape); call 0 = x_T, call i+1 = step i."""
        size = math.prod(shape)
        return np.stack([normal(self.seed, s, call, size).reshape(shape) for s in self.streams])


if __name__ == "__main__":
    for name, values in [
        ("SQRT_HALF", [SQRT_HALF]),
        ("LN2", [LN2]),
        ("HALF_PI", [HALF_PI]),
        ("LOG_C", LOG_C),
        ("SIN_C", SIN_C),
        ("COS_C", COS_C),
    ]:
        print(name, " ".join(float(v).hex() for v in values))
