/* dpmpp_2m.c — DPM-Solver++(2M), mirroring src/edgediff/runtimes/samplers/dpmpp_2m.py.
 *
 * sigma_i = sigmas[i] (n + 1 values ending in 0), alpha_i = 1 / sqrt(sigma_i^2 + 1):
 *     x0_i = predicted from x and the model output           (carried to the next step, float32)
 *     r    = log(sigma_{i-1} / sigma_i) / log(sigma_i / sigma_{i+1})
 *     D    = x0_i                                   first step and last step (first order)
 *     D    = x0_i + (x0_i - x0_{i-1}) / (2 r)       otherwise (second order)
 *     x'   = (sigma_{i+1} alpha_{i+1}) / (sigma_i alpha_i) x + alpha_{i+1} (1 - sigma_{i+1} / sigma_i) D
 */
#include "../internal.h"

#include <math.h>

enum { SIGMAS };
static const edd_param_spec PARAMS[] = {{"sigmas", EDD_KIND_PER_STEP_PLUS_ONE}};

static edd_status check(const edd_plan *plan, char *err, size_t err_size) {
    const double *sig = plan->params[SIGMAS].values;
    size_t i, n = plan->num_steps;
    for (i = 0; i < n; i++)
        if (!(sig[i] > 0))
            return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                             "dpmpp-2m plan param 'sigmas' must be > 0 before the last; plan.params.sigmas[%lu] is %g",
                             (unsigned long)i, sig[i]);
    if (!(sig[n] >= 0))
        return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                         "dpmpp-2m plan param 'sigmas' must end in a value >= 0; plan.params.sigmas[%lu] is %g",
                         (unsigned long)n, sig[n]);
    return EDD_OK;
}

/* DPMSolverPP2M.plan: dpm_timesteps (n + 1 points, the last dropped), their sigmas */
static edd_status replan(const edd_plan *plan, edd_replan *r, char *err, size_t err_size) {
    size_t i;
    edd_status st = edd__timesteps(plan->num_train_timesteps, r->n, r->spacing, 1, r->timesteps, err, err_size);
    if (st != EDD_OK) return st;
    for (i = 0; i < r->n; i++) r->scratch[1][i] = (double)r->timesteps[i];
    edd__interp_sigmas(plan, r->scratch[1], r->n, r->scratch[0]);
    edd__replan_array(r, "sigmas", r->scratch[0], r->n + 1);
    return EDD_OK;
}

static void step(const edd_plan *plan, size_t i, size_t n, const float *x, const float *eps, const float *carry,
                 const float *noise, float *x_out, float *carry_out) {
    const double *sig = plan->params[SIGMAS].values;
    double s = sig[i], s_next = sig[i + 1];
    double alpha = 1 / sqrt(s * s + 1), alpha_next = 1 / sqrt(s_next * s_next + 1);
    double sigma = s * alpha;
    int second = carry != NULL && i > 0 && i < plan->num_steps - 1;
    double two_r = second ? 2 * (log(sig[i - 1] / s) / log(s / s_next)) : 1;
    double c_x = (s_next * alpha_next) / (s * alpha);
    double c_d = alpha_next * (1 - s_next / s);
    size_t j;
    (void)noise;
    for (j = 0; j < n; j++) {
        double xj = x[j], x0, e, d;
        edd__x0_eps(plan->prediction, xj, eps[j], alpha, sigma, &x0, &e);
        d = x0;
        if (second) d = x0 + (x0 - (double)carry[j]) / two_r;
        x_out[j] = (float)(c_x * xj + c_d * d);
        carry_out[j] = (float)x0;
    }
}

const edd_solver edd__dpmpp_2m = {
    .name = "dpmpp-2m",
    .params = PARAMS,
    .num_params = sizeof PARAMS / sizeof PARAMS[0],
    .has_carry = 1,
    .check = check,
    .replan = replan,
    .step = step,
};
