/* edgediff_run.c — the standalone runner: a bundle in, an image grid out, in C.
 *
 *   edgediff-run BUNDLE [-n N] [--seed S] [--label L] [--steps N] [-o grid.png|.pgm|.ppm]
 *                [--bench [--runs R] [--warmup W] [--json FILE]] [--threads T] [--precision f32|bf16|default]
 *                [--backend openvino|fake] [--raw samples.f32] [--trace steps.f32] [--no-verify]
 *   edgediff-run TEXT_BUNDLE --prompt TEXT [--negative-prompt TEXT] [--guidance G] [--low-memory]
 *                [-n N] [--seed S] [--steps N] [-o grid.png] [--raw images.f32] [--bench ...]
 *   edgediff-run TEXT_BUNDLE --tokenize TEXT       the token ids as a JSON array
 *
 *   BUNDLE/manifest.json + scheduler.json ─edd_bundle_load─► plan, info; every file the manifest
 *                        lists checked before use (inside BUNDLE, a regular file, <= its bytes)
 *   every file listed in the manifest ─edd_bundle_verify─► sha256 checked (--no-verify skips)
 *   info.model_path ─edd_ov_create─► OpenVINO backend      (or --backend fake: a formula)
 *   edd_context_sample (N images, streams 0..N-1, labels 0,1,2,.. or --label) ─► samples
 *   ─► grid image (as `edgediff generate`), --raw: the float32 samples, --bench: timings,
 *      --json: the --bench figures as JSON (raw per-run and per-step times; `edgediff bench` reads it),
 *      --trace: every step's model input and (guided) model output, float32, step by step
 *
 * --steps N other than the bundle's replans with edd_plan_with_steps (scheduler.json's spacing);
 * refused for a bundle with timestep_groups or a cache_schedule (made for its own steps).
 * A grouped bundle runs each step on its group's graph (edd_denoise_args.group).
 * It produces what `edgediff generate BUNDLE -n N --seed S [--label L]` produces: image k
 * uses noise stream k, labels default to k % num_classes, guidance applies to class models.
 *
 * Built without OpenVINO (-DEDD_RUN_NO_OPENVINO: the cross-compiled "runner core") it keeps
 * the fake backend only: eps = 0.5 tanh(x) + 0.01 t / 1000 + 0.1 label, the model of the
 * Python conformance tests, so the bundle loader, the loop, guidance and the image writer
 * can be checked on any machine against the Python reference.
 *
 * A text bundle (conditioning kind text) runs edd_pipeline_generate over the OpenVINO backend's
 * three graphs (edd_ov_text): N images of --prompt, image k from noise stream k, guidance the
 * bundle's unless --guidance; --raw writes the decoded images float32 (N, 3, H, W) in [-1, 1]
 * (as edgediff.generate returns them); --low-memory loads each graph only while it runs.
 *
 * Exit status: 0 ok, 1 runtime failure, 2 usage error. Errors are one line on stderr
 * naming the file / field / option.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "edgediff.h"
#include "image.h"
#ifndef EDD_RUN_NO_OPENVINO
#include "edgediff_openvino.h"
#endif

#define USAGE                                                                                                          \
    "usage: edgediff-run BUNDLE [-n N] [--seed S] [--label L] [--steps N] [-o OUT.png|.pgm|.ppm]\n"                    \
    "                    [--bench [--runs R] [--warmup W] [--json FILE]] [--threads T] [--precision "                  \
    "f32|bf16|default]\n"                                                                                              \
    "                    [--backend openvino|fake] [--raw SAMPLES.f32] [--trace STEPS.f32] [--no-verify]\n"            \
    "       edgediff-run TEXT_BUNDLE --prompt TEXT [--negative-prompt TEXT] [--guidance G] [--low-memory] [-n N]\n"    \
    "                    [--seed S] [--steps N] [-o OUT.png] [--raw IMAGES.f32] [--bench ...]\n"                       \
    "       edgediff-run TEXT_BUNDLE --tokenize TEXT\n"

typedef struct options {
    const char *bundle, *output, *raw, *trace, *backend, *precision, *json;
    const char *prompt, *negative, *tokenize; /* text bundles */
    double guidance;                          /* < 0: the bundle's */
    int low_memory, has_num;
    size_t num;
    uint64_t seed;
    long long label;
    int has_label;
    long long steps;
    int bench, runs, warmup, threads, no_verify;
} options;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "edgediff-run: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n" USAGE);
    return 2;
}

/* a non-negative integer <= max, the whole string */
static int parse_uint(const char *s, unsigned long long max, unsigned long long *out) {
    char *end;
    unsigned long long v;
    if (!s || !*s || *s == '-' || *s == '+') return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || v > max) return -1;
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, options *o) {
    int i;
    unsigned long long v;
    memset(o, 0, sizeof *o);
    o->num = 1;
    o->runs = 10;
    o->steps = -1;
    o->precision = "f32";
    o->guidance = -1.0;
#ifdef EDD_RUN_NO_OPENVINO
    o->backend = "fake";
#else
    o->backend = "openvino";
#endif
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            printf(USAGE);
            exit(0);
        } else if (strcmp(a, "--bench") == 0) {
            o->bench = 1;
            takes = 0;
        } else if (strcmp(a, "--no-verify") == 0) {
            o->no_verify = 1;
            takes = 0;
        } else if (strcmp(a, "--low-memory") == 0) {
            o->low_memory = 1;
            takes = 0;
        } else if (a[0] == '-' && a[1] != '\0' && !val) {
            return usage_error("option %s needs a value", a);
        } else if (strcmp(a, "-n") == 0 || strcmp(a, "--num") == 0) {
            if (parse_uint(val, 1u << 20, &v) || v < 1)
                return usage_error("-n must be a positive integer, got '%s'", val);
            o->num = (size_t)v;
            o->has_num = 1;
        } else if (strcmp(a, "--prompt") == 0) {
            o->prompt = val;
        } else if (strcmp(a, "--negative-prompt") == 0) {
            o->negative = val;
        } else if (strcmp(a, "--tokenize") == 0) {
            o->tokenize = val;
        } else if (strcmp(a, "--guidance") == 0) {
            char *end;
            errno = 0;
            o->guidance = strtod(val, &end);
            if (errno || *end || !*val || !isfinite(o->guidance) || o->guidance < 0)
                return usage_error("--guidance must be a finite number >= 0, got '%s'", val);
        } else if (strcmp(a, "--seed") == 0) {
            if (parse_uint(val, UINT64_MAX, &v))
                return usage_error("--seed must be an integer in [0, 2^64), got '%s'", val);
            o->seed = v;
        } else if (strcmp(a, "--label") == 0) {
            if (parse_uint(val, 1u << 30, &v))
                return usage_error("--label must be a non-negative integer, got '%s'", val);
            o->label = (long long)v;
            o->has_label = 1;
        } else if (strcmp(a, "--steps") == 0) {
            if (parse_uint(val, 1u << 30, &v) || v < 1)
                return usage_error("--steps must be a positive integer, got '%s'", val);
            o->steps = (long long)v;
        } else if (strcmp(a, "--runs") == 0) {
            if (parse_uint(val, 100000, &v) || v < 1)
                return usage_error("--runs must be a positive integer, got '%s'", val);
            o->runs = (int)v;
        } else if (strcmp(a, "--warmup") == 0) {
            if (parse_uint(val, 100000, &v))
                return usage_error("--warmup must be a non-negative integer, got '%s'", val);
            o->warmup = (int)v;
        } else if (strcmp(a, "--json") == 0) {
            o->json = val;
        } else if (strcmp(a, "--threads") == 0) {
            if (parse_uint(val, 4096, &v))
                return usage_error("--threads must be a non-negative integer, got '%s'", val);
            o->threads = (int)v;
        } else if (strcmp(a, "--precision") == 0) {
            o->precision = strcmp(val, "default") == 0 ? NULL : val;
        } else if (strcmp(a, "--backend") == 0) {
            if (strcmp(val, "openvino") != 0 && strcmp(val, "fake") != 0)
                return usage_error("--backend must be openvino or fake, got '%s'", val);
            o->backend = val;
        } else if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            o->output = val;
        } else if (strcmp(a, "--raw") == 0) {
            o->raw = val;
        } else if (strcmp(a, "--trace") == 0) {
            o->trace = val;
        } else if (a[0] == '-' && a[1] != '\0') {
            return usage_error("unknown option %s", a);
        } else {
            if (o->bundle) return usage_error("one bundle only (got a second: %s)", a);
            o->bundle = a;
            takes = 0;
        }
        i += takes;
    }
    if (!o->bundle) return usage_error("%s", "missing BUNDLE");
    if (o->output) {
        size_t n = strlen(o->output);
        const char *ext = n >= 4 ? o->output + n - 4 : "";
        if (strcmp(ext, ".png") && strcmp(ext, ".pgm") && strcmp(ext, ".ppm") && strcmp(ext, ".PNG"))
            return usage_error("%s: output must end in .png, .pgm or .ppm", o->output);
    }
    if (o->json && !o->bench) return usage_error("%s", "--json needs --bench");
    if (!o->output && !o->raw && !o->bench && !o->tokenize)
        return usage_error("%s", "nothing to do: give -o OUT, --raw FILE or --bench");
    if (o->tokenize && (o->output || o->raw || o->bench || o->prompt))
        return usage_error("%s", "--tokenize prints the ids and exits: give it alone");
    return 0;
}

/* ---- the fake backend (and the runner core's only one) ---- */

static int fake_denoise(void *user, const edd_denoise_args *a) {
    size_t r, j;
    (void)user;
    for (r = 0; r < a->batch; r++) {
        float shift = a->labels ? (float)a->labels[r] * 0.1f : 0.0f;
        float tt = 0.01f * a->t[r];
        tt = tt / 1000.0f;
        for (j = 0; j < a->sample_size; j++) {
            size_t i = r * a->sample_size + j;
            float e = 0.5f * (float)tanh((double)a->x[i]); /* tanh in double, rounded once: the same bits as
                                                             numpy's float64 tanh, on any libm worth the name */
            a->eps[i] = (e + tt) + shift;
        }
    }
    return 0;
}

/* ---- timing: a backend wrapper that records when each step's denoise starts and ends ---- */

typedef struct timing {
    edd_backend inner;
    double *start, *end; /* per step of the current run */
    size_t steps;
} timing;

static int timed_denoise(void *user, const edd_denoise_args *a) {
    timing *tm = (timing *)user;
    int rc;
    tm->start[a->step] = now_ms();
    rc = tm->inner.denoise(tm->inner.user, a);
    tm->end[a->step] = now_ms();
    return rc;
}

/* --trace: x_in then eps of every step, appended to a file */
static int trace_step(void *user, const edd_step_info *info) {
    FILE *f = *(FILE **)user; /* NULL after the first run (--bench runs again) */
    size_t n = info->batch * info->sample_size;
    if (!f) return 0;
    return fwrite(info->x_in, sizeof(float), n, f) != n || fwrite(info->eps, sizeof(float), n, f) != n;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* the q-quantile of v[0..n) (sorts v), linear interpolation as numpy's default */
static double quantile(double *v, size_t n, double q) {
    double pos, frac;
    size_t lo;
    qsort(v, n, sizeof *v, cmp_double);
    pos = q * (double)(n - 1);
    lo = (size_t)pos;
    frac = pos - (double)lo;
    return lo + 1 < n ? v[lo] * (1 - frac) + v[lo + 1] * frac : v[lo];
}

static double mean(const double *v, size_t n) {
    double s = 0;
    size_t i;
    for (i = 0; i < n; i++) s += v[i];
    return n ? s / (double)n : 0;
}

/* Linux: VmHWM of /proc/self/status is this program's own peak. getrusage's ru_maxrss is not: the
   kernel carries it across fork + exec, so a runner started by a large process (Python with torch
   loaded) would report its parent's size. getrusage is the fallback elsewhere. */
static double peak_rss_mb(void) {
    struct rusage ru;
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    if (f) {
        while (fgets(line, sizeof line, f)) {
            unsigned long kb;
            if (sscanf(line, "VmHWM: %lu kB", &kb) == 1) {
                fclose(f);
                return (double)kb / 1024.0;
            }
        }
        fclose(f);
    }
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return (double)ru.ru_maxrss / 1024.0; /* Linux: kilobytes */
}

static int write_raw(const char *path, const float *x, size_t n) {
    FILE *f = fopen(path, "wb");
    int ok;
    if (!f) {
        fprintf(stderr, "edgediff-run: %s: cannot open for writing\n", path);
        return 1;
    }
    ok = fwrite(x, sizeof(float), n, f) == n;
    if (fclose(f) != 0) ok = 0;
    if (!ok) fprintf(stderr, "edgediff-run: %s: write error\n", path);
    return !ok;
}

static void json_array(FILE *f, const char *key, const double *v, size_t n) {
    size_t i;
    fprintf(f, "  \"%s\": [", key);
    for (i = 0; i < n; i++) fprintf(f, "%s%.6f", i ? ", " : "", v[i]);
    fprintf(f, "],\n");
}

static void json_str(FILE *f, const char *key, const char *v) {
    fprintf(f, "  \"%s\": \"", key);
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fprintf(f, "\",\n");
}

/* --json: the raw figures, written before the summary sorts them */
static int write_bench_json(const char *path, const edd_bundle_info *info, const char *desc, size_t steps,
                            size_t images, double guidance, double init_ms, double bundle_ms, double first_ms,
                            int warmup, const double *e2e, size_t runs, const double *step_ms, const double *den_ms) {
    FILE *f = fopen(path, "w");
    int ok;
    if (!f) {
        fprintf(stderr, "edgediff-run: %s: cannot open for writing\n", path);
        return 1;
    }
    fprintf(f, "{\n  \"runner\": \"edgediff-run\",\n");
    json_str(f, "backend", desc);
    json_str(f, "model_file", info->model_file);
    json_str(f, "model_format", info->model_format);
    json_str(f, "solver", info->solver);
    fprintf(f, "  \"steps\": %lu,\n  \"images\": %lu,\n  \"guidance\": %g,\n", (unsigned long)steps,
            (unsigned long)images, guidance);
    fprintf(f, "  \"init_ms\": %.6f,\n  \"bundle_ms\": %.6f,\n  \"first_ms\": %.6f,\n  \"warmup_runs\": %d,\n", init_ms,
            bundle_ms, first_ms, warmup);
    json_array(f, "e2e_ms", e2e, runs);
    json_array(f, "step_ms", step_ms, runs * steps);
    json_array(f, "denoise_ms", den_ms, runs * steps);
    fprintf(f, "  \"peak_rss_mb\": %.3f\n}\n", peak_rss_mb());
    ok = !ferror(f);
    if (fclose(f) != 0) ok = 0;
    if (!ok) fprintf(stderr, "edgediff-run: %s: write error\n", path);
    return !ok;
}

/* ---- text bundles: edd_pipeline over the OpenVINO backend's three graphs ---- */
#ifndef EDD_RUN_NO_OPENVINO

/* a pipeline backend that times each phase of a generation */
typedef struct text_timing {
    edd_pipeline_backend inner;
    double start;                /* the generation's start */
    double first_call;           /* the first backend call (tokenizing is done by then) */
    double encode, decode;       /* ms in run(TEXT_ENCODER) / run(VAE_DECODER) */
    double load;                 /* ms in load() */
    double *den_start, *den_end; /* per step */
    size_t steps;
} text_timing;

static void mark(text_timing *tt) {
    if (tt->first_call == 0) tt->first_call = now_ms();
}

static int tt_denoise(void *user, const edd_denoise_args *a) {
    text_timing *tt = (text_timing *)user;
    double t0 = now_ms();
    int rc;
    mark(tt);
    rc = tt->inner.denoise(tt->inner.user, a);
    if (a->step < tt->steps) {
        if (a->first_row == 0) tt->den_start[a->step] = t0;
        tt->den_end[a->step] = now_ms();
    }
    return rc;
}

static int tt_run(void *user, const edd_component_args *a) {
    text_timing *tt = (text_timing *)user;
    double t0;
    int rc;
    mark(tt);
    t0 = now_ms();
    rc = tt->inner.run(tt->inner.user, a);
    if (a->component == EDD_COMPONENT_TEXT_ENCODER)
        tt->encode += now_ms() - t0;
    else
        tt->decode += now_ms() - t0;
    return rc;
}

static int tt_load(void *user, edd_component which) {
    text_timing *tt = (text_timing *)user;
    double t0;
    int rc;
    mark(tt);
    t0 = now_ms();
    rc = tt->inner.load ? tt->inner.load(tt->inner.user, which) : 0;
    tt->load += now_ms() - t0;
    return rc;
}

static void tt_unload(void *user, edd_component which) {
    text_timing *tt = (text_timing *)user;
    if (tt->inner.unload) tt->inner.unload(tt->inner.user, which);
}

static const char *tt_error(void *user) {
    text_timing *tt = (text_timing *)user;
    return tt->inner.error ? tt->inner.error(tt->inner.user) : "";
}

/* one timed generation; per-phase figures into the arrays at index r */
static edd_status text_generate(edd_pipeline *pipe, text_timing *tt, const edd_text_params *tp, float *out, size_t n,
                                double *e2e, double *tok, double *enc, double *dec, double *load, double *step_ms,
                                double *den_ms, size_t r) {
    double end;
    size_t s, steps = tt->steps;
    edd_status st;
    tt->first_call = tt->encode = tt->decode = tt->load = 0;
    tt->start = now_ms();
    st = edd_pipeline_generate(pipe, tp, out, n);
    end = now_ms();
    e2e[r] = end - tt->start;
    tok[r] = (tt->first_call ? tt->first_call : end) - tt->start;
    enc[r] = tt->encode;
    dec[r] = tt->decode;
    load[r] = tt->load;
    for (s = 0; s < steps; s++) {
        step_ms[r * steps + s] = tt->den_end[s] - tt->den_start[s]; /* the step's denoiser call(s) */
        den_ms[r * steps + s] = tt->den_end[s] - tt->den_start[s];
    }
    return st;
}

static void summary(const char *what, double *v, size_t n) {
    printf("  %-10s avg %.3f ms, p50 %.3f ms, p90 %.3f ms\n", what, mean(v, n), quantile(v, n, 0.5),
           quantile(v, n, 0.9));
}

static int run_text_ov(const options *o, const edd_bundle *bundle, const edd_plan *plan, double t0, double t_bundle) {
    const edd_bundle_info *info = edd_bundle_get_info(bundle);
    edd_pipeline *pipe = NULL;
    edd_pipeline_backend backend;
    edd_text_params tp = edd_default_text_params();
    text_timing tt;
    float *out = NULL;
    size_t n_out, steps = edd_plan_num_steps(plan), runs = (size_t)o->runs;
    double t_init, first[1], *e2e = NULL, *tok = NULL, *enc = NULL, *dec = NULL, *load = NULL, *step_ms = NULL,
                             *den_ms = NULL, f_tok[1], f_enc[1], f_dec[1], f_load[1], *f_step = NULL, *f_den = NULL;
    char err[1024], desc[160] = "";
    int rc = 1, r;
    edd_status st;
#ifndef EDD_RUN_NO_OPENVINO
    edd_ov_text *ov = NULL;
#endif
    memset(&tt, 0, sizeof tt);
    tp.batch = o->num;
    tp.prompt = o->prompt;
    tp.negative_prompt = o->negative;
    tp.guidance = o->guidance;
    tp.seed = o->seed;
    tp.plan = plan;
    tp.low_memory = o->low_memory;
    tp.unit_hwc = 0; /* the decoder's [-1, 1] (3, H, W): what the grid writer and --raw take */
    {
        edd_ov_params op = edd_ov_default_params();
        double g = o->guidance >= 0 ? o->guidance : info->guidance_scale;
        size_t rows = g != 1.0 ? 2 * o->num : o->num;
        char version[64];
        op.precision = o->precision;
        op.threads = o->threads;
        /* the denoiser at the static batch of one call, unless its graph fixes one */
        op.static_batch = info->inputs[0].shape[0] > 0 ? 0 : rows;
        if ((st = edd_ov_text_create(info, &op, &ov, err, sizeof err)) != EDD_OK) {
            fprintf(stderr, "edgediff-run: %s\n", err);
            goto done;
        }
        edd_ov_version(version, sizeof version);
        snprintf(desc, sizeof desc, "OpenVINO %s CPU, precision %s, %lu denoiser rows per step%s", version,
                 o->precision ? o->precision : "default", (unsigned long)rows, o->low_memory ? ", low memory" : "");
    }
    tt.inner = edd_ov_text_backend(ov);
    tt.steps = steps;
    tt.den_start = (double *)calloc(steps, sizeof(double));
    tt.den_end = (double *)calloc(steps, sizeof(double));
    f_step = (double *)calloc(steps, sizeof(double));
    f_den = (double *)calloc(steps, sizeof(double));
    if (!tt.den_start || !tt.den_end || !f_step || !f_den) goto oom;
    backend.denoise = tt_denoise;
    backend.run = tt_run;
    backend.load = tt_load;
    backend.unload = tt_unload;
    backend.error = tt_error;
    backend.user = &tt;
    if ((st = edd_pipeline_create(bundle, &backend, &pipe, err, sizeof err)) != EDD_OK) {
        fprintf(stderr, "edgediff-run: %s\n", err);
        goto done;
    }
    if (!o->low_memory && (st = edd_pipeline_load(pipe)) != EDD_OK) { /* compiled once, before the runs */
        fprintf(stderr, "edgediff-run: %s\n", edd_pipeline_error(pipe));
        goto done;
    }
    t_init = now_ms();
    n_out = edd_pipeline_output_count(pipe, &tp);
    if (!n_out || !(out = (float *)malloc(n_out * sizeof(float)))) goto oom;
    st = text_generate(pipe, &tt, &tp, out, n_out, first, f_tok, f_enc, f_dec, f_load, f_step, f_den, 0);
    if (st != EDD_OK) {
        fprintf(stderr, "edgediff-run: %s: %s\n", edd_status_str(st), edd_pipeline_error(pipe));
        rc = st == EDD_ERR_INVALID_ARGUMENT ? 2 : 1;
        goto done;
    }
    if (edd_pipeline_last_prompt_tokens(pipe) > info->max_length)
        fprintf(stderr, "edgediff-run: warning: the prompt is %lu tokens; truncated to %lu as CLIP does\n",
                (unsigned long)edd_pipeline_last_prompt_tokens(pipe), (unsigned long)info->max_length);
    if (o->bench) {
        e2e = (double *)malloc(runs * sizeof(double));
        tok = (double *)malloc(runs * sizeof(double));
        enc = (double *)malloc(runs * sizeof(double));
        dec = (double *)malloc(runs * sizeof(double));
        load = (double *)malloc(runs * sizeof(double));
        step_ms = (double *)malloc(runs * steps * sizeof(double));
        den_ms = (double *)malloc(runs * steps * sizeof(double));
        if (!e2e || !tok || !enc || !dec || !load || !step_ms || !den_ms) goto oom;
        for (r = 0; r < o->warmup; r++)
            if ((st = edd_pipeline_generate(pipe, &tp, out, n_out)) != EDD_OK) {
                fprintf(stderr, "edgediff-run: %s\n", edd_pipeline_error(pipe));
                goto done;
            }
        for (r = 0; r < o->runs; r++)
            if ((st = text_generate(pipe, &tt, &tp, out, n_out, e2e, tok, enc, dec, load, step_ms, den_ms,
                                    (size_t)r)) != EDD_OK) {
                fprintf(stderr, "edgediff-run: %s\n", edd_pipeline_error(pipe));
                goto done;
            }
        if (o->json) {
            FILE *f = fopen(o->json, "w");
            int ok;
            if (!f) {
                fprintf(stderr, "edgediff-run: %s: cannot open for writing\n", o->json);
                goto done;
            }
            fprintf(f, "{\n  \"runner\": \"edgediff-run\",\n");
            json_str(f, "backend", desc);
            json_str(f, "model_file", info->model_file);
            json_str(f, "model_format", info->model_format);
            json_str(f, "solver", info->solver);
            fprintf(f, "  \"pipeline\": \"text\",\n  \"low_memory\": %s,\n", o->low_memory ? "true" : "false");
            fprintf(f, "  \"steps\": %lu,\n  \"images\": %lu,\n  \"guidance\": %g,\n", (unsigned long)steps,
                    (unsigned long)o->num, o->guidance >= 0 ? o->guidance : info->guidance_scale);
            fprintf(f, "  \"init_ms\": %.6f,\n  \"bundle_ms\": %.6f,\n  \"first_ms\": %.6f,\n  \"warmup_runs\": %d,\n",
                    t_init - t0, t_bundle - t0, first[0], o->warmup);
            fprintf(f, "  \"first_tokenize_ms\": %.6f,\n  \"first_text_encode_ms\": %.6f,\n", f_tok[0], f_enc[0]);
            fprintf(f, "  \"first_decode_ms\": %.6f,\n  \"first_load_ms\": %.6f,\n", f_dec[0], f_load[0]);
            json_array(f, "e2e_ms", e2e, runs);
            json_array(f, "tokenize_ms", tok, runs);
            json_array(f, "text_encode_ms", enc, runs);
            json_array(f, "decode_ms", dec, runs);
            json_array(f, "load_ms", load, runs);
            json_array(f, "step_ms", step_ms, runs * steps);
            json_array(f, "denoise_ms", den_ms, runs * steps);
            fprintf(f, "  \"peak_rss_mb\": %.3f\n}\n", peak_rss_mb());
            ok = !ferror(f);
            if (fclose(f) != 0) ok = 0;
            if (!ok) {
                fprintf(stderr, "edgediff-run: %s: write error\n", o->json);
                goto done;
            }
        }
        printf("edgediff-run --bench %s\n", o->bundle);
        printf("  model      %s + %s + %s (%s) on %s\n", info->text_encoder.file, info->model_file,
               info->vae_decoder.file, info->model_format, desc);
        printf("  sampler    %s, %lu steps, %lu image(s), guidance %g\n", info->solver, (unsigned long)steps,
               (unsigned long)o->num, o->guidance >= 0 ? o->guidance : info->guidance_scale);
        printf("  init       %.1f ms (bundle %s%.2f ms, %s %.1f ms)\n", t_init - t0,
               o->no_verify ? "" : "load + sha256 ", t_bundle - t0,
               o->low_memory ? "tokenizer (graphs load per run)" : "tokenizer + 3 graphs read + compile",
               t_init - t_bundle);
        printf("  first run  %.3f ms (tokenize %.3f, load %.1f, text encode %.3f, decode %.3f ms)\n", first[0],
               f_tok[0], f_load[0], f_enc[0], f_dec[0]);
        printf("  warm runs  %d: avg %.3f ms, p50 %.3f ms, p90 %.3f ms", o->runs, mean(e2e, runs),
               quantile(e2e, runs, 0.5), quantile(e2e, runs, 0.9));
        printf(", min %.3f ms, max %.3f ms\n", e2e[0], e2e[runs - 1]);
        summary("tokenize", tok, runs);
        summary("load", load, runs);
        summary("text enc", enc, runs);
        summary("per step", step_ms, runs * steps);
        summary("decode", dec, runs);
        printf("  peak RSS   %.1f MB%s\n", peak_rss_mb(), o->low_memory ? " (low memory)" : "");
    }
    if (o->raw && write_raw(o->raw, out, n_out)) goto done;
    if (o->output) {
        edd_image img;
        if (edd_image_grid(out, o->num, 3, (size_t)info->image_shape[1], (size_t)info->image_shape[2], &img)) goto oom;
        r = edd_image_write(&img, o->output, err, sizeof err);
        free(img.pixels);
        if (r) {
            fprintf(stderr, "edgediff-run: %s\n", err);
            goto done;
        }
        if (!o->bench)
            printf("wrote %s: %lu image(s), seed %llu, %.1f ms\n", o->output, (unsigned long)o->num,
                   (unsigned long long)o->seed, first[0]);
    }
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "edgediff-run: out of memory\n");
    rc = 1;
done:
    edd_pipeline_free(pipe);
    edd_ov_text_free(ov);
    free(tt.den_start);
    free(tt.den_end);
    free(f_step);
    free(f_den);
    free(out);
    free(e2e);
    free(tok);
    free(enc);
    free(dec);
    free(load);
    free(step_ms);
    free(den_ms);
    return rc;
}
#endif

static int run_text(const options *o, const edd_bundle *bundle, const edd_plan *plan, int replanned, double t0,
                    double t_bundle) {
    const edd_bundle_info *info = edd_bundle_get_info(bundle);
    char err[1024];
    size_t k;
    int rc = 1;
    edd_status st;
    if (o->has_label) {
        fprintf(stderr, "edgediff-run: --label given, but this bundle takes prompts (--prompt)\n");
        return 2;
    }
    if (o->tokenize) {
        edd_tokenizer *t = NULL;
        int32_t *ids;
        size_t full = 0, L = info->max_length;
        if ((st = edd_tokenizer_load(info->tokenizer_path, &t, err, sizeof err)) != EDD_OK) {
            fprintf(stderr, "edgediff-run: %s\n", err);
            return 1;
        }
        if (!(ids = (int32_t *)malloc(L * sizeof *ids))) {
            edd_tokenizer_free(t);
            fprintf(stderr, "edgediff-run: out of memory\n");
            return 1;
        }
        st = edd_tokenizer_encode(t, o->tokenize, strlen(o->tokenize), ids, L, &full, err, sizeof err);
        if (st != EDD_OK) {
            fprintf(stderr, "edgediff-run: --tokenize: %s\n", err);
            rc = 2;
        } else {
            printf("[");
            for (k = 0; k < L; k++) printf("%s%ld", k ? ", " : "", (long)ids[k]);
            printf("]\n");
            rc = 0;
        }
        free(ids);
        edd_tokenizer_free(t);
        return rc;
    }
    if (!o->prompt) {
        fprintf(stderr, "edgediff-run: %s: a text-to-image bundle needs --prompt TEXT\n", o->bundle);
        return 2;
    }
    if (o->trace) {
        fprintf(stderr, "edgediff-run: --trace is for class-label bundles\n");
        return 2;
    }
    if (replanned && (info->step_group || info->cache_flags)) {
        fprintf(stderr, "edgediff-run: --steps: this bundle's scheduler.json tables are made for its own %lu steps\n",
                (unsigned long)info->num_steps);
        return 2;
    }
    if (strcmp(o->backend, "openvino") != 0) {
        fprintf(stderr, "edgediff-run: --backend %s: a text bundle runs on OpenVINO only\n", o->backend);
        return 2;
    }
#ifdef EDD_RUN_NO_OPENVINO
    (void)plan;
    (void)t0;
    (void)t_bundle;
    fprintf(stderr, "edgediff-run: built without OpenVINO; a text bundle needs the OpenVINO backend\n");
    return 2;
#else
    return run_text_ov(o, bundle, plan, t0, t_bundle);
#endif
}

int main(int argc, char **argv) {
    options o;
    edd_bundle *bundle = NULL;
    const edd_plan *plan;
    edd_plan *replanned = NULL;
    const edd_bundle_info *info;
    edd_params params = edd_default_params();
    edd_context *ctx = NULL;
    edd_backend backend;
    timing tm;
    int64_t *labels = NULL;
    float *out = NULL;
    double *e2e = NULL, *step_ms = NULL, *den_ms = NULL;
    FILE *trace = NULL;
    double t0, t_bundle, t_init, t_first = 0;
    char err[1024], ov_desc[128] = "";
    size_t k, n_out, rows;
    int rc = 1, r;
    edd_status st;
#ifndef EDD_RUN_NO_OPENVINO
    edd_ov *ov = NULL;
#endif

    if ((rc = parse_args(argc, argv, &o)) != 0) return rc;
    rc = 1;
    memset(&tm, 0, sizeof tm);
    t0 = now_ms();
    if ((st = edd_bundle_load(o.bundle, &bundle, err, sizeof err)) != EDD_OK) {
        fprintf(stderr, "edgediff-run: %s\n", err);
        return 1;
    }
    if (!o.no_verify && (st = edd_bundle_verify(bundle, err, sizeof err)) != EDD_OK) {
        fprintf(stderr, "edgediff-run: %s\n", err);
        goto done;
    }
    t_bundle = now_ms();
    info = edd_bundle_get_info(bundle);
    plan = edd_bundle_plan(bundle);
    if (o.steps >= 0 && (size_t)o.steps != info->num_steps) { /* replan, as the Python planner would */
        if ((st = edd_plan_with_steps(plan, info->spacing, (size_t)o.steps, &replanned, err, sizeof err)) != EDD_OK) {
            fprintf(stderr, "edgediff-run: --steps %lld: %s\n", o.steps, err);
            rc = 2;
            goto done;
        }
        plan = replanned;
    }
    if (info->conditioning == EDD_COND_TEXT) {
        rc = run_text(&o, bundle, plan, replanned != NULL, t0, t_bundle);
        goto done;
    }
    if (o.prompt || o.negative || o.tokenize || o.low_memory || o.guidance >= 0) {
        fprintf(stderr,
                "edgediff-run: %s: --prompt, --negative-prompt, --tokenize, --guidance and --low-memory are "
                "for text-to-image bundles\n",
                o.bundle);
        rc = 2;
        goto done;
    }
    edd_bundle_fill_params(bundle, &params);
    if (replanned && params.table_steps) {
        fprintf(stderr,
                "edgediff-run: --steps %lld: this bundle's scheduler.json %s made for its own %lu steps; run "
                "it without --steps\n",
                o.steps,
                info->num_groups && info->cache_flags ? "timestep_groups and cache_schedule are"
                : info->num_groups                    ? "timestep_groups is"
                                                      : "cache_schedule is",
                (unsigned long)info->num_steps);
        rc = 2;
        goto done;
    }
    params.batch = o.num;
    params.seed = o.seed;
    params.first_stream = 0;
    if (info->conditioning == EDD_COND_CLASS) {
        if (o.has_label && o.label >= info->num_classes) {
            fprintf(stderr, "edgediff-run: label %lld out of range: this model has classes 0..%lld\n", o.label,
                    (long long)info->num_classes - 1);
            rc = 2;
            goto done;
        }
        labels = (int64_t *)malloc(o.num * sizeof *labels);
        if (!labels) goto oom;
        for (k = 0; k < o.num; k++) labels[k] = o.has_label ? o.label : (int64_t)k % info->num_classes;
        params.labels = labels;
    } else if (o.has_label) {
        fprintf(stderr, "edgediff-run: --label given, but this model takes no class label\n");
        rc = 2;
        goto done;
    }
    rows = params.guidance != 1.0 ? 2 * o.num : o.num;
    (void)rows; /* the core build has no use for it */

    if (strcmp(o.backend, "fake") == 0) {
        backend.denoise = fake_denoise;
        backend.user = NULL;
        snprintf(ov_desc, sizeof ov_desc, "the fake backend (0.5 tanh(x) + 0.01 t/1000 + 0.1 label)");
    } else {
#ifdef EDD_RUN_NO_OPENVINO
        fprintf(stderr, "edgediff-run: built without OpenVINO; --backend fake only\n");
        rc = 2;
        goto done;
#else
        edd_ov_params op = edd_ov_default_params();
        char version[64];
        op.precision = o.precision;
        op.threads = o.threads;
        op.static_batch = rows;
        if ((st = edd_ov_create(info, &op, &ov, err, sizeof err)) != EDD_OK) {
            fprintf(stderr, "edgediff-run: %s\n", err);
            goto done;
        }
        backend = edd_ov_backend(ov);
        edd_ov_version(version, sizeof version);
        snprintf(ov_desc, sizeof ov_desc, "OpenVINO %s CPU, precision %s, %lu rows per call", version,
                 o.precision ? o.precision : "default", (unsigned long)rows);
#endif
    }
    t_init = now_ms();

    tm.inner = backend;
    tm.steps = edd_plan_num_steps(plan);
    tm.start = (double *)calloc(tm.steps, sizeof(double));
    tm.end = (double *)calloc(tm.steps, sizeof(double));
    if (!tm.start || !tm.end) goto oom;
    backend.denoise = timed_denoise;
    backend.user = &tm;
    if (o.trace) {
        if (!(trace = fopen(o.trace, "wb"))) {
            fprintf(stderr, "edgediff-run: %s: cannot open for writing\n", o.trace);
            goto done;
        }
        params.on_step = trace_step;
        params.on_step_user = &trace;
    }
    if ((st = edd_context_create(plan, &backend, &params, &ctx, err, sizeof err)) != EDD_OK) {
        fprintf(stderr, "edgediff-run: %s: %s\n", o.bundle, err);
        goto done;
    }
    n_out = edd_context_output_count(ctx);
    out = (float *)malloc(n_out * sizeof(float));
    if (!out) goto oom;

    {
        double a = now_ms();
        st = edd_context_sample(ctx, out, n_out);
        t_first = now_ms() - a;
    }
    if (trace) {
        int bad = fclose(trace) != 0;
        trace = NULL;
        if (bad || st == EDD_ERR_CANCELLED) {
            fprintf(stderr, "edgediff-run: %s: write error\n", o.trace);
            goto done;
        }
    }
    if (st != EDD_OK) {
        fprintf(stderr, "edgediff-run: %s: %s", edd_status_str(st), edd_context_error(ctx));
#ifndef EDD_RUN_NO_OPENVINO
        if (ov && edd_ov_error(ov)[0]) fprintf(stderr, " (%s)", edd_ov_error(ov));
#endif
        fprintf(stderr, "\n");
        goto done;
    }
    for (k = 0; k < n_out; k++)
        if (!isfinite(out[k])) {
            fprintf(stderr, "edgediff-run: the denoiser produced non-finite values (NaN or inf)\n");
            goto done;
        }

    if (o.bench) {
        size_t s, n = edd_plan_num_steps(plan), runs = (size_t)o.runs;
        double outside = 0, den_total = 0;
        e2e = (double *)malloc(runs * sizeof(double));
        step_ms = (double *)malloc(runs * n * sizeof(double));
        den_ms = (double *)malloc(runs * n * sizeof(double));
        if (!e2e || !step_ms || !den_ms) goto oom;
        for (r = 0; r < o.warmup; r++)
            if ((st = edd_context_sample(ctx, out, n_out)) != EDD_OK) {
                fprintf(stderr, "edgediff-run: %s\n", edd_context_error(ctx));
                goto done;
            }
        for (r = 0; r < o.runs; r++) {
            double a = now_ms(), b;
            if ((st = edd_context_sample(ctx, out, n_out)) != EDD_OK) {
                fprintf(stderr, "edgediff-run: %s\n", edd_context_error(ctx));
                goto done;
            }
            b = now_ms();
            e2e[r] = b - a;
            for (s = 0; s < n; s++) {
                /* a step: from its denoise call to the next one's (the last: to the run's end) */
                double next = s + 1 < n ? tm.start[s + 1] : b;
                step_ms[(size_t)r * n + s] = next - tm.start[s];
                den_ms[(size_t)r * n + s] = tm.end[s] - tm.start[s];
                den_total += tm.end[s] - tm.start[s];
            }
            outside += e2e[r]; /* the run minus its denoiser calls */
            for (s = 0; s < n; s++) outside -= tm.end[s] - tm.start[s];
        }
        if (o.json && write_bench_json(o.json, info, ov_desc, n, o.num, params.guidance, t_init - t0, t_bundle - t0,
                                       t_first, o.warmup, e2e, runs, step_ms, den_ms))
            goto done;
        printf("edgediff-run --bench %s\n", o.bundle);
        if (info->num_groups)
            printf("  model      %lu timestep groups (%s ... %s, %s) on %s\n", (unsigned long)info->num_groups,
                   info->group_files[0], info->group_files[info->num_groups - 1], info->model_format, ov_desc);
        else
            printf("  model      %s (%s) on %s\n", info->model_file, info->model_format, ov_desc);
        printf("  sampler    %s, %lu steps, %lu image(s), guidance %g\n", info->solver, (unsigned long)n,
               (unsigned long)o.num, params.guidance);
        printf("  init       %.1f ms (bundle %s%.2f ms, model read + compile %.1f ms)\n", t_init - t0,
               o.no_verify ? "" : "load + sha256 ", t_bundle - t0, t_init - t_bundle);
        printf("  first run  %.3f ms\n", t_first);
        printf("  warm runs  %d: avg %.3f ms, p50 %.3f ms, p90 %.3f ms", o.runs, mean(e2e, runs),
               quantile(e2e, runs, 0.5), quantile(e2e, runs, 0.9));
        printf(", min %.3f ms, max %.3f ms\n", e2e[0], e2e[runs - 1]);
        printf("  per step   avg %.4f ms, p50 %.4f ms, p90 %.4f ms (denoiser avg %.4f ms, p50 %.4f ms, p90 %.4f ms)\n",
               mean(step_ms, runs * n), quantile(step_ms, runs * n, 0.5), quantile(step_ms, runs * n, 0.9),
               mean(den_ms, runs * n), quantile(den_ms, runs * n, 0.5), quantile(den_ms, runs * n, 0.9));
        printf("  outside    %.2f us per step outside the denoiser (%.3f %% of denoiser time)\n",
               outside * 1e3 / (double)(runs * n), den_total > 0 ? 100.0 * outside / den_total : 0.0);
        printf("  peak RSS   %.1f MB\n", peak_rss_mb());
    }

    if (o.raw && write_raw(o.raw, out, n_out)) goto done;
    if (o.output) {
        edd_image img;
        if (info->sample_ndim != 3 || (info->sample_shape[0] != 1 && info->sample_shape[0] != 3)) {
            fprintf(stderr,
                    "edgediff-run: %s: samples of shape (%lld, ...) are not images (C, H, W) with C = 1 or 3; "
                    "use --raw\n",
                    o.bundle, (long long)info->sample_shape[0]);
            goto done;
        }
        for (k = 0; k < n_out; k++) out[k] = out[k] < -1.0f ? -1.0f : out[k] > 1.0f ? 1.0f : out[k];
        if (edd_image_grid(out, o.num, (size_t)info->sample_shape[0], (size_t)info->sample_shape[1],
                           (size_t)info->sample_shape[2], &img))
            goto oom;
        r = edd_image_write(&img, o.output, err, sizeof err);
        free(img.pixels);
        if (r) {
            fprintf(stderr, "edgediff-run: %s\n", err);
            goto done;
        }
        if (!o.bench)
            printf("wrote %s: %lu image(s), seed %llu, %.1f ms\n", o.output, (unsigned long)o.num,
                   (unsigned long long)o.seed, t_first);
    }
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "edgediff-run: out of memory\n");
    rc = 1;
done:
    if (trace) fclose(trace);
    edd_context_free(ctx);
#ifndef EDD_RUN_NO_OPENVINO
    edd_ov_free(ov);
#endif
    edd_plan_free(replanned);
    edd_bundle_free(bundle);
    free(labels);
    free(out);
    free(tm.start);
    free(tm.end);
    free(e2e);
    free(step_ms);
    free(den_ms);
    return rc;
}
