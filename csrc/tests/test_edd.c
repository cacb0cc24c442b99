/* test_edd.c — the C runtime's own tests, without Python: built by `make check` with
 * -std=c99 -Wall -Wextra -Werror under AddressSanitizer and UndefinedBehaviorSanitizer.
 *
 * What Python cannot see from outside: known-answer noise, every status path (NULLs, bad
 * sizes, bad plans, a failing backend, cancellation) returning an error instead of
 * crashing, the context loop equal to a loop of the public primitives, guidance, and
 * contexts running in parallel threads. Numerical agreement with the Python reference is
 * tests/test_c_runtime.py's job.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgediff.h"
#include "internal.h" /* internal: sha256 (built with -Isrc) */
#include "json.h"     /* internal: the JSON reader */

static int failures, checks;

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        checks++;                                                                                                      \
        if (!(cond)) {                                                                                                 \
            failures++;                                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                                   \
        }                                                                                                              \
    } while (0)

#define T_TRAIN   1000
#define MAX_STEPS 64
#define C_        3
#define H_        5
#define W_        5
#define SIZE      (C_ * H_ * W_) /* 75: not a multiple of 4, so the noise's truncation is exercised */

static const char *const SOLVERS[] = {"ddpm", "ddim", "dpmpp-2m", "euler", "lcm"};
#define NUM_SOLVERS 5

static double alphas_cumprod[T_TRAIN];

/* diffusers' "linear" schedule (in double; the runtime takes whatever the bundle carries) */
static void make_schedule(void) {
    double prod = 1.0;
    int t;
    for (t = 0; t < T_TRAIN; t++) {
        double beta = 1e-4 + (0.02 - 1e-4) * t / (T_TRAIN - 1);
        prod *= 1.0 - beta;
        alphas_cumprod[t] = prod;
    }
}

static float as_float(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* ---- plans ---- */

typedef struct {
    int64_t ts[MAX_STEPS];
    double prev[MAX_STEPS], sigmas[MAX_STEPS + 1], model_t[MAX_STEPS];
    edd_plan_param params[4];
    edd_plan_desc desc;
} plan_spec;

/* a valid desc for solver with "leading" timesteps */
static void spec_init(plan_spec *s, const char *solver, size_t steps, const char *prediction, double eta) {
    size_t i, np_ = 0;
    memset(s, 0, sizeof *s);
    for (i = 0; i < steps; i++) {
        s->ts[i] = (int64_t)((steps - 1 - i) * (T_TRAIN / steps)) + (strcmp(solver, "lcm") == 0 ? 19 : 0);
        s->prev[i] = (double)(s->ts[i] - T_TRAIN / (int64_t)steps);
        s->sigmas[i] = sqrt((1 - alphas_cumprod[s->ts[i]]) / alphas_cumprod[s->ts[i]]);
        s->model_t[i] = (double)s->ts[i];
    }
    s->sigmas[steps] = 0.0;
#define PARAM_NUM(k, v)                                                                                                \
    (s->params[np_].key = (k), s->params[np_].kind = EDD_VALUE_NUMBER, s->params[np_++].number = (v))
#define PARAM_NULL(k) (s->params[np_].key = (k), s->params[np_++].kind = EDD_VALUE_NULL)
#define PARAM_ARR(k, a, c)                                                                                             \
    (s->params[np_].key = (k), s->params[np_].kind = EDD_VALUE_ARRAY, s->params[np_].values = (a),                     \
     s->params[np_++].count = (c))
    if (strcmp(solver, "ddpm") == 0) {
        PARAM_NULL("clip_sample");
    } else if (strcmp(solver, "ddim") == 0) {
        PARAM_NUM("eta", eta);
        PARAM_ARR("prev_timesteps", s->prev, steps);
        PARAM_NUM("final_alpha_cumprod", 1.0);
        PARAM_NULL("clip_sample");
    } else if (strcmp(solver, "dpmpp-2m") == 0) {
        PARAM_ARR("sigmas", s->sigmas, steps + 1);
    } else if (strcmp(solver, "euler") == 0) {
        PARAM_ARR("sigmas", s->sigmas, steps + 1);
        PARAM_ARR("model_timesteps", s->model_t, steps);
        PARAM_NUM("init_sigma", s->sigmas[0]);
    } else {
        PARAM_NUM("original_inference_steps", 50);
        PARAM_NUM("timestep_scaling", 10.0);
    }
    s->desc.solver = solver;
    s->desc.prediction_type = prediction;
    s->desc.alphas_cumprod = alphas_cumprod;
    s->desc.num_train_timesteps = T_TRAIN;
    s->desc.timesteps = s->ts;
    s->desc.num_steps = steps;
    s->desc.params = s->params;
    s->desc.num_params = np_;
}

static edd_plan *make_plan(const char *solver, size_t steps, const char *prediction, double eta) {
    plan_spec s;
    edd_plan *plan = NULL;
    char err[256];
    spec_init(&s, solver, steps, prediction, eta);
    if (edd_plan_create(&s.desc, &plan, err, sizeof err) != EDD_OK) fprintf(stderr, "make_plan(%s): %s\n", solver, err);
    return plan;
}

/* ---- a fake backend: eps = 0.5 tanh(x) + 0.01 t / 1000 (+ 0.1 label) ---- */

typedef struct {
    int calls;
    int fail_at; /* step at which to return an error, or -1 */
    size_t last_rows;
    int64_t last_labels[16];
    size_t groups[MAX_STEPS]; /* args->group of each call (by step) */
    int cached[MAX_STEPS];    /* args->cached of each call (by step) */
} fake_backend;

static int fake_denoise(void *user, const edd_denoise_args *a) {
    fake_backend *fb = (fake_backend *)user;
    size_t r, j;
    fb->calls++;
    fb->last_rows = a->batch;
    if (fb->fail_at >= 0 && (size_t)fb->fail_at == a->step) return 7;
    if (a->step < MAX_STEPS) {
        fb->groups[a->step] = a->group;
        fb->cached[a->step] = a->cached;
    }
    for (r = 0; r < a->batch; r++) {
        float shift = a->labels ? 0.1f * (float)a->labels[r] : 0.0f;
        if (a->labels && r < 16) fb->last_labels[r] = a->labels[r];
        for (j = 0; j < a->sample_size; j++) {
            size_t k = r * a->sample_size + j;
            a->eps[k] = 0.5f * tanhf(a->x[k]) + 0.01f * a->t[r] / 1000.0f + shift;
        }
    }
    return 0;
}

static edd_params base_params(size_t batch) {
    edd_params p = edd_default_params();
    p.batch = batch;
    p.sample_ndim = 3;
    p.sample_shape[0] = C_;
    p.sample_shape[1] = H_;
    p.sample_shape[2] = W_;
    p.seed = 20240611;
    p.first_stream = 3;
    return p;
}

static edd_status run(const edd_plan *plan, const edd_params *p, fake_backend *fb, float *out) {
    edd_backend be;
    edd_context *ctx = NULL;
    edd_status st;
    be.denoise = fake_denoise;
    be.user = fb;
    st = edd_context_create(plan, &be, p, &ctx, NULL, 0);
    if (st != EDD_OK) return st;
    st = edd_context_sample(ctx, out, p->batch * SIZE);
    edd_context_free(ctx);
    return st;
}

/* ---- tests ---- */

static void test_philox_and_normal(void) {
    static const uint32_t kat[3][3][4] = {
        {{0, 0, 0, 0}, {0, 0, 0, 0}, {0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8}},
        {{0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF},
         {0xFFFFFFFF, 0xFFFFFFFF, 0, 0},
         {0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD}},
        {{0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344},
         {0xA4093822, 0x299F31D0, 0, 0},
         {0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1}},
    };
    static const uint32_t golden0[8] = {0x3F7DBB33, 0xBF6CB6B0, 0xBF1E1B9F, 0xBEF6D1B2,
                                        0xBE1D5357, 0x3E392A6D, 0x3F54EC98, 0x3E4A2DA3};
    static const uint32_t golden1[6] = {0x3FBC435D, 0xBE785F40, 0xBE1A4346, 0xBF3FDA64, 0x3F317EAD, 0xBF937BB9};
    float z[1000], w[1000];
    double sum = 0, sq = 0;
    int i, k, equal = 0;
    for (k = 0; k < 3; k++) {
        uint32_t out[4];
        edd_philox4x32_10(kat[k][0], kat[k][1], out);
        CHECK(memcmp(out, kat[k][2], sizeof out) == 0);
    }
    CHECK(edd_normal(0, 0, 0, z, 8) == EDD_OK);
    for (i = 0; i < 8; i++) CHECK(float_bits(z[i]) == golden0[i]);
    CHECK(edd_normal(UINT64_MAX, UINT32_MAX, 7, z, 6) == EDD_OK);
    for (i = 0; i < 6; i++) CHECK(float_bits(z[i]) == golden1[i]);
    (void)as_float;
    /* a prefix does not depend on n; streams and calls differ */
    CHECK(edd_normal(7, 0, 0, z, 1000) == EDD_OK);
    CHECK(edd_normal(7, 0, 0, w, 5) == EDD_OK);
    CHECK(memcmp(z, w, 5 * sizeof(float)) == 0);
    CHECK(edd_normal(7, 1, 0, w, 1000) == EDD_OK);
    for (i = 0; i < 1000; i++) equal += z[i] == w[i];
    CHECK(equal == 0);
    for (i = 0; i < 1000; i++) {
        sum += z[i];
        sq += (double)z[i] * z[i];
    }
    CHECK(fabs(sum / 1000) < 0.1 && fabs(sq / 1000 - 1) < 0.15);
    CHECK(edd_normal(1, 2, 3, NULL, 4) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_normal(1, 2, 3, NULL, 0) == EDD_OK);
}

/* FNV-1a 64 over the little-endian bytes of the float32 bit patterns */
static uint64_t fnv1a(const float *z, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t i;
    int b;
    for (i = 0; i < n; i++) {
        uint32_t u = float_bits(z[i]);
        for (b = 0; b < 4; b++) {
            h ^= (u >> (8 * b)) & 0xFF;
            h *= 0x100000001b3ULL;
        }
    }
    return h;
}

/* A million draws, bit for bit, without Python: the hashes are those of rng.normal's output
 * (printed by the snippet in tests/test_c_runtime.py::test_c_suite_hashes_are_pythons). */
static void test_million_draws_hash(void) {
    size_t n = 1000003;
    float *z = (float *)malloc(n * sizeof(float));
    CHECK(z != NULL);
    if (!z) return;
    CHECK(edd_normal(2024, 0, 0, z, 1000000) == EDD_OK);
    CHECK(fnv1a(z, 1000000) == 0xc4aed7e055f1d2aeULL);
    CHECK(edd_normal(UINT64_MAX, UINT32_MAX, UINT32_MAX, z, n) == EDD_OK);
    CHECK(fnv1a(z, n) == 0x222c501c58765765ULL);
    free(z);
}

static void test_status_and_version(void) {
    int s;
    for (s = 0; s <= 6; s++) CHECK(edd_status_str((edd_status)s) != NULL && edd_status_str((edd_status)s)[0]);
    CHECK(strcmp(edd_status_str((edd_status)99), "unknown status") == 0);
    CHECK(strcmp(edd_version(), "0.3.0") == 0);
}

/* plan_spec with one field broken -> the status and a message naming the field */
static void expect_bad(plan_spec *s, edd_status want, const char *needle) {
    edd_plan *plan = (edd_plan *)&plan; /* must be reset to NULL */
    char err[256];
    edd_status st = edd_plan_create(&s->desc, &plan, err, sizeof err);
    CHECK(st == want);
    CHECK(plan == NULL);
    CHECK(strstr(err, needle) != NULL);
    if (!strstr(err, needle)) fprintf(stderr, "  message was: %s (wanted '%s')\n", err, needle);
}

static void test_plan_validation(void) {
    plan_spec s;
    edd_plan *plan = NULL;
    edd_plan_param extra[5];
    char err[256], tiny[8];
    size_t k;
    for (k = 0; k < NUM_SOLVERS; k++) {
        plan = make_plan(SOLVERS[k], 10, NULL, 0.0);
        CHECK(plan != NULL);
        CHECK(strcmp(edd_plan_solver(plan), SOLVERS[k]) == 0);
        CHECK(edd_plan_num_steps(plan) == 10);
        CHECK(edd_plan_timestep(plan, 10) == -1);
        CHECK(isnan(edd_plan_model_timestep(plan, 10)));
        CHECK(edd_plan_has_carry(plan) == (strcmp(SOLVERS[k], "dpmpp-2m") == 0));
        edd_plan_free(plan);
    }
    CHECK(edd_plan_create(NULL, &plan, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    spec_init(&s, "ddim", 4, NULL, 0.0);
    CHECK(edd_plan_create(&s.desc, NULL, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    /* a too-small error buffer is truncated, not overrun; a NULL one is allowed */
    s.desc.solver = "heun";
    CHECK(edd_plan_create(&s.desc, &plan, tiny, sizeof tiny) == EDD_ERR_UNKNOWN_SOLVER && strlen(tiny) == 7);
    CHECK(edd_plan_create(&s.desc, &plan, NULL, 0) == EDD_ERR_UNKNOWN_SOLVER);
    expect_bad(&s, EDD_ERR_UNKNOWN_SOLVER, "'heun'; choose one of ddpm, ddim, dpmpp-2m, euler, lcm");
    spec_init(&s, "ddim", 4, "x0", 0.0);
    expect_bad(&s, EDD_ERR_BAD_PLAN, "prediction_type 'x0'");
    spec_init(&s, "ddim", 4, NULL, 0.0);
    s.ts[1] = 999;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "'timesteps' must descend");
    spec_init(&s, "ddim", 4, NULL, 0.0);
    s.ts[3] = -1;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "'timesteps'");
    spec_init(&s, "ddim", 4, NULL, 0.0);
    s.desc.num_steps = 0;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "'timesteps'");
    spec_init(&s, "ddim", 4, NULL, 0.0);
    s.desc.num_train_timesteps = 1;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "alphas_cumprod");
    {
        double bad_ac[3] = {0.9, 1.5, 0.1};
        spec_init(&s, "ddpm", 1, NULL, 0.0);
        s.desc.alphas_cumprod = bad_ac;
        s.desc.num_train_timesteps = 3;
        s.ts[0] = 2;
        expect_bad(&s, EDD_ERR_BAD_PLAN, "(0, 1]");
    }
    spec_init(&s, "ddim", 4, NULL, 0.0);
    s.desc.num_params = 3; /* clip_sample left out */
    expect_bad(&s, EDD_ERR_BAD_PLAN, "missing param 'clip_sample'");
    spec_init(&s, "ddim", 4, NULL, 0.0);
    memcpy(extra, s.params, sizeof s.params);
    extra[4].key = "churn";
    extra[4].kind = EDD_VALUE_NUMBER;
    s.desc.params = extra;
    s.desc.num_params = 5;
    expect_bad(&s, EDD_ERR_BAD_PLAN,
               "unknown param 'churn'; valid: eta, prev_timesteps, final_alpha_cumprod, clip_sample");
    spec_init(&s, "ddim", 4, NULL, 0.0);
    s.params[1].count = 3;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "'prev_timesteps' must be per step (n=4), got 3 values");
    spec_init(&s, "ddim", 4, NULL, -1.0);
    expect_bad(&s, EDD_ERR_BAD_PLAN, "'eta' must be >= 0");
    spec_init(&s, "ddim", 4, NULL, 0.0);
    s.params[0].number = NAN;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "'eta' must be number");
    spec_init(&s, "ddim", 4, NULL, 0.0);
    s.params[0].kind = EDD_VALUE_NULL;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "'eta' must be number");
    spec_init(&s, "ddim", 4, NULL, 0.0);
    s.prev[2] = 10.5;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "'prev_timesteps' must be integers");
    spec_init(&s, "ddim", 4, NULL, 0.0);
    s.params[3] = s.params[0]; /* eta twice */
    expect_bad(&s, EDD_ERR_BAD_PLAN, "given twice");
    spec_init(&s, "euler", 4, NULL, 0.0);
    s.params[0].count = 4;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "'sigmas' must be per step + 1 (n=4)");
    spec_init(&s, "dpmpp-2m", 4, NULL, 0.0);
    s.sigmas[2] = 0.0;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "'sigmas' must be > 0");
    spec_init(&s, "euler", 4, NULL, 0.0);
    s.sigmas[1] = INFINITY;
    expect_bad(&s, EDD_ERR_BAD_PLAN, "finite");
    spec_init(&s, "euler", 4, NULL, 0.0);
    s.params[0].values = NULL;
    expect_bad(&s, EDD_ERR_INVALID_ARGUMENT, "NULL");
    edd_plan_free(NULL);
}

static void test_primitives_reject_bad_arguments(void) {
    edd_plan *plan = make_plan("dpmpp-2m", 4, NULL, 0.0), *ddpm = make_plan("ddpm", 4, NULL, 0.0);
    float x[SIZE] = {0}, y[SIZE];
    CHECK(edd_init_latent(NULL, x, SIZE, y) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_init_latent(plan, NULL, SIZE, y) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_model_input(plan, 4, x, SIZE, y) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_step(plan, 4, SIZE, x, x, NULL, NULL, y, y) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_step(plan, 0, SIZE, x, x, NULL, NULL, y, NULL) == EDD_ERR_INVALID_ARGUMENT); /* carry_out */
    CHECK(edd_step(ddpm, 0, SIZE, x, x, NULL, NULL, y, NULL) == EDD_ERR_INVALID_ARGUMENT); /* noise */
    CHECK(edd_step(plan, 0, SIZE, x, NULL, NULL, NULL, y, y) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_plan_uses_noise(NULL, 0) == 0 && edd_plan_num_steps(NULL) == 0 && edd_plan_has_carry(NULL) == 0);
    edd_plan_free(plan);
    edd_plan_free(ddpm);
}

/* dpmpp-2m's last step goes to sigma = 0 and returns the x0 prediction exactly */
static void test_dpm_last_step_returns_x0(void) {
    edd_plan *plan = make_plan("dpmpp-2m", 1, NULL, 0.0);
    float x[SIZE], eps[SIZE], out[SIZE], carry[SIZE];
    size_t j;
    int exact = 1;
    double s = sqrt((1 - alphas_cumprod[0]) / alphas_cumprod[0]), alpha = 1 / sqrt(s * s + 1);
    edd_normal(1, 0, 0, x, SIZE);
    edd_normal(1, 0, 1, eps, SIZE);
    CHECK(edd_step(plan, 0, SIZE, x, eps, NULL, NULL, out, carry) == EDD_OK);
    for (j = 0; j < SIZE; j++) exact &= out[j] == (float)(((double)x[j] - s * alpha * (double)eps[j]) / alpha);
    CHECK(exact);
    CHECK(memcmp(out, carry, sizeof out) == 0);
    edd_plan_free(plan);
}

/* the context is exactly a loop over the public primitives */
static void test_context_equals_primitive_loop(void) {
    size_t k, B = 2, n = 2 * SIZE;
    for (k = 0; k < NUM_SOLVERS; k++) {
        int pred;
        for (pred = 0; pred < 2; pred++) {
            edd_plan *plan = make_plan(SOLVERS[k], 7, pred ? "v_prediction" : "epsilon", 0.5);
            edd_params p = base_params(B);
            fake_backend fb = {0, -1, 0, {0}, {0}, {0}};
            float got[2 * SIZE], again[2 * SIZE], x[2 * SIZE], x_in[2 * SIZE], eps[2 * SIZE], z[2 * SIZE],
                carry[2 * SIZE];
            size_t i, b;
            edd_denoise_args a;
            CHECK(plan != NULL);
            if (!plan) continue;
            CHECK(run(plan, &p, &fb, got) == EDD_OK);
            CHECK(fb.calls == 7 && fb.last_rows == B);
            CHECK(run(plan, &p, &fb, again) == EDD_OK);
            CHECK(memcmp(got, again, sizeof got) == 0); /* deterministic, no hidden state */
            for (b = 0; b < B; b++) edd_normal(p.seed, p.first_stream + (uint32_t)b, 0, z + b * SIZE, SIZE);
            edd_init_latent(plan, z, n, x);
            for (i = 0; i < 7; i++) {
                float t[2];
                t[0] = t[1] = edd_plan_model_timestep(plan, i);
                edd_model_input(plan, i, x, n, x_in);
                memset(&a, 0, sizeof a);
                a.step = i;
                a.batch = B;
                a.sample_size = SIZE;
                a.x = x_in;
                a.t = t;
                a.eps = eps;
                fake_denoise(&fb, &a);
                for (b = 0; b < B; b++)
                    if (edd_plan_uses_noise(plan, i))
                        edd_normal(p.seed, p.first_stream + (uint32_t)b, (uint32_t)(i + 1), z + b * SIZE, SIZE);
                CHECK(edd_step(plan, i, n, x, eps, i ? carry : NULL, z, x, carry) == EDD_OK);
            }
            CHECK(memcmp(got, x, sizeof x) == 0);
            for (i = 0; i < n; i++) CHECK(isfinite(got[i]));
            edd_plan_free(plan);
        }
    }
}

typedef struct {
    int calls;
    size_t last_step;
    int cancel_at;
    float first_t;
} step_log;

static int on_step(void *user, const edd_step_info *info) {
    step_log *log = (step_log *)user;
    if (log->calls == 0) log->first_t = info->t;
    log->calls++;
    log->last_step = info->step;
    return log->cancel_at >= 0 && (size_t)log->cancel_at == info->step;
}

static void test_guidance(void) {
    edd_plan *plan = make_plan("ddim", 6, NULL, 0.0);
    int64_t labels[2] = {2, 7};
    edd_params p = base_params(2);
    fake_backend fb = {0, -1, 0, {0}, {0}, {0}};
    float guided[2 * SIZE], unguided[2 * SIZE], plain[2 * SIZE], x[2 * SIZE], x_in[4 * SIZE], e[4 * SIZE],
        eps[2 * SIZE], z[2 * SIZE];
    int64_t rows_labels[4] = {2, 7, 10, 10};
    float t[4];
    size_t i, j, b;
    double diff = 0;
    edd_denoise_args a;
    p.labels = labels;
    p.guidance = 3.5;
    p.null_label = 10;
    CHECK(run(plan, &p, &fb, guided) == EDD_OK);
    CHECK(fb.calls == 6 && fb.last_rows == 4);
    CHECK(fb.last_labels[0] == 2 && fb.last_labels[1] == 7 && fb.last_labels[2] == 10 && fb.last_labels[3] == 10);
    /* the same by hand: eps = eu + g (ec - eu) in float32 */
    for (b = 0; b < 2; b++) edd_normal(p.seed, p.first_stream + (uint32_t)b, 0, z + b * SIZE, SIZE);
    edd_init_latent(plan, z, 2 * SIZE, x);
    for (i = 0; i < 6; i++) {
        edd_model_input(plan, i, x, 2 * SIZE, x_in);
        memcpy(x_in + 2 * SIZE, x_in, 2 * SIZE * sizeof(float));
        for (j = 0; j < 4; j++) t[j] = edd_plan_model_timestep(plan, i);
        memset(&a, 0, sizeof a);
        a.batch = 4;
        a.sample_size = SIZE;
        a.x = x_in;
        a.t = t;
        a.labels = rows_labels;
        a.eps = e;
        fake_denoise(&fb, &a);
        for (j = 0; j < 2 * SIZE; j++) eps[j] = e[2 * SIZE + j] + 3.5f * (e[j] - e[2 * SIZE + j]);
        CHECK(edd_step(plan, i, 2 * SIZE, x, eps, NULL, NULL, x, NULL) == EDD_OK);
    }
    CHECK(memcmp(guided, x, sizeof x) == 0);
    /* guidance 1 with labels: one row per image, labels passed through */
    p.guidance = 1.0;
    fb.calls = 0;
    CHECK(run(plan, &p, &fb, unguided) == EDD_OK);
    CHECK(fb.calls == 6 && fb.last_rows == 2 && fb.last_labels[1] == 7);
    for (j = 0; j < 2 * SIZE; j++) diff = fmax(diff, fabs(guided[j] - unguided[j]));
    CHECK(diff > 1e-3);
    /* guidance needs labels and a null label */
    {
        edd_backend be = {fake_denoise, &fb};
        edd_context *ctx = NULL;
        char err[256];
        p.guidance = 2.0;
        p.null_label = EDD_NO_LABEL;
        CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
        CHECK(ctx == NULL && strstr(err, "null_label") != NULL);
        p.null_label = 10;
        p.labels = NULL;
        CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    }
    /* unconditional: labels NULL reach the backend as NULL */
    p = base_params(2);
    CHECK(run(plan, &p, &fb, plain) == EDD_OK);
    edd_plan_free(plan);
}

static void test_context_errors_and_cancel(void) {
    edd_plan *plan = make_plan("euler", 5, NULL, 0.0);
    edd_params p = base_params(1);
    fake_backend fb = {0, -1, 0, {0}, {0}, {0}};
    edd_backend be = {fake_denoise, &fb}, no_fn = {NULL, NULL};
    edd_context *ctx = NULL;
    float out[SIZE];
    char err[256];
    step_log log = {0, 0, -1, 0};
    volatile int cancel = 0;

    CHECK(edd_context_create(NULL, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_context_create(plan, &no_fn, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_context_create(plan, &be, &p, NULL, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    p.batch = 0;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT && ctx == NULL);
    CHECK(strstr(err, "batch") != NULL);
    p = base_params(1);
    p.sample_ndim = 0;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(strstr(err, "sample_ndim") != NULL);
    p = base_params(1);
    p.sample_shape[1] = 0;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(strstr(err, "sample_shape[1]") != NULL);
    p = base_params(1);
    p.sample_shape[0] = INT64_MAX;
    p.sample_shape[1] = INT64_MAX;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);

    p = base_params(1);
    p.on_step = on_step;
    p.on_step_user = &log;
    p.cancel = &cancel;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_OK);
    CHECK(edd_context_output_count(ctx) == SIZE);
    CHECK(edd_context_sample(ctx, out, SIZE - 1) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(strstr(edd_context_error(ctx), "75") != NULL);
    CHECK(edd_context_sample(ctx, NULL, SIZE) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_context_sample(ctx, out, SIZE) == EDD_OK && edd_context_error(ctx)[0] == '\0');
    CHECK(log.calls == 5 && log.last_step == 4 && log.first_t == edd_plan_model_timestep(plan, 0));
    log.calls = 0;
    log.cancel_at = 2;
    CHECK(edd_context_sample(ctx, out, SIZE) == EDD_ERR_CANCELLED && log.calls == 3);
    CHECK(strstr(edd_context_error(ctx), "on_step at step 2") != NULL);
    log.cancel_at = -1;
    cancel = 1;
    fb.calls = 0;
    CHECK(edd_context_sample(ctx, out, SIZE) == EDD_ERR_CANCELLED && fb.calls == 0);
    cancel = 0;
    fb.fail_at = 3;
    CHECK(edd_context_sample(ctx, out, SIZE) == EDD_ERR_BACKEND);
    CHECK(strstr(edd_context_error(ctx), "returned 7 at step 3 of 5") != NULL);
    CHECK(edd_context_sample(NULL, out, SIZE) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_context_output_count(NULL) == 0);
    edd_context_free(ctx);
    edd_context_free(NULL);
    edd_plan_free(plan);
}

/* explicit streams equal first_stream + k; an image does not depend on its batch */
static void test_streams(void) {
    edd_plan *plan = make_plan("ddpm", 8, NULL, 0.0);
    edd_params p = base_params(3);
    fake_backend fb = {0, -1, 0, {0}, {0}, {0}};
    uint32_t streams[3] = {3, 4, 5}, one[1] = {4};
    float a[3 * SIZE], b[3 * SIZE], c[SIZE];
    CHECK(run(plan, &p, &fb, a) == EDD_OK);
    p.streams = streams;
    CHECK(run(plan, &p, &fb, b) == EDD_OK);
    CHECK(memcmp(a, b, sizeof a) == 0);
    p = base_params(1);
    p.streams = one;
    CHECK(run(plan, &p, &fb, c) == EDD_OK);
    CHECK(memcmp(c, a + SIZE, sizeof c) == 0);
    edd_plan_free(plan);
}

/* ---- a small valid bundle (the threads and the bundle tests use it) ---- */

static const char MANIFEST_OK[] =
    "{\"format\": \"edgediff-bundle\", \"format_version\": 1, \"target\": \"host-cpu\",\n"
    " \"model\": {\"format\": \"onnx\", \"file\": \"model/denoiser.onnx\", \"precision\": \"fp32\",\n"
    "  \"inputs\": [{\"name\": \"sample\", \"dtype\": \"float32\", \"shape\": [\"batch\", 3, 5, 5]},\n"
    "             {\"name\": \"timestep\", \"dtype\": \"float32\", \"shape\": [\"batch\"]},\n"
    "             {\"name\": \"class_labels\", \"dtype\": \"int64\", \"shape\": [\"batch\"]}],\n"
    "  \"outputs\": [{\"name\": \"eps\", \"dtype\": \"float32\", \"shape\": [\"batch\", 3, 5, 5]}]},\n"
    " \"conditioning\": {\"kind\": \"class\", \"num_classes\": 10, \"null_label\": 10, \"shape\": null},\n"
    " \"files\": {\"model/denoiser.onnx\": {\"sha256\": \"00\"}, \"scheduler.json\": {}, \"report.json\": {}}}";

/* a 3-step DDIM plan over a 4-step training schedule */
static const char SCHEDULER_OK[] =
    "{\"solver\": \"ddim\", \"spacing\": \"leading\", \"guidance_scale\": 2.5, \"timestep_groups\": null,\n"
    " \"cache_schedule\": null, \"plan\": {\"solver\": \"ddim\", \"timesteps\": [3, 2, 0],\n"
    "  \"schedule\": {\"alphas_cumprod\": [0.99, 0.9, 0.7, 0.5], \"prediction_type\": \"epsilon\"},\n"
    "  \"params\": {\"eta\": 0.0, \"prev_timesteps\": [2, 0, -1], \"final_alpha_cumprod\": 1.0,"
    " \"clip_sample\": null}}}";

/* ---- threads: independent contexts sharing one plan ---- */

typedef struct {
    const edd_plan *plan;
    uint64_t seed;
    float out[2 * SIZE];
    edd_status status;
} job;

/* 20 runs of the shared plan; odd jobs also parse a bundle of their own each time and run
 * its plan (the loader, like the contexts, must touch nothing shared) */
static void *worker(void *arg) {
    job *j = (job *)arg;
    edd_params p = base_params(2);
    fake_backend fb = {0, -1, 0, {0}, {0}, {0}};
    int rep;
    p.seed = j->seed;
    for (rep = 0; rep < 20 && j->status == EDD_OK; rep++) {
        if (j->seed % 2) {
            edd_bundle *b = NULL;
            char err[256];
            float scratch[2 * SIZE];
            j->status = edd_bundle_parse(MANIFEST_OK, strlen(MANIFEST_OK), SCHEDULER_OK, strlen(SCHEDULER_OK), &b, err,
                                         sizeof err);
            if (j->status == EDD_OK) j->status = run(edd_bundle_plan(b), &p, &fb, scratch);
            edd_bundle_free(b);
            if (j->status != EDD_OK) break;
        }
        j->status = run(j->plan, &p, &fb, j->out);
    }
    return NULL;
}

static void test_threads(void) {
    edd_plan *plan = make_plan("dpmpp-2m", 10, NULL, 0.0);
    job jobs[4], seq[4];
    pthread_t th[4];
    int k;
    for (k = 0; k < 4; k++) {
        memset(&jobs[k], 0, sizeof jobs[k]);
        jobs[k].plan = plan;
        jobs[k].seed = 100 + (uint64_t)k;
        seq[k] = jobs[k];
        worker(&seq[k]);
    }
    for (k = 0; k < 4; k++) CHECK(pthread_create(&th[k], NULL, worker, &jobs[k]) == 0);
    for (k = 0; k < 4; k++) pthread_join(th[k], NULL);
    for (k = 0; k < 4; k++) {
        CHECK(jobs[k].status == EDD_OK);
        CHECK(memcmp(jobs[k].out, seq[k].out, sizeof jobs[k].out) == 0);
    }
    CHECK(memcmp(seq[0].out, seq[1].out, sizeof seq[0].out) != 0);
    edd_plan_free(plan);
}

/* ---- JSON reader ---- */

static edd_status parse_text(const char *text, edd_json **out, char *err, size_t err_size) {
    return edd__json_parse(text, strlen(text), out, err, err_size);
}

static void test_json(void) {
    edd_json *v = NULL;
    const edd_json *e;
    char err[200];
    static const char *const bad[] = {
        "",
        " ",
        "{",
        "[1,]",
        "{\"a\":1,}",
        "[1 2]",
        "{\"a\" 1}",
        "{1:2}",
        "01",
        "-",
        "1.",
        "1e",
        ".5",
        "+1",
        "NaN",
        "Infinity",
        "-Infinity",
        "nul",
        "tru",
        "\"abc",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"a\x01\"",
        "[1] x",
        "{\"a\":1}}",
        "// c\n1",
        "[\"\\",
        "\"\\u",
        "\"\\ud800\\u\"",
        "[-]",
        "1e+",
        "0x10",
        "'a'",
        "[true false]",
    };
    size_t k;
    char *deep;

    CHECK(parse_text(" {\"a\": [1, -0.5, 2e3, 1E-2, 0, -0], \"b\": {\"c\": null, \"d\": true, \"e\": false},"
                     " \"s\": \"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\\u0000z\", \"a\": 7} ",
                     &v, err, sizeof err) == EDD_OK);
    CHECK(v && v->type == EDD_JSON_OBJECT && v->len == 4);
    e = edd__json_get(v, "a"); /* a repeated key: the last one, as Python's json */
    CHECK(e && e->type == EDD_JSON_NUMBER && e->number == 7.0 && e->is_integer);
    e = &v->items[0];
    CHECK(e->type == EDD_JSON_ARRAY && e->len == 6);
    if (e->type == EDD_JSON_ARRAY && e->len == 6) {
        CHECK(e->items[0].number == 1.0 && e->items[0].is_integer);
        CHECK(e->items[1].number == -0.5 && !e->items[1].is_integer);
        CHECK(e->items[2].number == 2000.0 && !e->items[2].is_integer);
        CHECK(e->items[3].number == 0.01);
        CHECK(e->items[5].number == 0.0 && signbit(e->items[5].number));
    }
    e = edd__json_get(edd__json_get(v, "b"), "d");
    CHECK(e && e->type == EDD_JSON_TRUE);
    CHECK(edd__json_get(edd__json_get(v, "b"), "c")->type == EDD_JSON_NULL);
    CHECK(edd__json_get(v, "zz") == NULL && edd__json_get(e, "a") == NULL);
    e = edd__json_get(v, "s");
    CHECK(e && e->type == EDD_JSON_STRING && e->len == 17);
    if (e && e->len == 17) /* é = C3 A9, U+1F600 = F0 9F 98 80, \u0000 kept inside */
        CHECK(memcmp(e->string, "x\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80\0z", 17) == 0);
    edd__json_free(v);

    /* numbers round exactly as Python's float(): a value from a real alphas_cumprod */
    CHECK(parse_text("[0.9999000000000000, 0.999780009, 4.0358027183432616e-05, 1.7976931348623157e308]", &v, err,
                     sizeof err) == EDD_OK);
    CHECK(v->items[1].number == 0.999780009 && v->items[2].number == 4.0358027183432616e-05 &&
          v->items[3].number == 1.7976931348623157e308);
    edd__json_free(v);
    CHECK(parse_text("1e999", &v, err, sizeof err) == EDD_OK && isinf(v->number)); /* refused later, by field */
    edd__json_free(v);

    for (k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        v = (edd_json *)&k; /* must be reset to NULL */
        err[0] = '\0';
        CHECK(parse_text(bad[k], &v, err, sizeof err) == EDD_ERR_BAD_BUNDLE && v == NULL);
        CHECK(strstr(err, "invalid JSON at line 1 column") != NULL);
        if (v || !strstr(err, "invalid JSON")) fprintf(stderr, "  case %lu: %s -> %s\n", (unsigned long)k, bad[k], err);
    }
    CHECK(parse_text("{\n  \"a\": [1,\n   2,,]}", &v, err, sizeof err) == EDD_ERR_BAD_BUNDLE);
    CHECK(strstr(err, "line 3 column 6") != NULL);
    /* depth: 64 levels are fine, 100000 are refused without exhausting the stack */
    deep = (char *)malloc(200001);
    if (deep) {
        memset(deep, '[', 100000);
        memset(deep + 100000, ']', 100000);
        deep[200000] = '\0';
        CHECK(parse_text(deep, &v, err, sizeof err) == EDD_ERR_BAD_BUNDLE && strstr(err, "nested too deeply"));
        deep[EDD_JSON_MAX_DEPTH] = '\0';
        memset(deep + EDD_JSON_MAX_DEPTH / 2, ']', EDD_JSON_MAX_DEPTH / 2);
        CHECK(parse_text(deep, &v, err, sizeof err) == EDD_OK);
        edd__json_free(v);
        free(deep);
    }
    CHECK(edd__json_parse(NULL, 1, &v, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd__json_parse("1", 1, NULL, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd__json_parse("12", 1, &v, NULL, 0) == EDD_OK && v->number == 1.0); /* len, not NUL */
    edd__json_free(v);
    edd__json_free(NULL);
}

/* ---- per-step tables: timestep groups and the cache schedule reach the backend ---- */

typedef struct {
    size_t groups[MAX_STEPS];
    int cached[MAX_STEPS];
} seen_steps;

static int record_step(void *user, const edd_step_info *info) {
    seen_steps *s = (seen_steps *)user;
    if (info->step < MAX_STEPS) {
        s->groups[info->step] = info->group;
        s->cached[info->step] = info->cached;
    }
    return 0;
}

static void test_step_tables(void) {
    edd_plan *plan = make_plan("dpmpp-2m", 6, "epsilon", 0.0);
    edd_params p = base_params(2);
    fake_backend fb = {0, -1, 0, {0}, {0}, {0}};
    seen_steps seen;
    uint32_t groups[6] = {0, 0, 1, 1, 2, 2}, bad_groups[6] = {0, 0, 1, 1, 3, 2};
    uint8_t flags[6] = {0, 1, 1, 0, 1, 1}, bad_flags[6] = {1, 0, 0, 0, 0, 0};
    float plain[2 * SIZE], tabled[2 * SIZE];
    edd_backend be;
    edd_context *ctx = NULL;
    char err[256];
    size_t i;
    if (!plan) return;
    be.denoise = fake_denoise;
    be.user = &fb;
    /* without tables: group 0, never cached */
    memset(fb.groups, 0xff, sizeof fb.groups);
    CHECK(run(plan, &p, &fb, plain) == EDD_OK);
    for (i = 0; i < 6; i++) CHECK(fb.groups[i] == 0 && fb.cached[i] == 0);
    /* with tables: exactly the tables, step by step, to the backend and to on_step */
    p.table_steps = 6;
    p.step_group = groups;
    p.num_groups = 3;
    p.cache_flags = flags;
    p.on_step = record_step;
    p.on_step_user = &seen;
    CHECK(run(plan, &p, &fb, tabled) == EDD_OK);
    for (i = 0; i < 6; i++) {
        CHECK(fb.groups[i] == groups[i] && fb.cached[i] == flags[i]);
        CHECK(seen.groups[i] == groups[i] && seen.cached[i] == flags[i]);
    }
    CHECK(memcmp(plain, tabled, sizeof plain) == 0); /* hints only: the loop's arithmetic is unchanged */
    /* the tables are copied at create */
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_OK);
    groups[0] = 2;
    flags[1] = 0;
    CHECK(edd_context_sample(ctx, tabled, 2 * SIZE) == EDD_OK);
    CHECK(fb.groups[0] == 0 && fb.cached[1] == 1);
    edd_context_free(ctx);
    groups[0] = 0;
    flags[1] = 1;
    /* refusals name the field */
    p.step_group = bad_groups;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT && ctx == NULL);
    CHECK(strstr(err, "params.step_group[4] is 3; the backend serves 3 group(s)") != NULL);
    p.step_group = groups;
    p.num_groups = 0;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(strstr(err, "params.step_group[0] is 0; the backend serves 0 group(s)") != NULL);
    p.num_groups = 3;
    p.table_steps = 5;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(strstr(err, "params.table_steps is 5 but the plan has 6 steps") != NULL);
    p.table_steps = 6;
    p.cache_flags = bad_flags;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(strstr(err, "params.cache_flags[0] must be 0") != NULL);
    /* one table without the other */
    p.cache_flags = flags;
    p.step_group = NULL;
    CHECK(run(plan, &p, &fb, tabled) == EDD_OK);
    for (i = 0; i < 6; i++) CHECK(fb.groups[i] == 0 && fb.cached[i] == flags[i]);
    edd_plan_free(plan);
}

/* ---- bundle loader ---- */

/* SCHEDULER_OK / MANIFEST_OK with the first `from` replaced by `to` */
static char *edit(const char *text, const char *from, const char *to) {
    const char *at = strstr(text, from);
    size_t a, n = strlen(text) - strlen(from) + strlen(to);
    char *out = (char *)malloc(n + 1);
    if (!out) return NULL;
    if (!at) { /* a test bug: make it visible */
        fprintf(stderr, "edit: '%s' not found\n", from);
        strcpy(out, "");
        return out;
    }
    a = (size_t)(at - text);
    memcpy(out, text, a);
    strcpy(out + a, to);
    strcat(out, at + strlen(from));
    return out;
}

static edd_status parse_bundle(const char *m, const char *s, edd_bundle **b, char *err, size_t err_size) {
    return edd_bundle_parse(m, strlen(m), s, strlen(s), b, err, err_size);
}

static void test_bundle(void) {
    edd_bundle *b = NULL;
    const edd_bundle_info *info;
    edd_params p = edd_default_params();
    char err[400];
    size_t k;
    static const char *const sched_cases[][3] = {
        /* from, to, expected text in the error */
        {"\"guidance_scale\": 2.5", "\"guidance\": 2.5", "scheduler.json: missing the field 'guidance_scale'"},
        {"\"guidance_scale\": 2.5", "\"guidance_scale\": \"2.5\"", "guidance_scale must be a number, got string"},
        {"\"timesteps\": [3, 2, 0]", "\"timesteps\": [3, 2.5, 0]",
         "plan.timesteps[1] must be an integer, got a fraction"},
        {"\"timesteps\": [3, 2, 0]", "\"timesteps\": [3, \"2\", 0]",
         "plan.timesteps[1] must be an integer, got string"},
        {"\"timesteps\": [3, 2, 0]", "\"timesteps\": {}", "plan.timesteps must be a list of integers, got object"},
        {"\"timesteps\": [3, 2, 0]", "\"timesteps\": [3, 4, 0]", "'timesteps' must descend"},
        {"\"solver\": \"ddim\", \"timesteps\"", "\"solver\": \"heun\", \"timesteps\"", "unknown solver 'heun'"},
        {"\"eta\": 0.0", "\"eta\": true", "plan.params.eta must be a number, a list of numbers or null, got true"},
        {"\"eta\": 0.0", "\"eta\": 1e999", "'eta' must be number"},
        {"\"eta\": 0.0", "\"churn\": 0.0", "unknown param 'churn'"},
        {"[2, 0, -1]", "[2, 0]", "'prev_timesteps' must be per step (n=3), got 2 values"},
        {"[2, 0, -1]", "[2, 0, null]", "plan.params.prev_timesteps[2] must be a number, got null"},
        {"[0.99, 0.9, 0.7, 0.5]", "[0.99, 0.9, 1.7, 0.5]", "alphas_cumprod values must lie in (0, 1]; [2]"},
        {"\"prediction_type\": \"epsilon\"", "\"prediction_type\": 1", "prediction_type must be a string"},
        {"\"prediction_type\": \"epsilon\"", "\"prediction_type\": \"x0\"", "unknown prediction_type 'x0'"},
        {"\"prediction_type\": \"epsilon\"", "\"betas\": []", "plan.schedule has unknown key 'betas'"},
        {"\"plan\": {", "\"plan\": {\"extra\": 1, ", "plan has unknown key 'extra'"},
        {"\"plan\": {", "\"plan\": [{", "invalid JSON at line 4"},
        {"\"params\": {", "\"params\": [{", "invalid JSON"},
    };
    static const char *const manifest_cases[][3] = {
        {"\"edgediff-bundle\"", "\"other\"", "manifest.json: field format is 'other', expected 'edgediff-bundle'"},
        {"\"format_version\": 1", "\"format_version\": 2", "format_version is 2; this runtime reads version 1"},
        {"\"format_version\": 1,", "", "manifest.json: missing the field 'format_version'"},
        {"\"file\": \"model/denoiser.onnx\"", "\"file\": \"model/x.onnx\"", "model.file 'model/x.onnx' is not listed"},
        {"\"scheduler.json\": {}", "\"sched.json\": {}", "files has no entry for scheduler.json"},
        {"[\"batch\", 3, 5, 5]}", "[\"batch\", 3, 0, 5]}", "model.inputs[0].shape[2] must be a positive integer"},
        {"[\"batch\", 3, 5, 5]}", "[\"batch\", 3, \"h\", 5]}", "model.inputs[0].shape[2] must be a fixed size"},
        {"\"name\": \"sample\", ", "", "model.inputs[0] is missing the field 'name'"},
        {"\"kind\": \"class\"", "\"kind\": \"texture\"",
         "conditioning.kind 'texture' is not one of none, class, embedding"},
        {"\"kind\": \"class\"", "\"kind\": \"text\"", "field components must be an object for conditioning kind text"},
        {"\"files\": {\"model", "\"components\": {}, \"files\": {\"model",
         "field components is set but conditioning.kind is 'class', not 'text'"},
        {"\"null_label\": 10", "\"null_label\": 1.5", "conditioning.null_label must be an integer"},
        {"\"model\": {", "\"model\": 3, \"m\": {", "model must be an object, got number"},
        {"\"format\": \"edgediff-bundle\"", "\"format\": \"edgediff-bundle\",,",
         "manifest.json: invalid JSON at line 1"},
    };

    CHECK(parse_bundle(MANIFEST_OK, SCHEDULER_OK, &b, err, sizeof err) == EDD_OK);
    if (!b) {
        fprintf(stderr, "  bundle: %s\n", err);
        return;
    }
    info = edd_bundle_get_info(b);
    CHECK(strcmp(info->model_format, "onnx") == 0 && strcmp(info->model_file, "model/denoiser.onnx") == 0);
    CHECK(info->model_path == NULL && info->num_inputs == 3 && info->num_outputs == 1);
    CHECK(strcmp(info->inputs[2].name, "class_labels") == 0 && strcmp(info->inputs[2].dtype, "int64") == 0);
    CHECK(info->inputs[0].ndim == 4 && info->inputs[0].shape[0] == -1 && info->inputs[0].shape[3] == 5);
    CHECK(info->sample_ndim == 3 && info->sample_shape[0] == 3 && info->sample_shape[2] == 5);
    CHECK(info->conditioning == EDD_COND_CLASS && info->num_classes == 10 && info->null_label == 10);
    CHECK(info->guidance_scale == 2.5 && strcmp(info->solver, "ddim") == 0 && info->num_steps == 3);
    CHECK(edd_plan_num_steps(edd_bundle_plan(b)) == 3 && edd_plan_timestep(edd_bundle_plan(b), 1) == 2);
    CHECK(edd_bundle_fill_params(b, &p) == EDD_OK);
    CHECK(p.sample_ndim == 3 && p.sample_shape[1] == 5 && p.guidance == 2.5 && p.null_label == 10);
    edd_bundle_free(b);
    edd_bundle_free(NULL);
    CHECK(edd_bundle_plan(NULL) == NULL && edd_bundle_get_info(NULL) == NULL);
    CHECK(edd_bundle_fill_params(NULL, &p) == EDD_ERR_INVALID_ARGUMENT);

    for (k = 0; k < sizeof sched_cases / sizeof sched_cases[0]; k++) {
        char *s = edit(SCHEDULER_OK, sched_cases[k][0], sched_cases[k][1]);
        edd_status st;
        if (!s) continue;
        b = (edd_bundle *)&k;
        st = parse_bundle(MANIFEST_OK, s, &b, err, sizeof err);
        CHECK(st != EDD_OK && b == NULL && strstr(err, "scheduler.json") && strstr(err, sched_cases[k][2]));
        if (st == EDD_OK || !strstr(err, sched_cases[k][2]))
            fprintf(stderr, "  scheduler case %lu: %s\n", (unsigned long)k, err);
        free(s);
    }
    for (k = 0; k < sizeof manifest_cases / sizeof manifest_cases[0]; k++) {
        char *m = edit(MANIFEST_OK, manifest_cases[k][0], manifest_cases[k][1]);
        edd_status st;
        if (!m) continue;
        b = (edd_bundle *)&k;
        st = parse_bundle(m, SCHEDULER_OK, &b, err, sizeof err);
        CHECK(st == EDD_ERR_BAD_BUNDLE && b == NULL && strstr(err, "manifest.json") &&
              strstr(err, manifest_cases[k][2]));
        if (st != EDD_ERR_BAD_BUNDLE || !strstr(err, manifest_cases[k][2]))
            fprintf(stderr, "  manifest case %lu: %s\n", (unsigned long)k, err);
        free(m);
    }
    /* every truncation of valid files is refused, never a crash */
    for (k = 0; k < sizeof SCHEDULER_OK - 1; k++) {
        CHECK(edd_bundle_parse(MANIFEST_OK, sizeof MANIFEST_OK - 1, SCHEDULER_OK, k, &b, err, sizeof err) != EDD_OK);
        CHECK(edd_bundle_parse(MANIFEST_OK, k % (sizeof MANIFEST_OK - 1), SCHEDULER_OK, sizeof SCHEDULER_OK - 1, &b,
                               err, sizeof err) != EDD_OK);
    }
    CHECK(edd_bundle_parse(NULL, 3, SCHEDULER_OK, 3, &b, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_bundle_parse(MANIFEST_OK, 3, SCHEDULER_OK, 3, NULL, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(edd_bundle_load("/nonexistent/bundle", &b, err, sizeof err) == EDD_ERR_IO && b == NULL);
    CHECK(strstr(err, "/nonexistent/bundle/manifest.json: cannot open") != NULL);
    CHECK(edd_bundle_load(NULL, &b, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(parse_bundle(MANIFEST_OK, SCHEDULER_OK, &b, err, sizeof err) == EDD_OK);
    CHECK(edd_bundle_verify(b, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT); /* parsed, not loaded: no folder */
    edd_bundle_free(b);
    CHECK(edd_bundle_verify(NULL, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
}

/* scheduler.json "timestep_groups" and "cache_schedule" */
static void test_bundle_step_tables(void) {
    static const char *const G = "\"timestep_groups\": {\"files\": [\"model/g0.onnx\", \"model/g1.onnx\"], "
                                 "\"step_group\": [0, 1, 1], \"shared_weights\": \"model/weights.bin\"}";
    static const char *const C = "\"cache_schedule\": {\"interval\": 2}";
    static const char *const cases[][3] = {
        /* from (in the grouped scheduler), to, expected text */
        {"[0, 1, 1]", "[0, 1]", "timestep_groups.step_group has 2 entries but the plan has 3 steps"},
        {"[0, 1, 1]", "[0, 2, 1]", "timestep_groups.step_group[1] is 2; it must be a group index in 0..1"},
        {"[0, 1, 1]", "[0, -1, 1]", "timestep_groups.step_group[1] is -1"},
        {"[0, 1, 1]", "[0, 0.5, 1]", "timestep_groups.step_group[1] is 0.5"},
        {"[0, 1, 1]", "[0, \"1\", 1]", "timestep_groups.step_group[1] must be an integer, got string"},
        {"[0, 1, 1]", "{}", "timestep_groups.step_group must be a list of group indices, got object"},
        {"\"step_group\"", "\"steps\"", "timestep_groups has unknown key 'steps'"},
        {"[\"model/g0.onnx\", \"model/g1.onnx\"]", "[]", "timestep_groups.files must list 1..64 files, got 0"},
        {"\"model/g1.onnx\"]", "\"model/g9.onnx\"]", "timestep_groups.files[1] 'model/g9.onnx' is not listed"},
        {"\"model/g1.onnx\"]", "\"../g1.onnx\"]", "timestep_groups.files[1] must be a relative path"},
        {"\"model/g1.onnx\"]", "1]", "timestep_groups.files[1] must be a relative path"},
        {"\"model/weights.bin\"", "\"/w.bin\"", "timestep_groups.shared_weights must be a relative path"},
        {"\"timestep_groups\": {", "\"timestep_groups\": [{", "invalid JSON"},
        {"\"timestep_groups\": {\"files\"", "\"timestep_groups\": 3, \"x\": {\"files\"",
         "timestep_groups must be an object or null, got number"},
        {"{\"interval\": 2}", "{\"interval\": 0}", "cache_schedule.interval must be a positive integer"},
        {"{\"interval\": 2}", "{\"interval\": 1.5}", "cache_schedule.interval must be a positive integer"},
        {"{\"interval\": 2}", "{\"interval\": 2, \"steps\": []}", "exactly one of 'interval' and 'steps'"},
        {"{\"interval\": 2}", "{}", "exactly one of 'interval' and 'steps'"},
        {"{\"interval\": 2}", "{\"every\": 2}", "cache_schedule has unknown key 'every'"},
        {"{\"interval\": 2}", "[2]", "cache_schedule must be an object or null, got array"},
        {"{\"interval\": 2}", "{\"steps\": [\"full\", \"cached\"]}",
         "cache_schedule.steps has 2 entries but the plan has 3"},
        {"{\"interval\": 2}", "{\"steps\": [\"full\", \"cached\", \"half\"]}",
         "cache_schedule.steps[2] must be \"full\" or \"cached\""},
        {"{\"interval\": 2}", "{\"steps\": [\"cached\", \"full\", \"full\"]}",
         "cache_schedule.steps[0] must be \"full\""},
        {"{\"interval\": 2}", "{\"steps\": \"full\"}", "cache_schedule.steps must be a list"},
    };
    char *m = edit(MANIFEST_OK, "\"report.json\": {}",
                   "\"report.json\": {}, \"model/g0.onnx\": {}, \"model/g1.onnx\": {}, \"model/weights.bin\": {}");
    char *s1 = edit(SCHEDULER_OK, "\"timestep_groups\": null", G),
         *s = s1 ? edit(s1, "\"cache_schedule\": null", C) : NULL;
    char *s_steps = s ? edit(s, C, "\"cache_schedule\": {\"steps\": [\"full\", \"cached\", \"full\"]}") : NULL;
    char *m_cache = m ? edit(m, "\"conditioning\"", "\"cache\": {\"depth\": 1}, \"conditioning\"") : NULL;
    edd_bundle *b = NULL;
    const edd_bundle_info *info;
    edd_params p = edd_default_params();
    char err[400];
    size_t k;
    if (!m || !s || !s_steps || !m_cache) goto done;
    CHECK(parse_bundle(m, s1, &b, err, sizeof err) == EDD_OK);
    if (!b) {
        fprintf(stderr, "  grouped bundle: %s\n", err);
        goto done;
    }
    info = edd_bundle_get_info(b);
    CHECK(info->num_groups == 2 && strcmp(info->group_files[1], "model/g1.onnx") == 0 && info->group_paths == NULL);
    CHECK(strcmp(info->shared_weights, "model/weights.bin") == 0);
    CHECK(info->step_group[0] == 0 && info->step_group[1] == 1 && info->step_group[2] == 1);
    CHECK(info->cache_flags == NULL);
    CHECK(edd_bundle_fill_params(b, &p) == EDD_OK);
    CHECK(p.table_steps == 3 && p.step_group == info->step_group && p.num_groups == 2 && p.cache_flags == NULL);
    edd_bundle_free(b);
    /* a cache schedule needs the manifest's shallow graph, and a cached bundle is refused (no shallow graph
       runs here yet): each in one line, never run with the schedule ignored */
    for (k = 0; k < 4; k++) {
        static const char *const want[] = {
            "scheduler.json: cache_schedule is set but manifest.json has no cache",
            "scheduler.json: cache_schedule is set but manifest.json has no cache",
            "this C runtime does not run cached bundles yet",
            "manifest.json: cache is set but scheduler.json has no cache_schedule",
        };
        const char *mk = k < 2 ? m : m_cache, *sk = k == 0 ? s : k == 1 ? s_steps : k == 2 ? s_steps : SCHEDULER_OK;
        b = (edd_bundle *)&k;
        CHECK(parse_bundle(mk, sk, &b, err, sizeof err) == EDD_ERR_BAD_BUNDLE && b == NULL && strstr(err, want[k]) &&
              !strchr(err, '\n'));
        if (!strstr(err, want[k])) fprintf(stderr, "  cache case %lu: %s\n", (unsigned long)k, err);
    }
    /* null (today's fp32 bundles): no tables */
    CHECK(parse_bundle(MANIFEST_OK, SCHEDULER_OK, &b, err, sizeof err) == EDD_OK);
    if (b) {
        info = edd_bundle_get_info(b);
        CHECK(info->num_groups == 0 && info->group_files == NULL && info->step_group == NULL &&
              info->cache_flags == NULL);
        p = edd_default_params();
        CHECK(edd_bundle_fill_params(b, &p) == EDD_OK && p.table_steps == 0 && p.step_group == NULL && !p.cache_flags);
        edd_bundle_free(b);
    }
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char *bad = edit(s, cases[k][0], cases[k][1]);
        edd_status st;
        if (!bad) continue;
        b = (edd_bundle *)&k;
        st = parse_bundle(m, bad, &b, err, sizeof err);
        CHECK(st == EDD_ERR_BAD_BUNDLE && b == NULL && strstr(err, "scheduler.json: ") && strstr(err, cases[k][1 + 1]));
        if (st != EDD_ERR_BAD_BUNDLE || !strstr(err, cases[k][2]))
            fprintf(stderr, "  step table case %lu: %s\n", (unsigned long)k, err);
        free(bad);
    }
done:
    free(m);
    free(s1);
    free(s);
    free(s_steps);
    free(m_cache);
}

/* ---- sha256 (the bundle check): FIPS 180-4 known answers ---- */

static void test_sha256(void) {
    char hex[65], *million = (char *)malloc(1000000);
    edd__sha256("", 0, hex);
    CHECK(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
    edd__sha256("abc", 3, hex);
    CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    edd__sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, hex);
    CHECK(strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0);
    if (million) {
        memset(million, 'a', 1000000);
        edd__sha256(million, 1000000, hex);
        CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0);
        free(million);
    }
    CHECK(edd__sha256_file("/nonexistent/file", hex) == -1);
}

/* ---- text conditioning: params.cond through the context, a text manifest ---- */

#define TW 6 /* floats per condition row */

typedef struct cond_seen {
    float first[4][TW]; /* the cond rows of step 0, in call order */
    size_t rows_seen, calls;
} cond_seen;

/* eps = tanh(x) / 2 + 0.1 * (first value of the row's cond) */
static int cond_denoise(void *user, const edd_denoise_args *a) {
    cond_seen *cs = (cond_seen *)user;
    size_t r, j;
    if (!a->cond || a->cond_ndim != 2 || a->cond_size != TW || a->cond_shape[0] != 2 || a->cond_shape[1] != 3) return 9;
    cs->calls++;
    for (r = 0; r < a->batch; r++) {
        if (a->step == 0 && cs->rows_seen < 4) memcpy(cs->first[cs->rows_seen++], a->cond + r * TW, TW * sizeof(float));
        for (j = 0; j < a->sample_size; j++)
            a->eps[r * a->sample_size + j] =
                0.5f * (float)tanh((double)a->x[r * a->sample_size + j]) + 0.1f * a->cond[r * TW];
    }
    return 0;
}

static void test_text_conditioning(void) {
    edd_plan *plan = make_plan("ddim", 3, NULL, 0.0);
    edd_params p = edd_default_params();
    edd_backend be;
    edd_context *ctx = NULL;
    cond_seen one, split;
    float cond[2 * TW], null_cond[TW], out1[2 * SIZE], out2[2 * SIZE];
    char err[256];
    size_t k;
    for (k = 0; k < 2 * TW; k++) cond[k] = (float)(k / TW + 1); /* image 0: 1s, image 1: 2s */
    for (k = 0; k < TW; k++) null_cond[k] = -1.0f;
    p.batch = 2;
    p.sample_ndim = 1;
    p.sample_shape[0] = SIZE;
    p.seed = 7;
    p.guidance = 3.0;
    p.cond_ndim = 2;
    p.cond_shape[0] = 2;
    p.cond_shape[1] = 3;
    p.cond = cond;
    be.denoise = cond_denoise;
    /* guidance with cond needs null_cond, not labels */
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(strstr(err, "needs params.null_cond") != NULL);
    p.null_cond = null_cond;
    memset(&one, 0, sizeof one);
    be.user = &one;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_OK);
    CHECK(ctx && edd_context_sample(ctx, out1, 2 * SIZE) == EDD_OK);
    edd_context_free(ctx);
    /* one call a step; the conditional rows first (1s, 2s), then the unconditional ones */
    CHECK(one.calls == 3 && one.rows_seen == 4);
    CHECK(one.first[0][0] == 1.0f && one.first[1][TW - 1] == 2.0f && one.first[2][0] == -1.0f &&
          one.first[3][3] == -1.0f);
    /* max_rows 1: four calls a step, the same samples bit for bit */
    memset(&split, 0, sizeof split);
    be.user = &split;
    p.max_rows = 1;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_OK);
    CHECK(ctx && edd_context_sample(ctx, out2, 2 * SIZE) == EDD_OK);
    edd_context_free(ctx);
    CHECK(split.calls == 12 && memcmp(out1, out2, sizeof out1) == 0);
    CHECK(memcmp(one.first, split.first, sizeof one.first) == 0);
    /* cond and cond_ndim go together */
    p.cond_ndim = 0;
    CHECK(edd_context_create(plan, &be, &p, &ctx, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT);
    edd_plan_free(plan);
}

static const char TEXT_MANIFEST[] =
    "{\"format\": \"edgediff-bundle\", \"format_version\": 1,\n"
    " \"model\": {\"format\": \"onnx\", \"file\": \"model/denoiser.onnx\",\n"
    "  \"inputs\": [{\"name\": \"sample\", \"dtype\": \"float32\", \"shape\": [\"batch\", 4, 2, 2]},\n"
    "             {\"name\": \"timestep\", \"dtype\": \"float32\", \"shape\": [\"batch\"]},\n"
    "             {\"name\": \"encoder_hidden_states\", \"dtype\": \"float32\", \"shape\": [\"batch\", 7, 8]}],\n"
    "  \"outputs\": [{\"name\": \"out\", \"dtype\": \"float32\", \"shape\": [\"batch\", 4, 2, 2]}]},\n"
    " \"conditioning\": {\"kind\": \"text\", \"num_classes\": null, \"null_label\": null, \"shape\": [7, 8]},\n"
    " \"components\": {\n"
    "  \"text_encoder\": {\"file\": \"model/te.onnx\", \"format\": \"onnx\",\n"
    "   \"inputs\": [{\"name\": \"input_ids\", \"dtype\": \"int64\", \"shape\": [\"batch\", 7]}],\n"
    "   \"outputs\": [{\"name\": \"h\", \"dtype\": \"float32\", \"shape\": [\"batch\", 7, 8]}]},\n"
    "  \"vae_decoder\": {\"file\": \"model/vd.onnx\", \"format\": \"onnx\",\n"
    "   \"inputs\": [{\"name\": \"latents\", \"dtype\": \"float32\", \"shape\": [\"batch\", 4, 2, 2]}],\n"
    "   \"outputs\": [{\"name\": \"image\", \"dtype\": \"float32\", \"shape\": [\"batch\", 3, 16, 16]}]},\n"
    "  \"tokenizer\": {\"kind\": \"CLIPTokenizer\", \"folder\": \"tok\", \"max_length\": 7,\n"
    "   \"files\": [\"tok/vocab.json\", \"tok/merges.txt\"]}},\n"
    " \"files\": {\"model/denoiser.onnx\": {}, \"model/te.onnx\": {}, \"model/vd.onnx\": {}, \"tok/vocab.json\": {},\n"
    "  \"tok/merges.txt\": {}, \"scheduler.json\": {}}}";

static const char TEXT_SCHEDULER[] =
    "{\"guidance_scale\": 7.5, \"conditioning\": \"text\",\n"
    " \"latent\": {\"shape\": [4, 2, 2], \"scaling_factor\": 0.18215, \"image_shape\": [3, 16, 16]},\n"
    " \"plan\": {\"solver\": \"ddim\", \"timesteps\": [3, 1], \"schedule\": {\"alphas_cumprod\": [0.99, 0.9, 0.7, "
    "0.5]},\n"
    "  \"params\": {\"eta\": 0, \"prev_timesteps\": [1, -1], \"final_alpha_cumprod\": 1.0, \"clip_sample\": null}}}";

static void test_text_bundle(void) {
    static const char *const cases[][4] = {
        /* file ("m" / "s"), from, to, expected message */
        {"m", "\"components\": {", "\"c\": {", "field components must be an object for conditioning kind text"},
        {"m", "\"tokenizer\": {\"kind\"", "\"tokenize\": {\"kind\"", "components has unknown key 'tokenize'"},
        {"m", "\"file\": \"model/te.onnx\"", "\"file\": \"model/x.onnx\"",
         "components.text_encoder.file 'model/x.onnx' is not listed under files"},
        {"m", "\"file\": \"model/vd.onnx\", \"format\": \"onnx\"",
         "\"file\": \"model/vd.onnx\", \"format\": \"tflite\"",
         "components.vae_decoder.format is 'tflite'; the denoiser's is 'onnx'"},
        {"m", "\"format\": \"onnx\",\n   \"inputs\"", "\"inputs\"",
         "components.text_encoder is missing the field 'format'"},
        {"m", "\"folder\": \"tok\"", "\"folder\": \"../tok\"", "components.tokenizer.folder must be a relative folder"},
        {"m", "\"tok/vocab.json\", \"tok/merges.txt\"]", "\"tok/vocab.json\", \"tok/other.txt\"]",
         "components.tokenizer.files entry 'tok/other.txt' must be a file of tok/ listed under files"},
        {"m", "\"tok/vocab.json\", \"tok/merges.txt\"]", "\"tok/vocab.json\"]",
         "components.tokenizer.files needs vocab.json and merges.txt (or tokenizer.json)"},
        {"m", "\"max_length\": 7", "\"max_length\": 77",
         "components.tokenizer.max_length is 77; conditioning.shape says 7"},
        {"m", "\"shape\": [7, 8]}", "\"shape\": [7]}", "conditioning.shape must be [max_length, hidden] for kind text"},
        {"m", "\"shape\": [\"batch\", 7, 8]}]}", "\"shape\": [\"batch\", 7, 9]}]}",
         "components.text_encoder.outputs[0].shape ends in 9; conditioning.shape says width 8"},
        {"m", "\"shape\": [\"batch\", 7, 8]}],\n  \"outputs\"", "\"shape\": [\"batch\", 7, 5]}],\n  \"outputs\"",
         "model.inputs[2].shape ends in 5; conditioning.shape says width 8"},
        {"s", "\"conditioning\": \"text\",", "", "field conditioning must be 'text' for a text bundle"},
        {"s", "\"shape\": [4, 2, 2]", "\"shape\": [4, 4, 4]",
         "latent.shape is [4, 4, 4]; the denoiser's sample is [4, 2, 2]"},
        {"s", "\"scaling_factor\": 0.18215", "\"scaling_factor\": 0",
         "latent.scaling_factor must be a finite number > 0"},
        {"s", "\"image_shape\": [3, 16, 16]", "\"image_shape\": [1, 16, 16]", "latent.image_shape must be [3, H, W]"},
        {"s", "\"image_shape\": [3, 16, 16]", "\"image_shape\": [3, 8, 8]",
         "components.vae_decoder.outputs[0].shape is [?, 3, 16, 16]; scheduler.json latent.image_shape is [3, 8, 8]"},
        {"s", "\"image_shape\"", "\"x\": 1, \"image_shape\"", "latent has unknown key 'x'"},
    };
    edd_bundle *b = NULL;
    edd_params p = edd_default_params();
    const edd_bundle_info *info;
    char err[512];
    size_t k;
    CHECK(parse_bundle(TEXT_MANIFEST, TEXT_SCHEDULER, &b, err, sizeof err) == EDD_OK);
    if (!b) {
        fprintf(stderr, "  text bundle: %s\n", err);
        return;
    }
    info = edd_bundle_get_info(b);
    CHECK(info->conditioning == EDD_COND_TEXT && info->max_length == 7 && info->cond_ndim == 2 &&
          info->cond_shape[1] == 8);
    CHECK(strcmp(info->text_encoder.file, "model/te.onnx") == 0 && info->text_encoder.path == NULL &&
          info->text_encoder.inputs[0].shape[1] == 7 && strcmp(info->text_encoder.inputs[0].dtype, "int64") == 0);
    CHECK(strcmp(info->vae_decoder.format, "onnx") == 0 && info->vae_decoder.outputs[0].shape[1] == 3);
    CHECK(strcmp(info->tokenizer_folder, "tok") == 0 && info->tokenizer_path == NULL);
    CHECK(info->scaling_factor == 0.18215 && info->image_shape[0] == 3 && info->image_shape[2] == 16);
    CHECK(edd_bundle_fill_params(b, &p) == EDD_OK && p.guidance == 7.5); /* text models keep their guidance */
    edd_bundle_free(b);
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int m = cases[k][0][0] == 'm';
        char *text = edit(m ? TEXT_MANIFEST : TEXT_SCHEDULER, cases[k][1], cases[k][2]);
        edd_status st;
        b = NULL;
        if (!text) {
            fprintf(stderr, "  text case %lu: the pattern is not in the text\n", (unsigned long)k);
            CHECK(0);
            continue;
        }
        st = m ? parse_bundle(text, TEXT_SCHEDULER, &b, err, sizeof err)
               : parse_bundle(TEXT_MANIFEST, text, &b, err, sizeof err);
        CHECK(st == EDD_ERR_BAD_BUNDLE && b == NULL);
        if (!strstr(err, cases[k][3])) {
            fprintf(stderr, "  text case %lu: got '%s'\n", (unsigned long)k, err);
            CHECK(0);
        }
        free(text);
    }
}

int main(void) {
    make_schedule();
    test_status_and_version();
    test_philox_and_normal();
    test_million_draws_hash();
    test_plan_validation();
    test_primitives_reject_bad_arguments();
    test_dpm_last_step_returns_x0();
    test_context_equals_primitive_loop();
    test_guidance();
    test_step_tables();
    test_context_errors_and_cancel();
    test_streams();
    test_threads();
    test_json();
    test_bundle();
    test_bundle_step_tables();
    test_text_conditioning();
    test_text_bundle();
    test_sha256();
    printf("test_edd: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
