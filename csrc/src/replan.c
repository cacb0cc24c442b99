/* replan.c — edd_plan_with_steps: a plan for another step count (edgediff-run --steps N), and
 * the helpers the solvers' replan methods share. Each solver's own planner (its timesteps and
 * per-step params, as runtimes/samplers/<solver>.py's plan() computes them) lives in its file
 * under src/solvers/.
 *
 * Every formula follows the numpy expression of the Python planner operation by operation
 * (np.linspace: i * step with the last value set to stop; np.arange over floats: start +
 * i * ((start + delta) - start); .round(): ties to even (rint); np.interp: slope * (x - x_j) +
 * y_j in double over the float32 sigma table). tests/test_c_runner.py holds the result to
 * the Python plan's trajectories for every solver and spacing.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double edd__linspace(double stop, size_t num, int endpoint, size_t i) {
    size_t div = endpoint ? num - 1 : num;
    if (div == 0) return 0.0;
    if (endpoint && i == num - 1) return stop;
    return (double)i * (stop / (double)div);
}

double edd__arange_down(double T, size_t n, size_t i, size_t *len) {
    double delta = -T / (double)n, second = T + delta, fill = second - T;
    *len = (size_t)ceil((0.0 - T) / delta);
    if (i == 0) return T;
    if (i == 1) return second;
    return T + (double)i * fill;
}

edd_status edd__bad_spacing(const char *spacing, char *err, size_t err_size) {
    return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                     "unknown timestep spacing '%.32s'; choose one of leading, trailing, linspace", spacing);
}

edd_status edd__timesteps(size_t T, size_t n, const char *spacing, int dpm, int64_t *ts, char *err, size_t err_size) {
    size_t i, len, m = dpm ? n + 1 : n;
    if (strcmp(spacing, "linspace") == 0) {
        for (i = 0; i < n; i++) ts[i] = (int64_t)rint(edd__linspace((double)(T - 1), m, 1, m - 1 - i));
    } else if (strcmp(spacing, "leading") == 0) {
        for (i = 0; i < n; i++) ts[i] = (int64_t)(m - 1 - i) * (int64_t)(T / m);
    } else if (strcmp(spacing, "trailing") == 0) {
        for (i = 0; i < n; i++) {
            double v = edd__arange_down((double)T, n, i, &len);
            if (i >= len)
                return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "trailing spacing yields fewer than %lu steps",
                                 (unsigned long)n);
            ts[i] = (int64_t)rint(v) - 1;
        }
    } else {
        return edd__bad_spacing(spacing, err, err_size);
    }
    return EDD_OK;
}

/* np.interp(t, arange(T), sqrt((1 - ac32) / ac32) in float32), cast to float32, then a final 0 */
void edd__interp_sigmas(const edd_plan *plan, const double *t, size_t n, double *sigmas) {
    size_t T = plan->num_train_timesteps, i;
    for (i = 0; i < n; i++) {
        double x = t[i], y0, y1, r;
        size_t j;
        float a0, a1;
        if (x >= (double)(T - 1)) {
            j = T - 1;
        } else if (x < 0) {
            j = 0;
            x = 0;
        } else {
            j = (size_t)floor(x);
        }
        a0 = (float)plan->alphas_cumprod[j];
        y0 = (double)sqrtf((1.0f - a0) / a0);
        if (j == T - 1) {
            r = y0;
        } else {
            a1 = (float)plan->alphas_cumprod[j + 1];
            y1 = (double)sqrtf((1.0f - a1) / a1);
            r = (y1 - y0) * (x - (double)j) + y0;
        }
        sigmas[i] = (double)(float)r;
    }
    sigmas[n] = 0.0;
}

/* ---- building the new plan's params ---- */

static edd_plan_param *next_param(edd_replan *r, const char *key) {
    edd_plan_param *p = &r->params[r->num_params < EDD_MAX_PARAMS ? r->num_params++ : EDD_MAX_PARAMS - 1];
    memset(p, 0, sizeof *p);
    p->key = key;
    return p;
}

void edd__replan_number(edd_replan *r, const char *key, double value) {
    edd_plan_param *p = next_param(r, key);
    p->kind = EDD_VALUE_NUMBER;
    p->number = value;
}

void edd__replan_array(edd_replan *r, const char *key, const double *values, size_t count) {
    edd_plan_param *p = next_param(r, key);
    p->kind = EDD_VALUE_ARRAY;
    p->values = values;
    p->count = count;
}

void edd__replan_copy(edd_replan *r, const edd_plan *plan, size_t k) {
    const edd_param_value *v = &plan->params[k];
    edd_plan_param *p = next_param(r, plan->solver->params[k].key);
    p->kind = v->is_null ? EDD_VALUE_NULL : EDD_VALUE_NUMBER;
    p->number = v->number;
}

edd_status edd_plan_with_steps(const edd_plan *plan, const char *spacing, size_t n, edd_plan **out, char *err,
                               size_t err_size) {
    size_t T;
    edd_replan r;
    edd_plan_desc desc;
    edd_status st;
    if (err && err_size) err[0] = '\0';
    if (!out) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_plan_with_steps: out is NULL");
    *out = NULL;
    if (!plan) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_plan_with_steps: plan is NULL");
    T = plan->num_train_timesteps;
    if (n < 1 || n > T)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "steps must be an integer in 1..%lu, got %lu",
                         (unsigned long)T, (unsigned long)n);
    if (!plan->solver->replan)
        return edd__fail(err, err_size, EDD_ERR_UNKNOWN_SOLVER, "no planner for solver '%s'", plan->solver->name);
    memset(&r, 0, sizeof r);
    r.n = n;
    r.spacing = spacing ? spacing : "leading";
    r.timesteps = (int64_t *)calloc(n, sizeof *r.timesteps);
    r.scratch[0] = (double *)calloc(n + 1, sizeof(double));
    r.scratch[1] = (double *)calloc(n + 1, sizeof(double));
    if (!r.timesteps || !r.scratch[0] || !r.scratch[1]) {
        st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    } else if ((st = plan->solver->replan(plan, &r, err, err_size)) == EDD_OK) {
        memset(&desc, 0, sizeof desc);
        desc.solver = plan->solver->name;
        desc.prediction_type = plan->prediction == EDD_PREDICT_V        ? "v_prediction"
                               : plan->prediction == EDD_PREDICT_SAMPLE ? "sample"
                                                                        : "epsilon";
        desc.alphas_cumprod = plan->alphas_cumprod;
        desc.num_train_timesteps = T;
        desc.timesteps = r.timesteps;
        desc.num_steps = n;
        desc.params = r.params;
        desc.num_params = r.num_params;
        st = edd_plan_create(&desc, out, err, err_size);
    }
    free(r.timesteps);
    free(r.scratch[0]);
    free(r.scratch[1]);
    return st;
}
