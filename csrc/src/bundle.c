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
 *
 * The box (the rule of src/edgediff/runtimes/bundle.py; tests/bundle_cases.py runs both loaders
 * on the same damaged bundles): edd_bundle_load checks every file manifest.json lists before
 * anything is hashed:
 *
 *   name      a files key is a relative path: "/"-separated, no leading "/", no "", "." or ".."
 *             component, no NUL byte
 *   missing   DIR/NAME must exist (a dangling symlink counts as missing)
 *   inside    realpath(DIR/NAME) lies strictly inside realpath(DIR): a symlink within the bundle
 *             to another file within it is followed, one that leaves the bundle is refused
 *   regular   it resolves to a regular file (stat, never opened first): not a FIFO, device,
 *             socket or directory. The one folder allowed is a NAME ending in .mlpackage; each
 *             entry inside it is a folder, a regular file or a symlink to a regular file inside
 *             the bundle (this runtime checks such a package but does not hash it)
 *   size      st_size (a package: the sum of its files') <= files[NAME].bytes; a smaller file is
 *             then refused by its sha256
 *
 * manifest.json and scheduler.json themselves: regular files inside DIR of at most 64 MiB,
 * opened with O_NONBLOCK and checked again with fstat before a byte is read (a FIFO never
 * blocks). Files are hashed through the real path checked at load, after an O_NONBLOCK open
 * and fstat confirm it is still the same regular file.
 */
#define _XOPEN_SOURCE 700 /* POSIX 2008 + XSI: realpath, lstat, O_NONBLOCK, opendir (the bundle is a POSIX folder) */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if !defined(_WIN32)
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#endif

#include "json.h"

#define MANIFEST          "manifest.json"
#define SCHEDULER         "scheduler.json"
#define MAX_FILE_BYTES    (64u << 20) /* a scheduler.json of 1000 steps is ~50 kB; refuse absurd files */
#define MAX_PACKAGE_DEPTH 32          /* folders within a .mlpackage */

typedef struct file_part {
    char *rel;  /* its name inside a .mlpackage; NULL for a plain file */
    char *path; /* its real path (symlinks resolved), checked by edd_bundle_load */
    uint64_t size;
    uint64_t dev, ino; /* identity when checked: hashing refuses another file */
} file_part;

typedef struct file_entry {
    char *name;       /* relative to the bundle, as listed under manifest.json files */
    char *sha256;     /* the recorded digest, or NULL if the entry has none */
    int has_bytes;    /* files[name].bytes was given */
    uint64_t bytes;   /* ... and is this many bytes: the most that will be read */
    int package;      /* a .mlpackage folder */
    file_part *parts; /* edd_bundle_load: the file, or the package's files */
    size_t num_parts, cap_parts;
} file_entry;

struct edd_bundle {
    edd_plan *plan;
    edd_bundle_info info;
    char *model_format;
    char *model_file;
    char *model_path;
    char *dir; /* edd_bundle_load only */
    char *spacing;
    file_entry *files;
    size_t num_files;
    char **group_files; /* timestep_groups.files (num_groups) */
    char **group_paths; /* dir + "/" + group_files[g] (edd_bundle_load only) */
    char *shared_weights;
    uint32_t *step_group; /* num_steps */
    uint8_t *cache_flags; /* num_steps */
    /* a text bundle's components (manifest.json components) */
    char *comp_format[2], *comp_file[2], *comp_path[2]; /* text_encoder, vae_decoder */
    char *tok_folder, *tok_path;
    char **tok_files; /* components.tokenizer.files */
    size_t num_tok_files;
};

static const char *const PLAN_KEYS[] = {"solver", "timesteps", "schedule", "params", NULL};
static const char *const SCHEDULE_KEYS[] = {"alphas_cumprod", "prediction_type", NULL};
static const char *const GROUP_KEYS[] = {"files", "step_group", "shared_weights", NULL};
static const char *const CACHE_KEYS[] = {"interval", "steps", NULL};
static const char *const COMPONENT_KEYS[] = {"text_encoder", "vae_decoder", "tokenizer", NULL};
static const char *const LATENT_KEYS[] = {"shape", "scaling_factor", "image_shape", NULL};
static const char *const GRAPH_NAMES[] = {"text_encoder", "vae_decoder"};
/* the files a tokenizer folder may hold that a reader opens by name: each one present must be listed */
static const char *const TOKENIZER_FILES[] = {
    "vocab.json",        "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", NULL};

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
        return BAD("%s: %s%s%s must be %s, got %s", file, where, where[0] ? "." : "", key, want,
                   edd__json_type_name(v));
    *out = v;
    return EDD_OK;
}

#define M_NUMBER (1u << EDD_JSON_NUMBER)
#define M_STRING (1u << EDD_JSON_STRING)
#define M_ARRAY  (1u << EDD_JSON_ARRAY)
#define M_OBJECT (1u << EDD_JSON_OBJECT)
#define M_NULL   (1u << EDD_JSON_NULL)

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

/* a relative path inside the bundle: "/"-separated, no leading "/", no "", "." or ".." part */
static int clean_relative(const char *s, size_t len) {
    const char *p = s, *end = s + len;
    if (len == 0 || strlen(s) != len) return 0;
    for (;;) {
        const char *q = memchr(p, '/', (size_t)(end - p));
        size_t n = (size_t)((q ? q : end) - p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return 0;
        if (!q) return 1;
        p = q + 1;
    }
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
                       integers ? "an integer" : "a number",
                       e->type == EDD_JSON_NUMBER ? "a fraction" : edd__json_type_name(e));
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
    if (t->type != EDD_JSON_OBJECT)
        return BAD(MANIFEST ": %s must be an object, got %s", where, edd__json_type_name(t));
    if ((st = member(MANIFEST, where, t, "name", M_STRING, "a string", &name, err, err_size)) ||
        (st = member(MANIFEST, where, t, "dtype", M_STRING, "a string", &dtype, err, err_size)) ||
        (st = member(MANIFEST, where, t, "shape", M_ARRAY, "a list", &shape, err, err_size)))
        return st;
    if (name->len >= sizeof out->name || strlen(name->string) != name->len)
        return BAD(MANIFEST ": %s.name must be a string of at most %lu bytes", where,
                   (unsigned long)sizeof out->name - 1);
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

/* "[4, 8, 8]" of n sizes (-1 printed as "?") */
static void dims_text(const int64_t *d, size_t n, char *buf, size_t size) {
    size_t k, used = 0;
    buf[0] = '\0';
    for (k = 0; k < n && used + 1 < size; k++) {
        int w = d[k] < 0 ? snprintf(buf + used, size - used, "%s?", k ? ", " : "[")
                         : snprintf(buf + used, size - used, "%s%lld", k ? ", " : "[", (long long)d[k]);
        if (w < 0) return;
        used += (size_t)w;
    }
    if (used + 1 < size) snprintf(buf + used, size - used, "%s]", n ? "" : "[");
}

/* conditioning.shape -> info.cond_shape when it is a list of positive integers; 1 if it was */
static int read_cond_shape(edd_bundle_info *info, const edd_json *cond) {
    const edd_json *shape = edd__json_get(cond, "shape");
    size_t k;
    if (!shape || shape->type != EDD_JSON_ARRAY || shape->len < 1 || shape->len > EDD_MAX_NDIM) return 0;
    for (k = 0; k < shape->len; k++)
        if (!is_int64(&shape->items[k]) || shape->items[k].number < 1) return 0;
    for (k = 0; k < shape->len; k++) info->cond_shape[k] = (int64_t)shape->items[k].number;
    info->cond_ndim = shape->len;
    return 1;
}

/* the lexicographically first key of obj not in keys (as sorted(set(d) - keys)[0]), or NULL */
static const char *first_unknown(const edd_json *obj, const char *const *keys) {
    const char *best = NULL;
    size_t i, k;
    for (i = 0; i < obj->len; i++) {
        for (k = 0; keys[k]; k++)
            if (obj->items[i].key_len == strlen(keys[k]) && strcmp(obj->items[i].key, keys[k]) == 0) break;
        if (!keys[k] && (!best || strcmp(obj->items[i].key, best) < 0)) best = obj->items[i].key;
    }
    return best;
}

/* manifest.json "components" of a text bundle (src/edgediff/runtimes/bundle.py check_components) */
static edd_status read_components(edd_bundle *b, const edd_json *m, const edd_json *files, const edd_json *cond,
                                  char *err, size_t err_size) {
    edd_bundle_info *info = &b->info;
    const edd_json *comps = edd__json_get(m, "components"), *tok, *folder, *tfiles, *v;
    const char *unknown;
    int has_vocab = 0, has_merges = 0, has_json = 0;
    edd_status st;
    size_t g, k;
    if (!comps || comps->type != EDD_JSON_OBJECT)
        return BAD(MANIFEST ": field components must be an object for conditioning kind text");
    if ((unknown = first_unknown(comps, COMPONENT_KEYS)) != NULL)
        return BAD(MANIFEST ": components has unknown key '%.64s'", unknown);
    for (g = 0; g < 2; g++) {
        const edd_json *comp, *format, *file, *inputs, *outputs;
        edd_component_info *ci = g == 0 ? &info->text_encoder : &info->vae_decoder;
        char where[48], field[64];
        snprintf(where, sizeof where, "components.%s", GRAPH_NAMES[g]);
        if ((st = member(MANIFEST, "components", comps, GRAPH_NAMES[g], M_OBJECT, "an object", &comp, err, err_size)) ||
            (st = member(MANIFEST, where, comp, "file", M_STRING, "a string", &file, err, err_size)) ||
            (st = member(MANIFEST, where, comp, "format", M_STRING, "a string", &format, err, err_size)) ||
            (st = member(MANIFEST, where, comp, "inputs", M_ARRAY, "a list", &inputs, err, err_size)) ||
            (st = member(MANIFEST, where, comp, "outputs", M_ARRAY, "a list", &outputs, err, err_size)))
            return st;
        if (!edd__json_get(files, file->string) || strlen(file->string) != file->len)
            return BAD(MANIFEST ": %s.file '%.128s' is not listed under files", where, file->string);
        if (strcmp(format->string, b->model_format) != 0)
            return BAD(MANIFEST ": %s.format is '%.32s'; the denoiser's is '%.32s'", where, format->string,
                       b->model_format);
        snprintf(field, sizeof field, "%s.inputs", where);
        if ((st = tensors(field, inputs, ci->inputs, &ci->num_inputs, err, err_size))) return st;
        snprintf(field, sizeof field, "%s.outputs", where);
        if ((st = tensors(field, outputs, ci->outputs, &ci->num_outputs, err, err_size))) return st;
        if (!(b->comp_format[g] = dup_str(format->string)) || !(b->comp_file[g] = dup_str(file->string)))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        ci->format = b->comp_format[g];
        ci->file = b->comp_file[g];
    }
    if ((st = member(MANIFEST, "components", comps, "tokenizer", M_OBJECT, "an object", &tok, err, err_size)))
        return st;
    folder = edd__json_get(tok, "folder");
    if (!folder || folder->type != EDD_JSON_STRING || !clean_relative(folder->string, folder->len))
        return BAD(MANIFEST ": components.tokenizer.folder must be a relative folder name");
    tfiles = edd__json_get(tok, "files");
    if (!tfiles || tfiles->type != EDD_JSON_ARRAY || tfiles->len == 0)
        return BAD(MANIFEST ": components.tokenizer.files must be a non-empty list");
    if (!(b->tok_files = (char **)calloc(tfiles->len, sizeof(char *))))
        return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    for (k = 0; k < tfiles->len; k++) {
        const edd_json *f = &tfiles->items[k];
        const char *base;
        if (f->type != EDD_JSON_STRING)
            return BAD(MANIFEST ": components.tokenizer.files[%lu] must be a string", (unsigned long)k);
        if (strlen(f->string) != f->len || f->len <= folder->len ||
            strncmp(f->string, folder->string, folder->len) != 0 || f->string[folder->len] != '/' ||
            !edd__json_get(files, f->string))
            return BAD(MANIFEST
                       ": components.tokenizer.files entry '%.128s' must be a file of %.64s/ listed under files",
                       f->string, folder->string);
        if (!(b->tok_files[k] = dup_str(f->string)))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        b->num_tok_files = k + 1;
        base = strrchr(f->string, '/') + 1;
        has_vocab |= strcmp(base, "vocab.json") == 0;
        has_merges |= strcmp(base, "merges.txt") == 0;
        has_json |= strcmp(base, "tokenizer.json") == 0;
    }
    if (!(has_vocab && has_merges) && !has_json)
        return BAD(MANIFEST ": components.tokenizer.files needs vocab.json and merges.txt (or tokenizer.json)");
    if (!read_cond_shape(info, cond) || info->cond_ndim != 2)
        return BAD(MANIFEST ": conditioning.shape must be [max_length, hidden] for kind text");
    v = edd__json_get(tok, "max_length");
    if (!v || !is_int64(v)) return BAD(MANIFEST ": components.tokenizer.max_length must be an integer");
    if ((int64_t)v->number != info->cond_shape[0])
        return BAD(MANIFEST ": components.tokenizer.max_length is %lld; conditioning.shape says %lld",
                   (long long)v->number, (long long)info->cond_shape[0]);
    info->max_length = (size_t)info->cond_shape[0];
    /* every graph agrees on the embedding width: the text encoder's output, the denoiser's condition */
    {
        const edd_tensor_info *te = &info->text_encoder.outputs[0], *dn = &info->inputs[2];
        int64_t width = info->cond_shape[1];
        if (te->ndim < 1 || (te->shape[te->ndim - 1] > 0 && te->shape[te->ndim - 1] != width))
            return BAD(MANIFEST ": components.text_encoder.outputs[0].shape ends in %lld; conditioning.shape says "
                                "width %lld",
                       te->ndim ? (long long)te->shape[te->ndim - 1] : 0LL, (long long)width);
        if (dn->ndim < 1 || (dn->shape[dn->ndim - 1] > 0 && dn->shape[dn->ndim - 1] != width))
            return BAD(MANIFEST ": model.inputs[2].shape ends in %lld; conditioning.shape says width %lld",
                       dn->ndim ? (long long)dn->shape[dn->ndim - 1] : 0LL, (long long)width);
    }
    if (!(b->tok_folder = dup_str(folder->string)))
        return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    info->tokenizer_folder = b->tok_folder;
    return EDD_OK;
}

/* scheduler.json "conditioning" and "latent" of a text bundle */
static edd_status read_latent(edd_bundle *b, const edd_json *s, char *err, size_t err_size) {
    edd_bundle_info *info = &b->info;
    const edd_json *c = edd__json_get(s, "conditioning"), *latent, *v;
    int64_t shape[3], image[3];
    size_t k;
    edd_status st;
    char have[96], want[96];
    if (!c || c->type != EDD_JSON_STRING || strcmp(c->string, "text") != 0)
        return BAD(SCHEDULER ": field conditioning must be 'text' for a text bundle");
    if ((st = member(SCHEDULER, "", s, "latent", M_OBJECT, "an object", &latent, err, err_size)) ||
        (st = only_keys(SCHEDULER, "latent", latent, LATENT_KEYS, err, err_size)))
        return st;
    dims_text(info->sample_shape, info->sample_ndim, want, sizeof want);
    v = edd__json_get(latent, "shape");
    if (!v || v->type != EDD_JSON_ARRAY || v->len != 3)
        return BAD(SCHEDULER ": latent.shape must be 3 positive integers equal to the denoiser's sample %s", want);
    for (k = 0; k < 3; k++) {
        if (!is_int64(&v->items[k]) || v->items[k].number < 1)
            return BAD(SCHEDULER ": latent.shape must be 3 positive integers equal to the denoiser's sample %s", want);
        shape[k] = (int64_t)v->items[k].number;
    }
    dims_text(shape, 3, have, sizeof have);
    if (info->sample_ndim != 3 || memcmp(shape, info->sample_shape, sizeof shape) != 0)
        return BAD(SCHEDULER ": latent.shape is %s; the denoiser's sample is %s", have, want);
    v = edd__json_get(latent, "scaling_factor");
    if (!v || v->type != EDD_JSON_NUMBER || !(v->number > 0) || !isfinite(v->number))
        return BAD(SCHEDULER ": latent.scaling_factor must be a finite number > 0");
    info->scaling_factor = v->number;
    v = edd__json_get(latent, "image_shape");
    if (!v || v->type != EDD_JSON_ARRAY || v->len != 3) return BAD(SCHEDULER ": latent.image_shape must be [3, H, W]");
    for (k = 0; k < 3; k++) {
        if (!is_int64(&v->items[k]) || v->items[k].number < 1)
            return BAD(SCHEDULER ": latent.image_shape must be [3, H, W]");
        image[k] = (int64_t)v->items[k].number;
    }
    if (image[0] != 3) return BAD(SCHEDULER ": latent.image_shape must be [3, H, W]");
    memcpy(info->image_shape, image, sizeof image);
    /* the decoder takes the latent and gives the image (fixed sizes compared) */
    {
        const edd_tensor_info *in = &info->vae_decoder.inputs[0], *out = &info->vae_decoder.outputs[0];
        for (k = 0; k < 3; k++) {
            if (in->ndim != 4 || (in->shape[k + 1] > 0 && in->shape[k + 1] != shape[k])) {
                dims_text(in->shape, in->ndim, want, sizeof want);
                return BAD(MANIFEST ": components.vae_decoder.inputs[0].shape is %s; " SCHEDULER " latent.shape is %s",
                           want, have);
            }
            if (out->ndim != 4 || (out->shape[k + 1] > 0 && out->shape[k + 1] != image[k])) {
                dims_text(out->shape, out->ndim, want, sizeof want);
                dims_text(image, 3, have, sizeof have);
                return BAD(MANIFEST ": components.vae_decoder.outputs[0].shape is %s; " SCHEDULER
                                    " latent.image_shape is %s",
                           want, have);
            }
        }
    }
    return EDD_OK;
}

static edd_status read_manifest(edd_bundle *b, const edd_json *m, char *err, size_t err_size) {
    const edd_json *format = NULL, *version, *files, *model, *mformat, *mfile, *inputs, *outputs, *cond, *kind, *v;
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
        const edd_json *rec = &files->items[k], *digest, *size;
        if (!clean_relative(rec->key, rec->key_len))
            return BAD(MANIFEST ": files[\"%.128s\"] must be a relative path inside the bundle", rec->key);
        if (rec->type != EDD_JSON_OBJECT)
            return BAD(MANIFEST ": files[\"%.128s\"] must be an object, got %s", rec->key, edd__json_type_name(rec));
        digest = edd__json_get(rec, "sha256");
        size = edd__json_get(rec, "bytes");
        if (size && !(is_int64(size) && size->number >= 0)) /* absent: refused by edd_bundle_load */
            return BAD(MANIFEST ": files[\"%.128s\"].bytes must be a non-negative integer", rec->key);
        if (!(b->files[k].name = dup_str(rec->key)))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        b->num_files = k + 1;
        b->files[k].has_bytes = size != NULL;
        b->files[k].bytes = size ? (uint64_t)size->number : 0;
        if (digest && digest->type == EDD_JSON_STRING && !(b->files[k].sha256 = dup_str(digest->string)))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (!clean_relative(mfile->string, mfile->len))
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
    info->scaling_factor = 0;
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
        if (info->num_inputs < 3)
            return BAD(MANIFEST ": conditioning.kind is 'class' but model.inputs has no label input");
    } else if (strcmp(kind->string, "embedding") == 0) {
        info->conditioning = EDD_COND_EMBEDDING;
        if (info->num_inputs < 3)
            return BAD(MANIFEST ": conditioning.kind is 'embedding' but model.inputs has no condition input");
        read_cond_shape(info, cond);
    } else if (strcmp(kind->string, "text") == 0) {
        info->conditioning = EDD_COND_TEXT;
        if (info->num_inputs < 3)
            return BAD(MANIFEST ": conditioning.kind is 'text' but model.inputs has no condition input");
        return read_components(b, m, files, cond, err, err_size);
    } else {
        return BAD(MANIFEST ": conditioning.kind '%.32s' is not one of none, class, embedding, text", kind->string);
    }
    if ((v = edd__json_get(m, "components")) != NULL && v->type != EDD_JSON_NULL)
        return BAD(MANIFEST ": field components is set but conditioning.kind is '%.32s', not 'text'", kind->string);
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
            return BAD(SCHEDULER ": timestep_groups.files[%lu] must be a relative path inside the bundle",
                       (unsigned long)k);
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
                                 "(timestep_groups.files lists %lu)",
                       (unsigned long)k, e->number, (unsigned long)files->len - 1, (unsigned long)files->len);
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
    if (!interval == !steps) return BAD(SCHEDULER ": cache_schedule must have exactly one of 'interval' and 'steps'");
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
            return BAD(SCHEDULER
                       ": cache_schedule.steps[0] must be \"full\": the first step has nothing cached to reuse");
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
        if (sp->type != EDD_JSON_STRING)
            return BAD(SCHEDULER ": spacing must be a string, got %s", edd__json_type_name(sp));
        if (!(b->spacing = dup_str(sp->string)))
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
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
    if (b->info.conditioning == EDD_COND_TEXT && (st = read_latent(b, s, err, err_size))) return st;
    return EDD_OK;
}

/* manifest.json "cache" (the shallow graph of a bundle that caches features across steps) and
 * scheduler.json "cache_schedule" come together; this runtime runs no shallow graph yet, so a cached
 * bundle is refused here in one line rather than run with its schedule ignored. */
static edd_status check_cache(const edd_bundle *b, const edd_json *m, char *err, size_t err_size) {
    const edd_json *c = edd__json_get(m, "cache");
    int has_cache = c != NULL && c->type != EDD_JSON_NULL;
    if (b->cache_flags && !has_cache)
        return BAD(SCHEDULER ": cache_schedule is set but " MANIFEST
                             " has no cache (no shallow graph to run the cached steps)");
    if (has_cache && !b->cache_flags) return BAD(MANIFEST ": cache is set but " SCHEDULER " has no cache_schedule");
    if (has_cache)
        return BAD(MANIFEST ": cache is set (a full and a shallow graph, features cached across steps); this C "
                            "runtime does not run cached bundles yet: use edgediff generate --loop python");
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
    if ((st = read_manifest(b, m, err, err_size)) || (st = read_scheduler(b, s, err, err_size)) ||
        (st = check_cache(b, m, err, err_size)))
        goto done;
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

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), c = strlen(name);
    char *p = (char *)malloc(a + c + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, c + 1);
    return p;
}

#if !defined(_WIN32)
/* NULL for a regular file, else what it is instead */
static const char *kind_of(mode_t m) {
    if (S_ISREG(m)) return NULL;
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a file";
}

/* real lies strictly inside the folder root_real (both from realpath) */
static int inside(const char *root_real, const char *real) {
    size_t n = strlen(root_real);
    while (n > 0 && root_real[n - 1] == '/') n--; /* "/" */
    return strncmp(real, root_real, n) == 0 && real[n] == '/' && real[n + 1] != '\0';
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), c = strlen(suffix);
    return a >= c && strcmp(s + a - c, suffix) == 0;
}

/* an O_NONBLOCK descriptor of `path` if it is still the regular file (dev, ino); -1 otherwise */
static int open_checked(const char *path, uint64_t dev, uint64_t ino) {
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) return -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    return fd;
}

/* DIR/name (manifest.json, scheduler.json): a regular file inside DIR, whole and NUL-terminated */
static edd_status read_json_file(const char *dir, const char *root_real, const char *name, char **text, size_t *len,
                                 char *err, size_t err_size) {
    char *path = join(dir, name), *real = NULL, *buf = NULL;
    const char *what;
    struct stat st;
    size_t n = 0;
    int fd = -1;
    edd_status st_ = EDD_OK;
    *text = NULL;
    if (!path) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    if (!root_real || stat(path, &st) != 0) {
        st_ = edd__fail(err, err_size, EDD_ERR_IO, "%s: cannot open (%s)", path, strerror(errno));
        goto done;
    }
    if (!(real = realpath(path, NULL))) {
        st_ = edd__fail(err, err_size, EDD_ERR_IO, "%s: cannot be resolved (%s)", path, strerror(errno));
        goto done;
    }
    if (!inside(root_real, real)) {
        st_ = edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: resolves outside the bundle (to %s)", path, real);
        goto done;
    }
    if ((what = kind_of(st.st_mode)) != NULL) {
        st_ = edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE, "%s: %s, not a regular file", path, what);
        goto done;
    }
    if ((uint64_t)st.st_size > MAX_FILE_BYTES) {
        st_ = edd__fail(err, err_size, EDD_ERR_IO, "%s: larger than %u MiB", path, MAX_FILE_BYTES >> 20);
        goto done;
    }
    if ((fd = open_checked(real, (uint64_t)st.st_dev, (uint64_t)st.st_ino)) < 0) {
        st_ = edd__fail(err, err_size, EDD_ERR_IO, "%s: cannot open as the regular file checked (%s)", path,
                        strerror(errno));
        goto done;
    }
    if (!(buf = (char *)malloc((size_t)st.st_size + 2))) {
        st_ = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        goto done;
    }
    for (;;) { /* at most st_size + 1 bytes: one more means it grew */
        ssize_t got = read(fd, buf + n, (size_t)st.st_size + 1 - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            st_ = edd__fail(err, err_size, EDD_ERR_IO, "%s: read error (%s)", path, strerror(errno));
            goto done;
        }
        if (got == 0) break;
        n += (size_t)got;
        if (n > (size_t)st.st_size) {
            st_ = edd__fail(err, err_size, EDD_ERR_IO, "%s: grew while it was read", path);
            goto done;
        }
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    buf = NULL;
done:
    if (fd >= 0) close(fd);
    free(buf);
    free(real);
    free(path);
    return st_;
}

static edd_status add_part(file_entry *f, const char *rel, const char *real, const struct stat *st, char *err,
                           size_t err_size) {
    file_part *p;
    if (f->num_parts == f->cap_parts) {
        size_t cap = f->cap_parts ? 2 * f->cap_parts : 4;
        file_part *np = (file_part *)realloc(f->parts, cap * sizeof *np);
        if (!np) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        f->parts = np;
        f->cap_parts = cap;
    }
    p = &f->parts[f->num_parts];
    memset(p, 0, sizeof *p);
    if ((rel && !(p->rel = dup_str(rel))) || !(p->path = dup_str(real))) {
        free(p->rel);
        return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    }
    p->size = (uint64_t)st->st_size;
    p->dev = (uint64_t)st->st_dev;
    p->ino = (uint64_t)st->st_ino;
    f->num_parts++;
    return EDD_OK;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* the files of a .mlpackage folder, depth first in sorted order (sha256_path's order), each checked */
static edd_status walk_package(file_entry *f, const char *root_real, const char *where, const char *folder,
                               const char *prefix, int depth, char *err, size_t err_size) {
    DIR *d;
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0, k;
    edd_status st = EDD_OK;
    if (depth > MAX_PACKAGE_DEPTH)
        return BAD("%s holds folders nested deeper than %d at %s", where, MAX_PACKAGE_DEPTH, prefix);
    if (!(d = opendir(folder)))
        return edd__fail(err, err_size, EDD_ERR_IO, "%s holds %s, which cannot be read (%s)", where,
                         prefix[0] ? prefix : ".", strerror(errno));
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (n == cap) {
            char **nn = (char **)realloc(names, (cap = cap ? 2 * cap : 16) * sizeof *nn);
            if (!nn) {
                st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
                goto done;
            }
            names = nn;
        }
        if (!(names[n] = dup_str(e->d_name))) {
            st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
            goto done;
        }
        n++;
    }
    if (n) qsort(names, n, sizeof *names, cmp_names);
    for (k = 0; k < n && st == EDD_OK; k++) {
        char *path = join(folder, names[k]), *rel = (char *)malloc(strlen(prefix) + strlen(names[k]) + 2), *real = NULL;
        struct stat sb;
        const char *what;
        if (!path || !rel) {
            st = edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        } else if (sprintf(rel, "%s%s", prefix, names[k]) < 0 || lstat(path, &sb) != 0) {
            st = edd__fail(err, err_size, EDD_ERR_IO, "%s holds %s, which cannot be read (%s)", where, rel,
                           strerror(errno));
        } else if (S_ISDIR(sb.st_mode)) {
            strcat(rel, "/");
            st = walk_package(f, root_real, where, path, rel, depth + 1, err, err_size);
        } else {
            if (S_ISLNK(sb.st_mode)) {
                if (!(real = realpath(path, NULL)) || stat(real, &sb) != 0) {
                    st = edd__fail(err, err_size, EDD_ERR_IO, "%s holds %s, which cannot be read (%s)", where, rel,
                                   strerror(errno));
                } else if (!inside(root_real, real)) {
                    st = BAD("%s holds %s, which resolves outside the bundle (to %s)", where, rel, real);
                }
            }
            if (st == EDD_OK && (what = kind_of(sb.st_mode)) != NULL)
                st = BAD("%s holds %s, which is %s, not a regular file", where, rel, what);
            if (st == EDD_OK) st = add_part(f, rel, real ? real : path, &sb, err, err_size);
        }
        free(real);
        free(rel);
        free(path);
    }
done:
    closedir(d);
    for (k = 0; k < n; k++) free(names[k]);
    free(names);
    return st;
}

/* the box rule for manifest.json files[f->name]; fills f->parts */
static edd_status check_entry(const char *dir, const char *root_real, file_entry *f, char *err, size_t err_size) {
    char where[640], *path = join(dir, f->name), *real = NULL;
    const char *what;
    struct stat st;
    uint64_t total = 0;
    size_t k;
    edd_status s = EDD_OK;
    snprintf(where, sizeof where, "%s/" MANIFEST ": files[\"%.256s\"]", dir, f->name);
    if (!path) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    if (!f->has_bytes) {
        s = BAD("%s.bytes must be a non-negative integer", where);
    } else if (stat(path, &st) != 0) {
        s = errno == ENOENT
                ? edd__fail(err, err_size, EDD_ERR_IO, "%s: listed in manifest.json files but missing", path)
                : edd__fail(err, err_size, EDD_ERR_IO, "%s cannot be resolved (%s)", where, strerror(errno));
    } else if (!(real = realpath(path, NULL))) {
        s = edd__fail(err, err_size, EDD_ERR_IO, "%s cannot be resolved (%s)", where, strerror(errno));
    } else if (!inside(root_real, real)) {
        s = BAD("%s resolves outside the bundle (to %s)", where, real);
    } else if ((what = kind_of(st.st_mode)) != NULL && !(S_ISDIR(st.st_mode) && ends_with(f->name, ".mlpackage"))) {
        s = BAD("%s is %s, not a regular file", where, what);
    } else if (S_ISDIR(st.st_mode)) {
        f->package = 1;
        s = walk_package(f, root_real, where, real, "", 0, err, err_size);
    } else {
        s = add_part(f, NULL, real, &st, err, err_size);
    }
    for (k = 0; s == EDD_OK && k < f->num_parts; k++) total += f->parts[k].size;
    if (s == EDD_OK && total > f->bytes)
        s = BAD("%s is %llu bytes on disk, more than its bytes field (%llu); not hashed", where,
                (unsigned long long)total, (unsigned long long)f->bytes);
    free(real);
    free(path);
    return s;
}

/* The tokenizer folder lies inside the bundle and every file in it that a tokenizer reader opens
 * by name is one the manifest lists (and so one the box checked and the hash covers). */
static edd_status check_tokenizer_folder(const edd_bundle *b, const char *dir, const char *root_real, char *err,
                                         size_t err_size) {
    char *real = realpath(b->tok_path, NULL);
    size_t k, j;
    edd_status st = EDD_OK;
    (void)dir;
    if (!real)
        return edd__fail(err, err_size, EDD_ERR_IO, "%s: the tokenizer folder cannot be resolved (%s)", b->tok_path,
                         strerror(errno));
    if (!inside(root_real, real))
        st = BAD("%s: the tokenizer folder resolves outside the bundle (to %s)", b->tok_path, real);
    free(real);
    for (k = 0; st == EDD_OK && TOKENIZER_FILES[k]; k++) {
        size_t n = strlen(b->tok_folder) + strlen(TOKENIZER_FILES[k]) + 2;
        char *rel = (char *)malloc(n), *path;
        struct stat sb;
        int listed_here = 0;
        if (!rel) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        snprintf(rel, n, "%s/%s", b->tok_folder, TOKENIZER_FILES[k]);
        for (j = 0; j < b->num_tok_files; j++) listed_here |= strcmp(b->tok_files[j], rel) == 0;
        if (!(path = join(dir, rel))) {
            free(rel);
            return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        }
        if (!listed_here && lstat(path, &sb) == 0)
            st = BAD("%s: in the tokenizer folder but not listed in manifest.json components.tokenizer.files", path);
        free(path);
        free(rel);
    }
    return st;
}

edd_status edd_bundle_load(const char *dir, edd_bundle **out, char *err, size_t err_size) {
    char *root_real = NULL, *mtext = NULL, *stext = NULL;
    size_t mlen = 0, slen = 0, k;
    edd_status st;
    char perr[400];
    if (err && err_size) err[0] = '\0';
    if (!out) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_bundle_load: out is NULL");
    *out = NULL;
    if (!dir) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_bundle_load: dir is NULL");
    root_real = realpath(dir, NULL); /* NULL: reported as DIR/manifest.json: cannot open (...) */
    if ((st = read_json_file(dir, root_real, MANIFEST, &mtext, &mlen, err, err_size)) ||
        (st = read_json_file(dir, root_real, SCHEDULER, &stext, &slen, err, err_size)))
        goto done;
    if ((st = edd_bundle_parse(mtext, mlen, stext, slen, out, perr, sizeof perr)) != EDD_OK) {
        edd__fail(err, err_size, st, "%s/%s", dir, perr); /* "DIR/scheduler.json: plan.timesteps ..." */
        goto done;
    }
    for (k = 0; k < (*out)->num_files; k++)
        if ((st = check_entry(dir, root_real, &(*out)->files[k], err, err_size)) != EDD_OK) goto fail;
    st = EDD_ERR_OUT_OF_MEMORY;
    if (!((*out)->model_path = join(dir, (*out)->model_file))) goto oom;
    (*out)->info.model_path = (*out)->model_path;
    if ((*out)->info.num_groups) {
        edd_bundle *b = *out;
        size_t g;
        int ok = (b->group_paths = (char **)calloc(b->info.num_groups, sizeof(char *))) != NULL;
        for (g = 0; ok && g < b->info.num_groups; g++) ok = (b->group_paths[g] = join(dir, b->group_files[g])) != NULL;
        if (!ok) goto oom;
        b->info.group_paths = (const char *const *)b->group_paths;
    }
    if ((*out)->info.conditioning == EDD_COND_TEXT) {
        edd_bundle *b = *out;
        size_t g;
        for (g = 0; g < 2; g++) {
            if (!(b->comp_path[g] = join(dir, b->comp_file[g]))) goto oom;
            (g == 0 ? &b->info.text_encoder : &b->info.vae_decoder)->path = b->comp_path[g];
        }
        if (!(b->tok_path = join(dir, b->tok_folder))) goto oom;
        b->info.tokenizer_path = b->tok_path;
        if ((st = check_tokenizer_folder(b, dir, root_real, err, err_size)) != EDD_OK) goto fail;
    }
    if (!((*out)->dir = dup_str(dir))) goto oom;
    st = EDD_OK;
    goto done;
oom:
    edd__fail(err, err_size, st, "out of memory");
fail:
    edd_bundle_free(*out);
    *out = NULL;
done:
    free(root_real);
    free(mtext);
    free(stext);
    return st;
}

edd_status edd_bundle_verify(const edd_bundle *b, char *err, size_t err_size) {
    size_t k;
    if (err && err_size) err[0] = '\0';
    if (!b || !b->dir)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                         "edd_bundle_verify: needs a bundle from edd_bundle_load");
    for (k = 0; k < b->num_files; k++) {
        const file_entry *f = &b->files[k];
        const file_part *p = f->parts;
        char *path, hex[65], note[384] = "";
        int fd, bad;
        if (f->package)
            return edd__fail(err, err_size, EDD_ERR_IO,
                             "%s/" MANIFEST ": files[\"%s\"] is a .mlpackage folder, which this runtime does not hash",
                             b->dir, f->name);
        if (!(path = join(b->dir, f->name))) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
        /* the real path checked at load, still that regular file (a swapped-in FIFO would block fopen) */
        fd = f->num_parts == 1 ? open_checked(p->path, p->dev, p->ino) : -1;
        bad = fd < 0 || edd__sha256_file(p->path, hex) != 0;
        if (fd >= 0) close(fd);
        if (bad) {
            edd__fail(err, err_size, EDD_ERR_IO, "%s: listed in manifest.json files but missing or unreadable", path);
            free(path);
            return EDD_ERR_IO;
        }
        if (!f->sha256 || strcmp(hex, f->sha256) != 0) {
            if (p->size != f->bytes)
                snprintf(note, sizeof note, "; it is %llu bytes where files['%.300s'].bytes says %llu",
                         (unsigned long long)p->size, f->name, (unsigned long long)f->bytes);
            edd__fail(err, err_size, EDD_ERR_BAD_BUNDLE,
                      "%s: sha256 %.12s... does not match manifest.json files['%s'].sha256 %.12s...; the file changed "
                      "after compile%s",
                      path, hex, f->name, f->sha256 ? f->sha256 : "(none)", note);
            free(path);
            return EDD_ERR_BAD_BUNDLE;
        }
        free(path);
    }
    return EDD_OK;
}

#else
edd_status edd_bundle_load(const char *dir, edd_bundle **out, char *err, size_t err_size) {
    (void)dir;
    if (out) *out = NULL;
    return edd__fail(err, err_size, EDD_ERR_IO,
                     "edd_bundle_load: bundle folders are checked on POSIX systems only; read manifest.json and "
                     "scheduler.json yourself and call edd_bundle_parse");
}

edd_status edd_bundle_verify(const edd_bundle *b, char *err, size_t err_size) {
    (void)b;
    return edd__fail(err, err_size, EDD_ERR_IO, "edd_bundle_verify: bundle folders are checked on POSIX systems only");
}
#endif

void edd_bundle_free(edd_bundle *b) {
    size_t k, j;
    if (!b) return;
    for (k = 0; k < b->num_files; k++) {
        free(b->files[k].name);
        free(b->files[k].sha256);
        for (j = 0; j < b->files[k].num_parts; j++) {
            free(b->files[k].parts[j].rel);
            free(b->files[k].parts[j].path);
        }
        free(b->files[k].parts);
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
    for (k = 0; k < 2; k++) {
        free(b->comp_format[k]);
        free(b->comp_file[k]);
        free(b->comp_path[k]);
    }
    for (k = 0; k < b->num_tok_files; k++) free(b->tok_files[k]);
    free(b->tok_files);
    free(b->tok_folder);
    free(b->tok_path);
    free(b->dir);
    free(b->spacing);
    edd_plan_free(b->plan);
    free(b->model_format);
    free(b->model_file);
    free(b->model_path);
    free(b);
}

const edd_plan *edd_bundle_plan(const edd_bundle *b) {
    return b ? b->plan : NULL;
}

const edd_bundle_info *edd_bundle_get_info(const edd_bundle *b) {
    return b ? &b->info : NULL;
}

edd_status edd_bundle_fill_params(const edd_bundle *b, edd_params *p) {
    size_t k;
    if (!b || !p) return EDD_ERR_INVALID_ARGUMENT;
    p->sample_ndim = b->info.sample_ndim;
    for (k = 0; k < b->info.sample_ndim; k++) p->sample_shape[k] = b->info.sample_shape[k];
    /* as runner.generate / generate_text: guidance for class-conditional and text models only */
    p->guidance =
        b->info.conditioning == EDD_COND_CLASS || b->info.conditioning == EDD_COND_TEXT ? b->info.guidance_scale : 1.0;
    p->null_label = b->info.null_label;
    p->table_steps = b->info.step_group || b->info.cache_flags ? b->info.num_steps : 0;
    p->step_group = b->info.step_group;
    p->num_groups = b->info.num_groups;
    p->cache_flags = b->info.cache_flags;
    return EDD_OK;
}
