/* openvino.c — the OpenVINO backend (edgediff_openvino.h) over OpenVINO's C API.
 *
 * At create: read each graph (the model file, or one per timestep group), check its inputs
 * and outputs against manifest.json (names, element types, shapes), reshape, compile.
 * Per call: pick the graph of args->group, wrap the runtime's buffers as ov tensors (no
 * copies; rebuilt only when a buffer address or the row count changes, which in
 * edd_context_sample is never after a graph's first step), infer, done. The output tensor is
 * the runtime's eps buffer itself. args->cached is not used: every step runs the full model.
 *
 * Every backend of the process shares one ov_core_t (core_acquire / core_release): each core
 * loads its own CPU plugin, and the plugin points the calling thread's signal stack
 * (sigaltstack) at a buffer of its own, putting back the one it found when the core is freed.
 * Two cores freed in the order they were made (a text pipeline's denoiser and its other
 * components; an app's two bundles) left the thread on a freed buffer, and the next signal
 * handled there on the alternate stack crashed the app (SIGSEGV). With one core the buffer
 * lives until the last backend is freed, and the stack found first is the one put back.
 */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* pthread_mutex_* for the shared core */
#endif
#include "edgediff_openvino.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openvino/c/openvino.h>

#if !defined(_WIN32)
#include <pthread.h>
#define EDD_SHARED_CORE 1
static pthread_mutex_t core_lock = PTHREAD_MUTEX_INITIALIZER;
static ov_core_t *shared_core;
static size_t core_users;
#endif

/* the process's core, created by its first user; OK or OpenVINO's status */
static ov_status_e core_acquire(ov_core_t **core) {
#ifdef EDD_SHARED_CORE
    ov_status_e st = OK;
    pthread_mutex_lock(&core_lock);
    if (!shared_core) st = ov_core_create(&shared_core);
    if (st == OK) {
        core_users++;
        *core = shared_core;
    }
    pthread_mutex_unlock(&core_lock);
    return st;
#else
    return ov_core_create(core);
#endif
}

/* one user fewer; the last frees the core */
static void core_release(ov_core_t *core) {
#ifdef EDD_SHARED_CORE
    pthread_mutex_lock(&core_lock);
    if (core == shared_core && --core_users == 0) {
        ov_core_free(shared_core);
        shared_core = NULL;
    }
    pthread_mutex_unlock(&core_lock);
#else
    ov_core_free(core);
#endif
}

#define MAX_IN 3

/* one compiled graph: the bundle's model, or one timestep group's */
typedef struct ov_graph {
    ov_model_t *model;
    ov_compiled_model_t *compiled;
    ov_infer_request_t *request;
    /* the tensors bound now, and what they wrap */
    ov_tensor_t *in[MAX_IN], *out;
    const void *bound_x, *bound_t, *bound_c;
    void *bound_eps;
    size_t bound_rows;
} ov_graph;

struct edd_ov {
    ov_core_t *core;
    ov_graph *graphs; /* num_graphs: one per timestep group, or the one model */
    size_t num_graphs;
    size_t num_inputs; /* 2 or 3 */
    edd_conditioning conditioning;
    size_t cond_size; /* embedding: floats per row */
    int64_t cond_shape[EDD_MAX_NDIM];
    size_t cond_ndim;
    float *zeros; /* embedding: rows * cond_size zeros */
    size_t zeros_rows;
    size_t static_batch;
    char error[512];
};

#if defined(__GNUC__)
#define EDD_PRINTF __attribute__((format(printf, 3, 4)))
#else
#define EDD_PRINTF
#endif
static int say(char *buf, size_t size, const char *fmt, ...) EDD_PRINTF;
static int ov_fail(char *buf, size_t size, const char *fmt, ...) EDD_PRINTF;

/* fmt into buf; returns 1 */
static int say(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    if (!buf || !size) return 1;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return 1;
}

/* after a failed OpenVINO call: fmt + ": <OpenVINO's message>" into buf; returns 1 */
static int ov_fail(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    size_t used;
    const char *msg;
    if (!buf || !size) return 1;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    used = strlen(buf);
    msg = ov_get_last_err_msg();
    if (msg) {
        if (used + 3 < size) {
            /* OpenVINO's messages span lines; keep the first non-empty ones on one line */
            size_t k = used, i;
            buf[k++] = ':';
            buf[k++] = ' ';
            for (i = 0; msg[i] && k + 1 < size; i++) buf[k++] = (msg[i] == '\n' || msg[i] == '\r') ? ' ' : msg[i];
            buf[k] = '\0';
        }
        ov_free(msg);
    }
    return 1;
}

edd_ov_params edd_ov_default_params(void) {
    edd_ov_params p;
    memset(&p, 0, sizeof p);
    p.device = "CPU";
    p.precision = "f32";
    p.threads = 0;
    p.performance_mode = "LATENCY";
    p.static_batch = 0;
    return p;
}

static void unbind(ov_graph *g) {
    size_t k;
    for (k = 0; k < MAX_IN; k++) {
        if (g->in[k]) ov_tensor_free(g->in[k]);
        g->in[k] = NULL;
    }
    if (g->out) ov_tensor_free(g->out);
    g->out = NULL;
    g->bound_x = g->bound_t = g->bound_c = NULL;
    g->bound_eps = NULL;
    g->bound_rows = 0;
}

void edd_ov_free(edd_ov *ov) {
    size_t k;
    if (!ov) return;
    for (k = 0; k < ov->num_graphs; k++) {
        ov_graph *g = &ov->graphs[k];
        unbind(g);
        if (g->request) ov_infer_request_free(g->request);
        if (g->compiled) ov_compiled_model_free(g->compiled);
        if (g->model) ov_model_free(g->model);
    }
    free(ov->graphs);
    if (ov->core) core_release(ov->core);
    free(ov->zeros);
    free(ov);
}

/* ---- the signature check: the model's inputs / outputs against manifest.json ---- */

static const char *type_name(ov_element_type_e t) {
    switch (t) {
        case F32: return "float32";
        case F16: return "float16";
        case BF16: return "bfloat16";
        case F64: return "float64";
        case I64: return "int64";
        case I32: return "int32";
        case I8: return "int8";
        case U8: return "uint8";
        case BOOLEAN: return "bool";
        default: return "another type";
    }
}

/* "[?,1,8,8]" (? = dynamic) */
static void shape_text(const ov_partial_shape_t *ps, char *buf, size_t size) {
    size_t used = 0;
    int64_t d;
    buf[0] = '\0';
    if (ov_rank_is_dynamic(ps->rank)) {
        snprintf(buf, size, "(dynamic rank)");
        return;
    }
    for (d = 0; d < ps->rank.max && used + 1 < size; d++) {
        const ov_dimension_t *dim = &ps->dims[d];
        int n = ov_dimension_is_dynamic(*dim)
                    ? snprintf(buf + used, size - used, "%s?", d ? "," : "[")
                    : snprintf(buf + used, size - used, "%s%lld", d ? "," : "[", (long long)dim->max);
        if (n < 0) return;
        used += (size_t)n;
    }
    if (used + 1 < size) snprintf(buf + used, size - used, "%s]", ps->rank.max ? "" : "[");
}

static void manifest_shape_text(const edd_tensor_info *t, char *buf, size_t size) {
    size_t used = 0, d;
    buf[0] = '\0';
    for (d = 0; d < t->ndim && used + 1 < size; d++) {
        int n = t->shape[d] < 0 ? snprintf(buf + used, size - used, "%s?", d ? "," : "[")
                                : snprintf(buf + used, size - used, "%s%lld", d ? "," : "[", (long long)t->shape[d]);
        if (n < 0) return;
        used += (size_t)n;
    }
    if (used + 1 < size) snprintf(buf + used, size - used, "%s]", t->ndim ? "" : "[");
}

/* one port against its manifest entry (manifest.json `entry`, e.g. "model"): 0, or 1 with err naming the tensor */
static int check_port(const ov_output_const_port_t *port, const char *path, const char *entry, const char *kind,
                      size_t k, const edd_tensor_info *want, char *err, size_t err_size) {
    char *name = NULL, have_shape[160], want_shape[160];
    ov_element_type_e type;
    ov_partial_shape_t ps;
    int64_t d;
    int bad = 0;
    if (ov_port_get_any_name(port, &name) != OK)
        return ov_fail(err, err_size, "%s: cannot read the name of model %s %lu", path, kind, (unsigned long)k);
    if (strcmp(name, want->name) != 0) {
        say(err, err_size, "%s: model %s %lu is named '%.64s', manifest.json %s.%ss[%lu] says '%s'", path, kind,
            (unsigned long)k, name, entry, kind, (unsigned long)k, want->name);
        ov_free(name);
        return 1;
    }
    ov_free(name);
    if (ov_port_get_element_type(port, &type) != OK)
        return ov_fail(err, err_size, "%s: cannot read the element type of %s '%s'", path, kind, want->name);
    if (strcmp(type_name(type), want->dtype) != 0)
        return say(err, err_size,
                   "%s: %s '%s' has element type %s in the model, manifest.json %s.%ss[%lu].dtype "
                   "says %s",
                   path, kind, want->name, type_name(type), entry, kind, (unsigned long)k, want->dtype);
    if (ov_port_get_partial_shape(port, &ps) != OK)
        return ov_fail(err, err_size, "%s: cannot read the shape of %s '%s'", path, kind, want->name);
    if (!ov_rank_is_dynamic(ps.rank)) {
        bad = ps.rank.max != (int64_t)want->ndim;
        /* a fixed size in both that differs; a dynamic size on either side is compatible */
        for (d = 0; !bad && d < ps.rank.max; d++)
            bad = want->shape[d] >= 1 && !ov_dimension_is_dynamic(ps.dims[d]) && ps.dims[d].max != want->shape[d];
    }
    if (bad) {
        shape_text(&ps, have_shape, sizeof have_shape);
        manifest_shape_text(want, want_shape, sizeof want_shape);
        say(err, err_size, "%s: %s '%s' has shape %s in the model, manifest.json %s.%ss[%lu].shape says %s", path, kind,
            want->name, have_shape, entry, kind, (unsigned long)k, want_shape);
    }
    ov_partial_shape_free(&ps);
    return bad;
}

/* the model read from `path` takes and gives what manifest.json `entry` says (names, dtypes, shapes) */
static int check_signature(const ov_model_t *model, const char *entry, size_t num_inputs, const edd_tensor_info *inputs,
                           size_t num_outputs, const edd_tensor_info *outputs, const char *path, char *err,
                           size_t err_size) {
    size_t n_in = 0, n_out = 0, k;
    if (ov_model_inputs_size(model, &n_in) != OK || ov_model_outputs_size(model, &n_out) != OK)
        return ov_fail(err, err_size, "%s: cannot read the model's inputs and outputs", path);
    if (n_in != num_inputs)
        return say(err, err_size, "%s: the model has %lu inputs, manifest.json %s.inputs lists %lu", path,
                   (unsigned long)n_in, entry, (unsigned long)num_inputs);
    if (n_out != num_outputs)
        return say(err, err_size, "%s: the model has %lu outputs, manifest.json %s.outputs lists %lu", path,
                   (unsigned long)n_out, entry, (unsigned long)num_outputs);
    for (k = 0; k < n_in + n_out; k++) {
        int is_in = k < n_in, rc;
        size_t i = is_in ? k : k - n_in;
        ov_output_const_port_t *port = NULL;
        if ((is_in ? ov_model_const_input_by_index(model, i, &port)
                   : ov_model_const_output_by_index(model, i, &port)) != OK)
            return ov_fail(err, err_size, "%s: cannot read model %s %lu", path, is_in ? "input" : "output",
                           (unsigned long)i);
        rc = check_port(port, path, entry, is_in ? "input" : "output", i, is_in ? &inputs[i] : &outputs[i], err,
                        err_size);
        ov_output_const_port_free(port);
        if (rc) return 1;
    }
    return 0;
}

/* reshape every input to static_batch rows (the manifest's shapes, batch replaced) */
static int reshape(edd_ov *ov, ov_model_t *model, const edd_bundle_info *info, const char *path, char *err,
                   size_t err_size) {
    ov_partial_shape_t shapes[MAX_IN];
    size_t idx[MAX_IN], k, d;
    ov_status_e st;
    int rc = 0;
    for (k = 0; k < ov->num_inputs; k++) {
        int64_t dims[EDD_MAX_NDIM];
        const edd_tensor_info *t = &info->inputs[k];
        int bad = t->ndim < 1;
        for (d = 0; d < t->ndim; d++) {
            dims[d] = d == 0 ? (int64_t)ov->static_batch : t->shape[d];
            bad |= dims[d] < 1;
        }
        idx[k] = k;
        if (bad || ov_partial_shape_create_static((int64_t)t->ndim, dims, &shapes[k]) != OK) {
            size_t j;
            for (j = 0; j < k; j++) ov_partial_shape_free(&shapes[j]);
            return say(err, err_size,
                       "%s: cannot make input %s static (manifest shape has a dynamic dimension "
                       "besides the batch)",
                       path, t->name);
        }
    }
    st = ov_model_reshape_by_port_indexes(model, idx, shapes, ov->num_inputs);
    if (st != OK)
        rc = ov_fail(err, err_size, "%s: cannot reshape the model to batch %lu", path, (unsigned long)ov->static_batch);
    for (k = 0; k < ov->num_inputs; k++) ov_partial_shape_free(&shapes[k]);
    return rc;
}

edd_status edd_ov_create(const edd_bundle_info *info, const edd_ov_params *params, edd_ov **out, char *err,
                         size_t err_size) {
    edd_ov *ov;
    edd_ov_params p = params ? *params : edd_ov_default_params();
    char threads[24];
    const char *props[6];
    size_t nprops = 0, k, d;
    ov_status_e st;
    if (err && err_size) err[0] = '\0';
    if (!out) {
        say(err, err_size, "edd_ov_create: out is NULL");
        return EDD_ERR_INVALID_ARGUMENT;
    }
    *out = NULL;
    if (!info || !info->model_path || (info->num_groups && !info->group_paths)) {
        say(err, err_size, "edd_ov_create: no model path (load the bundle with edd_bundle_load)");
        return EDD_ERR_INVALID_ARGUMENT;
    }
    if (info->num_inputs < 2 || info->num_inputs > MAX_IN || info->num_outputs < 1) {
        say(err, err_size, "%s: the OpenVINO backend takes 2 or 3 inputs and 1 output, the manifest lists %lu and %lu",
            info->model_path, (unsigned long)info->num_inputs, (unsigned long)info->num_outputs);
        return EDD_ERR_INVALID_ARGUMENT;
    }
    ov = (edd_ov *)calloc(1, sizeof *ov);
    if (!ov) return EDD_ERR_OUT_OF_MEMORY;
    ov->num_inputs = info->num_inputs;
    ov->conditioning = info->conditioning;
    ov->static_batch = p.static_batch;
    if (ov->num_inputs == 3 && info->conditioning == EDD_COND_EMBEDDING) {
        const edd_tensor_info *c = &info->inputs[2];
        ov->cond_size = 1;
        ov->cond_ndim = c->ndim - 1;
        for (d = 1; d < c->ndim; d++) {
            if (c->shape[d] < 1) {
                say(err, err_size, "%s: condition input %s has a dynamic dimension", info->model_path, c->name);
                edd_ov_free(ov);
                return EDD_ERR_BAD_BUNDLE;
            }
            ov->cond_shape[d - 1] = c->shape[d];
            ov->cond_size *= (size_t)c->shape[d];
        }
    }
    if (core_acquire(&ov->core) != OK) {
        ov_fail(err, err_size, "OpenVINO: cannot create a core");
        edd_ov_free(ov);
        return EDD_ERR_BACKEND;
    }
    if (p.precision) {
        props[nprops++] = ov_property_key_hint_inference_precision;
        props[nprops++] = p.precision;
    }
    if (p.performance_mode) {
        props[nprops++] = ov_property_key_hint_performance_mode;
        props[nprops++] = p.performance_mode;
    }
    if (p.threads > 0) {
        snprintf(threads, sizeof threads, "%d", p.threads);
        props[nprops++] = ov_property_key_inference_num_threads;
        props[nprops++] = threads;
    }
    for (k = nprops; k < 6; k++) props[k] = NULL;
    /* one graph per timestep group (scheduler.json timestep_groups), else the model file */
    ov->graphs = (ov_graph *)calloc(info->num_groups ? info->num_groups : 1, sizeof *ov->graphs);
    if (!ov->graphs) {
        edd_ov_free(ov);
        return EDD_ERR_OUT_OF_MEMORY;
    }
    for (k = 0; k < (info->num_groups ? info->num_groups : 1); k++) {
        const char *path = info->num_groups ? info->group_paths[k] : info->model_path;
        ov_graph *g = &ov->graphs[k];
        ov->num_graphs = k + 1;
        if (ov_core_read_model(ov->core, path, NULL, &g->model) != OK) {
            ov_fail(err, err_size, "%s: OpenVINO cannot read the model", path);
            edd_ov_free(ov);
            return EDD_ERR_BACKEND;
        }
        if (check_signature(g->model, "model", info->num_inputs, info->inputs, info->num_outputs, info->outputs, path,
                            err, err_size)) {
            edd_ov_free(ov);
            return EDD_ERR_BAD_BUNDLE;
        }
        if (p.static_batch && reshape(ov, g->model, info, path, err, err_size)) {
            edd_ov_free(ov);
            return EDD_ERR_BACKEND;
        }
        st = ov_core_compile_model(ov->core, g->model, p.device ? p.device : "CPU", nprops, &g->compiled, props[0],
                                   props[1], props[2], props[3], props[4], props[5]);
        if (st != OK) {
            ov_fail(err, err_size, "%s: OpenVINO cannot compile the model for %s", path, p.device ? p.device : "CPU");
            edd_ov_free(ov);
            return EDD_ERR_BACKEND;
        }
        if (ov_compiled_model_create_infer_request(g->compiled, &g->request) != OK) {
            ov_fail(err, err_size, "%s: OpenVINO cannot create an infer request", path);
            edd_ov_free(ov);
            return EDD_ERR_BACKEND;
        }
    }
    *out = ov;
    return EDD_OK;
}

size_t edd_ov_num_graphs(const edd_ov *ov) {
    return ov ? ov->num_graphs : 0;
}

edd_backend edd_ov_backend(edd_ov *ov) {
    edd_backend b;
    b.denoise = edd_ov_denoise;
    b.user = ov;
    return b;
}

const char *edd_ov_error(const edd_ov *ov) {
    return ov ? ov->error : "edd_ov_error: ov is NULL";
}

void edd_ov_version(char *buf, size_t size) {
    ov_version_t v;
    if (!buf || !size) return;
    if (ov_get_openvino_version(&v) == OK) {
        snprintf(buf, size, "%s", v.buildNumber ? v.buildNumber : "?");
        ov_version_free(&v);
    } else {
        snprintf(buf, size, "unknown");
    }
}

static int wrap(edd_ov *ov, ov_element_type_e type, size_t ndim, const int64_t *dims, const void *data,
                ov_tensor_t **out) {
    ov_shape_t shape;
    ov_status_e st;
    if (ov_shape_create((int64_t)ndim, dims, &shape) != OK)
        return ov_fail(ov->error, sizeof ov->error, "OpenVINO: cannot create a shape");
    st = ov_tensor_create_from_host_ptr(type, shape, (void *)(size_t)data, out); /* inputs are only read */
    ov_shape_free(&shape);
    if (st != OK) return ov_fail(ov->error, sizeof ov->error, "OpenVINO: cannot wrap a buffer as a tensor");
    return 0;
}

/* (re)bind the tensors when a buffer or the row count changed */
static int bind(edd_ov *ov, ov_graph *g, const edd_denoise_args *a) {
    int64_t dims[EDD_MAX_NDIM + 1];
    const void *cond = NULL;
    size_t k, rows = a->batch;
    if (ov->num_inputs == 3) {
        if (ov->conditioning == EDD_COND_TEXT) {
            if (!a->cond || a->cond_ndim < 1 || a->cond_ndim > EDD_MAX_NDIM - 1)
                return say(ov->error, sizeof ov->error, "the model takes text embeddings, but the run has none");
            cond = a->cond;
        } else if (ov->conditioning == EDD_COND_EMBEDDING) {
            if (ov->zeros_rows < rows) {
                free(ov->zeros);
                ov->zeros = (float *)calloc(rows * ov->cond_size, sizeof(float));
                ov->zeros_rows = ov->zeros ? rows : 0;
                if (!ov->zeros) return say(ov->error, sizeof ov->error, "out of memory");
            }
            cond = ov->zeros;
        } else {
            if (!a->labels)
                return say(ov->error, sizeof ov->error, "the model takes class labels, but the run has none");
            cond = a->labels;
        }
    }
    if (g->bound_rows == rows && g->bound_x == a->x && g->bound_t == a->t && g->bound_c == cond &&
        g->bound_eps == a->eps)
        return 0;
    unbind(g);
    dims[0] = (int64_t)rows;
    for (k = 0; k < a->sample_ndim; k++) dims[k + 1] = a->sample_shape[k];
    if (wrap(ov, F32, a->sample_ndim + 1, dims, a->x, &g->in[0]) || wrap(ov, F32, 1, dims, a->t, &g->in[1]) ||
        wrap(ov, F32, a->sample_ndim + 1, dims, a->eps, &g->out))
        return 1;
    if (ov->num_inputs == 3) {
        if (ov->conditioning == EDD_COND_TEXT) {
            for (k = 0; k < a->cond_ndim; k++) dims[k + 1] = a->cond_shape[k];
            if (wrap(ov, F32, a->cond_ndim + 1, dims, cond, &g->in[2])) return 1;
        } else if (ov->conditioning == EDD_COND_EMBEDDING) {
            for (k = 0; k < ov->cond_ndim; k++) dims[k + 1] = ov->cond_shape[k];
            if (wrap(ov, F32, ov->cond_ndim + 1, dims, cond, &g->in[2])) return 1;
        } else if (wrap(ov, I64, 1, dims, cond, &g->in[2])) {
            return 1;
        }
    }
    for (k = 0; k < ov->num_inputs; k++)
        if (ov_infer_request_set_input_tensor_by_index(g->request, k, g->in[k]) != OK)
            return ov_fail(ov->error, sizeof ov->error, "OpenVINO: cannot set input %lu", (unsigned long)k);
    if (ov_infer_request_set_output_tensor_by_index(g->request, 0, g->out) != OK)
        return ov_fail(ov->error, sizeof ov->error, "OpenVINO: cannot set the output");
    g->bound_rows = rows;
    g->bound_x = a->x;
    g->bound_t = a->t;
    g->bound_c = cond;
    g->bound_eps = a->eps;
    return 0;
}

int edd_ov_denoise(void *user, const edd_denoise_args *args) {
    edd_ov *ov = (edd_ov *)user;
    ov_graph *g;
    if (!ov || !args) return 1;
    ov->error[0] = '\0';
    if (ov->static_batch && args->batch != ov->static_batch) {
        snprintf(ov->error, sizeof ov->error, "the model was compiled for %lu rows per call, got %lu",
                 (unsigned long)ov->static_batch, (unsigned long)args->batch);
        return 2;
    }
    if (args->group >= ov->num_graphs) {
        snprintf(ov->error, sizeof ov->error,
                 "step %lu is served by timestep group %lu, but the backend has %lu graph(s)",
                 (unsigned long)args->step, (unsigned long)args->group, (unsigned long)ov->num_graphs);
        return 5;
    }
    g = &ov->graphs[args->group];
    if (bind(ov, g, args)) {
        unbind(g);
        return 3;
    }
    if (ov_infer_request_infer(g->request) != OK) {
        ov_fail(ov->error, sizeof ov->error, "OpenVINO inference failed at step %lu", (unsigned long)args->step);
        return 4;
    }
    return 0;
}

/* ---- a text bundle's three graphs (edd_ov_text) ---- */

struct edd_ov_text {
    edd_bundle_info info; /* a copy: the strings point into the caller's bundle */
    edd_ov_params params;
    edd_ov *denoiser;   /* while the denoiser is loaded */
    ov_core_t *core;    /* the components' core (while one is loaded) */
    ov_graph graphs[2]; /* text encoder, decoder (model == NULL: not loaded) */
    char error[768];
};

static const char *const COMPONENT_ENTRY[2] = {"components.text_encoder", "components.vae_decoder"};

edd_status edd_ov_text_create(const edd_bundle_info *info, const edd_ov_params *params, edd_ov_text **out, char *err,
                              size_t err_size) {
    edd_ov_text *t;
    if (err && err_size) err[0] = '\0';
    if (!out) return say(err, err_size, "edd_ov_text_create: out is NULL"), EDD_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (!info || info->conditioning != EDD_COND_TEXT || !info->text_encoder.path || !info->vae_decoder.path ||
        !info->model_path) {
        say(err, err_size, "edd_ov_text_create: needs a text bundle from edd_bundle_load");
        return EDD_ERR_INVALID_ARGUMENT;
    }
    t = (edd_ov_text *)calloc(1, sizeof *t);
    if (!t) return EDD_ERR_OUT_OF_MEMORY;
    t->info = *info;
    t->params = params ? *params : edd_ov_default_params();
    *out = t;
    return EDD_OK;
}

static void free_graph(ov_graph *g) {
    unbind(g);
    if (g->request) ov_infer_request_free(g->request);
    if (g->compiled) ov_compiled_model_free(g->compiled);
    if (g->model) ov_model_free(g->model);
    memset(g, 0, sizeof *g);
}

static void text_unload(void *user, edd_component which) {
    edd_ov_text *t = (edd_ov_text *)user;
    if (which == EDD_COMPONENT_DENOISER) {
        edd_ov_free(t->denoiser);
        t->denoiser = NULL;
    } else {
        free_graph(&t->graphs[which == EDD_COMPONENT_TEXT_ENCODER ? 0 : 1]);
    }
    if (!t->graphs[0].model && !t->graphs[1].model && t->core) {
        core_release(t->core);
        t->core = NULL;
    }
}

void edd_ov_text_free(edd_ov_text *t) {
    if (!t) return;
    text_unload(t, EDD_COMPONENT_TEXT_ENCODER);
    text_unload(t, EDD_COMPONENT_VAE_DECODER);
    text_unload(t, EDD_COMPONENT_DENOISER);
    free(t);
}

static int text_load(void *user, edd_component which) {
    edd_ov_text *t = (edd_ov_text *)user;
    const edd_ov_params *p = &t->params;
    const edd_component_info *ci;
    ov_graph *g;
    char threads[24];
    const char *props[6];
    size_t nprops = 0, k;
    t->error[0] = '\0';
    if (which == EDD_COMPONENT_DENOISER) {
        if (t->denoiser) return 0;
        return edd_ov_create(&t->info, p, &t->denoiser, t->error, sizeof t->error) != EDD_OK;
    }
    k = which == EDD_COMPONENT_TEXT_ENCODER ? 0 : 1;
    ci = k == 0 ? &t->info.text_encoder : &t->info.vae_decoder;
    g = &t->graphs[k];
    if (g->model) return 0;
    if (ci->num_inputs != 1 || ci->num_outputs < 1)
        return say(t->error, sizeof t->error,
                   "%s: the OpenVINO backend takes 1 input and 1 output, %s lists %lu and %lu", ci->path,
                   COMPONENT_ENTRY[k], (unsigned long)ci->num_inputs, (unsigned long)ci->num_outputs);
    if (!t->core && core_acquire(&t->core) != OK)
        return ov_fail(t->error, sizeof t->error, "OpenVINO: cannot create a core");
    if (ov_core_read_model(t->core, ci->path, NULL, &g->model) != OK) {
        ov_fail(t->error, sizeof t->error, "%s: OpenVINO cannot read the model", ci->path);
        free_graph(g);
        return 1;
    }
    if (check_signature(g->model, COMPONENT_ENTRY[k], ci->num_inputs, ci->inputs, ci->num_outputs, ci->outputs,
                        ci->path, t->error, sizeof t->error)) {
        free_graph(g);
        return 2;
    }
    if (p->precision) {
        props[nprops++] = ov_property_key_hint_inference_precision;
        props[nprops++] = p->precision;
    }
    if (p->performance_mode) {
        props[nprops++] = ov_property_key_hint_performance_mode;
        props[nprops++] = p->performance_mode;
    }
    if (p->threads > 0) {
        snprintf(threads, sizeof threads, "%d", p->threads);
        props[nprops++] = ov_property_key_inference_num_threads;
        props[nprops++] = threads;
    }
    for (k = nprops; k < 6; k++) props[k] = NULL;
    if (ov_core_compile_model(t->core, g->model, p->device ? p->device : "CPU", nprops, &g->compiled, props[0],
                              props[1], props[2], props[3], props[4], props[5]) != OK) {
        ov_fail(t->error, sizeof t->error, "%s: OpenVINO cannot compile the model", ci->path);
        free_graph(g);
        return 3;
    }
    if (ov_compiled_model_create_infer_request(g->compiled, &g->request) != OK) {
        ov_fail(t->error, sizeof t->error, "%s: OpenVINO cannot create an infer request", ci->path);
        free_graph(g);
        return 4;
    }
    return 0;
}

/* [rows, the entry's other sizes]; 0, or 1 if a size other than the batch is dynamic or the product is not `size` */
static int row_dims(const edd_tensor_info *ti, size_t rows, size_t size, int64_t *dims) {
    size_t d, prod = 1;
    if (ti->ndim < 1 || ti->ndim > EDD_MAX_NDIM) return 1;
    dims[0] = (int64_t)rows;
    for (d = 1; d < ti->ndim; d++) {
        if (ti->shape[d] < 1) return 1;
        dims[d] = ti->shape[d];
        prod *= (size_t)ti->shape[d];
    }
    return prod != size;
}

static int text_run(void *user, const edd_component_args *a) {
    edd_ov_text *t = (edd_ov_text *)user;
    size_t k = a->component == EDD_COMPONENT_TEXT_ENCODER ? 0 : 1;
    const edd_component_info *ci = k == 0 ? &t->info.text_encoder : &t->info.vae_decoder;
    ov_graph *g = &t->graphs[k];
    int64_t in_dims[EDD_MAX_NDIM], out_dims[EDD_MAX_NDIM];
    ov_shape_t shape;
    t->error[0] = '\0';
    if (a->component == EDD_COMPONENT_DENOISER) return say(t->error, sizeof t->error, "run() got the denoiser"), 9;
    if (!g->request) return say(t->error, sizeof t->error, "%s: not loaded", ci->path), 2;
    if (row_dims(&ci->inputs[0], a->batch, a->in_size, in_dims) ||
        row_dims(&ci->outputs[0], a->batch, a->out_size, out_dims))
        return say(t->error, sizeof t->error, "%s: the manifest's shapes do not match the pipeline's rows", ci->path),
               3;
    unbind(g);
    if (ov_shape_create((int64_t)ci->inputs[0].ndim, in_dims, &shape) != OK ||
        ov_tensor_create_from_host_ptr(k == 0 ? I64 : F32, shape,
                                       k == 0 ? (void *)(size_t)a->ids : (void *)(size_t)a->latents, &g->in[0]) != OK)
        return ov_fail(t->error, sizeof t->error, "%s: cannot wrap the input", ci->path), 4;
    ov_shape_free(&shape);
    if (ov_shape_create((int64_t)ci->outputs[0].ndim, out_dims, &shape) != OK ||
        ov_tensor_create_from_host_ptr(F32, shape, a->out, &g->out) != OK)
        return ov_fail(t->error, sizeof t->error, "%s: cannot wrap the output", ci->path), 4;
    ov_shape_free(&shape);
    if (ov_infer_request_set_input_tensor_by_index(g->request, 0, g->in[0]) != OK ||
        ov_infer_request_set_output_tensor_by_index(g->request, 0, g->out) != OK)
        return ov_fail(t->error, sizeof t->error, "%s: cannot bind the tensors", ci->path), 5;
    if (ov_infer_request_infer(g->request) != OK)
        return ov_fail(t->error, sizeof t->error, "%s: OpenVINO inference failed", ci->path), 6;
    unbind(g);
    return 0;
}

static int text_denoise(void *user, const edd_denoise_args *a) {
    edd_ov_text *t = (edd_ov_text *)user;
    int rc;
    if (!t->denoiser) return say(t->error, sizeof t->error, "the denoiser is not loaded"), 7;
    rc = edd_ov_denoise(t->denoiser, a);
    if (rc) snprintf(t->error, sizeof t->error, "%s", edd_ov_error(t->denoiser));
    return rc;
}

static const char *text_error(void *user) {
    return ((edd_ov_text *)user)->error;
}

edd_pipeline_backend edd_ov_text_backend(edd_ov_text *t) {
    edd_pipeline_backend b;
    b.denoise = text_denoise;
    b.run = text_run;
    b.load = text_load;
    b.unload = text_unload;
    b.error = text_error;
    b.user = t;
    return b;
}

const char *edd_ov_text_error(const edd_ov_text *t) {
    return t ? t->error : "edd_ov_text_error: t is NULL";
}
