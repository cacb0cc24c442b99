/* _cruntime.c — edgediff.runtimes._cruntime: the C runtime as a CPython extension.
 *
 * Argument checking, the buffer protocol and the GIL; the logic is the C library's. Built
 * against the stable ABI (Py_LIMITED_API 3.11: one binary for CPython >= 3.11). numpy is
 * used at run time only, through Python calls (ascontiguousarray / empty), so the build
 * needs no numpy headers; every array crosses into C through the buffer protocol.
 *
 *   Plan(plan_dict)            a validated edd_plan; plan_dict as Plan.to_dict() (or a Plan)
 *   normal(seed, stream, call, n)                      -> float32 (n,)        == rng.normal
 *   init_latent(plan, noise) / model_input(plan, i, x) -> float32 like the input
 *   step(plan, i, x, eps, carry, noise)                -> (x_next, carry)     == solver.step
 *   sample(plan, denoise, seed, streams, *, labels=None, guidance=1.0, null_label=None,
 *          sample_shape, callback=None,                -> float32 (B, *shape) == sampling.sample
 *          step_group=None, num_groups=0, cache_flags=None)
 *       with a step_group or cache_flags table (steps.StepTable), denoise is called as
 *       denoise(x, t, labels, step=(i, group, cached)): edd_denoise_args.group / .cached
 *
 * The GIL is released around every C call and taken back only to call the Python denoiser
 * and callback. Errors a user can cause raise edgediff's EdgediffError with the C text.
 */
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "edgediff.h"

typedef struct {
    PyObject *error;        /* edgediff.core.errors.EdgediffError */
    PyObject *ascontiguous; /* numpy.ascontiguousarray */
    PyObject *empty;        /* numpy.empty */
    PyObject *plan_type;    /* _cruntime.Plan */
} module_state;

typedef struct {
    PyObject_HEAD edd_plan *plan;
} PlanObject;

static module_state *get_state(PyObject *module) {
    return (module_state *)PyModule_GetState(module);
}

/* ---- small converters ------------------------------------------------------------------- */

static PyObject *raise_status(module_state *st, edd_status status, const char *detail) {
    if (status == EDD_ERR_OUT_OF_MEMORY) return PyErr_NoMemory();
    PyErr_Format(st->error, "%s", detail && detail[0] ? detail : edd_status_str(status));
    return NULL;
}

/* An integer in [0, 2^bits), as rng._check_word checks and words it. */
static int as_word(module_state *st, PyObject *obj, const char *name, int bits, uint64_t *out) {
    PyObject *index = PyNumber_Index(obj);
    unsigned long long v = 0;
    int ok = 0;
    if (index) {
        v = PyLong_AsUnsignedLongLong(index);
        ok = !PyErr_Occurred() && (bits == 64 || v < (1ULL << bits));
        Py_DECREF(index);
    }
    if (!ok) {
        PyErr_Clear();
        PyErr_Format(st->error, "rng %s must be an integer in [0, 2^%d), got %R", name, bits, obj);
        return -1;
    }
    *out = v;
    return 0;
}

static int as_int64(module_state *st, PyObject *obj, const char *what, int64_t *out) {
    PyObject *index = PyBool_Check(obj) ? NULL : PyNumber_Index(obj);
    long long v = 0;
    if (index) {
        v = PyLong_AsLongLong(index);
        Py_DECREF(index);
        if (!PyErr_Occurred()) {
            *out = v;
            return 0;
        }
    }
    PyErr_Clear();
    PyErr_Format(st->error, "%s must be an integer, got %R", what, obj);
    return -1;
}

static int as_double(module_state *st, PyObject *obj, const char *what, double *out) {
    double v;
    if (PyBool_Check(obj) || PyUnicode_Check(obj) || PyBytes_Check(obj)) goto bad;
    v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) goto bad;
    *out = v;
    return 0;
bad:
    PyErr_Clear();
    PyErr_Format(st->error, "%s must be a number, got %R", what, obj);
    return -1;
}

/* Any iterable -> PyMem-allocated array (doubles or int64). Returns the count or -1. */
static Py_ssize_t seq_convert(module_state *st, PyObject *obj, const char *what, int integers, void **out) {
    PyObject *it, *item;
    Py_ssize_t n = 0, cap = 16;
    char *buf;
    size_t item_size = integers ? sizeof(int64_t) : sizeof(double);
    *out = NULL;
    if (PyUnicode_Check(obj) || PyBytes_Check(obj) || PyDict_Check(obj) || !(it = PyObject_GetIter(obj))) {
        PyErr_Clear();
        PyErr_Format(st->error, "%s must be a list of %s, got %R", what, integers ? "integers" : "numbers", obj);
        return -1;
    }
    buf = (char *)PyMem_Malloc(cap * item_size);
    if (!buf) {
        Py_DECREF(it);
        PyErr_NoMemory();
        return -1;
    }
    while ((item = PyIter_Next(it))) {
        int rc;
        if (n == cap) {
            char *grown = (char *)PyMem_Realloc(buf, 2 * cap * item_size);
            if (!grown) {
                Py_DECREF(item);
                goto fail_nomem;
            }
            buf = grown;
            cap *= 2;
        }
        rc = integers ? as_int64(st, item, what, (int64_t *)buf + n) : as_double(st, item, what, (double *)buf + n);
        Py_DECREF(item);
        if (rc) goto fail;
        n++;
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        PyMem_Free(buf);
        return -1;
    }
    *out = buf;
    return n;
fail_nomem:
    PyErr_NoMemory();
fail:
    Py_DECREF(it);
    PyMem_Free(buf);
    return -1;
}

/* ---- arrays through the buffer protocol ------------------------------------------------- */

typedef struct {
    PyObject *array; /* the numpy array (owned) */
    Py_buffer view;
    int open;
} array_ref;

static void array_close(array_ref *a) {
    if (a->open) PyBuffer_Release(&a->view);
    a->open = 0;
    Py_CLEAR(a->array);
}

static int array_open(array_ref *a, int writable, Py_ssize_t itemsize) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(a->array, &a->view, flags) < 0) return -1;
    a->open = 1;
    if (a->view.itemsize != itemsize) {
        PyErr_SetString(PyExc_TypeError, "unexpected item size in a converted array");
        return -1;
    }
    return 0;
}

/* obj -> C-contiguous numpy array of dtype ("float32" / "int64"), opened for reading. */
static int array_from(module_state *st, PyObject *obj, const char *dtype, const char *what, array_ref *a) {
    memset(a, 0, sizeof *a);
    a->array = PyObject_CallFunction(st->ascontiguous, "Os", obj, dtype);
    if (!a->array) {
        if (PyErr_ExceptionMatches(PyExc_MemoryError)) return -1;
        PyErr_Clear();
        PyErr_Format(st->error, "%s must be an array of numbers (converted to %s), got %R", what, dtype, obj);
        return -1;
    }
    return array_open(a, 0, strcmp(dtype, "float32") == 0 ? 4 : 8);
}

/* A new numpy array of (lead, *shape) ((*shape) if lead < 0), opened for writing. */
static int array_new(module_state *st, Py_ssize_t lead, const int64_t *shape, size_t ndim, const char *dtype,
                     array_ref *a) {
    PyObject *dims;
    size_t k, off = lead >= 0 ? 1 : 0;
    memset(a, 0, sizeof *a);
    dims = PyTuple_New((Py_ssize_t)(ndim + off));
    if (!dims) return -1;
    if (off) PyTuple_SetItem(dims, 0, PyLong_FromSsize_t(lead));
    for (k = 0; k < ndim; k++) PyTuple_SetItem(dims, (Py_ssize_t)(k + off), PyLong_FromLongLong(shape[k]));
    if (PyErr_Occurred()) {
        Py_DECREF(dims);
        return -1;
    }
    a->array = PyObject_CallFunction(st->empty, "Os", dims, dtype);
    Py_DECREF(dims);
    if (!a->array) return -1;
    return array_open(a, 1, strcmp(dtype, "float32") == 0 ? 4 : 8);
}

/* A new float32 array shaped like `like` (an open array_ref), for outputs. */
static int array_like(module_state *st, const array_ref *like, array_ref *a) {
    int64_t shape[64];
    Py_ssize_t k, ndim = like->view.ndim;
    if (ndim > 64 || (ndim && !like->view.shape)) {
        PyErr_SetString(PyExc_ValueError, "too many dimensions");
        return -1;
    }
    for (k = 0; k < ndim; k++) shape[k] = like->view.shape[k];
    return array_new(st, -1, shape, (size_t)ndim, "float32", a);
}

/* ---- Plan ------------------------------------------------------------------------------- */

static const char *const PLAN_KEYS[] = {"solver", "timesteps", "schedule", "params"};
static const char *const SCHEDULE_KEYS[] = {"alphas_cumprod", "prediction_type"};

/* Reject keys of d not in keys[]; what = "plan" / "schedule". */
static int check_keys(module_state *st, PyObject *d, const char *const *keys, size_t nkeys, const char *what,
                      const char *valid) {
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(d, &pos, &key, &value)) {
        const char *s = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, NULL) : NULL;
        size_t k;
        int found = 0;
        if (!s) PyErr_Clear();
        for (k = 0; s && k < nkeys; k++) found |= strcmp(s, keys[k]) == 0;
        if (!found) {
            PyErr_Format(st->error, "%s has unknown key %R; valid keys: %s", what, key, valid);
            return -1;
        }
    }
    return 0;
}

static PyObject *required(module_state *st, PyObject *d, const char *key, const char *what) {
    PyObject *v = PyDict_GetItemString(d, key); /* borrowed */
    if (!v) PyErr_Format(st->error, "%s is missing the key '%s'", what, key);
    return v;
}

static const char *as_utf8(module_state *st, PyObject *obj, const char *what) {
    const char *s = PyUnicode_Check(obj) ? PyUnicode_AsUTF8AndSize(obj, NULL) : NULL;
    if (!s) {
        PyErr_Clear();
        PyErr_Format(st->error, "%s must be a string, got %R", what, obj);
    }
    return s;
}

/* Plan.to_dict()-shaped object -> a new edd_plan, or NULL with an exception set. */
static edd_plan *plan_from_dict(module_state *st, PyObject *obj) {
    PyObject *d = NULL, *schedule, *params, *v, *key, *value;
    edd_plan_desc desc;
    edd_plan_param *pp = NULL;
    edd_plan *plan = NULL;
    double *ac = NULL;
    int64_t *ts = NULL;
    Py_ssize_t n, T, pos = 0, np_ = 0, k;
    char err[512];
    edd_status status;
    memset(&desc, 0, sizeof desc);

    if (PyDict_Check(obj)) {
        d = obj;
        Py_INCREF(d);
    } else if (PyObject_HasAttrString(obj, "to_dict")) {
        d = PyObject_CallMethod(obj, "to_dict", NULL);
        if (!d) return NULL;
        if (!PyDict_Check(d)) {
            PyErr_Format(st->error, "plan.to_dict() must return a dict, got %R", d);
            goto done;
        }
    } else {
        PyErr_Format(st->error, "plan must be a dict like Plan.to_dict() (or a Plan), got %R", obj);
        return NULL;
    }
    if (check_keys(st, d, PLAN_KEYS, 4, "plan", "solver, timesteps, schedule, params")) goto done;
    if (!(v = required(st, d, "solver", "plan")) || !(desc.solver = as_utf8(st, v, "plan field 'solver'"))) goto done;
    if (!(v = required(st, d, "timesteps", "plan"))) goto done;
    if ((n = seq_convert(st, v, "plan field 'timesteps'", 1, (void **)&ts)) < 0) goto done;
    desc.timesteps = ts;
    desc.num_steps = (size_t)n;
    if (!(schedule = required(st, d, "schedule", "plan"))) goto done;
    if (!PyDict_Check(schedule)) {
        PyErr_Format(st->error, "plan field 'schedule' must be a JSON object, got %R", schedule);
        goto done;
    }
    if (check_keys(st, schedule, SCHEDULE_KEYS, 2, "schedule", "alphas_cumprod, prediction_type")) goto done;
    if (!(v = required(st, schedule, "alphas_cumprod", "schedule"))) goto done;
    if ((T = seq_convert(st, v, "schedule field 'alphas_cumprod'", 0, (void **)&ac)) < 0) goto done;
    desc.alphas_cumprod = ac;
    desc.num_train_timesteps = (size_t)T;
    v = PyDict_GetItemString(schedule, "prediction_type");
    if (v && !(desc.prediction_type = as_utf8(st, v, "schedule field 'prediction_type'"))) goto done;
    if (!(params = required(st, d, "params", "plan"))) goto done;
    if (!PyDict_Check(params)) {
        PyErr_Format(st->error, "plan field 'params' must be a JSON object, got %R", params);
        goto done;
    }
    pp = (edd_plan_param *)PyMem_Calloc((size_t)PyDict_Size(params) + 1, sizeof *pp);
    if (!pp) {
        PyErr_NoMemory();
        goto done;
    }
    while (PyDict_Next(params, &pos, &key, &value)) {
        edd_plan_param *p = &pp[np_];
        if (!(p->key = as_utf8(st, key, "a plan params key"))) goto done;
        np_++;
        if (value == Py_None) {
            p->kind = EDD_VALUE_NULL;
        } else if (PyLong_Check(value) || PyFloat_Check(value) || PyBool_Check(value)) {
            p->kind = EDD_VALUE_NUMBER;
            if (as_double(st, value, "a plan param", &p->number)) {
                PyErr_Format(st->error, "plan param '%s' must be a number, a list of numbers or null, got %R", p->key,
                             value);
                goto done;
            }
        } else {
            Py_ssize_t count;
            void *values;
            PyObject *it = PyObject_GetIter(value);
            p->kind = it ? EDD_VALUE_ARRAY : EDD_VALUE_NUMBER;
            Py_XDECREF(it);
            PyErr_Clear();
            if (p->kind == EDD_VALUE_NUMBER) { /* numpy scalars and other numbers */
                if (as_double(st, value, "a plan param", &p->number)) goto done;
                continue;
            }
            if ((count = seq_convert(st, value, "a plan param", 0, &values)) < 0) {
                PyErr_Clear();
                PyErr_Format(st->error, "plan param '%s' must be a number, a list of numbers or null, got %R", p->key,
                             value);
                goto done;
            }
            p->values = (const double *)values;
            p->count = (size_t)count;
        }
    }
    desc.params = pp;
    desc.num_params = (size_t)np_;
    status = edd_plan_create(&desc, &plan, err, sizeof err);
    if (status != EDD_OK) raise_status(st, status, err);
done:
    for (k = 0; pp && k < np_; k++) PyMem_Free((void *)pp[k].values);
    PyMem_Free(pp);
    PyMem_Free(ac);
    PyMem_Free(ts);
    Py_XDECREF(d);
    return plan;
}

/* A plan argument: a _cruntime.Plan (borrowed) or anything plan_from_dict takes (*owned set). */
static const edd_plan *plan_arg(module_state *st, PyObject *obj, edd_plan **owned) {
    *owned = NULL;
    if (PyObject_TypeCheck(obj, (PyTypeObject *)st->plan_type)) return ((PlanObject *)obj)->plan;
    *owned = plan_from_dict(st, obj);
    return *owned;
}

static PyObject *Plan_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"plan", NULL};
    PyObject *obj, *module = PyType_GetModule(type);
    module_state *st;
    PlanObject *self;
    edd_plan *plan;
    allocfunc alloc;
    if (!module) return NULL;
    st = get_state(module);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Plan", kwlist, &obj)) return NULL;
    if (!(plan = plan_from_dict(st, obj))) return NULL;
    alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    self = (PlanObject *)alloc(type, 0);
    if (!self) {
        edd_plan_free(plan);
        return NULL;
    }
    self->plan = plan;
    return (PyObject *)self;
}

static void Plan_dealloc(PyObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    edd_plan_free(((PlanObject *)self)->plan);
    tp_free(self);
    Py_DECREF(type);
}

static Py_ssize_t Plan_len(PyObject *self) {
    return (Py_ssize_t)edd_plan_num_steps(((PlanObject *)self)->plan);
}

static PyObject *Plan_solver(PyObject *self, void *closure) {
    (void)closure;
    return PyUnicode_FromString(edd_plan_solver(((PlanObject *)self)->plan));
}

static PyObject *Plan_has_carry(PyObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(edd_plan_has_carry(((PlanObject *)self)->plan));
}

static PyObject *Plan_timesteps(PyObject *self, void *closure) {
    const edd_plan *plan = ((PlanObject *)self)->plan;
    size_t i, n = edd_plan_num_steps(plan);
    PyObject *out = PyTuple_New((Py_ssize_t)n);
    for (i = 0; out && i < n; i++)
        PyTuple_SetItem(out, (Py_ssize_t)i,
                        closure ? PyFloat_FromDouble(edd_plan_model_timestep(plan, i))
                                : PyLong_FromLongLong(edd_plan_timestep(plan, i)));
    if (out && PyErr_Occurred()) Py_CLEAR(out);
    return out;
}

static int step_index(module_state *st, const edd_plan *plan, PyObject *obj, size_t *i) {
    int64_t v;
    if (as_int64(st, obj, "step index", &v)) return -1;
    if (v < 0 || (uint64_t)v >= edd_plan_num_steps(plan)) {
        PyErr_Format(st->error, "step index %lld out of range for a plan of %zu steps", (long long)v,
                     edd_plan_num_steps(plan));
        return -1;
    }
    *i = (size_t)v;
    return 0;
}

static PyObject *Plan_uses_noise(PyObject *self, PyObject *arg) {
    PyObject *module = PyType_GetModule(Py_TYPE(self));
    size_t i;
    if (!module || step_index(get_state(module), ((PlanObject *)self)->plan, arg, &i)) return NULL;
    return PyBool_FromLong(edd_plan_uses_noise(((PlanObject *)self)->plan, i));
}

static PyGetSetDef Plan_getset[] = {
    {"solver", Plan_solver, NULL, "solver name", NULL},
    {"timesteps", Plan_timesteps, NULL, "training-grid timesteps (tuple of int)", NULL},
    {"model_timesteps", Plan_timesteps, NULL, "timesteps fed to the model (tuple of float32 values)", "model"},
    {"has_carry", Plan_has_carry, NULL, "whether step() passes a carry on (dpmpp-2m)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Plan_methods[] = {
    {"uses_noise", Plan_uses_noise, METH_O, "uses_noise(i) -> bool: whether step i draws noise"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Plan_slots[] = {
    {Py_tp_doc, (void *)"Plan(plan) -- a validated C plan from a dict shaped like Plan.to_dict() (or a Plan)."},
    {Py_tp_new, (void *)Plan_new},
    {Py_tp_dealloc, (void *)Plan_dealloc},
    {Py_tp_getset, Plan_getset},
    {Py_tp_methods, Plan_methods},
    {Py_mp_length, (void *)Plan_len},
    {0, NULL},
};

static PyType_Spec Plan_spec = {"edgediff.runtimes._cruntime.Plan", sizeof(PlanObject), 0, Py_TPFLAGS_DEFAULT,
                                Plan_slots};

/* ---- normal ------------------------------------------------------------------------------ */

static PyObject *py_normal(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"seed", "stream", "call", "n", NULL};
    module_state *st = get_state(module);
    PyObject *oseed, *ostream, *ocall, *on;
    uint64_t seed, stream, call, n;
    array_ref out;
    int64_t shape[1];
    PyThreadState *ts;
    edd_status status;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO:normal", kwlist, &oseed, &ostream, &ocall, &on)) return NULL;
    if (as_word(st, oseed, "seed", 64, &seed) || as_word(st, ostream, "stream", 32, &stream) ||
        as_word(st, ocall, "call", 32, &call) || as_word(st, on, "n", 34, &n))
        return NULL;
    shape[0] = (int64_t)n;
    if (array_new(st, -1, shape, 1, "float32", &out)) {
        array_close(&out);
        return NULL;
    }
    ts = PyEval_SaveThread();
    status = edd_normal(seed, (uint32_t)stream, (uint32_t)call, (float *)out.view.buf, (size_t)n);
    PyEval_RestoreThread(ts);
    if (out.open) PyBuffer_Release(&out.view);
    if (status != EDD_OK) {
        Py_DECREF(out.array);
        return raise_status(st, status, NULL);
    }
    return out.array;
}

/* ---- solver primitives -------------------------------------------------------------------- */

static PyObject *py_init_latent(PyObject *module, PyObject *args) {
    module_state *st = get_state(module);
    PyObject *oplan, *onoise, *result = NULL;
    edd_plan *owned;
    const edd_plan *plan;
    array_ref noise = {0}, out = {0};
    if (!PyArg_ParseTuple(args, "OO:init_latent", &oplan, &onoise)) return NULL;
    if (!(plan = plan_arg(st, oplan, &owned))) return NULL;
    if (!array_from(st, onoise, "float32", "noise", &noise) && !array_like(st, &noise, &out)) {
        PyThreadState *ts = PyEval_SaveThread();
        edd_status status =
            edd_init_latent(plan, (const float *)noise.view.buf, (size_t)(noise.view.len / 4), (float *)out.view.buf);
        PyEval_RestoreThread(ts);
        if (status == EDD_OK) {
            result = out.array;
            Py_INCREF(result);
        } else {
            raise_status(st, status, NULL);
        }
    }
    array_close(&noise);
    array_close(&out);
    edd_plan_free(owned);
    return result;
}

static PyObject *py_model_input(PyObject *module, PyObject *args) {
    module_state *st = get_state(module);
    PyObject *oplan, *oi, *ox, *result = NULL;
    edd_plan *owned;
    const edd_plan *plan;
    array_ref x = {0}, out = {0};
    size_t i;
    if (!PyArg_ParseTuple(args, "OOO:model_input", &oplan, &oi, &ox)) return NULL;
    if (!(plan = plan_arg(st, oplan, &owned))) return NULL;
    if (!step_index(st, plan, oi, &i) && !array_from(st, ox, "float32", "x", &x) && !array_like(st, &x, &out)) {
        PyThreadState *ts = PyEval_SaveThread();
        edd_status status =
            edd_model_input(plan, i, (const float *)x.view.buf, (size_t)(x.view.len / 4), (float *)out.view.buf);
        PyEval_RestoreThread(ts);
        if (status == EDD_OK) {
            result = out.array;
            Py_INCREF(result);
        } else {
            raise_status(st, status, NULL);
        }
    }
    array_close(&x);
    array_close(&out);
    edd_plan_free(owned);
    return result;
}

/* An optional float32 argument of exactly n values (None -> not opened). */
static int optional_array(module_state *st, PyObject *obj, const char *what, Py_ssize_t n, array_ref *a) {
    memset(a, 0, sizeof *a);
    if (obj == Py_None) return 0;
    if (array_from(st, obj, "float32", what, a)) return -1;
    if (a->view.len / 4 != n) {
        PyErr_Format(st->error, "%s has %zd values, x has %zd", what, a->view.len / 4, n);
        return -1;
    }
    return 0;
}

static PyObject *py_step(PyObject *module, PyObject *args) {
    module_state *st = get_state(module);
    PyObject *oplan, *oi, *ox, *oeps, *ocarry, *onoise, *result = NULL;
    edd_plan *owned;
    const edd_plan *plan;
    array_ref x = {0}, eps = {0}, carry = {0}, noise = {0}, out = {0}, carry_out = {0};
    size_t i;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OOOOOO:step", &oplan, &oi, &ox, &oeps, &ocarry, &onoise)) return NULL;
    if (!(plan = plan_arg(st, oplan, &owned))) return NULL;
    if (step_index(st, plan, oi, &i) || array_from(st, ox, "float32", "x", &x)) goto done;
    n = x.view.len / 4;
    if (optional_array(st, oeps, "eps", n, &eps) || optional_array(st, ocarry, "carry", n, &carry) ||
        optional_array(st, onoise, "noise", n, &noise))
        goto done;
    if (!eps.open) {
        PyErr_SetString(st->error, "eps must be an array like x, got None");
        goto done;
    }
    if (edd_plan_uses_noise(plan, i) && !noise.open) {
        PyErr_Format(st->error, "%s step %zu uses noise, got noise=None", edd_plan_solver(plan), i);
        goto done;
    }
    if (array_like(st, &x, &out) || (edd_plan_has_carry(plan) && array_like(st, &x, &carry_out))) goto done;
    {
        PyThreadState *ts = PyEval_SaveThread();
        edd_status status = edd_step(plan, i, (size_t)n, (const float *)x.view.buf, (const float *)eps.view.buf,
                                     carry.open ? (const float *)carry.view.buf : NULL,
                                     noise.open ? (const float *)noise.view.buf : NULL, (float *)out.view.buf,
                                     carry_out.open ? (float *)carry_out.view.buf : NULL);
        PyEval_RestoreThread(ts);
        if (status != EDD_OK) {
            raise_status(st, status, NULL);
            goto done;
        }
    }
    /* (x_next, carry): the new carry for dpmpp-2m, the one given for the others (as in Python) */
    result = Py_BuildValue("(OO)", out.array, carry_out.open ? carry_out.array : ocarry);
done:
    array_close(&x);
    array_close(&eps);
    array_close(&carry);
    array_close(&noise);
    array_close(&out);
    array_close(&carry_out);
    edd_plan_free(owned);
    return result;
}

/* ---- sample ------------------------------------------------------------------------------- */

typedef struct {
    module_state *st;
    PyObject *denoise;     /* borrowed */
    PyObject *callback;    /* borrowed, or NULL */
    int tables;            /* pass step=(i, group, cached) to denoise */
    PyThreadState *tstate; /* saved while C runs */
    const edd_params *params;
    PyObject *exc_type, *exc_value, *exc_tb; /* the Python error that stopped the run */
} py_run;

static void keep_error(py_run *run) {
    if (!run->exc_type) PyErr_Fetch(&run->exc_type, &run->exc_value, &run->exc_tb);
    PyErr_Clear();
}

/* A new float32 array (rows, *sample_shape) holding a copy of data. */
static PyObject *copy_rows(py_run *run, size_t rows, const float *data) {
    array_ref a;
    PyObject *arr;
    if (array_new(run->st, (Py_ssize_t)rows, run->params->sample_shape, run->params->sample_ndim, "float32", &a)) {
        array_close(&a);
        return NULL;
    }
    memcpy(a.view.buf, data, (size_t)a.view.len);
    PyBuffer_Release(&a.view);
    arr = a.array;
    return arr;
}

static int py_denoise(void *user, const edd_denoise_args *args) {
    py_run *run = (py_run *)user;
    PyObject *x = NULL, *t = NULL, *labels = NULL, *out = NULL;
    array_ref tv = {0}, lv = {0}, ev = {0};
    int64_t rows = (int64_t)args->batch;
    int rc = 1;
    PyEval_RestoreThread(run->tstate);
    if (!(x = copy_rows(run, args->batch, args->x))) goto done;
    if (array_new(run->st, -1, &rows, 1, "float32", &tv)) goto done;
    memcpy(tv.view.buf, args->t, args->batch * sizeof(float));
    t = tv.array;
    Py_INCREF(t);
    if (args->labels) {
        if (array_new(run->st, -1, &rows, 1, "int64", &lv)) goto done;
        memcpy(lv.view.buf, args->labels, args->batch * sizeof(int64_t));
        labels = lv.array;
        Py_INCREF(labels);
    } else {
        labels = Py_None;
        Py_INCREF(labels);
    }
    array_close(&tv);
    array_close(&lv);
    if (run->tables) {
        PyObject *pos = PyTuple_Pack(3, x, t, labels), *kw = NULL;
        if (pos)
            kw = Py_BuildValue("{s:(nnO)}", "step", (Py_ssize_t)args->step, (Py_ssize_t)args->group,
                               args->cached ? Py_True : Py_False);
        if (kw) out = PyObject_Call(run->denoise, pos, kw);
        Py_XDECREF(pos);
        Py_XDECREF(kw);
        if (!out) goto done;
    } else if (!(out = PyObject_CallFunctionObjArgs(run->denoise, x, t, labels, NULL))) {
        goto done;
    }
    if (array_from(run->st, out, "float32", "the denoiser's output", &ev)) goto done;
    if ((size_t)ev.view.len != args->batch * args->sample_size * sizeof(float)) {
        PyErr_Format(run->st->error, "the denoiser returned %zd values for %zu inputs of %zu values each",
                     ev.view.len / 4, args->batch, args->sample_size);
        goto done;
    }
    memcpy(args->eps, ev.view.buf, (size_t)ev.view.len);
    rc = 0;
done:
    if (rc) keep_error(run);
    array_close(&tv);
    array_close(&lv);
    array_close(&ev);
    Py_XDECREF(x);
    Py_XDECREF(t);
    Py_XDECREF(labels);
    Py_XDECREF(out);
    run->tstate = PyEval_SaveThread();
    return rc;
}

static int py_on_step(void *user, const edd_step_info *info) {
    py_run *run = (py_run *)user;
    PyObject *x_in = NULL, *eps = NULL, *r = NULL;
    int rc = 1;
    PyEval_RestoreThread(run->tstate);
    if ((x_in = copy_rows(run, info->batch, info->x_in)) && (eps = copy_rows(run, info->batch, info->eps)))
        r = PyObject_CallFunction(run->callback, "ndOO", (Py_ssize_t)info->step, (double)info->t, x_in, eps);
    if (r)
        rc = 0;
    else
        keep_error(run);
    Py_XDECREF(x_in);
    Py_XDECREF(eps);
    Py_XDECREF(r);
    run->tstate = PyEval_SaveThread();
    return rc;
}

static PyObject *py_sample(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"plan",       "denoise",      "seed",     "streams",    "labels",     "guidance",
                             "null_label", "sample_shape", "callback", "step_group", "num_groups", "cache_flags",
                             NULL};
    module_state *st = get_state(module);
    PyObject *oplan, *denoise, *oseed, *ostreams, *olabels = Py_None, *onull = Py_None, *oshape = NULL;
    PyObject *callback = Py_None, *result = NULL, *ogroups = Py_None, *oflags = Py_None;
    Py_ssize_t num_groups = 0, ngroups = 0, nflags = 0;
    int64_t *groups64 = NULL, *flags64 = NULL;
    uint32_t *groups = NULL;
    uint8_t *flags = NULL;
    double guidance = 1.0;
    edd_plan *owned = NULL;
    const edd_plan *plan;
    edd_params params = edd_default_params();
    edd_backend backend;
    edd_context *ctx = NULL;
    py_run run;
    array_ref labels = {0}, out = {0};
    int64_t *shape = NULL, *streams64 = NULL;
    uint32_t *streams = NULL;
    Py_ssize_t nstreams = 0, ndim, k;
    uint64_t seed;
    char err[512];
    edd_status status;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|$OdOOOOnO:sample", kwlist, &oplan, &denoise, &oseed, &ostreams,
                                     &olabels, &guidance, &onull, &oshape, &callback, &ogroups, &num_groups, &oflags))
        return NULL;
    if (!oshape) {
        PyErr_SetString(PyExc_TypeError, "sample() missing required keyword argument 'sample_shape'");
        return NULL;
    }
    if (!PyCallable_Check(denoise)) {
        PyErr_Format(PyExc_TypeError, "denoise must be callable as denoise(x, t, labels), got %R", denoise);
        return NULL;
    }
    if (callback != Py_None && !PyCallable_Check(callback)) {
        PyErr_Format(PyExc_TypeError, "callback must be callable as callback(i, t, x_in, eps) or None, got %R",
                     callback);
        return NULL;
    }
    if (as_word(st, oseed, "seed", 64, &seed)) return NULL;
    if (!(plan = plan_arg(st, oplan, &owned))) return NULL;

    /* streams: integers in [0, 2^32), at least one (NoiseSource) */
    if ((nstreams = seq_convert(st, ostreams, "streams", 1, (void **)&streams64)) < 0) goto done;
    if (nstreams == 0) {
        PyErr_SetString(st->error, "streams must hold at least one stream (one per image), got none");
        goto done;
    }
    if (!(streams = (uint32_t *)PyMem_Malloc((size_t)nstreams * sizeof *streams))) {
        PyErr_NoMemory();
        goto done;
    }
    for (k = 0; k < nstreams; k++) {
        if (streams64[k] < 0 || streams64[k] > 0xFFFFFFFFLL) {
            PyErr_Format(st->error, "rng stream must be an integer in [0, 2^32), got %lld", (long long)streams64[k]);
            goto done;
        }
        streams[k] = (uint32_t)streams64[k];
    }
    /* sample_shape */
    if ((ndim = seq_convert(st, oshape, "sample_shape", 1, (void **)&shape)) < 0) goto done;
    if (ndim < 1 || ndim > EDD_MAX_NDIM) {
        PyErr_Format(st->error, "sample_shape must have 1..%d dimensions, got %R", EDD_MAX_NDIM, oshape);
        goto done;
    }
    params.sample_ndim = (size_t)ndim;
    for (k = 0; k < ndim; k++) params.sample_shape[k] = shape[k];
    /* labels: None or one integer per image */
    if (olabels != Py_None) {
        if (array_from(st, olabels, "int64", "labels", &labels)) goto done;
        if (labels.view.len / 8 != nstreams) {
            PyErr_Format(st->error, "got %zd labels for a batch of %zd noise streams", labels.view.len / 8, nstreams);
            goto done;
        }
        params.labels = (const int64_t *)labels.view.buf;
    }
    if (onull != Py_None && as_int64(st, onull, "null_label", &params.null_label)) goto done;
    if (onull != Py_None && params.null_label == EDD_NO_LABEL) {
        PyErr_SetString(st->error, "null_label must be above -2^63");
        goto done;
    }
    /* per-step tables (steps.StepTable): checked against the plan by edd_context_create */
    if (ogroups != Py_None) {
        if ((ngroups = seq_convert(st, ogroups, "step_group", 1, (void **)&groups64)) < 0) goto done;
        if (num_groups < 0) {
            PyErr_Format(st->error, "num_groups must be >= 0, got %zd", num_groups);
            goto done;
        }
        if (!(groups = (uint32_t *)PyMem_Malloc((size_t)(ngroups ? ngroups : 1) * sizeof *groups))) {
            PyErr_NoMemory();
            goto done;
        }
        for (k = 0; k < ngroups; k++) {
            if (groups64[k] < 0 || groups64[k] >= num_groups) {
                PyErr_Format(st->error, "step_group[%zd] is %lld; the denoiser serves %zd group(s)", k,
                             (long long)groups64[k], num_groups);
                goto done;
            }
            groups[k] = (uint32_t)groups64[k];
        }
        params.step_group = groups;
        params.num_groups = (size_t)num_groups;
        params.table_steps = (size_t)ngroups;
    }
    if (oflags != Py_None) {
        if ((nflags = seq_convert(st, oflags, "cache_flags", 1, (void **)&flags64)) < 0) goto done;
        if (ogroups != Py_None && nflags != ngroups) {
            PyErr_Format(st->error, "cache_flags has %zd entries, step_group %zd", nflags, ngroups);
            goto done;
        }
        if (!(flags = (uint8_t *)PyMem_Malloc((size_t)(nflags ? nflags : 1)))) {
            PyErr_NoMemory();
            goto done;
        }
        for (k = 0; k < nflags; k++) flags[k] = flags64[k] != 0;
        params.cache_flags = flags;
        params.table_steps = (size_t)nflags;
    }
    params.batch = (size_t)nstreams;
    params.seed = seed;
    params.streams = streams;
    params.guidance = guidance;
    memset(&run, 0, sizeof run);
    run.st = st;
    run.denoise = denoise;
    run.callback = callback == Py_None ? NULL : callback;
    run.tables = ogroups != Py_None || oflags != Py_None;
    run.params = &params;
    if (run.callback) {
        params.on_step = py_on_step;
        params.on_step_user = &run;
    }
    backend.denoise = py_denoise;
    backend.user = &run;
    status = edd_context_create(plan, &backend, &params, &ctx, err, sizeof err);
    if (status != EDD_OK) {
        raise_status(st, status, err);
        goto done;
    }
    if (array_new(st, nstreams, params.sample_shape, params.sample_ndim, "float32", &out)) goto done;
    run.tstate = PyEval_SaveThread();
    status = edd_context_sample(ctx, (float *)out.view.buf, (size_t)(out.view.len / 4));
    PyEval_RestoreThread(run.tstate);
    if (run.exc_type) {
        PyErr_Restore(run.exc_type, run.exc_value, run.exc_tb); /* the denoiser's or callback's own error */
    } else if (status != EDD_OK) {
        raise_status(st, status, edd_context_error(ctx));
    } else {
        result = out.array;
        Py_INCREF(result);
    }
done:
    edd_context_free(ctx);
    array_close(&labels);
    array_close(&out);
    PyMem_Free(shape);
    PyMem_Free(streams);
    PyMem_Free(streams64);
    PyMem_Free(groups64);
    PyMem_Free(groups);
    PyMem_Free(flags64);
    PyMem_Free(flags);
    edd_plan_free(owned);
    return result;
}

/* ---- tokenizer ---------------------------------------------------------------------------- */

/* one text (str or bytes) -> (ids list, full length), or NULL with the error set */
static PyObject *tokenize_one(module_state *st, const edd_tokenizer *tok, PyObject *text, size_t max_len,
                              int32_t *ids) {
    const char *data;
    Py_ssize_t len;
    size_t full = 0;
    char err[512];
    edd_status status;
    PyObject *list, *out;
    PyThreadState *ts;
    if (PyUnicode_Check(text)) {
        data = PyUnicode_AsUTF8AndSize(text, &len);
        if (!data) return NULL;
    } else if (PyBytes_Check(text)) {
        data = PyBytes_AsString(text);
        len = PyBytes_Size(text);
        if (!data || len < 0) return NULL;
    } else {
        PyErr_SetString(PyExc_TypeError, "tokenize: a text must be str or bytes");
        return NULL;
    }
    ts = PyEval_SaveThread(); /* text stays alive: the caller holds it */
    status = edd_tokenizer_encode(tok, data, (size_t)len, ids, max_len, &full, err, sizeof err);
    PyEval_RestoreThread(ts);
    if (status != EDD_OK) return raise_status(st, status, err);
    list = PyList_New((Py_ssize_t)max_len);
    if (!list) return NULL;
    for (size_t i = 0; i < max_len; i++) {
        PyObject *v = PyLong_FromLong((long)ids[i]);
        if (!v) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SetItem(list, (Py_ssize_t)i, v);
    }
    out = Py_BuildValue("(Nn)", list, (Py_ssize_t)full);
    return out;
}

static PyObject *py_tokenize(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"dir", "texts", "max_len", NULL};
    module_state *st = get_state(module);
    const char *dir;
    PyObject *texts, *omax = Py_None, *result = NULL;
    edd_tokenizer *tok = NULL;
    char err[512];
    edd_status status;
    size_t max_len;
    int32_t *ids;
    PyThreadState *ts;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sO|O:tokenize", kwlist, &dir, &texts, &omax)) return NULL;
    ts = PyEval_SaveThread();
    status = edd_tokenizer_load(dir, &tok, err, sizeof err);
    PyEval_RestoreThread(ts);
    if (status != EDD_OK) return raise_status(st, status, err);
    max_len = edd_tokenizer_max_length(tok);
    if (omax != Py_None) {
        Py_ssize_t m = PyNumber_AsSsize_t(omax, PyExc_OverflowError);
        if (m == -1 && PyErr_Occurred()) goto done;
        if (m < 2 || m > 1048576) {
            PyErr_Format(st->error, "tokenize: max_len must be in 2..1048576, got %zd", m);
            goto done;
        }
        max_len = (size_t)m;
    }
    ids = PyMem_Malloc(max_len * sizeof *ids);
    if (!ids) {
        PyErr_NoMemory();
        goto done;
    }
    if (PyList_Check(texts)) {
        Py_ssize_t n = PyList_Size(texts);
        result = PyList_New(n);
        for (Py_ssize_t i = 0; result && i < n; i++) {
            PyObject *one = tokenize_one(st, tok, PyList_GetItem(texts, i), max_len, ids);
            if (!one) {
                Py_CLEAR(result);
                break;
            }
            PyList_SetItem(result, i, one);
        }
    } else {
        result = tokenize_one(st, tok, texts, max_len, ids);
    }
    PyMem_Free(ids);
done:
    edd_tokenizer_free(tok);
    return result;
}

/* ---- the text-to-image pipeline (edd_pipeline) over Python graphs ---------------------------- */

typedef struct {
    module_state *st;
    PyObject *encode, *denoise, *decode; /* borrowed */
    const edd_bundle_info *info;
    PyThreadState *tstate;
    PyObject *exc_type, *exc_value, *exc_tb;
} py_text;

static void text_keep_error(py_text *run) {
    if (!run->exc_type) PyErr_Fetch(&run->exc_type, &run->exc_value, &run->exc_tb);
    PyErr_Clear();
}

/* a new array (rows, *shape) of dtype holding a copy of data */
static PyObject *new_rows(module_state *st, size_t rows, const int64_t *shape, size_t ndim, const char *dtype,
                          const void *data) {
    array_ref a;
    PyObject *arr;
    if (array_new(st, (Py_ssize_t)rows, shape, ndim, dtype, &a)) {
        array_close(&a);
        return NULL;
    }
    memcpy(a.view.buf, data, (size_t)a.view.len);
    PyBuffer_Release(&a.view);
    arr = a.array;
    return arr;
}

/* fn(in) -> float32 with exactly n values, copied to out; 0 or 1 (error kept) */
static int call_into(py_text *run, PyObject *fn, PyObject *in, const char *what, float *out, size_t n) {
    PyObject *r = in ? PyObject_CallFunctionObjArgs(fn, in, NULL) : NULL;
    array_ref v = {0};
    int rc = 1;
    if (r && !array_from(run->st, r, "float32", what, &v)) {
        if ((size_t)v.view.len != n * sizeof(float))
            PyErr_Format(run->st->error, "%s has %zd values; the pipeline needs %zu", what, v.view.len / 4, n);
        else {
            memcpy(out, v.view.buf, n * sizeof(float));
            rc = 0;
        }
    }
    if (rc) text_keep_error(run);
    array_close(&v);
    Py_XDECREF(r);
    return rc;
}

static int pt_run(void *user, const edd_component_args *a) {
    py_text *run = (py_text *)user;
    const edd_bundle_info *info = run->info;
    PyObject *in;
    int rc;
    PyEval_RestoreThread(run->tstate);
    if (a->component == EDD_COMPONENT_TEXT_ENCODER) {
        int64_t L = (int64_t)a->seq_len;
        in = new_rows(run->st, a->batch, &L, 1, "int64", a->ids);
        rc = call_into(run, run->encode, in, "the text encoder's output", a->out, a->batch * a->out_size);
    } else {
        in = new_rows(run->st, a->batch, info->sample_shape, info->sample_ndim, "float32", a->latents);
        rc = call_into(run, run->decode, in, "the VAE decoder's output", a->out, a->batch * a->out_size);
    }
    if (!in) text_keep_error(run);
    Py_XDECREF(in);
    run->tstate = PyEval_SaveThread();
    return rc;
}

static int pt_denoise(void *user, const edd_denoise_args *a) {
    py_text *run = (py_text *)user;
    PyObject *x, *t, *c, *r = NULL;
    int64_t one = 1;
    array_ref v = {0};
    int rc = 1;
    PyEval_RestoreThread(run->tstate);
    x = new_rows(run->st, a->batch, a->sample_shape, a->sample_ndim, "float32", a->x);
    t = new_rows(run->st, a->batch, &one, 0, "float32", a->t);
    c = new_rows(run->st, a->batch, a->cond_shape, a->cond_ndim, "float32", a->cond);
    if (x && t && c) r = PyObject_CallFunctionObjArgs(run->denoise, x, t, c, NULL);
    if (r && !array_from(run->st, r, "float32", "the denoiser's output", &v)) {
        if ((size_t)v.view.len != a->batch * a->sample_size * sizeof(float))
            PyErr_Format(run->st->error, "the denoiser returned %zd values for %zu inputs of %zu values each",
                         v.view.len / 4, a->batch, a->sample_size);
        else {
            memcpy(a->eps, v.view.buf, (size_t)v.view.len);
            rc = 0;
        }
    }
    if (rc) text_keep_error(run);
    array_close(&v);
    Py_XDECREF(x);
    Py_XDECREF(t);
    Py_XDECREF(c);
    Py_XDECREF(r);
    run->tstate = PyEval_SaveThread();
    return rc;
}

static PyObject *py_generate_text(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"dir",      "prompts", "encode",       "denoise",    "decode", "negative_prompt",
                             "guidance", "seed",    "first_stream", "low_memory", NULL};
    module_state *st = get_state(module);
    const char *dir, *negative = "";
    PyObject *oprompts, *encode, *denoise, *decode, *oguidance = Py_None, *oseed = NULL, *result = NULL, *held = NULL;
    Py_ssize_t n = 0, k, first_stream = 0;
    const char **prompts = NULL;
    int low_memory = 0;
    uint64_t seed = 0;
    edd_bundle *bundle = NULL;
    edd_pipeline *pipe = NULL;
    edd_pipeline_backend be;
    edd_text_params tp = edd_default_text_params();
    const edd_bundle_info *info;
    py_text run;
    array_ref out = {0};
    char err[1024];
    edd_status status;
    PyThreadState *ts;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sOOOO|$sOOnp:generate_text", kwlist, &dir, &oprompts, &encode,
                                     &denoise, &decode, &negative, &oguidance, &oseed, &first_stream, &low_memory))
        return NULL;
    if (!PyCallable_Check(encode) || !PyCallable_Check(denoise) || !PyCallable_Check(decode)) {
        PyErr_SetString(PyExc_TypeError, "generate_text: encode, denoise and decode must be callable");
        return NULL;
    }
    if (oseed && as_word(st, oseed, "seed", 64, &seed)) return NULL;
    if (first_stream < 0 || first_stream > 0xFFFFFFFFLL) {
        PyErr_Format(st->error, "first_stream must be in [0, 2^32), got %zd", first_stream);
        return NULL;
    }
    if (!PyList_Check(oprompts) || (n = PyList_Size(oprompts)) < 1) {
        PyErr_SetString(st->error, "prompts must be a non-empty list of strings");
        return NULL;
    }
    if (!(held = PySequence_Tuple(oprompts))) return NULL; /* the texts stay alive while C reads them */
    if (!(prompts = (const char **)PyMem_Malloc((size_t)n * sizeof *prompts))) {
        Py_DECREF(held);
        return PyErr_NoMemory();
    }
    for (k = 0; k < n; k++)
        if (!(prompts[k] = as_utf8(st, PyTuple_GetItem(held, k), "a prompt"))) goto done;
    if (oguidance != Py_None && as_double(st, oguidance, "guidance", &tp.guidance)) goto done;
    ts = PyEval_SaveThread();
    status = edd_bundle_load(dir, &bundle, err, sizeof err);
    PyEval_RestoreThread(ts);
    if (status != EDD_OK) {
        raise_status(st, status, err);
        goto done;
    }
    info = edd_bundle_get_info(bundle);
    memset(&run, 0, sizeof run);
    run.st = st;
    run.encode = encode;
    run.denoise = denoise;
    run.decode = decode;
    run.info = info;
    be.denoise = pt_denoise;
    be.run = pt_run;
    be.load = NULL;
    be.unload = NULL;
    be.error = NULL;
    be.user = &run;
    if ((status = edd_pipeline_create(bundle, &be, &pipe, err, sizeof err)) != EDD_OK) {
        raise_status(st, status, err);
        goto done;
    }
    tp.batch = (size_t)n;
    tp.prompts = prompts;
    tp.negative_prompt = negative;
    tp.seed = seed;
    tp.first_stream = (uint32_t)first_stream;
    tp.low_memory = low_memory;
    tp.unit_hwc = 0; /* (B, 3, H, W) in [-1, 1], as runner.generate_text returns */
    if (array_new(st, n, info->image_shape, 3, "float32", &out)) goto done;
    run.tstate = PyEval_SaveThread();
    status = edd_pipeline_generate(pipe, &tp, (float *)out.view.buf, (size_t)(out.view.len / 4));
    PyEval_RestoreThread(run.tstate);
    if (run.exc_type) {
        PyErr_Restore(run.exc_type, run.exc_value, run.exc_tb); /* the callback's own error */
    } else if (status != EDD_OK) {
        raise_status(st, status, edd_pipeline_error(pipe));
    } else {
        result = out.array;
        Py_INCREF(result);
    }
done:
    array_close(&out);
    edd_pipeline_free(pipe);
    edd_bundle_free(bundle);
    PyMem_Free(prompts);
    Py_XDECREF(held);
    return result;
}

/* ---- module ------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"normal", (PyCFunction)(void (*)(void))py_normal, METH_VARARGS | METH_KEYWORDS,
     "normal(seed, stream, call, n) -> float32 (n,): rng.normal, bit for bit"},
    {"init_latent", py_init_latent, METH_VARARGS, "init_latent(plan, noise) -> x_T (float32, like noise)"},
    {"model_input", py_model_input, METH_VARARGS, "model_input(plan, i, x) -> the model input of step i"},
    {"step", py_step, METH_VARARGS,
     "step(plan, i, x, eps, carry, noise) -> (x_next, carry): one solver update, as Solver.step"},
    {"sample", (PyCFunction)(void (*)(void))py_sample, METH_VARARGS | METH_KEYWORDS,
     "sample(plan, denoise, seed, streams, *, labels=None, guidance=1.0, null_label=None, sample_shape,\n"
     "       callback=None, step_group=None, num_groups=0, cache_flags=None) -> float32 (B, *sample_shape)\n\n"
     "sampling.sample in C: image k uses noise stream streams[k] of seed; denoise(x, t, labels) gets\n"
     "float32 (rows, *sample_shape), float32 (rows,), int64 (rows,) or None and returns eps like x;\n"
     "callback(i, t, x_in, eps) sees each step's model input and (guided) output.\n"
     "step_group (one group index < num_groups per plan step) and cache_flags (one 0/1 per step,\n"
     "0 first): denoise is then called as denoise(x, t, labels, step=(i, group, cached))."},
    {"tokenize", (PyCFunction)(void (*)(void))py_tokenize, METH_VARARGS | METH_KEYWORDS,
     "tokenize(dir, texts, max_len=None) -> (ids, full_len), or a list of them for a list of texts\n\n"
     "The C CLIP tokenizer (edd_tokenizer_load(dir), edd_tokenizer_encode): texts are str or bytes\n"
     "(bytes need not be UTF-8: invalid input raises EdgediffError naming the byte); ids has\n"
     "max_len entries (default: the folder's model_max_length, else 77)."},
    {"generate_text", (PyCFunction)(void (*)(void))py_generate_text, METH_VARARGS | METH_KEYWORDS,
     "generate_text(dir, prompts, encode, denoise, decode, *, negative_prompt='', guidance=None, seed=0,\n"
     "              first_stream=0, low_memory=False) -> float32 (B, 3, H, W) in [-1, 1]\n\n"
     "The C text pipeline (edd_pipeline_generate) over a text bundle folder, the graphs given as Python\n"
     "callables: encode(ids int64 (rows, L)) -> (rows, L, width), denoise(x, t, cond) -> eps like x,\n"
     "decode(latents (rows, C, h, w)) -> (rows, 3, H, W). Image k: prompts[k], noise stream\n"
     "first_stream + k; guidance None = the bundle's. The bundle's files are not hashed here."},
    {"generate_text", (PyCFunction)(void (*)(void))py_generate_text, METH_VARARGS | METH_KEYWORDS,
     "generate_text(dir, prompts, encode, denoise, decode, *, negative_prompt='', guidance=None, seed=0,\n"
     "              first_stream=0, low_memory=False) -> float32 (B, 3, H, W) in [-1, 1]\n\n"
     "The C text pipeline (edd_pipeline_generate) over a text bundle folder, the graphs given as Python\n"
     "callables: encode(ids int64 (rows, L)) -> (rows, L, width), denoise(x, t, cond) -> eps like x,\n"
     "decode(latents (rows, C, h, w)) -> (rows, 3, H, W). Image k: prompts[k], noise stream\n"
     "first_stream + k; guidance None = the bundle's. The bundle's files are not hashed here."},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *module) {
    module_state *st = get_state(module);
    PyObject *numpy, *errors;
    if (!(errors = PyImport_ImportModule("edgediff.core.errors"))) return -1;
    st->error = PyObject_GetAttrString(errors, "EdgediffError");
    Py_DECREF(errors);
    if (!st->error) return -1;
    if (!(numpy = PyImport_ImportModule("numpy"))) return -1;
    st->ascontiguous = PyObject_GetAttrString(numpy, "ascontiguousarray");
    st->empty = PyObject_GetAttrString(numpy, "empty");
    Py_DECREF(numpy);
    if (!st->ascontiguous || !st->empty) return -1;
    if (!(st->plan_type = PyType_FromModuleAndSpec(module, &Plan_spec, NULL))) return -1;
    if (PyModule_AddObjectRef(module, "Plan", st->plan_type) < 0) return -1;
    if (PyModule_AddStringConstant(module, "version", edd_version()) < 0) return -1;
    return 0;
}

static int traverse(PyObject *module, visitproc visit, void *arg) {
    module_state *st = get_state(module);
    Py_VISIT(st->error);
    Py_VISIT(st->ascontiguous);
    Py_VISIT(st->empty);
    Py_VISIT(st->plan_type);
    return 0;
}

static int clear(PyObject *module) {
    module_state *st = get_state(module);
    Py_CLEAR(st->error);
    Py_CLEAR(st->ascontiguous);
    Py_CLEAR(st->empty);
    Py_CLEAR(st->plan_type);
    return 0;
}

static void free_module(void *module) {
    clear((PyObject *)module);
}

static PyModuleDef_Slot slots[] = {{Py_mod_exec, (void *)exec_module}, {0, NULL}};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "edgediff.runtimes._cruntime",
    "The edgediff C sampling runtime (csrc) as an extension module.",
    sizeof(module_state),
    methods,
    slots,
    traverse,
    clear,
    free_module,
};

PyMODINIT_FUNC PyInit__cruntime(void) {
    return PyModuleDef_Init(&moduledef);
}
