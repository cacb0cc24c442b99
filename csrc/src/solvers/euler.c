/* euler.c — Euler (Karras et al. 2022, no churn), mirroring src/edgediff/runtimes/samplers/euler.py.
 *
 * Works on the variance-exploding sample x = x_vp sqrt(sigma^2 + 1), sigma_i = sigmas[i]:
 *     x_T      = init_sigma z
 *     model in = x / sqrt(sigma_i^2 + 1)
 *     x0       = x - sigma_i eps      (v: -sigma_i / sqrt(sigma_i^2 + 1) v + x / (sigma_i^2 + 1))
 *     x'       = x + (x - x0) / sigma_i (sigma_{i+1} - sigma_i)
 */
#include "../internal.h"

#include <math.h>
#include <string.h>

enum { SIGMAS, MODEL_TIMESTEPS, INIT_SIGMA };
static const edd_param_spec PARAMS[] = {
    {"sigmas", EDD_KIND_PER_STEP_PLUS_ONE}, {"model_timesteps", EDD_KIND_PER_STEP}, {"init_sigma", EDD_KIND_NUMBER}};

static edd_status check(const edd_plan *plan, char *err, size_t err_size) {
    const double *sig = plan->params[SIGMAS].values;
    size_t i;
    for (i = 0; i < plan->num_steps; i++)
        if (!(sig[i] > 0))
            return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                             "euler plan param 'sigmas' must be > 0 before the last; plan.params.sigmas[%lu] is %g",
                             (unsigned long)i, sig[i]);
    return EDD_OK;
}

/* Euler.plan: euler_timesteps (float32, fractional for "linspace"), their sigmas, and
 * diffusers' init_noise_sigma (max sigma, or sqrt(max^2 + 1) in float32 for "leading") */
static edd_status replan(const edd_plan *plan, edd_replan *r, char *err, size_t err_size) {
    size_t T = plan->num_train_timesteps, n = r->n, i, len;
    double *sigmas = r->scratch[0], *t = r->scratch[1], top = 0;
    const char *spacing = r->spacing;
    int linspace = strcmp(spacing, "linspace") == 0, leading = strcmp(spacing, "leading") == 0;
    if (!linspace && !leading && strcmp(spacing, "trailing") != 0) return edd__bad_spacing(spacing, err, err_size);
    for (i = 0; i < n; i++) {
        float ti;
        if (linspace) {
            ti = (float)edd__linspace((double)(T - 1), n, 1, n - 1 - i);
        } else if (leading) {
            ti = (float)((n - 1 - i) * (T / n));
        } else {
            double v = edd__arange_down((double)T, n, i, &len);
            if (i >= len)
                return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "trailing spacing yields fewer than %lu steps",
                                 (unsigned long)n);
            ti = (float)rint(v) - 1.0f;
        }
        t[i] = (double)ti;
        r->timesteps[i] = (int64_t)rintf(ti);
    }
    edd__interp_sigmas(plan, t, n, sigmas);
    for (i = 0; i < n; i++) top = sigmas[i] > top ? sigmas[i] : top;
    if (leading) {
        float m = (float)top;
        float sq = m * m;
        top = (double)sqrtf(sq + 1.0f);
    }
    edd__replan_array(r, "sigmas", sigmas, n + 1);
    edd__replan_array(r, "model_timesteps", t, n);
    edd__replan_number(r, "init_sigma", top);
    return EDD_OK;
}

static void init_latent(const edd_plan *plan, const float *noise, size_t n, float *x) {
    double init = plan->params[INIT_SIGMA].number;
    size_t j;
    for (j = 0; j < n; j++) x[j] = (float)(init * (double)noise[j]);
}

static void model_input(const edd_plan *plan, size_t i, const float *x, size_t n, float *x_in) {
    double s = plan->params[SIGMAS].values[i];
    double scale = sqrt(s * s + 1);
    size_t j;
    for (j = 0; j < n; j++) x_in[j] = (float)((double)x[j] / scale);
}

static void step(const edd_plan *plan, size_t i, size_t n, const float *x, const float *eps, const float *carry,
                 const float *noise, float *x_out, float *carry_out) {
    double s = plan->params[SIGMAS].values[i], s_next = plan->params[SIGMAS].values[i + 1];
    double ds = s_next - s;
    double c_v = -s / sqrt(s * s + 1), c_vx = s * s + 1;
    size_t j;
    (void)carry;
    (void)noise;
    (void)carry_out;
    for (j = 0; j < n; j++) {
        double xj = x[j], ej = eps[j], x0;
        if (plan->prediction == EDD_PREDICT_EPSILON)
            x0 = xj - s * ej;
        else if (plan->prediction == EDD_PREDICT_V)
            x0 = ej * c_v + xj / c_vx;
        else /* sample */
            x0 = ej;
        x_out[j] = (float)(xj + (xj - x0) / s * ds);
    }
}

const edd_solver edd__euler = {
    .name = "euler",
    .params = PARAMS,
    .num_params = sizeof PARAMS / sizeof PARAMS[0],
    .check = check,
    .replan = replan,
    .init_latent = init_latent,
    .model_input = model_input,
    .step = step,
};
