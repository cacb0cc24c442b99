/* ddim.c — DDIM, mirroring src/edgediff/runtimes/samplers/ddim.py.
 *
 * Step i goes from t = timesteps[i] to s = prev_timesteps[i]; s < 0 means
 * abar_s = final_alpha_cumprod:
 *     x0, e = predicted from x and the model output      (x0 optionally clipped)
 *     std   = eta sqrt((1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s))
 *     x'    = sqrt(abar_s) x0 + sqrt(1 - abar_s - std^2) e + std z        (z only if eta > 0)
 */
#include "../internal.h"

#include <math.h>

enum { ETA, PREV_TIMESTEPS, FINAL_ALPHA_CUMPROD, CLIP_SAMPLE };
static const edd_param_spec PARAMS[] = {{"eta", EDD_KIND_NUMBER},
                                        {"prev_timesteps", EDD_KIND_PER_STEP},
                                        {"final_alpha_cumprod", EDD_KIND_NUMBER},
                                        {"clip_sample", EDD_KIND_OPTIONAL_NUMBER}};

static edd_status check(const edd_plan *plan, char *err, size_t err_size) {
    const double *prev = plan->params[PREV_TIMESTEPS].values;
    double eta = plan->params[ETA].number, final = plan->params[FINAL_ALPHA_CUMPROD].number;
    const edd_param_value *clip = &plan->params[CLIP_SAMPLE];
    size_t i;
    if (!(eta >= 0))
        return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "ddim plan param 'eta' must be >= 0, got %g", eta);
    for (i = 0; i < plan->num_steps; i++)
        if (prev[i] != floor(prev[i]) || prev[i] >= (double)plan->num_train_timesteps)
            return edd__fail(
                err, err_size, EDD_ERR_BAD_PLAN,
                "ddim plan param 'prev_timesteps' must be integers below %lu; plan.params.prev_timesteps[%lu] "
                "is %g",
                (unsigned long)plan->num_train_timesteps, (unsigned long)i, prev[i]);
    if (!(final > 0 && final <= 1))
        return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                         "ddim plan param 'final_alpha_cumprod' must lie in (0, 1], got %g", final);
    if (!clip->is_null && !(clip->number > 0))
        return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "ddim plan param 'clip_sample' must be > 0 or null, got %g",
                         clip->number);
    return EDD_OK;
}

/* DDIM.plan: schedule.timesteps, prev = t - T // n, the same eta, final_alpha_cumprod and clip_sample */
static edd_status replan(const edd_plan *plan, edd_replan *r, char *err, size_t err_size) {
    size_t T = plan->num_train_timesteps, i;
    edd_status st = edd__timesteps(T, r->n, r->spacing, 0, r->timesteps, err, err_size);
    if (st != EDD_OK) return st;
    for (i = 0; i < r->n; i++) r->scratch[0][i] = (double)(r->timesteps[i] - (int64_t)(T / r->n));
    edd__replan_copy(r, plan, ETA);
    edd__replan_array(r, "prev_timesteps", r->scratch[0], r->n);
    edd__replan_copy(r, plan, FINAL_ALPHA_CUMPROD);
    edd__replan_copy(r, plan, CLIP_SAMPLE);
    return EDD_OK;
}

static int uses_noise(const edd_plan *plan, size_t i) {
    (void)i;
    return plan->params[ETA].number > 0;
}

static void step(const edd_plan *plan, size_t i, size_t n, const float *x, const float *eps, const float *carry,
                 const float *noise, float *x_out, float *carry_out) {
    const double *ac = plan->alphas_cumprod;
    const edd_param_value *clip = &plan->params[CLIP_SAMPLE];
    double eta = plan->params[ETA].number;
    double abar_t = ac[plan->timesteps[i]];
    double s = plan->params[PREV_TIMESTEPS].values[i];
    double abar_s = s >= 0 ? ac[(size_t)s] : plan->params[FINAL_ALPHA_CUMPROD].number;
    double sa = sqrt(abar_t), ss = sqrt(1 - abar_t);
    double std = eta * sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s));
    double c_x0 = sqrt(abar_s), c_e = sqrt(1 - abar_s - std * std);
    int noisy = uses_noise(plan, i);
    size_t j;
    (void)carry;
    (void)carry_out;
    for (j = 0; j < n; j++) {
        double x0, e, v;
        edd__x0_eps(plan->prediction, x[j], eps[j], sa, ss, &x0, &e);
        if (!clip->is_null) x0 = edd__clip(x0, clip->number);
        v = c_x0 * x0 + c_e * e;
        if (noisy) v = v + std * (double)noise[j];
        x_out[j] = (float)v;
    }
}

const edd_solver edd__ddim = {
    .name = "ddim",
    .params = PARAMS,
    .num_params = sizeof PARAMS / sizeof PARAMS[0],
    .check = check,
    .replan = replan,
    .uses_noise = uses_noise,
    .step = step,
};
