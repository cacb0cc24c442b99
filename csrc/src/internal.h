/* internal.h — shared by the library's .c files only (not installed).
 *
 * Included first by every source file: it switches off floating-point contraction (fused
 * multiply-add), which the noise specification forbids and which would make the solvers
 * round differently from the Python reference. Build with -ffp-contract=off as well; the
 * pragmas are a second line of defence for builds that forget the flag.
 */
#ifndef EDD_INTERNAL_H
#define EDD_INTERNAL_H

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#elif defined(_MSC_VER)
#pragma fp_contract(off)
#endif

#if defined(__FAST_MATH__)
#error "edgediff must not be built with -ffast-math: the noise is specified bit for bit"
#endif

#include <float.h>
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0 && FLT_EVAL_METHOD != -1
#error "edgediff needs float/double arithmetic without excess precision (x86-32: -msse2 -mfpmath=sse)"
#endif

#include <stddef.h>
#include <stdint.h>

#include "edgediff.h"

/* ---- plan parameters: what a solver declares, what a plan holds ---- */

typedef enum edd_param_kind {
    EDD_KIND_NUMBER,           /* one finite number */
    EDD_KIND_OPTIONAL_NUMBER,  /* one finite number or null */
    EDD_KIND_PER_STEP,         /* n numbers */
    EDD_KIND_PER_STEP_PLUS_ONE /* n + 1 numbers */
} edd_param_kind;

typedef struct edd_param_spec {
    const char *key;
    edd_param_kind kind;
} edd_param_spec;

#define EDD_MAX_PARAMS 8

typedef struct edd_param_value {
    int is_null;    /* OPTIONAL_NUMBER given as null */
    double number;  /* NUMBER / OPTIONAL_NUMBER */
    double *values; /* PER_STEP / PER_STEP_PLUS_ONE, owned by the plan */
} edd_param_value;

typedef enum edd_prediction { EDD_PREDICT_EPSILON, EDD_PREDICT_V, EDD_PREDICT_SAMPLE } edd_prediction;

typedef struct edd_solver edd_solver;

struct edd_plan {
    const edd_solver *solver;
    edd_prediction prediction;
    double *alphas_cumprod; /* T values */
    size_t num_train_timesteps;
    int64_t *timesteps;     /* n values */
    float *model_timesteps; /* n values */
    size_t num_steps;
    edd_param_value params[EDD_MAX_PARAMS]; /* in the order of solver->params */
};

/* What a solver's replan fills in for edd_plan_with_steps: the new plan's timesteps and
 * params (edd_plan_create then validates them like any other plan, check included). */
typedef struct edd_replan {
    size_t n;                              /* the new number of steps */
    const char *spacing;                   /* never NULL ("leading" when the caller gave none) */
    int64_t *timesteps;                    /* n values, to fill */
    double *scratch[2];                    /* two zeroed buffers of n + 1 doubles, for array params */
    edd_plan_param params[EDD_MAX_PARAMS]; /* to fill, any order (edd__replan_* below) */
    size_t num_params;
} edd_replan;

/* A solver, one file each in src/solvers/ (mirroring runtimes/samplers/<name>.py): its plan
 * params (by index into plan->params, in declaration order) and its methods. NULL methods
 * take the defaults of the Python reference's `Deterministic`: check accepts, init_latent
 * and model_input copy, uses_noise is false; a NULL replan refuses edd_plan_with_steps.
 * The registry is the list in plan.c. */
struct edd_solver {
    const char *name;
    const edd_param_spec *params;
    size_t num_params;
    int has_carry;
    /* the solver's own validation, after the generic one (kinds, counts, finiteness) has
     * passed: Solver.check in Python, message for message; write to err, return non-OK */
    edd_status (*check)(const edd_plan *plan, char *err, size_t err_size);
    /* Solver.plan for r->n steps with plan's schedule and options (edd_plan_with_steps) */
    edd_status (*replan)(const edd_plan *plan, edd_replan *r, char *err, size_t err_size);
    void (*init_latent)(const edd_plan *plan, const float *noise, size_t n, float *x);
    void (*model_input)(const edd_plan *plan, size_t i, const float *x, size_t n, float *x_in);
    int (*uses_noise)(const edd_plan *plan, size_t i);
    void (*step)(const edd_plan *plan, size_t i, size_t n, const float *x, const float *eps, const float *carry,
                 const float *noise, float *x_out, float *carry_out);
};

/* ---- planning helpers shared by the solvers' replan (replan.c) ---- */

/* np.linspace(0, stop, num, endpoint)[i] */
double edd__linspace(double stop, size_t num, int endpoint, size_t i);
/* np.arange(T, 0, -T / n) (float), value i; *len gets its length */
double edd__arange_down(double T, size_t n, size_t i, size_t *len);
/* the n int64 timesteps of schedule.timesteps (dpm = 0) or dpmpp_2m.dpm_timesteps (dpm = 1) */
edd_status edd__timesteps(size_t T, size_t n, const char *spacing, int dpm, int64_t *ts, char *err, size_t err_size);
/* the refusal of an unknown spacing, worded as schedule.check_choice words it */
edd_status edd__bad_spacing(const char *spacing, char *err, size_t err_size);
/* base.interp_sigmas: sigmas at (possibly fractional) t[0..n-1], then a final 0 (n + 1 values) */
void edd__interp_sigmas(const edd_plan *plan, const double *t, size_t n, double *sigmas);
/* append a param to r: a number, an array (values must outlive the call: r->scratch), or a
 * copy of plan's number-or-null param k (an option the new plan keeps) */
void edd__replan_number(edd_replan *r, const char *key, double value);
void edd__replan_array(edd_replan *r, const char *key, const double *values, size_t count);
void edd__replan_copy(edd_replan *r, const edd_plan *plan, size_t k);

/* ---- helpers ---- */

/* snprintf into err if err is not NULL; returns status (for `return edd__fail(...)`). */
edd_status edd__fail(char *err, size_t err_size, edd_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* SHA-256 as 64 lowercase hex digits (sha256.c); the file version returns -1 if unreadable */
void edd__sha256(const void *data, size_t n, char hex[65]);
int edd__sha256_file(const char *path, char hex[65]);

/* (x0, eps) from the model output, with x = alpha x0 + sigma eps: base.to_x0_eps. */
static inline void edd__x0_eps(edd_prediction p, double x, double out, double alpha, double sigma, double *x0,
                               double *e) {
    if (p == EDD_PREDICT_EPSILON) {
        *x0 = (x - sigma * out) / alpha;
        *e = out;
    } else if (p == EDD_PREDICT_V) {
        *x0 = alpha * x - sigma * out;
        *e = alpha * out + sigma * x;
    } else { /* sample: the model predicts x0 */
        *x0 = out;
        *e = (x - alpha * out) / sigma;
    }
}

/* np.clip(x0, -c, c) */
static inline double edd__clip(double v, double c) {
    if (v < -c) return -c;
    if (v > c) return c;
    return v;
}

#endif /* EDD_INTERNAL_H */
