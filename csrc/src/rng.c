/* rng.c — Philox-4x32-10 and the Box-Muller normals of edgediff.runtimes.rng, bit for bit.
 *
 * The specification is rng.py's module docstring; the comments below name its sections.
 * Every double operation is written out one rounding at a time, in the order the
 * specification lists, and contraction to fused multiply-add is off (internal.h).
 */
#include "internal.h"

#include <math.h>

#define M0 0xD2511F53u
#define M1 0xCD9E8D57u
#define W0 0x9E3779B9u
#define W1 0xBB67AE85u

/* Section 3's constants, as printed by `python -m edgediff.runtimes.rng`. */
static const double SQRT_HALF = 0x1.6a09e667f3bcdp-1;
static const double LN2 = 0x1.62e42fefa39efp-1;
static const double HALF_PI = 0x1.921fb54442d18p+0;
static const double LOG_C[10] = {/* 2 / (2k + 3) */
                                 0x1.5555555555555p-1, 0x1.999999999999ap-2, 0x1.2492492492492p-2, 0x1.c71c71c71c71cp-3,
                                 0x1.745d1745d1746p-3, 0x1.3b13b13b13b14p-3, 0x1.1111111111111p-3, 0x1.e1e1e1e1e1e1ep-4,
                                 0x1.af286bca1af28p-4, 0x1.8618618618618p-4};
static const double SIN_C[8] = {/* (-1)^(j+1) / (2j+3)! */
                                -0x1.5555555555555p-3,  0x1.1111111111111p-7,   -0x1.a01a01a01a01ap-13,
                                0x1.71de3a556c734p-19,  -0x1.ae64567f544e4p-26, 0x1.6124613a86d09p-33,
                                -0x1.ae7f3e733b81fp-41, 0x1.952c77030ad4ap-49};
static const double COS_C[9] = {/* (-1)^(j+1) / (2j+2)! */
                                -0x1.0000000000000p-1,  0x1.5555555555555p-5,   -0x1.6c16c16c16c17p-10,
                                0x1.a01a01a01a01ap-16,  -0x1.27e4fb7789f5cp-22, 0x1.1eed8eff8d898p-29,
                                -0x1.93974a8c07c9dp-37, 0x1.ae7f3e733b81fp-45,  -0x1.6827863b97d97p-53};

/* 1. Philox-4x32-10 */
void edd_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    int round;
    for (round = 0; round < 10; round++) {
        uint64_t p0, p1;
        if (round) {
            k0 += W0;
            k1 += W1;
        }
        p0 = (uint64_t)M0 * c0;
        p1 = (uint64_t)M1 * c2;
        c0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        c1 = (uint32_t)p1;
        c2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c3 = (uint32_t)p0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* 3. LOG(a), 0 < a < 1, from +, -, *, / only */
static double spec_log(double a) {
    int e;
    double m = frexp(a, &e), s, z, q, t1, t2, t3, t4;
    int k;
    if (m < SQRT_HALF) {
        m = m * 2.0;
        e = e - 1;
    }
    s = (m - 1.0) / (m + 1.0);
    z = s * s;
    q = LOG_C[9];
    for (k = 8; k >= 0; k--) q = LOG_C[k] + z * q;
    t1 = (double)e * LN2;
    t2 = z * q;
    t3 = 2.0 + t2;
    t4 = s * t3;
    return t1 + t4;
}

/* 3. COSSIN(b) = (cos 2 pi b, sin 2 pi b), 0 < b < 1 */
static void spec_cossin(double b, double *c, double *s) {
    double q = b * 4.0;
    double k = floor(q + 0.5);
    double f = q - k;
    double t = f * HALF_PI;
    double z = t * t, sp, cp, sin_t, cos_t;
    int j;
    sp = SIN_C[7];
    for (j = 6; j >= 0; j--) sp = SIN_C[j] + z * sp;
    cp = COS_C[8];
    for (j = 7; j >= 0; j--) cp = COS_C[j] + z * cp;
    sin_t = t + (t * z) * sp;
    cos_t = 1.0 + z * cp;
    switch ((int)k % 4) {
        case 0:
            *c = cos_t;
            *s = sin_t;
            break;
        case 1:
            *c = -sin_t;
            *s = cos_t;
            break;
        case 2:
            *c = -cos_t;
            *s = -sin_t;
            break;
        default:
            *c = sin_t;
            *s = -cos_t;
            break;
    }
}

/* 3. Box-Muller for one pair */
static void box_muller(uint32_t ua, uint32_t ub, float z[2]) {
    double a = ((double)ua + 0.5) * 0x1p-32;
    double b = ((double)ub + 0.5) * 0x1p-32;
    double r = sqrt(-2.0 * spec_log(a));
    double c, s;
    spec_cossin(b, &c, &s);
    z[0] = (float)(r * c);
    z[1] = (float)(r * s);
}

/* 2. normal(seed, stream, call, n) */
edd_status edd_normal(uint64_t seed, uint32_t stream, uint32_t call, float *out, size_t n) {
    uint32_t key[2], ctr[4], u[4];
    float z[4];
    size_t i = 0, j;
    if (n == 0) return EDD_OK;
    if (!out) return EDD_ERR_INVALID_ARGUMENT;
    if ((uint64_t)((n - 1) / 4) > 0xFFFFFFFFu) return EDD_ERR_INVALID_ARGUMENT; /* block counter is 32 bits */
    key[0] = (uint32_t)(seed & 0xFFFFFFFFu);
    key[1] = (uint32_t)(seed >> 32);
    ctr[1] = call;
    ctr[2] = stream;
    ctr[3] = 0;
    for (ctr[0] = 0; i < n; ctr[0]++) {
        edd_philox4x32_10(ctr, key, u);
        box_muller(u[0], u[1], z);
        box_muller(u[2], u[3], z + 2);
        for (j = 0; j < 4 && i < n; j++) out[i++] = z[j];
    }
    return EDD_OK;
}
