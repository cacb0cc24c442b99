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

static int uses_noise(const edd_plan *plan, size_t i) { return i + 1 < plan->num_steps; }

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

const edd_solver edd__lcm = {"lcm", PARAMS, sizeof PARAMS / sizeof PARAMS[0], 0, NULL, NULL, NULL, uses_noise, step};
