/* ddpm.c — DDPM ancestral sampling, mirroring src/edgediff/runtimes/samplers/ddpm.py.
 *
 * Step i goes from t = timesteps[i] to s = timesteps[i + 1] (abar_s = 1 after the last):
 *     x0   = predicted from x and the model output       (optionally clipped to +-clip_sample)
 *     a    = abar_t / abar_s,   b = 1 - a
 *     mean = sqrt(abar_s) b / (1 - abar_t) x0 + sqrt(a) (1 - abar_s) / (1 - abar_t) x
 *     x'   = mean + sqrt(max((1 - abar_s) / (1 - abar_t) b, 1e-20)) z      (z only if t > 0)
 */
#include "../internal.h"

#include <math.h>

enum { CLIP_SAMPLE };
static const edd_param_spec PARAMS[] = {{"clip_sample", EDD_KIND_OPTIONAL_NUMBER}};

static edd_status check(const edd_plan *plan, char *err, size_t err_size) {
    const edd_param_value *clip = &plan->params[CLIP_SAMPLE];
    if (!clip->is_null && !(clip->number > 0))
        return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "ddpm plan param 'clip_sample' must be > 0 or null, got %g",
                         clip->number);
    return EDD_OK;
}

/* DDPM.plan: schedule.timesteps, the same clip_sample */
static edd_status replan(const edd_plan *plan, edd_replan *r, char *err, size_t err_size) {
    edd_status st = edd__timesteps(plan->num_train_timesteps, r->n, r->spacing, 0, r->timesteps, err, err_size);
    if (st != EDD_OK) return st;
    edd__replan_copy(r, plan, CLIP_SAMPLE);
    return EDD_OK;
}

static int uses_noise(const edd_plan *plan, size_t i) {
    return plan->timesteps[i] > 0;
}

static void step(const edd_plan *plan, size_t i, size_t n, const float *x, const float *eps, const float *carry,
                 const float *noise, float *x_out, float *carry_out) {
    const double *ac = plan->alphas_cumprod;
    const edd_param_value *clip = &plan->params[CLIP_SAMPLE];
    double abar_t = ac[plan->timesteps[i]];
    double abar_s = i + 1 < plan->num_steps ? ac[plan->timesteps[i + 1]] : 1.0;
    double alpha = abar_t / abar_s, beta = 1 - abar_t / abar_s;
    double sa = sqrt(abar_t), ss = sqrt(1 - abar_t);
    double c_x0 = sqrt(abar_s) * beta / (1 - abar_t);
    double c_x = sqrt(alpha) * (1 - abar_s) / (1 - abar_t);
    int noisy = uses_noise(plan, i);
    double variance = (1 - abar_s) / (1 - abar_t) * beta, std;
    size_t j;
    (void)carry;
    (void)carry_out;
    if (variance < 1e-20) variance = 1e-20;
    std = sqrt(variance);
    for (j = 0; j < n; j++) {
        double xj = x[j], x0, e, v;
        edd__x0_eps(plan->prediction, xj, eps[j], sa, ss, &x0, &e);
        if (!clip->is_null) x0 = edd__clip(x0, clip->number);
        v = c_x0 * x0 + c_x * xj;
        if (noisy) v = v + std * (double)noise[j];
        x_out[j] = (float)v;
    }
}

const edd_solver edd__ddpm = {
    .name = "ddpm",
    .params = PARAMS,
    .num_params = sizeof PARAMS / sizeof PARAMS[0],
    .check = check,
    .replan = replan,
    .uses_noise = uses_noise,
    .step = step,
};
