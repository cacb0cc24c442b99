"""The counter-based noise generator: known answers, an independent scalar re-implementation
written from the module docstring (what the C runtime will do), statistics, stream layout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgediff.core.errors import EdgediffError
from edgediff.runtimes import rng
from edgediff.runtimes.rng import NoiseSource, normal, philox4x32_10

# Random123's kat_vectors for philox4x32_10: counter, key, expected output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

# Pinned outputs (float32 bit patterns).  A C implementation must print these too; change
# them only together with the specification in src/edgediff/runtimes/rng.py.
GOLDEN = [
    ((0, 0, 0, 8), [0x3F7DBB33, 0xBF6CB6B0, 0xBF1E1B9F, 0xBEF6D1B2, 0xBE1D5357, 0x3E392A6D, 0x3F54EC98, 0x3E4A2DA3]),
    ((2**64 - 1, 2**32 - 1, 7, 6), [0x3FBC435D, 0xBE785F40, 0xBE1A4346, 0xBF3FDA64, 0x3F317EAD, 0xBF937BB9]),
]

# The constants as the docstring spells them (C99 hex float literals).
CONSTANTS_HEX = {
    "SQRT_HALF": "0x1.6a09e667f3bcdp-1",
    "LN2": "0x1.62e42fefa39efp-1",
    "HALF_PI": "0x1.921fb54442d18p+0",
}


def scalar_philox(ctr, key):
    """Philox-4x32-10 on Python ints, one block, straight from the specification."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for rnd in range(10):
        if rnd:
            k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c3 ^ k1, p0 & 0xFFFFFFFF
    return c0, c1, c2, c3


def scalar_log(a):
    """LOG of the specification with Python floats (IEEE doubles, one rounding per op)."""
    m, e = math.frexp(a)
    if m < rng.SQRT_HALF:
        m, e = m * 2.0, e - 1
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    q = rng.LOG_C[9]
    for k in range(8, -1, -1):
        q = rng.LOG_C[k] + z * q
    return float(e) * rng.LN2 + s * (2.0 + z * q)


def scalar_cossin(b):
    """COSSIN of the specification with Python floats."""
    q = b * 4.0
    k = math.floor(q + 0.5)
    t = (q - k) * rng.HALF_PI
    z = t * t
    sp = rng.SIN_C[7]
    for j in range(6, -1, -1):
        sp = rng.SIN_C[j] + z * sp
    cp = rng.COS_C[8]
    for j in range(7, -1, -1):
        cp = rng.COS_C[j] + z * cp
    sin_t, cos_t = t + (t * z) * sp, 1.0 + z * cp
    return [(cos_t, sin_t), (-sin_t, cos_t), (-cos_t, -sin_t), (sin_t, -cos_t)][int(k) % 4]


def scalar_box_muller(ua, ub):
    a, b = (ua + 0.5) * 2.0**-32, (ub + 0.5) * 2.0**-32
    r = math.sqrt(-2.0 * scalar_log(a))
    c, s = scalar_cossin(b)
    return np.float32(r * c), np.float32(r * s)


def scalar_normal(seed, stream, call, n):
    out = []
    for block in range((n + 3) // 4):
        u = scalar_philox((block, call, stream, 0), (seed & 0xFFFFFFFF, seed >> 32))
        out += [*scalar_box_muller(u[0], u[1]), *scalar_box_muller(u[2], u[3])]
    return np.array(out[:n], dtype=np.float32)


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_known_answers(counter, key, expected):
    got = philox4x32_10([[w] for w in counter], key)
    assert tuple(int(w) for w in got[:, 0]) == expected
    assert scalar_philox(counter, key) == expected


def test_vectorized_philox_equals_scalar_reference():
    gen = np.random.default_rng(0)
    ctr = gen.integers(0, 2**32, size=(4, 64), dtype=np.uint64)
    key = tuple(int(k) for k in gen.integers(0, 2**32, size=2))
    got = philox4x32_10(ctr, key)
    for j in range(ctr.shape[1]):
        assert tuple(int(w) for w in got[:, j]) == scalar_philox(tuple(int(w) for w in ctr[:, j]), key)


def test_constants_are_the_documented_ones():
    for name, spelled in CONSTANTS_HEX.items():
        assert getattr(rng, name) == float.fromhex(spelled) and spelled in rng.__doc__
    assert rng.LOG_C == tuple(2.0 / (2 * k + 3) for k in range(10))
    assert rng.SIN_C == tuple((-1) ** (j + 1) / math.factorial(2 * j + 3) for j in range(8))
    assert rng.COS_C == tuple((-1) ** (j + 1) / math.factorial(2 * j + 2) for j in range(9))
    assert abs(rng.SQRT_HALF - math.sqrt(0.5)) == 0 and rng.LN2 == math.log(2) and rng.HALF_PI == math.pi / 2


@pytest.mark.parametrize("args,bits", GOLDEN)
def test_golden_bits(args, bits):
    got = normal(*args)
    assert got.dtype == np.float32
    assert [int(v) for v in got.view(np.uint32)] == bits
    assert [int(v) for v in scalar_normal(*args).view(np.uint32)] == bits


def test_vectorized_normal_equals_scalar_reference():
    for seed, stream, call, n in [(1, 2, 3, 1), (12345678901234, 9, 0, 37), (2**40 + 5, 0, 1000, 64)]:
        np.testing.assert_array_equal(normal(seed, stream, call, n), scalar_normal(seed, stream, call, n))


def test_log_and_cossin_equal_the_specification_in_float64():
    """The double intermediates, bit for bit: a C port can be checked at this level too."""
    words = np.concatenate(
        [
            np.random.default_rng(3).integers(0, 2**32, 20_000),
            [0, 1, 2**31 - 1, 2**31, 2**32 - 1],
            np.arange(0xB504F000, 0xB504F400, 7),
            np.arange(2**30 - 64, 2**30 + 64),
        ]
    )  # edges
    u = (words.astype(np.float64) + 0.5) * 2.0**-32
    got_log, (got_cos, got_sin) = rng._log(u), rng._cossin(u)
    for j, v in enumerate(u.tolist()):
        assert got_log[j] == scalar_log(v) and (got_cos[j], got_sin[j]) == scalar_cossin(v), v
    np.testing.assert_allclose(got_log, np.log(u), rtol=4e-16)
    np.testing.assert_allclose(got_cos, np.cos(2 * np.pi * u), rtol=0, atol=2e-15)
    np.testing.assert_allclose(got_sin, np.sin(2 * np.pi * u), rtol=0, atol=2e-15)


def test_close_to_libm_box_muller():
    """LOG and COSSIN are ours, but the result is Box-Muller with the true log, cos, sin."""
    n = 200_000
    blocks = np.arange(n // 4, dtype=np.uint64)
    u = philox4x32_10((blocks, blocks * 0 + 5, blocks * 0 + 3, blocks * 0), (42, 0)).T.reshape(-1, 2)
    a, b = (u[:, 0] + 0.5) * 2.0**-32, (u[:, 1] + 0.5) * 2.0**-32
    r = np.sqrt(-2.0 * np.log(a))
    libm = np.stack([r * np.cos(2 * np.pi * b), r * np.sin(2 * np.pi * b)], axis=1).reshape(-1)
    got = normal(42, 3, 5, n)
    assert np.abs(got - libm).max() <= 1e-6
    assert np.mean(got == libm.astype(np.float32)) > 0.9999


def test_statistics():
    z = normal(2024, 0, 0, 1_000_000).astype(np.float64)
    assert abs(z.mean()) < 0.005 and abs(z.std() - 1) < 0.005
    assert abs(np.mean(z**3)) < 0.02 and abs(np.mean(z**4) - 3) < 0.05  # skew 0, kurtosis 3
    assert abs(np.mean(np.abs(z) < 1.959964) - 0.95) < 0.002
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.005


def test_streams_calls_and_seeds_are_distinct_and_deterministic():
    base = normal(7, 0, 0, 1000)
    np.testing.assert_array_equal(base, normal(7, 0, 0, 1000))
    for other in (normal(7, 1, 0, 1000), normal(7, 0, 1, 1000), normal(8, 0, 0, 1000), normal(7 + 2**32, 0, 0, 1000)):
        assert abs(np.corrcoef(base, other)[0, 1]) < 0.15 and not np.any(base == other)
    np.testing.assert_array_equal(normal(7, 0, 0, 5), base[:5])  # a prefix does not depend on n


def test_noise_source_layout():
    src = NoiseSource.for_batch(99, 3, first_stream=4)
    assert src.streams == (4, 5, 6)
    x = src.draw(2, (2, 3, 5))
    assert x.shape == (3, 2, 3, 5) and x.dtype == np.float32
    for k, stream in enumerate(src.streams):
        np.testing.assert_array_equal(x[k].reshape(-1), normal(99, stream, 2, 30))
    # an image's noise does not depend on which batch it is drawn in
    np.testing.assert_array_equal(NoiseSource(99, (5,)).draw(2, (2, 3, 5))[0], x[1])


def test_bad_arguments_raise():
    for bad in [dict(seed=-1), dict(seed=2**64), dict(stream=2**32), dict(call=-1), dict(seed=1.5)]:
        args = dict(seed=0, stream=0, call=0, n=4) | bad
        with pytest.raises(EdgediffError, match=next(iter(bad))):
            normal(**args)
    with pytest.raises(EdgediffError, match="stream"):
        NoiseSource(0, ())
