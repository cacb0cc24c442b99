/* replan.c — edd_plan_with_steps: the planners of runtimes/samplers/<solver>.py in C, so that
 * a device can run a bundle at another step count (edgediff-run --steps N).
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

/* np.linspace(0, stop, num, endpoint)[i] */
static double linspace(double stop, size_t num, int endpoint, size_t i) {
    size_t div = endpoint ? num - 1 : num;
    if (div == 0) return 0.0;
    if (endpoint && i == num - 1) return stop;
    return (double)i * (stop / (double)div);
}

/* np.arange(T, 0, -T / n) (float), value i; *len gets its length */
static double arange_down(double T, size_t n, size_t i, size_t *len) {
    double delta = -T / (double)n, second = T + delta, fill = second - T;
    *len = (size_t)ceil((0.0 - T) / delta);
    if (i == 0) return T;
    if (i == 1) return second;
    return T + (double)i * fill;
}

/* the int64 timesteps of schedule.timesteps (ddpm, ddim) or dpm_timesteps (dpm = 1) */
static edd_status grid(size_t T, size_t n, const char *spacing, int dpm, int64_t *ts, char *err, size_t err_size) {
    size_t i, len, m = dpm ? n + 1 : n;
    if (strcmp(spacing, "linspace") == 0) {
        for (i = 0; i < n; i++) ts[i] = (int64_t)rint(linspace((double)(T - 1), m, 1, m - 1 - i));
    } else if (strcmp(spacing, "leading") == 0) {
        for (i = 0; i < n; i++) ts[i] = (int64_t)(m - 1 - i) * (int64_t)(T / m);
    } else if (strcmp(spacing, "trailing") == 0) {
        for (i = 0; i < n; i++) {
            double v = arange_down((double)T, n, i, &len);
            if (i >= len) return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "trailing spacing yields fewer than %lu steps",
                                           (unsigned long)n);
            ts[i] = (int64_t)rint(v) - 1;
        }
    } else {
        return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                         "unknown timestep spacing '%.32s'; choose one of leading, trailing, linspace", spacing);
    }
    return EDD_OK;
}

/* interp_sigmas: np.interp(t, arange(T), sqrt((1 - ac32) / ac32) in float32), cast to float32,
 * then a final 0 */
static void interp_sigmas(const edd_plan *plan, const double *t, size_t n, double *sigmas) {
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

static const edd_param_value *param(const edd_plan *plan, const char *key) {
    size_t k;
    for (k = 0; k < plan->solver->num_params; k++)
        if (strcmp(plan->solver->params[k].key, key) == 0) return &plan->params[k];
    return NULL;
}

edd_status edd_plan_with_steps(const edd_plan *plan, const char *spacing, size_t n, edd_plan **out, char *err,
                               size_t err_size) {
    const char *name;
    size_t T, i, np_ = 0;
    int64_t *ts = NULL;
    double *a = NULL, *b = NULL;
    edd_plan_param pp[EDD_MAX_PARAMS];
    edd_plan_desc desc;
    edd_status st = EDD_OK;
    if (err && err_size) err[0] = '\0';
    if (!out) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_plan_with_steps: out is NULL");
    *out = NULL;
    if (!plan) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_plan_with_steps: plan is NULL");
    name = plan->solver->name;
    T = plan->num_train_timesteps;
    if (!spacing) spacing = "leading";
    if (n < 1 || n > T)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "steps must be an integer in 1..%lu, got %lu",
                         (unsigned long)T, (unsigned long)n);
    ts = (int64_t *)calloc(n, sizeof *ts);
    a = (double *)calloc(n + 1, sizeof *a);
    b = (double *)calloc(n + 1, sizeof *b);
    if (!ts || !a || !b) {
        st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    memset(pp, 0, sizeof pp);
    if (strcmp(name, "ddpm") == 0 || strcmp(name, "ddim") == 0) {
        const edd_param_value *clip = param(plan, "clip_sample");
        if ((st = grid(T, n, spacing, 0, ts, err, err_size))) goto done;
        pp[np_].key = "clip_sample";
        pp[np_].kind = clip->is_null ? EDD_VALUE_NULL : EDD_VALUE_NUMBER;
        pp[np_++].number = clip->number;
        if (strcmp(name, "ddim") == 0) {
            for (i = 0; i < n; i++) a[i] = (double)(ts[i] - (int64_t)(T / n));
            pp[np_].key = "eta";
            pp[np_].kind = EDD_VALUE_NUMBER;
            pp[np_++].number = param(plan, "eta")->number;
            pp[np_].key = "final_alpha_cumprod";
            pp[np_].kind = EDD_VALUE_NUMBER;
            pp[np_++].number = param(plan, "final_alpha_cumprod")->number;
            pp[np_].key = "prev_timesteps";
            pp[np_].kind = EDD_VALUE_ARRAY;
            pp[np_].values = a;
            pp[np_++].count = n;
        }
    } else if (strcmp(name, "dpmpp-2m") == 0) {
        if ((st = grid(T, n, spacing, 1, ts, err, err_size))) goto done;
        for (i = 0; i < n; i++) b[i] = (double)ts[i];
        interp_sigmas(plan, b, n, a);
        pp[np_].key = "sigmas";
        pp[np_].kind = EDD_VALUE_ARRAY;
        pp[np_].values = a;
        pp[np_++].count = n + 1;
    } else if (strcmp(name, "euler") == 0) {
        /* euler_timesteps: float32 */
        size_t len;
        double top = 0;
        for (i = 0; i < n; i++) {
            float t;
            if (strcmp(spacing, "linspace") == 0) {
                t = (float)linspace((double)(T - 1), n, 1, n - 1 - i);
            } else if (strcmp(spacing, "leading") == 0) {
                t = (float)((n - 1 - i) * (T / n));
            } else if (strcmp(spacing, "trailing") == 0) {
                double v = arange_down((double)T, n, i, &len);
                if (i >= len) {
                    st = edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "trailing spacing yields fewer than %lu steps",
                                   (unsigned long)n);
                    goto done;
                }
                t = (float)rint(v) - 1.0f;
            } else {
                st = grid(T, n, spacing, 0, ts, err, err_size); /* the spacing error */
                goto done;
            }
            b[i] = (double)t;
            ts[i] = (int64_t)rintf(t);
        }
        interp_sigmas(plan, b, n, a);
        for (i = 0; i < n; i++) top = a[i] > top ? a[i] : top;
        if (strcmp(spacing, "leading") == 0) {
            float m = (float)top;
            float sq = m * m;
            top = (double)sqrtf(sq + 1.0f);
        }
        pp[np_].key = "sigmas";
        pp[np_].kind = EDD_VALUE_ARRAY;
        pp[np_].values = a;
        pp[np_++].count = n + 1;
        pp[np_].key = "model_timesteps";
        pp[np_].kind = EDD_VALUE_ARRAY;
        pp[np_].values = b;
        pp[np_++].count = n;
        pp[np_].key = "init_sigma";
        pp[np_].kind = EDD_VALUE_NUMBER;
        pp[np_++].number = top;
    } else if (strcmp(name, "lcm") == 0) {
        double original = param(plan, "original_inference_steps")->number;
        size_t orig = (size_t)original, k;
        if (original != floor(original) || orig < 1 || orig > T || n > orig) {
            st = edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "lcm: steps must be an integer in 1..%lu, got %lu",
                           (unsigned long)(original >= 1 && original <= (double)T ? orig : T), (unsigned long)n);
            goto done;
        }
        k = T / orig;
        for (i = 0; i < n; i++) { /* grid[floor(linspace(0, orig, n, endpoint=False))], grid descending */
            size_t g = (size_t)floor(linspace((double)orig, n, 0, i));
            ts[i] = (int64_t)((orig - g) * k) - 1;
        }
        pp[np_].key = "original_inference_steps";
        pp[np_].kind = EDD_VALUE_NUMBER;
        pp[np_++].number = original;
        pp[np_].key = "timestep_scaling";
        pp[np_].kind = EDD_VALUE_NUMBER;
        pp[np_++].number = param(plan, "timestep_scaling")->number;
    } else {
        st = edd__fail(err, err_size, EDD_ERR_UNKNOWN_SOLVER, "no planner for solver '%s'", name);
        goto done;
    }
    memset(&desc, 0, sizeof desc);
    desc.solver = name;
    desc.prediction_type = plan->prediction == EDD_PREDICT_V        ? "v_prediction"
                           : plan->prediction == EDD_PREDICT_SAMPLE ? "sample"
                                                                    : "epsilon";
    desc.alphas_cumprod = plan->alphas_cumprod;
    desc.num_train_timesteps = T;
    desc.timesteps = ts;
    desc.num_steps = n;
    desc.params = pp;
    desc.num_params = np_;
    st = edd_plan_create(&desc, out, err, err_size);
done:
    free(ts);
    free(a);
    free(b);
    return st;
}
