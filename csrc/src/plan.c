/* plan.c — the solver registry, plan validation and the solver primitives' dispatch.
 *
 * Validation is the generic part (solver, prediction type, schedule, timesteps, every param's
 * kind, count and finiteness: base.check_params in Python) and then the solver's own check;
 * each message is the one the Python Plan raises for the same plan.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The solver registry. To add a solver, write src/solvers/<name>.c (one `const edd_solver
 * edd__<name>`, mirroring runtimes/samplers/<name>.py) and add <name> to this list; the
 * Makefile and setup.py compile every .c file under src/solvers/. */
#define EDD_SOLVERS(X) X(ddpm) X(ddim) X(dpmpp_2m) X(euler) X(lcm)

#define EDD_DECLARE_SOLVER(name) extern const edd_solver edd__##name;
#define EDD_SOLVER_ADDRESS(name) &edd__##name,
EDD_SOLVERS(EDD_DECLARE_SOLVER)
static const edd_solver *const SOLVERS[] = {EDD_SOLVERS(EDD_SOLVER_ADDRESS)};
#define NUM_SOLVERS (sizeof SOLVERS / sizeof SOLVERS[0])

static const char *kind_text(edd_param_kind kind) {
    switch (kind) {
        case EDD_KIND_NUMBER: return "number";
        case EDD_KIND_OPTIONAL_NUMBER: return "number or null";
        case EDD_KIND_PER_STEP: return "per step";
        default: return "per step + 1";
    }
}

static const edd_solver *find_solver(const char *name) {
    size_t k;
    for (k = 0; k < NUM_SOLVERS; k++)
        if (strcmp(SOLVERS[k]->name, name) == 0) return SOLVERS[k];
    return NULL;
}

/* Append ", item" (or "item" to an empty buf) if it fits, for lists in messages: "a, b, c". */
static void list_append(char *buf, size_t size, const char *item) {
    size_t used = strlen(buf), len = strlen(item), sep = used ? 2 : 0;
    if (used + sep + len + 1 > size) return;
    if (sep) strcpy(buf + used, ", ");
    strcpy(buf + used + sep, item);
}

/* The solver's valid keys, in declaration order. */
static void key_list(const edd_solver *s, char *buf, size_t size) {
    size_t k;
    buf[0] = '\0';
    for (k = 0; k < s->num_params; k++) list_append(buf, size, s->params[k].key);
}

/* check_params of samplers/base.py, and the copy into plan->params */
static edd_status take_params(edd_plan *plan, const edd_plan_desc *d, char *err, size_t err_size) {
    const edd_solver *s = plan->solver;
    const char *name = s->name;
    size_t n = plan->num_steps, i, j, k;
    int seen[EDD_MAX_PARAMS] = {0};
    char keys[256];
    key_list(s, keys, sizeof keys);
    if (d->num_params && !d->params)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "plan params is NULL but num_params = %lu",
                         (unsigned long)d->num_params);
    for (j = 0; j < d->num_params; j++) {
        const edd_plan_param *p = &d->params[j];
        edd_param_value *v;
        edd_param_kind kind;
        if (!p->key)
            return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "plan param %lu has no key", (unsigned long)j);
        for (k = 0; k < s->num_params; k++)
            if (strcmp(s->params[k].key, p->key) == 0) break;
        if (k == s->num_params)
            return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "%s plan has unknown param '%s'; valid: %s", name, p->key,
                             keys);
        if (seen[k])
            return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "%s plan param '%s' is given twice", name, p->key);
        seen[k] = 1;
        kind = s->params[k].kind;
        v = &plan->params[k];
        if (kind == EDD_KIND_NUMBER || kind == EDD_KIND_OPTIONAL_NUMBER) {
            if (p->kind == EDD_VALUE_NULL && kind == EDD_KIND_OPTIONAL_NUMBER) {
                v->is_null = 1;
            } else if (p->kind == EDD_VALUE_NUMBER && isfinite(p->number)) {
                v->number = p->number;
            } else if (p->kind == EDD_VALUE_ARRAY) {
                return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                                 "%s plan param '%s' must be %s (n=%lu), got %lu values", name, p->key, kind_text(kind),
                                 (unsigned long)n, (unsigned long)p->count);
            } else {
                return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "%s plan param '%s' must be %s (n=%lu), got %s", name,
                                 p->key, kind_text(kind), (unsigned long)n,
                                 p->kind == EDD_VALUE_NUMBER ? "a non-finite number" : "null");
            }
        } else {
            size_t want = kind == EDD_KIND_PER_STEP ? n : n + 1;
            if (p->kind != EDD_VALUE_ARRAY)
                return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "%s plan param '%s' must be %s (n=%lu), got %s", name,
                                 p->key, kind_text(kind), (unsigned long)n,
                                 p->kind == EDD_VALUE_NULL ? "null" : "a number");
            if (p->count != want)
                return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                                 "%s plan param '%s' must be %s (n=%lu), got %lu values", name, p->key, kind_text(kind),
                                 (unsigned long)n, (unsigned long)p->count);
            if (!p->values)
                return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "%s plan param '%s' has NULL values", name,
                                 p->key);
            for (i = 0; i < want; i++)
                if (!isfinite(p->values[i]))
                    return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                                     "%s plan param '%s' must be finite numbers; plan.params.%s[%lu] is %g", name,
                                     p->key, p->key, (unsigned long)i, p->values[i]);
            v->values = (double *)malloc(want * sizeof(double));
            if (!v->values)
                return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory copying '%s'", p->key);
            memcpy(v->values, p->values, want * sizeof(double));
        }
    }
    for (k = 0; k < s->num_params; k++)
        if (!seen[k])
            return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "%s plan is missing param '%s'", name, s->params[k].key);
    return EDD_OK;
}

static edd_status build(edd_plan *plan, const edd_plan_desc *d, char *err, size_t err_size) {
    size_t T = d->num_train_timesteps, n = d->num_steps, i, k;
    const char *pred = d->prediction_type ? d->prediction_type : "epsilon";
    if (!d->solver) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "plan solver is NULL");
    plan->solver = find_solver(d->solver);
    if (!plan->solver) {
        char names[256] = "";
        for (k = 0; k < NUM_SOLVERS; k++) list_append(names, sizeof names, SOLVERS[k]->name);
        return edd__fail(err, err_size, EDD_ERR_UNKNOWN_SOLVER, "unknown solver '%.64s'; choose one of %s", d->solver,
                         names);
    }
    if (strcmp(pred, "epsilon") == 0) {
        plan->prediction = EDD_PREDICT_EPSILON;
    } else if (strcmp(pred, "v_prediction") == 0) {
        plan->prediction = EDD_PREDICT_V;
    } else if (strcmp(pred, "sample") == 0) {
        plan->prediction = EDD_PREDICT_SAMPLE;
    } else {
        return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                         "unknown prediction_type '%.64s'; choose one of epsilon, v_prediction, sample", pred);
    }
    if (T < 2 || !d->alphas_cumprod)
        return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "alphas_cumprod must be a list of at least 2 values, got %lu",
                         (unsigned long)T);
    for (i = 0; i < T; i++)
        if (!(d->alphas_cumprod[i] > 0.0 && d->alphas_cumprod[i] <= 1.0))
            return edd__fail(err, err_size, EDD_ERR_BAD_PLAN, "alphas_cumprod values must lie in (0, 1]; [%lu] is %g",
                             (unsigned long)i, d->alphas_cumprod[i]);
    if (n < 1 || !d->timesteps)
        return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                         "plan field 'timesteps' must be a non-empty list of integers");
    for (i = 0; i < n; i++)
        if (d->timesteps[i] < 0 || (uint64_t)d->timesteps[i] >= T || (i && d->timesteps[i] > d->timesteps[i - 1]))
            return edd__fail(err, err_size, EDD_ERR_BAD_PLAN,
                             "plan field 'timesteps' must descend within 0..%lu; plan.timesteps[%lu] is %lld",
                             (unsigned long)(T - 1), (unsigned long)i, (long long)d->timesteps[i]);
    plan->num_train_timesteps = T;
    plan->num_steps = n;
    plan->alphas_cumprod = (double *)malloc(T * sizeof(double));
    plan->timesteps = (int64_t *)malloc(n * sizeof(int64_t));
    plan->model_timesteps = (float *)malloc(n * sizeof(float));
    if (!plan->alphas_cumprod || !plan->timesteps || !plan->model_timesteps)
        return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory copying the plan");
    memcpy(plan->alphas_cumprod, d->alphas_cumprod, T * sizeof(double));
    memcpy(plan->timesteps, d->timesteps, n * sizeof(int64_t));
    {
        edd_status st = take_params(plan, d, err, err_size);
        if (st != EDD_OK) return st;
    }
    /* Plan.model_timesteps: params["model_timesteps"] if the solver has it, else timesteps */
    for (i = 0; i < n; i++) plan->model_timesteps[i] = (float)plan->timesteps[i];
    for (k = 0; k < plan->solver->num_params; k++)
        if (strcmp(plan->solver->params[k].key, "model_timesteps") == 0)
            for (i = 0; i < n; i++) plan->model_timesteps[i] = (float)plan->params[k].values[i];
    return plan->solver->check ? plan->solver->check(plan, err, err_size) : EDD_OK;
}

edd_status edd_plan_create(const edd_plan_desc *desc, edd_plan **out, char *err, size_t err_size) {
    edd_plan *plan;
    edd_status st;
    if (err && err_size) err[0] = '\0';
    if (!out) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_plan_create: out is NULL");
    *out = NULL;
    if (!desc) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_plan_create: desc is NULL");
    plan = (edd_plan *)calloc(1, sizeof *plan);
    if (!plan) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    st = build(plan, desc, err, err_size);
    if (st != EDD_OK) {
        edd_plan_free(plan);
        return st;
    }
    *out = plan;
    return EDD_OK;
}

void edd_plan_free(edd_plan *plan) {
    size_t k;
    if (!plan) return;
    for (k = 0; k < EDD_MAX_PARAMS; k++) free(plan->params[k].values);
    free(plan->alphas_cumprod);
    free(plan->timesteps);
    free(plan->model_timesteps);
    free(plan);
}

/* ---- introspection ---- */

const char *edd_plan_solver(const edd_plan *plan) {
    return plan ? plan->solver->name : "";
}
size_t edd_plan_num_steps(const edd_plan *plan) {
    return plan ? plan->num_steps : 0;
}
int edd_plan_has_carry(const edd_plan *plan) {
    return plan ? plan->solver->has_carry : 0;
}

int64_t edd_plan_timestep(const edd_plan *plan, size_t i) {
    return plan && i < plan->num_steps ? plan->timesteps[i] : -1;
}

float edd_plan_model_timestep(const edd_plan *plan, size_t i) {
    return plan && i < plan->num_steps ? plan->model_timesteps[i] : (float)NAN;
}

int edd_plan_uses_noise(const edd_plan *plan, size_t i) {
    if (!plan || i >= plan->num_steps || !plan->solver->uses_noise) return 0;
    return plan->solver->uses_noise(plan, i) != 0;
}

/* ---- primitives ---- */

edd_status edd_init_latent(const edd_plan *plan, const float *noise, size_t n, float *x) {
    if (!plan || (n && (!noise || !x))) return EDD_ERR_INVALID_ARGUMENT;
    if (plan->solver->init_latent) {
        plan->solver->init_latent(plan, noise, n, x);
    } else if (x != noise) {
        memcpy(x, noise, n * sizeof(float));
    }
    return EDD_OK;
}

edd_status edd_model_input(const edd_plan *plan, size_t i, const float *x, size_t n, float *x_in) {
    if (!plan || i >= plan->num_steps || (n && (!x || !x_in))) return EDD_ERR_INVALID_ARGUMENT;
    if (plan->solver->model_input) {
        plan->solver->model_input(plan, i, x, n, x_in);
    } else if (x_in != x) {
        memcpy(x_in, x, n * sizeof(float));
    }
    return EDD_OK;
}

edd_status edd_step(const edd_plan *plan, size_t i, size_t n, const float *x, const float *eps, const float *carry,
                    const float *noise, float *x_out, float *carry_out) {
    if (!plan || i >= plan->num_steps) return EDD_ERR_INVALID_ARGUMENT;
    if (n == 0) return EDD_OK;
    if (!x || !eps || !x_out) return EDD_ERR_INVALID_ARGUMENT;
    if (plan->solver->has_carry && !carry_out) return EDD_ERR_INVALID_ARGUMENT;
    if (edd_plan_uses_noise(plan, i) && !noise) return EDD_ERR_INVALID_ARGUMENT;
    plan->solver->step(plan, i, n, x, eps, plan->solver->has_carry ? carry : NULL, noise, x_out, carry_out);
    return EDD_OK;
}
