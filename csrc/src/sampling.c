/* sampling.c — one generation: the loop of src/edgediff/runtimes/sampling.py with classifier-free guidance.
 *
 *     x = init_latent(noise call 0)
 *     for i, t in enumerate(model_timesteps):
 *         x_in = model_input(i, x)
 *         eps  = denoise(x_in, t, labels, group, cached)     or, guided (2B rows, conditional first):
 *                eps_u + g (eps_c - eps_u)                   in float32, g = (float)guidance
 *         on_step(i, t, x_in, eps)
 *         x, carry = step(i, x, eps, carry, noise call i + 1 if the step uses noise)
 *
 * Every buffer is allocated by edd_context_create; edd_context_sample allocates nothing and
 * touches no state but its own context's, so contexts run in parallel without locks.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct edd_context {
    const edd_plan *plan;
    edd_backend backend;
    edd_params params;  /* streams / labels point at the copies below */
    size_t sample_size; /* floats per image */
    size_t rows;        /* model rows per call: B, or 2B with guidance */
    int guided;
    uint32_t *streams;    /* B */
    int64_t *labels;      /* rows, or NULL (unconditional) */
    float *t;             /* rows */
    float *model_x;       /* rows * sample_size: model input (both halves when guided) */
    float *model_eps;     /* rows * sample_size: model output */
    float *eps;           /* B * sample_size: guided eps (== model_eps when not guided) */
    float *noise;         /* B * sample_size */
    float *carry;         /* B * sample_size, or NULL if the solver keeps none */
    uint32_t *step_group; /* n, or NULL (group 0 at every step) */
    uint8_t *cache_flags; /* n, or NULL (no step reuses cached features) */
    float *cond;          /* rows * cond_size: row r's condition (both halves when guided), or NULL */
    size_t cond_size;     /* floats per condition row */
    char error[256];
};

edd_params edd_default_params(void) {
    edd_params p;
    memset(&p, 0, sizeof p);
    p.batch = 1;
    p.sample_ndim = 0;
    p.seed = 0;
    p.streams = NULL;
    p.first_stream = 0;
    p.labels = NULL;
    p.guidance = 1.0;
    p.null_label = EDD_NO_LABEL;
    p.on_step = NULL;
    p.on_step_user = NULL;
    p.cancel = NULL;
    p.table_steps = 0;
    p.step_group = NULL;
    p.num_groups = 0;
    p.cache_flags = NULL;
    p.cond_ndim = 0;
    p.cond = NULL;
    p.null_cond = NULL;
    p.max_rows = 0;
    return p;
}

void edd_context_free(edd_context *ctx) {
    if (!ctx) return;
    free(ctx->streams);
    free(ctx->labels);
    free(ctx->t);
    free(ctx->model_x);
    free(ctx->model_eps);
    if (ctx->eps != ctx->model_eps) free(ctx->eps);
    free(ctx->noise);
    free(ctx->carry);
    free(ctx->step_group);
    free(ctx->cache_flags);
    free(ctx->cond);
    free(ctx);
}

/* a * b without overflow, else 0 */
static size_t mul_size(size_t a, size_t b) {
    if (a && b > (size_t)-1 / a) return 0;
    return a * b;
}

static void *alloc_array(size_t count, size_t item) {
    size_t bytes = mul_size(count, item);
    return bytes ? malloc(bytes) : NULL;
}

/* params.step_group / cache_flags: checked against the plan and copied */
static edd_status step_tables(edd_context *ctx, char *err, size_t err_size) {
    const edd_params *p = &ctx->params;
    size_t n = ctx->plan->num_steps, i;
    if (!p->step_group && !p->cache_flags) return EDD_OK;
    if (p->table_steps != n)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                         "params.table_steps is %lu but the plan has %lu steps (timestep groups and cache schedules "
                         "are made for the bundle's own steps)",
                         (unsigned long)p->table_steps, (unsigned long)n);
    if (p->step_group) {
        if (!(ctx->step_group = (uint32_t *)alloc_array(n, sizeof(uint32_t))))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        for (i = 0; i < n; i++) {
            if ((size_t)p->step_group[i] >= p->num_groups)
                return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                                 "params.step_group[%lu] is %lu; the backend serves %lu group(s)", (unsigned long)i,
                                 (unsigned long)p->step_group[i], (unsigned long)p->num_groups);
            ctx->step_group[i] = p->step_group[i];
        }
    }
    if (p->cache_flags) {
        if (p->cache_flags[0])
            return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                             "params.cache_flags[0] must be 0: the first step has no cached features to reuse");
        if (!(ctx->cache_flags = (uint8_t *)alloc_array(n, 1)))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        for (i = 0; i < n; i++) ctx->cache_flags[i] = p->cache_flags[i] ? 1 : 0;
    }
    ctx->params.step_group = ctx->step_group;
    ctx->params.cache_flags = ctx->cache_flags;
    return EDD_OK;
}

static edd_status create(edd_context *ctx, char *err, size_t err_size) {
    const edd_params *p = &ctx->params;
    size_t B = p->batch, k, floats;
    if (B < 1)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "params.batch must be >= 1, got %lu",
                         (unsigned long)B);
    if (p->sample_ndim < 1 || p->sample_ndim > EDD_MAX_NDIM)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                         "params.sample_ndim must be 1..%d (the model input's shape without the batch), got %lu",
                         EDD_MAX_NDIM, (unsigned long)p->sample_ndim);
    ctx->sample_size = 1;
    for (k = 0; k < p->sample_ndim; k++) {
        if (p->sample_shape[k] < 1 || (uint64_t)p->sample_shape[k] > (size_t)-1)
            return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "params.sample_shape[%lu] must be >= 1, got %lld",
                             (unsigned long)k, (long long)p->sample_shape[k]);
        ctx->sample_size = mul_size(ctx->sample_size, (size_t)p->sample_shape[k]);
        if (!ctx->sample_size)
            return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "params.sample_shape is too large");
    }
    if ((uint64_t)(ctx->sample_size - 1) / 4 > 0xFFFFFFFFu)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "params.sample_shape has more than 2^34 values");
    if ((uint64_t)ctx->plan->num_steps >= 0xFFFFFFFFu)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "the plan has too many steps for the noise calls");
    ctx->guided = p->guidance != 1.0;
    if (p->guidance != p->guidance) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "params.guidance is NaN");
    if (p->cond_ndim > EDD_MAX_NDIM || (p->cond_ndim > 0) != (p->cond != NULL))
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                         "params.cond and params.cond_ndim (1..%d) must be given together", EDD_MAX_NDIM);
    ctx->cond_size = 1;
    for (k = 0; k < p->cond_ndim; k++) {
        if (p->cond_shape[k] < 1 || (uint64_t)p->cond_shape[k] > (size_t)-1)
            return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "params.cond_shape[%lu] must be >= 1, got %lld",
                             (unsigned long)k, (long long)p->cond_shape[k]);
        ctx->cond_size = mul_size(ctx->cond_size, (size_t)p->cond_shape[k]);
        if (!ctx->cond_size)
            return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "params.cond_shape is too large");
    }
    if (ctx->guided && p->cond && !p->null_cond)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                         "guidance=%g with params.cond needs params.null_cond (the unconditional row)", p->guidance);
    if (ctx->guided && !p->cond && (!p->labels || p->null_label == EDD_NO_LABEL))
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                         "guidance=%g needs labels and a null_label (classifier-free guidance)", p->guidance);
    ctx->rows = ctx->guided ? mul_size(B, 2) : B;
    floats = mul_size(ctx->rows, ctx->sample_size);
    if (!ctx->rows || !floats || !mul_size(floats, sizeof(float)))
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "batch * sample size is too large");

    ctx->streams = (uint32_t *)alloc_array(B, sizeof(uint32_t));
    ctx->t = (float *)alloc_array(ctx->rows, sizeof(float));
    ctx->model_x = (float *)alloc_array(floats, sizeof(float));
    ctx->model_eps = (float *)alloc_array(floats, sizeof(float));
    ctx->eps = ctx->guided ? (float *)alloc_array(B * ctx->sample_size, sizeof(float)) : ctx->model_eps;
    ctx->noise = (float *)alloc_array(B * ctx->sample_size, sizeof(float));
    if (ctx->plan->solver->has_carry) ctx->carry = (float *)alloc_array(B * ctx->sample_size, sizeof(float));
    if (p->labels) ctx->labels = (int64_t *)alloc_array(ctx->rows, sizeof(int64_t));
    if (p->cond) {
        if (!mul_size(mul_size(ctx->rows, ctx->cond_size), sizeof(float)))
            return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "batch * cond size is too large");
        ctx->cond = (float *)alloc_array(mul_size(ctx->rows, ctx->cond_size), sizeof(float));
    }
    if (!ctx->streams || !ctx->t || !ctx->model_x || !ctx->model_eps || !ctx->eps || !ctx->noise ||
        (ctx->plan->solver->has_carry && !ctx->carry) || (p->labels && !ctx->labels) || (p->cond && !ctx->cond))
        return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory allocating %lu floats of scratch",
                         (unsigned long)(4 * floats));
    for (k = 0; k < B; k++) ctx->streams[k] = p->streams ? p->streams[k] : p->first_stream + (uint32_t)k;
    if (p->labels) {
        memcpy(ctx->labels, p->labels, B * sizeof(int64_t));
        if (ctx->guided)
            for (k = 0; k < B; k++) ctx->labels[B + k] = p->null_label;
    }
    if (p->cond) {
        memcpy(ctx->cond, p->cond, B * ctx->cond_size * sizeof(float));
        if (ctx->guided)
            for (k = 0; k < B; k++)
                memcpy(ctx->cond + (B + k) * ctx->cond_size, p->null_cond, ctx->cond_size * sizeof(float));
    }
    ctx->params.streams = ctx->streams;
    ctx->params.labels = ctx->labels;
    ctx->params.cond = ctx->cond;
    ctx->params.null_cond = NULL;
    return step_tables(ctx, err, err_size);
}

edd_status edd_context_create(const edd_plan *plan, const edd_backend *backend, const edd_params *params,
                              edd_context **out, char *err, size_t err_size) {
    edd_context *ctx;
    edd_status st;
    if (err && err_size) err[0] = '\0';
    if (!out) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_context_create: out is NULL");
    *out = NULL;
    if (!plan || !backend || !params)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_context_create: %s is NULL",
                         !plan      ? "plan"
                         : !backend ? "backend"
                                    : "params");
    if (!backend->denoise) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "backend.denoise is NULL");
    ctx = (edd_context *)calloc(1, sizeof *ctx);
    if (!ctx) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    ctx->plan = plan;
    ctx->backend = *backend;
    ctx->params = *params;
    st = create(ctx, err, err_size);
    if (st != EDD_OK) {
        edd_context_free(ctx);
        return st;
    }
    *out = ctx;
    return EDD_OK;
}

size_t edd_context_output_count(const edd_context *ctx) {
    return ctx ? ctx->params.batch * ctx->sample_size : 0;
}

const char *edd_context_error(const edd_context *ctx) {
    return ctx ? ctx->error : "edd_context_error: ctx is NULL";
}

#define FAIL(...) snprintf(ctx->error, sizeof ctx->error, __VA_ARGS__)

/* The noise of one call for the whole batch: image k from stream streams[k]. */
static void draw(edd_context *ctx, uint32_t call) {
    size_t k, n = ctx->sample_size;
    for (k = 0; k < ctx->params.batch; k++)
        edd_normal(ctx->params.seed, ctx->streams[k], call, ctx->noise + k * n, n); /* sizes checked at create */
}

static int cancelled(const edd_context *ctx) {
    return ctx->params.cancel && *ctx->params.cancel;
}

edd_status edd_context_sample(edd_context *ctx, float *out, size_t out_count) {
    const edd_plan *plan;
    size_t B, n, total, i, j, steps, r0, chunk = 1;
    float *x = out;
    if (!ctx) return EDD_ERR_INVALID_ARGUMENT;
    ctx->error[0] = '\0';
    plan = ctx->plan;
    B = ctx->params.batch;
    n = ctx->sample_size;
    total = B * n;
    steps = plan->num_steps;
    if (!out || out_count != total) {
        FAIL("out must hold batch * sample size = %lu floats, got %lu%s", (unsigned long)total,
             (unsigned long)out_count, out ? "" : " (NULL)");
        return EDD_ERR_INVALID_ARGUMENT;
    }
    draw(ctx, 0);
    edd_init_latent(plan, ctx->noise, total, x);
    for (i = 0; i < steps; i++) {
        float t = plan->model_timesteps[i];
        edd_denoise_args args;
        int rc;
        if (cancelled(ctx)) {
            FAIL("cancelled before step %lu of %lu", (unsigned long)i, (unsigned long)steps);
            return EDD_ERR_CANCELLED;
        }
        edd_model_input(plan, i, x, total, ctx->model_x);
        if (ctx->guided) memcpy(ctx->model_x + total, ctx->model_x, total * sizeof(float));
        for (j = 0; j < ctx->rows; j++) ctx->t[j] = t;
        args.step = i;
        args.num_steps = steps;
        args.sample_ndim = ctx->params.sample_ndim;
        args.sample_shape = ctx->params.sample_shape;
        args.sample_size = n;
        args.group = ctx->step_group ? ctx->step_group[i] : 0;
        args.cached = ctx->cache_flags ? ctx->cache_flags[i] : 0;
        args.cond_ndim = ctx->params.cond_ndim;
        args.cond_shape = ctx->params.cond_shape;
        args.cond_size = ctx->cond ? ctx->cond_size : 0;
        /* the step's rows in one call, or in calls of at most max_rows */
        for (r0 = 0; r0 < ctx->rows; r0 += chunk) {
            chunk =
                ctx->params.max_rows && ctx->params.max_rows < ctx->rows - r0 ? ctx->params.max_rows : ctx->rows - r0;
            args.batch = chunk;
            args.first_row = r0;
            args.x = ctx->model_x + r0 * n;
            args.t = ctx->t + r0;
            args.labels = ctx->labels ? ctx->labels + r0 : NULL;
            args.eps = ctx->model_eps + r0 * n;
            args.cond = ctx->cond ? ctx->cond + r0 * ctx->cond_size : NULL;
            rc = ctx->backend.denoise(ctx->backend.user, &args);
            if (rc != 0) {
                FAIL("backend denoise returned %d at step %lu of %lu (t = %g)", rc, (unsigned long)i,
                     (unsigned long)steps, (double)t);
                return EDD_ERR_BACKEND;
            }
        }
        if (ctx->guided) {
            float g = (float)ctx->params.guidance;
            const float *ec = ctx->model_eps, *eu = ctx->model_eps + total;
            for (j = 0; j < total; j++) {
                float diff = ec[j] - eu[j];
                float scaled = g * diff;
                ctx->eps[j] = eu[j] + scaled;
            }
        }
        if (ctx->params.on_step) {
            edd_step_info info;
            info.step = i;
            info.num_steps = steps;
            info.t = t;
            info.batch = B;
            info.sample_size = n;
            info.x_in = ctx->model_x;
            info.eps = ctx->eps;
            info.group = args.group;
            info.cached = args.cached;
            if (ctx->params.on_step(ctx->params.on_step_user, &info) != 0) {
                FAIL("cancelled by on_step at step %lu of %lu", (unsigned long)i, (unsigned long)steps);
                return EDD_ERR_CANCELLED;
            }
        }
        if (edd_plan_uses_noise(plan, i)) draw(ctx, (uint32_t)(i + 1));
        edd_step(plan, i, total, x, ctx->eps, i ? ctx->carry : NULL, ctx->noise, x, ctx->carry);
    }
    return EDD_OK;
}
