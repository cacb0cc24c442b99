/* lcm.c — Latent Consistency Model multistep sampling, mirroring src/edgediff/runtimes/samplers/lcm.py.
 *
 * Step i at t = timesteps[i], s = timesteps[i + 1]:
 *     x0      = predicted from x and the model output
 *     c_skip  = 0.25 / ((k t)^2 + 0.25),   c_out = k t / sqrt((k t)^2 + 0.25)   (k = timestep_scaling)
 *     D       = c_out x0 + c_skip x
 *     x'      = sqrt(abar_s) D + sqrt(1 - abar_s) z        every step but the last, which returns D
 */
#include "../internal.h"

#include <math.h>

enum { ORIGINAL_INFERENCE_STEPS, TIMESTEP_SCALING };
static const edd_param_spec PARAMS[] = {{"original_inference_steps", EDD_KIND_NUMBER},
                                        {"timestep_scaling", EDD_KIND_NUMBER}};

#define SIGMA_DATA_SQ 0.25 /* 0.5^2 */

static edd_status check(const edd_plan *plan, char *err, size_t err_size) {
    double original = plan->params[ORIGINAL_INFERENCE_STEPS].number;
    size_t T = plan->num_train_timesteps;
    if (!(original == floor(original) && original >= 1 && original <= (double)T))
        return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                         "lcm plan param 'original_inference_steps' must be an integer in 1..%lu, got %g",
                         (unsigned long)T, original);
    return EDD_OK;
}

/* LCM.plan: the distillation grid k - 1, 2k - 1, ... (k = T // original) reversed, at
 * indices floor(linspace(0, original, n, endpoint=False)), whatever the spacing; the same
 * original and scaling */
static edd_status replan(const edd_plan *plan, edd_replan *r, char *err, size_t err_size) {
    size_t orig = (size_t)plan->params[ORIGINAL_INFERENCE_STEPS].number, k = plan->num_train_timesteps / orig, i;
    if (r->n > orig)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "lcm: steps must be an integer in 1..%lu, got %lu",
                         (unsigned long)orig, (unsigned long)r->n);
    for (i = 0; i < r->n; i++) {
        size_t g = (size_t)floor(edd__linspace((double)orig, r->n, 0, i));
        r->timesteps[i] = (int64_t)((orig - g) * k) - 1;
    }
    edd__replan_copy(r, plan, ORIGINAL_INFERENCE_STEPS);
    edd__replan_copy(r, plan, TIMESTEP_SCALING);
    return EDD_OK;
}

static int uses_noise(const edd_plan *plan, size_t i) {
    return i + 1 < plan->num_steps;
}

static void step(const edd_plan *plan, size_t i, size_t n, const float *x, const float *eps, const float *carry,
                 const float *noise, float *x_out, float *carry_out) {
    const double *ac = plan->alphas_cumprod;
    int64_t t = plan->timesteps[i];
    double sa = sqrt(ac[t]), ss = sqrt(1 - ac[t]);
    double scaled = (double)t * plan->params[TIMESTEP_SCALING].number;
    double c_skip = SIGMA_DATA_SQ / (scaled * scaled + SIGMA_DATA_SQ);
    double c_out = scaled / sqrt(scaled * scaled + SIGMA_DATA_SQ);
    int noisy = uses_noise(plan, i);
    double abar_s = noisy ? ac[plan->timesteps[i + 1]] : 1.0;
    double c_d = sqrt(abar_s), c_z = sqrt(1 - abar_s);
    size_t j;
    (void)carry;
    (void)carry_out;
    for (j = 0; j < n; j++) {
        double xj = x[j], x0, e, d;
        edd__x0_eps(plan->prediction, xj, eps[j], sa, ss, &x0, &e);
        d = c_out * x0 + c_skip * xj;
        x_out[j] = noisy ? (float)(c_d * d + c_z * (double)noise[j]) : (float)d;
    }
}

const edd_solver edd__lcm = {
    .name = "lcm",
    .params = PARAMS,
    .num_params = sizeof PARAMS / sizeof PARAMS[0],
    .check = check,
    .replan = replan,
    .uses_noise = uses_noise,
    .step = step,
};
