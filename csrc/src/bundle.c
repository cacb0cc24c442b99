/* bundle.c — manifest.json + scheduler.json -> edd_plan + edd_bundle_info (the fields listed at
 * the top of edgediff.h). Mirrors src/edgediff/runtimes/bundle.py's checks and runner.SamplingSetup:
 *
 *   manifest.json  format == "edgediff-bundle", format_version == 1, files{} lists model.file
 *                  and scheduler.json, model{format, file, inputs[], outputs[]},
 *                  conditioning{kind, num_classes, null_label, shape}
 *   scheduler.json plan{solver, timesteps, schedule{alphas_cumprod, prediction_type}, params{}}
 *                  guidance_scale, spacing, timestep_groups{files, step_group, shared_weights},
 *                  cache_schedule{interval} | {steps}
 *
 * Every refusal names the file and the field ("scheduler.json: plan.timesteps[3] must be an
 * integer"). edd_bundle_verify checks the files' sha256 against manifest.json "files".
 */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define MANIFEST "manifest.json"
#define SCHEDULER "scheduler.json"
#define MAX_FILE_BYTES (64u << 20) /* a scheduler.json of 1000 steps is ~50 kB; refuse absurd files */

typedef struct file_entry {
    char *name;                  /* relative to the bundle, as listed under manifest.json files */
    char *sha256;                /* the recorded digest, or NULL if the entry has none */
} file_entry;

struct edd_bundle {
    edd_plan *plan;
    edd_bundle_info info;
    char *model_format;
    char *model_file;
    char *model_path;
    char *dir;                   /* edd_bundle_load only */
    char *spacing;
    file_entry *files;
    size_t num_files;
    char **group_files;          /* timestep_groups.files (num_groups) */
    char **group_paths;          /* dir + "/" + group_files[g] (edd_bundle_load only) */
    char *shared_weights;
    uint32_t *step_group;        /* num_steps */
    uint8_t *cache_flags;        /* num_steps */
};

static const char *const PLAN_KEYS[] = {"solver", "timesteps", "schedule", "params", NULL};
static const char *const SCHEDULE_KEYS[] = {"alphas_cumprod", "prediction_type", NULL};
static const char *const GROUP_KEYS[] = {"files", "step_group", "shared_weights", NULL};
static const char *const CACHE_KEYS[] = {"interval", "steps", NULL};

#define BAD(...) edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, __VA_ARGS__)

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = (char *)malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* a member that must exist and have one of the JSON types in `mask` (1 << type) */
static edd_status member(const char *file, const char *where, const edd_json *obj, const char *key, unsigned mask,
                         const char *want, const edd_json **out, char *err, size_t err_size) {
    const edd_json *v = edd__json_get(obj, key);
    if (!v) return BAD("%s: %s%smissing the field '%s'", file, where, where[0] ? " is " : "", key);
    if (!(mask & (1u << v->type)))
        return BAD("%s: %s%s%s must be %s, got %s", file, where, where[0] ? "." : "", key, want, edd__json_type_name(v));
    *out = v;
    return EDD_OK;
}

#define M_NUMBER (1u << EDD_JSON_NUMBER)
#define M_STRING (1u << EDD_JSON_STRING)
#define M_ARRAY (1u << EDD_JSON_ARRAY)
#define M_OBJECT (1u << EDD_JSON_OBJECT)
#define M_NULL (1u << EDD_JSON_NULL)

static edd_status only_keys(const char *file, const char *where, const edd_json *obj, const char *const *keys,
                            char *err, size_t err_size) {
    size_t i, k;
    for (i = 0; i < obj->len; i++) {
        for (k = 0; keys[k]; k++)
            if (obj->items[i].key_len == strlen(keys[k]) && strcmp(obj->items[i].key, keys[k]) == 0) break;
        if (!keys[k]) return BAD("%s: %s has unknown key '%.64s'", file, where, obj->items[i].key);
    }
    return EDD_OK;
}

static int is_int64(const edd_json *v) {
    return v->type == EDD_JSON_NUMBER && isfinite(v->number) && v->number == floor(v->number) &&
           fabs(v->number) < 9.2e18;
}

/* an array of numbers -> malloc'd doubles (count may be 0: returns a 1-element buffer) */
static edd_status numbers(const char *file, const char *field, const edd_json *arr, int integers, double **out,
                          char *err, size_t err_size) {
    size_t i;
    double *v = (double *)malloc((arr->len ? arr->len : 1) * sizeof(double));
    *out = NULL;
    if (!v) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory reading %s %s", file, field);
    for (i = 0; i < arr->len; i++) {
        const edd_json *e = &arr->items[i];
        if (e->type != EDD_JSON_NUMBER || (integers && !is_int64(e))) {
            free(v);
            return BAD("%s: %s[%lu] must be %s, got %s", file, field, (unsigned long)i,
                       integers ? "an integer" : "a number", e->type == EDD_JSON_NUMBER ? "a fraction" : edd__json_type_name(e));
        }
        v[i] = e->number;
    }
    *out = v;
    return EDD_OK;
}

static edd_status plan_from_json(const char *file, const edd_json *plan_obj, edd_plan **out, char *err,
                                 size_t err_size) {
    const edd_json *solver, *timesteps, *schedule, *ac, *pred, *params;
    edd_plan_desc desc;
    edd_plan_param *pp = NULL;
    double *acv = NULL, *tsd = NULL;
    int64_t *ts = NULL;
    size_t i;
    edd_status st;
    char perr[256];
    memset(&desc, 0, sizeof desc);
    *out = NULL;
    if ((st = only_keys(file, "plan", plan_obj, PLAN_KEYS, err, err_size)) ||
        (st = member(file, "plan", plan_obj, "solver", M_STRING, "a string", &solver, err, err_size)) ||
        (st = member(file, "plan", plan_obj, "timesteps", M_ARRAY, "a list of integers", &timesteps, err, err_size)) ||
        (st = member(file, "plan", plan_obj, "schedule", M_OBJECT, "an object", &schedule, err, err_size)) ||
        (st = member(file, "plan", plan_obj, "params", M_OBJECT, "an object", &params, err, err_size)) ||
        (st = only_keys(file, "plan.schedule", schedule, SCHEDULE_KEYS, err, err_size)) ||
        (st = member(file, "plan.schedule", schedule, "alphas_cumprod", M_ARRAY, "a list of numbers", &ac, err,
                     err_size)))
        return st;
    pred = edd__json_get(schedule, "prediction_type");
    if (pred && pred->type != EDD_JSON_STRING)
        return BAD("%s: plan.schedule.prediction_type must be a string, got %s", file, edd__json_type_name(pred));
    if ((st = numbers(file, "plan.timesteps", timesteps, 1, &tsd, err, err_size))) goto done;
    if ((st = numbers(file, "plan.schedule.alphas_cumprod", ac, 0, &acv, err, err_size))) goto done;
    ts = (int64_t *)malloc((timesteps->len ? timesteps->len : 1) * sizeof(int64_t));
    pp = (edd_plan_param *)calloc(params->len ? params->len : 1, sizeof *pp);
    if (!ts || !pp) {
        st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory reading %s", file);
        goto done;
    }
    for (i = 0; i < timesteps->len; i++) ts[i] = (int64_t)tsd[i];
    for (i = 0; i < params->len; i++) {
        const edd_json *v = &params->items[i];
        edd_plan_param *p = &pp[i];
        p->key = v->key;
        if (v->type == EDD_JSON_NULL) {
            p->kind = EDD_VALUE_NULL;
        } else if (v->type == EDD_JSON_NUMBER) {
            p->kind = EDD_VALUE_NUMBER;
            p->number = v->number;
        } else if (v->type == EDD_JSON_ARRAY) {
            char field[96];
            double *values;
            snprintf(field, sizeof field, "plan.params.%.64s", v->key);
            if ((st = numbers(file, field, v, 0, &values, err, err_size))) goto done;
            p->kind = EDD_VALUE_ARRAY;
            p->values = values;
            p->count = v->len;
        } else {
            st = BAD("%s: plan.params.%.64s must be a number, a list of numbers or null, got %s", file, v->key,
                     edd__json_type_name(v));
            goto done;
        }
    }
    desc.solver = solver->string;
    desc.prediction_type = pred ? pred->string : NULL;
    desc.alphas_cumprod = acv;
    desc.num_train_timesteps = ac->len;
    desc.timesteps = ts;
    desc.num_steps = timesteps->len;
    desc.params = pp;
    desc.num_params = params->len;
    st = edd_plan_create(&desc, out, perr, sizeof perr);
    if (st != EDD_OK) edd__fail(err, err_size, st, "%s: plan: %s", file, perr);
done:
    for (i = 0; pp && i < params->len; i++) free((void *)pp[i].values);
    free(pp);
    free(ts);
    free(tsd);
    free(acv);
    return st;
}

/* a tensor description {"name", "dtype", "shape": [int | "symbol", ...]} */
static edd_status tensor_info(const char *where, const edd_json *t, edd_tensor_info *out, char *err, size_t err_size) {
    const edd_json *name, *dtype, *shape;
    size_t k;
    edd_status st;
    if (t->type != EDD_JSON_OBJECT) return BAD(MANIFEST ": %s must be an object, got %s", where, edd__json_type_name(t));
    if ((st = member(MANIFEST, where, t, "name", M_STRING, "a string", &name, err, err_size)) ||
        (st = member(MANIFEST, where, t, "dtype", M_STRING, "a string", &dtype, err, err_size)) ||
        (st = member(MANIFEST, where, t, "shape", M_ARRAY, "a list", &shape, err, err_size)))
        return st;
    if (name->len >= sizeof out->name || strlen(name->string) != name->len)
        return BAD(MANIFEST ": %s.name must be a string of at most %lu bytes", where, (unsigned long)sizeof out->name - 1);
    if (dtype->len >= sizeof out->dtype || strlen(dtype->string) != dtype->len)
        return BAD(MANIFEST ": %s.dtype '%.32s' is not a known dtype", where, dtype->string);
    if (shape->len > EDD_MAX_NDIM)
        return BAD(MANIFEST ": %s.shape has %lu dimensions; at most %d are supported", where, (unsigned long)shape->len,
                   EDD_MAX_NDIM);
    strcpy(out->name, name->string);
    strcpy(out->dtype, dtype->string);
    out->ndim = shape->len;
    for (k = 0; k < shape->len; k++) {
        const edd_json *d = &shape->items[k];
        if (d->type == EDD_JSON_STRING) {
            out->shape[k] = -1; /* a symbolic dimension (the batch) */
        } else if (is_int64(d) && d->number >= 1) {
            out->shape[k] = (int64_t)d->number;
        } else {
            return BAD(MANIFEST ": %s.shape[%lu] must be a positive integer or a name", where, (unsigned long)k);
        }
    }
    return EDD_OK;
}

static edd_status tensors(const char *where, const edd_json *arr, edd_tensor_info *out, size_t *count, char *err,
                          size_t err_size) {
    size_t k;
    edd_status st;
    if (arr->len < 1 || arr->len > EDD_MAX_TENSORS)
        return BAD(MANIFEST ": %s must list 1..%d tensors, got %lu", where, EDD_MAX_TENSORS, (unsigned long)arr->len);
    for (k = 0; k < arr->len; k++) {
        char w[48];
        snprintf(w, sizeof w, "%s[%lu]", where, (unsigned long)k);
        if ((st = tensor_info(w, &arr->items[k], &out[k], err, err_size))) return st;
    }
    *count = arr->len;
    return EDD_OK;
}

static edd_status read_manifest(edd_bundle *b, const edd_json *m, char *err, size_t err_size) {
    const edd_json *format, *version, *files, *model, *mformat, *mfile, *inputs, *outputs, *cond, *kind, *v;
    edd_bundle_info *info = &b->info;
    edd_status st;
    size_t k;
    if (m->type != EDD_JSON_OBJECT) return BAD(MANIFEST ": expected a JSON object, got %s", edd__json_type_name(m));
    if ((st = member(MANIFEST, "", m, "format", M_STRING, "a string", &format, err, err_size))) return st;
    if (strcmp(format->string, "edgediff-bundle") != 0)
        return BAD(MANIFEST ": field format is '%.64s', expected 'edgediff-bundle'", format->string);
    if ((st = member(MANIFEST, "", m, "format_version", M_NUMBER, "a number", &version, err, err_size))) return st;
    if (version->number != EDD_BUNDLE_FORMAT_VERSION)
        return BAD(MANIFEST ": field format_version is %g; this runtime reads version %d", version->number,
                   EDD_BUNDLE_FORMAT_VERSION);
    if ((st = member(MANIFEST, "", m, "files", M_OBJECT, "an object", &files, err, err_size)) ||
        (st = member(MANIFEST, "", m, "model", M_OBJECT, "an object", &model, err, err_size)) ||
        (st = member(MANIFEST, "model", model, "format", M_STRING, "a string", &mformat, err, err_size)) ||
        (st = member(MANIFEST, "model", model, "file", M_STRING, "a string", &mfile, err, err_size)) ||
        (st = member(MANIFEST, "model", model, "inputs", M_ARRAY, "a list", &inputs, err, err_size)) ||
        (st = member(MANIFEST, "model", model, "outputs", M_ARRAY, "a list", &outputs, err, err_size)) ||
        (st = member(MANIFEST, "", m, "conditioning", M_OBJECT, "an object", &cond, err, err_size)) ||
        (st = member(MANIFEST, "conditioning", cond, "kind", M_STRING, "a string", &kind, err, err_size)))
        return st;
    if (!edd__json_get(files, mfile->string))
        return BAD(MANIFEST ": model.file '%.128s' is not listed under files", mfile->string);
    if (!edd__json_get(files, SCHEDULER)) return BAD(MANIFEST ": files has no entry for " SCHEDULER);
    b->files = (file_entry *)calloc(files->len ? files->len : 1, sizeof *b->files);
    if (!b->files) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    for (k = 0; k < files->len; k++) {
        const edd_json *rec = &files->items[k], *digest = edd__json_get(rec, "sha256");
        if (rec->type != EDD_JSON_OBJECT)
            return BAD(MANIFEST ": files['%.128s'] must be an object, got %s", rec->key, edd__json_type_name(rec));
        if (strlen(rec->key) != rec->key_len || rec->key_len == 0 || rec->key[0] == '/' || strstr(rec->key, ".."))
            return BAD(MANIFEST ": files key '%.128s' must be a relative path inside the bundle", rec->key);
        if (!(b->files[k].name = dup_str(rec->key)))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        b->num_files = k + 1;
        if (digest && digest->type == EDD_JSON_STRING && !(b->files[k].sha256 = dup_str(digest->string)))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (mfile->len == 0 || strlen(mfile->string) != mfile->len || mfile->string[0] == '/' || strstr(mfile->string, ".."))
        return BAD(MANIFEST ": model.file '%.128s' must be a relative path inside the bundle", mfile->string);
    if ((st = tensors("model.inputs", inputs, info->inputs, &info->num_inputs, err, err_size)) ||
        (st = tensors("model.outputs", outputs, info->outputs, &info->num_outputs, err, err_size)))
        return st;
    if (info->num_inputs < 2)
        return BAD(MANIFEST ": model.inputs must list at least the sample and the timestep, got %lu",
                   (unsigned long)info->num_inputs);
    if (info->inputs[0].ndim < 2)
        return BAD(MANIFEST ": model.inputs[0].shape must be (batch, ...sample), got %lu dimensions",
                   (unsigned long)info->inputs[0].ndim);
    info->sample_ndim = info->inputs[0].ndim - 1;
    for (k = 0; k < info->sample_ndim; k++) {
        info->sample_shape[k] = info->inputs[0].shape[k + 1];
        if (info->sample_shape[k] < 1)
            return BAD(MANIFEST ": model.inputs[0].shape[%lu] must be a fixed size", (unsigned long)k + 1);
    }
    if (!(b->model_format = dup_str(mformat->string)) || !(b->model_file = dup_str(mfile->string)))
        return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    info->model_format = b->model_format;
    info->model_file = b->model_file;
    info->null_label = EDD_NO_LABEL;
    if (strcmp(kind->string, "none") == 0) {
        info->conditioning = EDD_COND_NONE;
    } else if (strcmp(kind->string, "class") == 0) {
        info->conditioning = EDD_COND_CLASS;
        if ((st = member(MANIFEST, "conditioning", cond, "num_classes", M_NUMBER, "an integer", &v, err, err_size)))
            return st;
        if (!is_int64(v) || v->number < 1) return BAD(MANIFEST ": conditioning.num_classes must be a positive integer");
        info->num_classes = (int64_t)v->number;
        if ((st = member(MANIFEST, "conditioning", cond, "null_label", M_NUMBER, "an integer", &v, err, err_size)))
            return st;
        if (!is_int64(v)) return BAD(MANIFEST ": conditioning.null_label must be an integer");
        info->null_label = (int64_t)v->number;
        if (info->num_inputs < 3) return BAD(MANIFEST ": conditioning.kind is 'class' but model.inputs has no label input");
    } else if (strcmp(kind->string, "embedding") == 0) {
        info->conditioning = EDD_COND_EMBEDDING;
        if (info->num_inputs < 3)
            return BAD(MANIFEST ": conditioning.kind is 'embedding' but model.inputs has no condition input");
    } else {
        return BAD(MANIFEST ": conditioning.kind '%.32s' is not one of none, class, embedding", kind->string);
    }
    return EDD_OK;
}

static int relative_path(const edd_json *v) {
    return v->type == EDD_JSON_STRING && v->len > 0 && strlen(v->string) == v->len && v->string[0] != '/' &&
           !strstr(v->string, "..");
}

static int listed(const edd_bundle *b, const char *name) {
    size_t k;
    for (k = 0; k < b->num_files; k++)
        if (strcmp(b->files[k].name, name) == 0) return 1;
    return 0;
}

/* scheduler.json "timestep_groups": {"files": [...], "step_group": [...], "shared_weights": str|null} */
static edd_status read_groups(edd_bundle *b, const edd_json *g, size_t n, char *err, size_t err_size) {
    const edd_json *files, *steps, *shared;
    edd_bundle_info *info = &b->info;
    edd_status st;
    size_t k;
    if (g->type != EDD_JSON_OBJECT)
        return BAD(SCHEDULER ": timestep_groups must be an object or null, got %s", edd__json_type_name(g));
    if ((st = only_keys(SCHEDULER, "timestep_groups", g, GROUP_KEYS, err, err_size)) ||
        (st = member(SCHEDULER, "timestep_groups", g, "files", M_ARRAY, "a list of file names", &files, err,
                     err_size)) ||
        (st = member(SCHEDULER, "timestep_groups", g, "step_group", M_ARRAY, "a list of group indices", &steps, err,
                     err_size)))
        return st;
    if (files->len < 1 || files->len > EDD_MAX_GROUPS)
        return BAD(SCHEDULER ": timestep_groups.files must list 1..%d files, got %lu", EDD_MAX_GROUPS,
                   (unsigned long)files->len);
    if (steps->len != n)
        return BAD(SCHEDULER ": timestep_groups.step_group has %lu entries but the plan has %lu steps",
                   (unsigned long)steps->len, (unsigned long)n);
    b->group_files = (char **)calloc(files->len, sizeof(char *));
    b->step_group = (uint32_t *)malloc((n ? n : 1) * sizeof(uint32_t));
    if (!b->group_files || !b->step_group) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    for (k = 0; k < files->len; k++) {
        const edd_json *f = &files->items[k];
        if (!relative_path(f))
            return BAD(SCHEDULER ": timestep_groups.files[%lu] must be a relative path inside the bundle", (unsigned long)k);
        if (!listed(b, f->string))
            return BAD(SCHEDULER ": timestep_groups.files[%lu] '%.128s' is not listed under " MANIFEST " files",
                       (unsigned long)k, f->string);
        if (!(b->group_files[k] = dup_str(f->string)))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        info->num_groups = k + 1;
    }
    for (k = 0; k < n; k++) {
        const edd_json *e = &steps->items[k];
        if (e->type != EDD_JSON_NUMBER)
            return BAD(SCHEDULER ": timestep_groups.step_group[%lu] must be an integer, got %s", (unsigned long)k,
                       edd__json_type_name(e));
        if (!is_int64(e) || e->number < 0 || e->number >= (double)files->len)
            return BAD(SCHEDULER ": timestep_groups.step_group[%lu] is %.17g; it must be a group index in 0..%lu "
                       "(timestep_groups.files lists %lu)", (unsigned long)k, e->number, (unsigned long)files->len - 1,
                       (unsigned long)files->len);
        b->step_group[k] = (uint32_t)e->number;
    }
    if ((shared = edd__json_get(g, "shared_weights")) != NULL && shared->type != EDD_JSON_NULL) {
        if (!relative_path(shared))
            return BAD(SCHEDULER ": timestep_groups.shared_weights must be a relative path inside the bundle or null");
        if (!(b->shared_weights = dup_str(shared->string)))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    }
    info->group_files = (const char *const *)b->group_files;
    info->shared_weights = b->shared_weights;
    info->step_group = b->step_group;
    return EDD_OK;
}

/* scheduler.json "cache_schedule": {"interval": N} or {"steps": ["full" | "cached", ...]} */
static edd_status read_cache(edd_bundle *b, const edd_json *c, size_t n, char *err, size_t err_size) {
    const edd_json *interval, *steps;
    edd_status st;
    size_t k;
    if (c->type != EDD_JSON_OBJECT)
        return BAD(SCHEDULER ": cache_schedule must be an object or null, got %s", edd__json_type_name(c));
    if ((st = only_keys(SCHEDULER, "cache_schedule", c, CACHE_KEYS, err, err_size))) return st;
    interval = edd__json_get(c, "interval");
    steps = edd__json_get(c, "steps");
    if (!interval == !steps)
        return BAD(SCHEDULER ": cache_schedule must have exactly one of 'interval' and 'steps'");
    if (!(b->cache_flags = (uint8_t *)malloc(n ? n : 1)))
        return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    if (interval) {
        if (!is_int64(interval) || interval->number < 1 || interval->number > 1e9)
            return BAD(SCHEDULER ": cache_schedule.interval must be a positive integer, got %s",
                       interval->type == EDD_JSON_NUMBER ? "a number out of range" : edd__json_type_name(interval));
        b->info.cache_interval = (size_t)interval->number;
        for (k = 0; k < n; k++) b->cache_flags[k] = k % b->info.cache_interval != 0;
    } else {
        if (steps->type != EDD_JSON_ARRAY)
            return BAD(SCHEDULER ": cache_schedule.steps must be a list of \"full\" / \"cached\", got %s",
                       edd__json_type_name(steps));
        if (steps->len != n)
            return BAD(SCHEDULER ": cache_schedule.steps has %lu entries but the plan has %lu steps",
                       (unsigned long)steps->len, (unsigned long)n);
        for (k = 0; k < n; k++) {
            const edd_json *e = &steps->items[k];
            if (e->type == EDD_JSON_STRING && strcmp(e->string, "full") == 0 && e->len == 4) {
                b->cache_flags[k] = 0;
            } else if (e->type == EDD_JSON_STRING && strcmp(e->string, "cached") == 0 && e->len == 6) {
                b->cache_flags[k] = 1;
            } else {
                return BAD(SCHEDULER ": cache_schedule.steps[%lu] must be \"full\" or \"cached\"", (unsigned long)k);
            }
        }
        if (n && b->cache_flags[0])
            return BAD(SCHEDULER ": cache_schedule.steps[0] must be \"full\": the first step has nothing cached to reuse");
    }
    b->info.cache_flags = b->cache_flags;
    return EDD_OK;
}

static edd_status read_scheduler(edd_bundle *b, const edd_json *s, char *err, size_t err_size) {
    const edd_json *plan, *g, *sp;
    edd_status st;
    if (s->type != EDD_JSON_OBJECT) return BAD(SCHEDULER ": expected a JSON object, got %s", edd__json_type_name(s));
    if ((st = member(SCHEDULER, "", s, "plan", M_OBJECT, "an object", &plan, err, err_size)) ||
        (st = member(SCHEDULER, "", s, "guidance_scale", M_NUMBER, "a number", &g, err, err_size)))
        return st;
    if (!isfinite(g->number)) return BAD(SCHEDULER ": guidance_scale must be finite");
    if ((sp = edd__json_get(s, "spacing")) != NULL) {
        if (sp->type != EDD_JSON_STRING) return BAD(SCHEDULER ": spacing must be a string, got %s", edd__json_type_name(sp));
        if (!(b->spacing = dup_str(sp->string))) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        b->info.spacing = b->spacing;
    }
    b->info.guidance_scale = g->number;
    if ((st = plan_from_json(SCHEDULER, plan, &b->plan, err, err_size))) return st;
    b->info.solver = edd_plan_solver(b->plan);
    b->info.num_steps = edd_plan_num_steps(b->plan);
    if ((g = edd__json_get(s, "timestep_groups")) != NULL && g->type != EDD_JSON_NULL &&
        (st = read_groups(b, g, b->info.num_steps, err, err_size)))
        return st;
    if ((g = edd__json_get(s, "cache_schedule")) != NULL && g->type != EDD_JSON_NULL &&
        (st = read_cache(b, g, b->info.num_steps, err, err_size)))
        return st;
    return EDD_OK;
}

edd_status edd_bundle_parse(const char *manifest, size_t manifest_len, const char *scheduler, size_t scheduler_len,
                            edd_bundle **out, char *err, size_t err_size) {
    edd_json *m = NULL, *s = NULL;
    edd_bundle *b;
    edd_status st;
    char jerr[160];
    if (err && err_size) err[0] = '\0';
    if (!out) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_bundle_parse: out is NULL");
    *out = NULL;
    if ((!manifest && manifest_len) || (!scheduler && scheduler_len))
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_bundle_parse: a text is NULL");
    b = (edd_bundle *)calloc(1, sizeof *b);
    if (!b) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    if ((st = edd__json_parse(manifest, manifest_len, &m, jerr, sizeof jerr)) != EDD_OK) {
        edd__fail(err, err_size, st, MANIFEST ": %s", jerr);
        goto done;
    }
    if ((st = edd__json_parse(scheduler, scheduler_len, &s, jerr, sizeof jerr)) != EDD_OK) {
        edd__fail(err, err_size, st, SCHEDULER ": %s", jerr);
        goto done;
    }
    if ((st = read_manifest(b, m, err, err_size)) || (st = read_scheduler(b, s, err, err_size))) goto done;
done:
    edd__json_free(m);
    edd__json_free(s);
    if (st != EDD_OK) {
        edd_bundle_free(b);
        return st;
    }
    *out = b;
    return EDD_OK;
}

/* the whole file, NUL-terminated; EDD_ERR_IO with the path on failure */
static edd_status read_file(const char *path, char **text, size_t *len, char *err, size_t err_size) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;
    *text = NULL;
    if (!f) return edd__fail(err, err_size, EDD_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
    for (;;) {
        size_t got;
        if (n == cap) {
            char *nb;
            if (cap >= MAX_FILE_BYTES) {
                fclose(f);
                free(buf);
                return edd__fail(err, err_size, EDD_ERR_IO, "%s: larger than %u MiB", path, MAX_FILE_BYTES >> 20);
            }
            cap = cap ? cap * 2 : 1 << 16;
            nb = (char *)realloc(buf, cap + 1);
            if (!nb) {
                fclose(f);
                free(buf);
                return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
            }
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        fclose(f);
        free(buf);
        return edd__fail(err, err_size, EDD_ERR_IO, "%s: read error", path);
    }
    fclose(f);
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return EDD_OK;
}

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), c = strlen(name);
    char *p = (char *)malloc(a + c + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, c + 1);
    return p;
}

edd_status edd_bundle_load(const char *dir, edd_bundle **out, char *err, size_t err_size) {
    char *mpath = NULL, *spath = NULL, *mtext = NULL, *stext = NULL;
    size_t mlen = 0, slen = 0;
    edd_status st;
    char perr[400];
    if (err && err_size) err[0] = '\0';
    if (!out) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_bundle_load: out is NULL");
    *out = NULL;
    if (!dir) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_bundle_load: dir is NULL");
    mpath = join(dir, MANIFEST);
    spath = join(dir, SCHEDULER);
    if (!mpath || !spath) {
        st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if ((st = read_file(mpath, &mtext, &mlen, err, err_size)) || (st = read_file(spath, &stext, &slen, err, err_size)))
        goto done;
    if ((st = edd_bundle_parse(mtext, mlen, stext, slen, out, perr, sizeof perr)) != EDD_OK) {
        edd__fail(err, err_size, st, "%s/%s", dir, perr); /* "DIR/scheduler.json: plan.timesteps ..." */
        goto done;
    }
    (*out)->model_path = join(dir, (*out)->model_file);
    if (!(*out)->model_path) {
        edd_bundle_free(*out);
        *out = NULL;
        st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    (*out)->info.model_path = (*out)->model_path;
    if ((*out)->info.num_groups) {
        edd_bundle *b = *out;
        size_t g;
        int ok = (b->group_paths = (char **)calloc(b->info.num_groups, sizeof(char *))) != NULL;
        for (g = 0; ok && g < b->info.num_groups; g++) ok = (b->group_paths[g] = join(dir, b->group_files[g])) != NULL;
        if (!ok) {
            edd_bundle_free(b);
            *out = NULL;
            st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
            goto done;
        }
        b->info.group_paths = (const char *const *)b->group_paths;
    }
    if (!((*out)->dir = dup_str(dir))) {
        edd_bundle_free(*out);
        *out = NULL;
        st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
done:
    free(mpath);
    free(spath);
    free(mtext);
    free(stext);
    return st;
}

edd_status edd_bundle_verify(const edd_bundle *b, char *err, size_t err_size) {
    size_t k;
    if (err && err_size) err[0] = '\0';
    if (!b || !b->dir)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_bundle_verify: needs a bundle from edd_bundle_load");
    for (k = 0; k < b->num_files; k++) {
        const file_entry *f = &b->files[k];
        char *path = join(b->dir, f->name), hex[65];
        if (!path) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        if (edd__sha256_file(path, hex) != 0) {
            edd__fail(err, err_size, EDD_ERR_IO, "%s: listed in manifest.json files but missing or unreadable", path);
            free(path);
            return EDD_ERR_IO;
        }
        if (!f->sha256 || strcmp(hex, f->sha256) != 0) {
            edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE,
                      "%s: sha256 %.12s... does not match manifest.json files['%s'].sha256 %.12s...; the file changed "
                      "after compile", path, hex, f->name, f->sha256 ? f->sha256 : "(none)");
            free(path);
            return EDD_ERR_BAD_BUNDLE;
        }
        free(path);
    }
    return EDD_OK;
}

void edd_bundle_free(edd_bundle *b) {
    size_t k;
    if (!b) return;
    for (k = 0; k < b->num_files; k++) {
        free(b->files[k].name);
        free(b->files[k].sha256);
    }
    free(b->files);
    for (k = 0; k < b->info.num_groups; k++) {
        if (b->group_files) free(b->group_files[k]);
        if (b->group_paths) free(b->group_paths[k]);
    }
    free(b->group_files);
    free(b->group_paths);
    free(b->shared_weights);
    free(b->step_group);
    free(b->cache_flags);
    free(b->dir);
    free(b->spacing);
    edd_plan_free(b->plan);
    free(b->model_format);
    free(b->model_file);
    free(b->model_path);
    free(b);
}

const edd_plan *edd_bundle_plan(const edd_bundle *b) { return b ? b->plan : NULL; }

const edd_bundle_info *edd_bundle_get_info(const edd_bundle *b) { return b ? &b->info : NULL; }

edd_status edd_bundle_fill_params(const edd_bundle *b, edd_params *p) {
    size_t k;
    if (!b || !p) return EDD_ERR_INVALID_ARGUMENT;
    p->sample_ndim = b->info.sample_ndim;
    for (k = 0; k < b->info.sample_ndim; k++) p->sample_shape[k] = b->info.sample_shape[k];
    /* as runner.generate: guidance only for class-conditional models */
    p->guidance = b->info.conditioning == EDD_COND_CLASS ? b->info.guidance_scale : 1.0;
    p->null_label = b->info.null_label;
    p->table_steps = b->info.step_group || b->info.cache_flags ? b->info.num_steps : 0;
    p->step_group = b->info.step_group;
    p->num_groups = b->info.num_groups;
    p->cache_flags = b->info.cache_flags;
    return EDD_OK;
}
