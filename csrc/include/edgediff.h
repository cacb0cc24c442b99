/*
 * edgediff.h — the edgediff sampling runtime: one public header, portable C99, libm only.
 *
 * The runtime runs a diffusion sampler (DDPM, DDIM, DPM-Solver++ 2M, Euler, LCM multistep)
 * over a denoiser that the application supplies through a backend callback. It mirrors the
 * Python reference in src/edgediff/runtimes (samplers/<solver>.py, sampling.py) formula for formula,
 * and reproduces its noise (rng.py) bit for bit.
 *
 * ---------------------------------------------------------------------------------------
 * WHAT IT READS: a bundle folder's manifest.json and scheduler.json
 * ---------------------------------------------------------------------------------------
 * The bundle format is specified in docs/bundle-format.md (every field, its meaning and its
 * checks). In short, edd_bundle_load reads
 *
 *   manifest.json   "format" ("edgediff-bundle"), "format_version" (= EDD_BUNDLE_FORMAT_VERSION),
 *                   "files" (sha256 of every file, checked by edd_bundle_verify; must list
 *                   model.file and scheduler.json), "model" {format, file, inputs, outputs}
 *                   -> edd_bundle_info, "conditioning" {kind, null_label, shape} -> edd_params.null_label,
 *                   info.cond_shape; for kind "text" also "components" {text_encoder, vae_decoder:
 *                   {file, format, inputs, outputs}, tokenizer: {folder, files, max_length}}
 *                   -> info.text_encoder / vae_decoder / tokenizer_*; any other key is ignored
 *   scheduler.json  "plan" {solver, timesteps, schedule {alphas_cumprod, prediction_type},
 *                   params} -> edd_plan_desc (see edd_plan_create; the keys each solver takes are
 *                   in docs/bundle-format.md), "guidance_scale" -> edd_params.guidance,
 *                   "spacing" -> info.spacing (what edd_plan_with_steps replans with),
 *                   "timestep_groups" -> info.group_files / step_group / shared_weights
 *                   -> edd_denoise_args.group, "cache_schedule" -> info.cache_flags
 *                   -> edd_denoise_args.cached; for text bundles "conditioning" ("text") and
 *                   "latent" {shape, scaling_factor, image_shape} -> info.scaling_factor /
 *                   image_shape; "solver" is not read
 *
 * A cached bundle (manifest.json "cache": a full graph that also outputs a deep feature and a
 * shallow graph that takes it, docs/caching.md) is refused by edd_bundle_parse / edd_bundle_load
 * in one line: no backend here runs the shallow graph yet. A cache_schedule without the
 * manifest's "cache", or the reverse, is refused as well, so cache_flags reach an application's
 * backend only through edd_params (set by the application itself).
 *
 * The runtime computes no schedule of its own (except edd_plan_with_steps, on request): every
 * per-step number comes from the plan. timestep_groups and cache_schedule are made for the
 * plan's own steps: edd_context_create refuses their tables for a plan of another length.
 * The model's own signature is the backend's to check against info.inputs / info.outputs.
 * Unknown keys inside "plan", "plan.schedule", "timestep_groups" and "cache_schedule" are
 * refused. The JSON reader is strict RFC 8259 (no NaN, no comments, no trailing commas;
 * nesting depth <= 64) and fuzzed (csrc/fuzz/).
 *
 * ---------------------------------------------------------------------------------------
 * HOW IT IS USED
 * ---------------------------------------------------------------------------------------
 *
 *   edd_plan_desc ──edd_plan_create──► edd_plan (immutable; share it between threads)
 *                                          │
 *   edd_params (edd_default_params) ───────┤
 *   edd_backend {denoise, user} ───────────┴─edd_context_create──► edd_context (one generation)
 *                                                                       │
 *   float out[B * sample_size] (yours) ◄────────edd_context_sample──────┘
 *
 *   edd_context_sample:  x = init_latent(noise call 0)
 *                        for i in 0..n-1:  x_in = model_input(i, x)
 *                                          eps  = backend.denoise(x_in, t_i, labels,   (2B rows
 *                                                   cond (text embeddings, 0.3),       with guidance,
 *                                                   group = step_group[i],             conditional first:
 *                                                   cached = cache_flags[i])           eps = eu + g (ec - eu))
 *
 *   A text bundle's whole pipeline (tokenizer, text encoder, this loop, VAE decoder) is
 *   edd_pipeline_generate, at the end of this file.
 *                                          on_step(i, t_i, x_in, eps)
 *                                          x    = step(i, x, eps, carry, noise call i+1)
 *
 * Rules: every fallible call returns an edd_status and never aborts; edd_status_str()
 * explains a status, and the create functions and edd_context_error() give the detail
 * (which field, which step). There are no globals: callbacks and their user pointers live
 * in the params. The caller owns every output buffer. A context is used by one thread at
 * a time; different contexts are independent (one per generation, any number in parallel).
 * All arrays are float32 in C order; the arithmetic inside is double.
 */
#ifndef EDGEDIFF_H
#define EDGEDIFF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(EDD_SHARED)
#ifdef EDD_BUILD
#define EDD_API __declspec(dllexport)
#else
#define EDD_API __declspec(dllimport)
#endif
#elif defined(__GNUC__) && defined(EDD_SHARED)
#define EDD_API __attribute__((visibility("default")))
#else
#define EDD_API
#endif

#define EDD_VERSION_MAJOR 0
#define EDD_VERSION_MINOR 3
#define EDD_VERSION_PATCH 0

#define EDD_MAX_NDIM 8         /* most dimensions of one sample (e.g. 3 for C, H, W) */
#define EDD_NO_LABEL INT64_MIN /* edd_params.null_label: "there is no null label" */

/* ---- status ------------------------------------------------------------------------ */

typedef enum edd_status {
    EDD_OK = 0,
    EDD_ERR_INVALID_ARGUMENT = 1, /* a NULL pointer, a size that does not match, a value out of range */
    EDD_ERR_OUT_OF_MEMORY = 2,    /* an allocation failed (only the create functions allocate) */
    EDD_ERR_UNKNOWN_SOLVER = 3,   /* plan solver name not in the registry */
    EDD_ERR_BAD_PLAN = 4,         /* schedule, timesteps or solver params invalid */
    EDD_ERR_BACKEND = 5,          /* the backend's denoise returned non-zero */
    EDD_ERR_CANCELLED = 6,        /* the cancel flag was set or on_step returned non-zero */
    EDD_ERR_BAD_BUNDLE = 7,       /* manifest.json / scheduler.json malformed or a field missing or invalid */
    EDD_ERR_IO = 8                /* a bundle file could not be read */
} edd_status;

/* A constant English sentence for a status; never NULL (unknown values get a generic text). */
EDD_API const char *edd_status_str(edd_status status);

/* "MAJOR.MINOR.PATCH" of the library that is linked (may differ from this header's). */
EDD_API const char *edd_version(void);

/* ---- noise: counter-based, bit-identical to edgediff.runtimes.rng ------------------------ */

/* Philox-4x32-10: one block. out may alias counter. */
EDD_API void edd_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* n standard normals for (seed, stream, call): rng.normal(seed, stream, call, n), bit for bit.
 * Image k of a batch uses stream streams[k]; call 0 is x_T, call i + 1 the noise of step i. */
EDD_API edd_status edd_normal(uint64_t seed, uint32_t stream, uint32_t call, float *out, size_t n);

/* ---- plan: solver + schedule + timesteps + params (scheduler.json's "plan") ------------- */

typedef struct edd_plan edd_plan; /* opaque, immutable once created */

typedef enum edd_value_kind {
    EDD_VALUE_NULL = 0,   /* JSON null */
    EDD_VALUE_NUMBER = 1, /* one number */
    EDD_VALUE_ARRAY = 2   /* a list of numbers */
} edd_value_kind;

typedef struct edd_plan_param {
    const char *key;      /* the plan.params key, e.g. "eta", "sigmas" */
    edd_value_kind kind;  /* which of the fields below holds the value */
    double number;        /* EDD_VALUE_NUMBER: the value */
    const double *values; /* EDD_VALUE_ARRAY: `count` values (integers stored exactly) */
    size_t count;         /* EDD_VALUE_ARRAY: how many */
} edd_plan_param;

typedef struct edd_plan_desc {
    const char *solver;           /* "ddpm" | "ddim" | "dpmpp-2m" | "euler" | "lcm" */
    const char *prediction_type;  /* "epsilon" | "v_prediction" | "sample" (x0); NULL = "epsilon" */
    const double *alphas_cumprod; /* the training schedule, num_train_timesteps values in (0, 1] */
    size_t num_train_timesteps;   /* T >= 2 */
    const int64_t *timesteps;     /* num_steps training-grid timesteps, descending, in 0..T-1 */
    size_t num_steps;             /* n >= 1 */
    const edd_plan_param *params; /* the solver's params (table at the top of this file) */
    size_t num_params;            /* how many entries in params */
} edd_plan_desc;

/* Validate desc and copy everything it points to into a new plan (desc may be freed after).
 * On failure *out is NULL and, if err is not NULL, err receives a NUL-terminated message that
 * names the field (e.g. "ddim plan param 'prev_timesteps' must be per step (n=4), got 3 values"). */
EDD_API edd_status edd_plan_create(const edd_plan_desc *desc, edd_plan **out, char *err, size_t err_size);
EDD_API void edd_plan_free(edd_plan *plan); /* NULL is a no-op */

EDD_API const char *edd_plan_solver(const edd_plan *plan);             /* e.g. "dpmpp-2m" */
EDD_API size_t edd_plan_num_steps(const edd_plan *plan);               /* n */
EDD_API int64_t edd_plan_timestep(const edd_plan *plan, size_t i);     /* timesteps[i]; -1 if i >= n */
EDD_API float edd_plan_model_timestep(const edd_plan *plan, size_t i); /* t fed to the model; NaN if i >= n */
EDD_API int edd_plan_uses_noise(const edd_plan *plan, size_t i);       /* 1 if step i draws noise */
EDD_API int edd_plan_has_carry(const edd_plan *plan);                  /* 1 if step passes x0 on (dpmpp-2m) */

/* The same solver, schedule and options (eta, clip_sample, final_alpha_cumprod, LCM's
 * original_inference_steps and timestep_scaling) planned for num_steps steps: the timesteps
 * and per-step params are recomputed as src/edgediff/runtimes/samplers/<solver>.py's plan() does for
 * `spacing` ("leading" | "trailing" | "linspace", scheduler.json's "spacing"; NULL =
 * "leading"; LCM has its own grid) with steps_offset 0. This is the one place the runtime
 * computes a schedule; a bundle whose model was distilled or quantized for its own steps
 * should be run at those. */
EDD_API edd_status edd_plan_with_steps(const edd_plan *plan, const char *spacing, size_t num_steps, edd_plan **out,
                                       char *err, size_t err_size);

/* ---- solver primitives: pure functions, what edd_context_sample is made of ------------- */
/* n is the number of floats (any batch size times the sample size). Each mirrors the Python
 * solver method of the same name. Outputs may alias the matching input (x_out == x,
 * carry_out == carry, x_in == x); nothing else may overlap. */

/* x_T from unit noise (Euler scales it by init_sigma; the others copy it). */
EDD_API edd_status edd_init_latent(const edd_plan *plan, const float *noise, size_t n, float *x);

/* The model input at step i (Euler divides by sqrt(sigma_i^2 + 1); the others copy). */
EDD_API edd_status edd_model_input(const edd_plan *plan, size_t i, const float *x, size_t n, float *x_in);

/* One solver update: x_out = step(plan, i, x, eps, carry, noise).
 * carry: what step i - 1 wrote to carry_out, or NULL at step 0 (only dpmpp-2m keeps one).
 * carry_out: n floats; written only when edd_plan_has_carry(), may be NULL otherwise.
 * noise: n unit normals when edd_plan_uses_noise(plan, i), else ignored (may be NULL). */
EDD_API edd_status edd_step(const edd_plan *plan, size_t i, size_t n, const float *x, const float *eps,
                            const float *carry, const float *noise, float *x_out, float *carry_out);

/* ---- backend: the denoiser, supplied by the application ---------------------------------- */

typedef struct edd_denoise_args {
    size_t step;                 /* sampling step i, 0-based (a backend may pick per-step scales by it) */
    size_t num_steps;            /* n */
    size_t batch;                /* rows in this call: B, or 2B with guidance (conditional rows first) */
    size_t sample_ndim;          /* dimensions of one row */
    const int64_t *sample_shape; /* sample_ndim sizes, e.g. {C, H, W} */
    size_t sample_size;          /* floats per row (the product of sample_shape) */
    const float *x;              /* batch * sample_size model inputs */
    const float *t;              /* batch model timesteps (all equal) */
    const int64_t *labels;       /* batch class labels, or NULL for an unconditional model */
    float *eps;                  /* OUT: batch * sample_size model outputs (the prediction type's) */
    /* Per-step hints (since 0.2; appended, so a backend built against 0.1 still works): */
    size_t group; /* the timestep group that serves this step: params.step_group[step]
                     (scheduler.json timestep_groups.step_group); 0 without groups.
                     A grouped backend runs that group's graph. */
    int cached;   /* 1: the cache schedule lets this step reuse the deep features
                     cached at an earlier full step (params.cache_flags[step]);
                     0: run the full model (and refresh any cache). A backend that
                     caches nothing ignores it and runs the full model. */
    /* Float conditioning (since 0.3; appended, so a backend built against 0.2 still works): */
    const float *cond;         /* batch * cond_size floats: row r is the condition of x row r (a text
                                  model's encoder hidden states, {seq, width} per row); with guidance
                                  the conditional rows come first, then the unconditional ones, as x.
                                  NULL when the run has none (class-label or unconditional models).
                                  Owned by the context; valid during this call only */
    size_t cond_ndim;          /* dimensions of one row (2 for {seq, width}); 0 without cond */
    const int64_t *cond_shape; /* cond_ndim sizes, e.g. {77, 768} */
    size_t cond_size;          /* floats per row (the product of cond_shape) */
    size_t first_row;          /* which of the step's rows this call starts at: 0, unless
                                  params.max_rows splits the rows over several calls */
} edd_denoise_args;

/* Return 0 on success; any other value stops the run with EDD_ERR_BACKEND (the value is in
 * edd_context_error's text). Called from the thread that runs edd_context_sample. */
typedef int (*edd_denoise_fn)(void *user, const edd_denoise_args *args);

typedef struct edd_backend {
    edd_denoise_fn denoise; /* required */
    void *user;             /* passed back to denoise unchanged */
} edd_backend;

/* ---- generation ----------------------------------------------------------------------- */

typedef struct edd_step_info {
    size_t step;        /* i */
    size_t num_steps;   /* n */
    float t;            /* the model timestep of step i */
    size_t batch;       /* B (images, not model rows) */
    size_t sample_size; /* floats per image */
    const float *x_in;  /* B * sample_size: the model input of step i */
    const float *eps;   /* B * sample_size: the (guided) model output of step i */
    size_t group;       /* what the backend was told: edd_denoise_args.group ... */
    int cached;         /* ... and edd_denoise_args.cached */
} edd_step_info;

/* Called after every model call, before the solver update; return non-zero to cancel. */
typedef int (*edd_step_callback)(void *user, const edd_step_info *info);

typedef struct edd_params {
    size_t batch;                       /* images per generation, B >= 1 (default 1) */
    size_t sample_ndim;                 /* dimensions of one image, 1..EDD_MAX_NDIM (default 0: must be set) */
    int64_t sample_shape[EDD_MAX_NDIM]; /* the first sample_ndim are used, each >= 1, e.g. {C, H, W} */
    uint64_t seed;                      /* noise seed (default 0) */
    const uint32_t *streams;            /* B noise streams, image k uses streams[k]; copied at create;
                                           NULL = first_stream + k (default NULL) */
    uint32_t first_stream;              /* used when streams is NULL (default 0) */
    const int64_t *labels;              /* B class labels for the backend, copied at create; NULL = an
                                           unconditional model (default NULL) */
    double guidance;                    /* classifier-free guidance scale; exactly 1.0 = off, anything
                                           else needs labels and null_label (default 1.0) */
    int64_t null_label;                 /* the label of the unconditional rows under guidance
                                           (default EDD_NO_LABEL) */
    edd_step_callback on_step;          /* progress / inspection, see edd_step_callback (default NULL) */
    void *on_step_user;                 /* passed to on_step (default NULL) */
    const volatile int *cancel;         /* if not NULL, checked before every model call: non-zero stops
                                           the run with EDD_ERR_CANCELLED; set it from any thread
                                           (default NULL) */
    /* Per-step tables for the backend (scheduler.json timestep_groups / cache_schedule; set by
     * edd_bundle_fill_params). Both are made for one plan: table_steps must equal its steps. */
    size_t table_steps;         /* entries in step_group / cache_flags (default 0) */
    const uint32_t *step_group; /* table_steps group indices, copied at create; each must be
                                   < num_groups. NULL = group 0 at every step (default NULL) */
    size_t num_groups;          /* groups the backend serves; 0 = no groups (default 0) */
    const uint8_t *cache_flags; /* table_steps flags, copied at create: non-zero = the step may
                                   reuse cached features (edd_denoise_args.cached); step 0 must
                                   be 0. NULL = every step runs the full model (default NULL) */
    /* Float conditioning, e.g. a text encoder's hidden states (since 0.3; appended). With cond set,
     * guidance needs null_cond instead of labels and null_label (labels may still be given). */
    size_t cond_ndim;                 /* dimensions of one condition row, 1..EDD_MAX_NDIM; 0 = no cond
                                         (default 0) */
    int64_t cond_shape[EDD_MAX_NDIM]; /* the first cond_ndim are used, each >= 1, e.g. {77, 768} */
    const float *cond;                /* B rows of prod(cond_shape) floats, image k's condition first to
                                         last; copied at create (default NULL) */
    const float *null_cond;           /* one row: the unconditional condition (a negative prompt's
                                         embedding), given to every unconditional row under guidance;
                                         copied at create (default NULL) */
    size_t max_rows;                  /* most rows per denoiser call: a step's rows (B, or 2B with
                                         guidance) go out in calls of at most this many, first_row
                                         counting; 0 = all in one call (default 0). 1 for a graph of
                                         static batch 1: guidance then takes two calls a step */
} edd_params;

EDD_API edd_params edd_default_params(void);

typedef struct edd_context edd_context; /* opaque: one generation's settings and scratch memory */

/* Check params against plan and allocate every buffer the run needs (edd_context_sample
 * allocates nothing). The plan must outlive the context; params' arrays are copied. On
 * failure *out is NULL and err (if not NULL) says which field is wrong. */
EDD_API edd_status edd_context_create(const edd_plan *plan, const edd_backend *backend, const edd_params *params,
                                      edd_context **out, char *err, size_t err_size);
EDD_API void edd_context_free(edd_context *ctx); /* NULL is a no-op */

/* Floats edd_context_sample writes: B * sample_size. */
EDD_API size_t edd_context_output_count(const edd_context *ctx);

/* Run the whole sampler and write B samples to out (out_count must equal
 * edd_context_output_count). Deterministic: running a context again gives the same bits.
 * On failure out holds no useful data and edd_context_error() says what happened. */
EDD_API edd_status edd_context_sample(edd_context *ctx, float *out, size_t out_count);

/* The detail of the last failure of ctx ("backend returned 3 at step 2 of 10"); "" if none. */
EDD_API const char *edd_context_error(const edd_context *ctx);

/* ---- bundle: manifest.json + scheduler.json (the fields at the top of this file) ------------ */

#define EDD_BUNDLE_FORMAT_VERSION 1  /* manifest.json format_version this runtime reads */
#define EDD_MAX_TENSORS           4  /* most model inputs / outputs described in a manifest */
#define EDD_MAX_GROUPS            64 /* most timestep groups (model files) in a bundle */

typedef enum edd_conditioning {
    EDD_COND_NONE = 0,      /* conditioning.kind "none": the model takes (x, t) */
    EDD_COND_CLASS = 1,     /* "class": a third int64 input, one label per row */
    EDD_COND_EMBEDDING = 2, /* "embedding": a third float input (the runner feeds zeros: no encoder) */
    EDD_COND_TEXT = 3       /* "text" (since 0.3): a third float input, the text encoder's hidden states
                               {max_length, width} per row; info.text_encoder / vae_decoder / tokenizer_* */
} edd_conditioning;

typedef struct edd_tensor_info {
    char name[64];               /* the model's input / output name, e.g. "sample" */
    char dtype[16];              /* "float32", "int64", ... */
    size_t ndim;                 /* dimensions */
    int64_t shape[EDD_MAX_NDIM]; /* sizes; -1 for a named (dynamic) dimension such as "batch" */
} edd_tensor_info;

/* One graph of a text-to-image bundle besides the denoiser (manifest.json components.NAME). */
typedef struct edd_component_info {
    const char *format; /* components.NAME.format: the denoiser's, e.g. "onnx" */
    const char *file;   /* relative to the bundle, e.g. "model/text_encoder.onnx" */
    const char *path;   /* bundle dir + "/" + file (edd_bundle_load only; NULL after parse) */
    size_t num_inputs;  /* components.NAME.inputs */
    edd_tensor_info inputs[EDD_MAX_TENSORS];
    size_t num_outputs; /* components.NAME.outputs */
    edd_tensor_info outputs[EDD_MAX_TENSORS];
} edd_component_info;

typedef struct edd_bundle_info {
    const char *model_format; /* manifest model.format, e.g. "onnx" */
    const char *model_file;   /* manifest model.file, relative to the bundle, e.g. "model/denoiser.onnx" */
    const char *model_path;   /* bundle dir + "/" + model_file (edd_bundle_load only; NULL after parse) */
    size_t num_inputs;        /* model.inputs: sample, timestep[, condition] */
    edd_tensor_info inputs[EDD_MAX_TENSORS];
    size_t num_outputs; /* model.outputs */
    edd_tensor_info outputs[EDD_MAX_TENSORS];
    size_t sample_ndim;                 /* model.inputs[0].shape without the batch dimension ... */
    int64_t sample_shape[EDD_MAX_NDIM]; /* ... e.g. {1, 16, 16} */
    edd_conditioning conditioning;      /* conditioning.kind */
    int64_t num_classes;                /* conditioning.num_classes (class models; else 0) */
    int64_t null_label;                 /* conditioning.null_label (class models; else EDD_NO_LABEL) */
    double guidance_scale;              /* scheduler.json guidance_scale */
    const char *solver;                 /* the plan's solver */
    const char *spacing;                /* scheduler.json "spacing" ("leading", ...), NULL if absent */
    size_t num_steps;                   /* the plan's number of steps */
    /* scheduler.json "timestep_groups" (since 0.2); num_groups == 0 when it is null: */
    size_t num_groups;              /* len(files), 0..EDD_MAX_GROUPS */
    const char *const *group_files; /* num_groups paths relative to the bundle */
    const char *const *group_paths; /* num_groups: bundle dir + "/" + file (edd_bundle_load only; else NULL) */
    const char *shared_weights;     /* the shared int8 weights file, relative; NULL if none */
    const uint32_t *step_group;     /* num_steps group indices, or NULL without groups */
    /* scheduler.json "cache_schedule" (since 0.2): */
    const uint8_t *cache_flags; /* num_steps flags (1 = the step may reuse cached features), or NULL
                                   when cache_schedule is null */
    size_t cache_interval;      /* N of {"interval": N}; 0 for a "steps" list or no schedule */
    /* conditioning.shape (since 0.3): {max_length, width} for "text", the embedding's for
     * "embedding"; cond_ndim 0 when null */
    size_t cond_ndim;
    int64_t cond_shape[EDD_MAX_NDIM];
    /* A text-to-image bundle (conditioning kind "text", since 0.3; zeroed otherwise):
     * manifest.json components.{text_encoder, vae_decoder, tokenizer}, scheduler.json latent. */
    edd_component_info text_encoder; /* input_ids int64 [batch, max_length] -> [batch, max_length, width] */
    edd_component_info vae_decoder;  /* latents [batch, C, h, w] -> image [batch, 3, H, W] in [-1, 1] */
    const char *tokenizer_folder;    /* components.tokenizer.folder, relative, e.g. "tokenizer" */
    const char *tokenizer_path;      /* bundle dir + "/" + folder (edd_bundle_load only; else NULL) */
    size_t max_length;               /* components.tokenizer.max_length == cond_shape[0] */
    double scaling_factor;           /* latent.scaling_factor (applied inside the decoder graph) */
    int64_t image_shape[3];          /* latent.image_shape: {3, H, W} */
} edd_bundle_info;

typedef struct edd_bundle edd_bundle; /* opaque: a parsed bundle (its plan and info) */

/* Read DIR/manifest.json and DIR/scheduler.json. The model file itself is not opened (that
 * is the backend's job) and file hashes are not verified. On failure *out is NULL and err
 * names the file and the field ("digits/scheduler.json: plan.timesteps[3] must be an
 * integer, got a fraction"); status EDD_ERR_IO (unreadable file), EDD_ERR_BAD_BUNDLE
 * (malformed JSON or a field missing or wrong) or the plan's own status (EDD_ERR_BAD_PLAN,
 * EDD_ERR_UNKNOWN_SOLVER). */
EDD_API edd_status edd_bundle_load(const char *dir, edd_bundle **out, char *err, size_t err_size);

/* The same from the two files' texts (need not be NUL-terminated). */
EDD_API edd_status edd_bundle_parse(const char *manifest_json, size_t manifest_len, const char *scheduler_json,
                                    size_t scheduler_len, edd_bundle **out, char *err, size_t err_size);
EDD_API void edd_bundle_free(edd_bundle *bundle); /* NULL is a no-op; frees the plan too */

/* Check every file listed under manifest.json "files" against its recorded sha256 (a bundle
 * from edd_bundle_load). EDD_ERR_IO: a listed file is missing or unreadable (directories,
 * such as a .mlpackage, are not hashed by this runtime); EDD_ERR_BAD_BUNDLE: a digest differs
 * ("DIR/model/denoiser.onnx: sha256 3f2a... does not match manifest.json files[...]"). */
EDD_API edd_status edd_bundle_verify(const edd_bundle *bundle, char *err, size_t err_size);

EDD_API const edd_plan *edd_bundle_plan(const edd_bundle *bundle);            /* owned by the bundle */
EDD_API const edd_bundle_info *edd_bundle_get_info(const edd_bundle *bundle); /* owned by the bundle */

/* Set params' sample_ndim / sample_shape, guidance (guidance_scale for class and text models,
 * else 1.0; a text model then needs params.cond / null_cond, as edd_pipeline_generate sets), null_label and the
 * per-step tables (table_steps, step_group, num_groups, cache_flags; they point into the bundle, which must outlive
 * edd_context_create) from the bundle; the rest (batch, seed, labels, ...) is the caller's. A caller that runs the
 * bundle's model at another step count (edd_plan_with_steps) must clear the tables (or build its own): groups and cache
 * schedules are made for the bundle's own steps. */
EDD_API edd_status edd_bundle_fill_params(const edd_bundle *bundle, edd_params *params);

/* ---- the CLIP tokenizer: text -> token ids (tokenizer.c) ------------------------------------
 *
 * transformers' CLIPTokenizer in C: the special tokens cut out of the raw text, NFC, lower
 * case, the CLIP word / number / punctuation split, byte-level BPE with "</w>" word ends,
 * then BOS + ids + EOS, truncated to max_len (EOS kept last) and padded with the pad token.
 * The Unicode data is Python 3.11's unicodedata (Unicode 14.0.0), generated into
 * src/unicode_tables.c. A tokenizer is immutable once loaded: share it between threads;
 * encode allocates its scratch per call (at most about 300 bytes per input byte) and frees it. */

typedef struct edd_tokenizer edd_tokenizer; /* opaque */

/* The special tokens, in the order the config keys are read (bos_token, eos_token, ...). */
typedef enum edd_special_token {
    EDD_TOKEN_BOS = 0,
    EDD_TOKEN_EOS = 1,
    EDD_TOKEN_UNK = 2,
    EDD_TOKEN_PAD = 3
} edd_special_token;

/* Longest text edd_tokenizer_encode accepts, in bytes (16 MiB). */
#define EDD_TOKENIZER_MAX_TEXT ((size_t)1 << 24)

/* Load a tokenizer folder (a bundle's tokenizer/, or a pipeline's): vocab.json + merges.txt,
 * or tokenizer.json's model.vocab / model.merges when those two are absent; then, if present,
 * tokenizer_config.json and special_tokens_map.json (read in that order, the later wins):
 * model_max_length and bos_token / eos_token / unk_token / pad_token (a string or
 * {"content": ...}). Defaults are CLIP's: "<|startoftext|>", "<|endoftext|>" for the other
 * three, 77. Every special token must be in the vocabulary. Errors name the file and the line
 * (merges.txt) or the field: EDD_ERR_IO (missing, unreadable), EDD_ERR_BAD_BUNDLE (malformed),
 * EDD_ERR_OUT_OF_MEMORY. The caller frees *out with edd_tokenizer_free. */
EDD_API edd_status edd_tokenizer_load(const char *dir, edd_tokenizer **out, char *err, size_t err_size);

/* The same from the texts of vocab.json and merges.txt (need not be NUL-terminated), with the
 * CLIP special tokens and length; messages name "vocab.json" / "merges.txt". */
EDD_API edd_status edd_tokenizer_parse(const char *vocab_json, size_t vocab_len, const char *merges_txt,
                                       size_t merges_len, edd_tokenizer **out, char *err, size_t err_size);

EDD_API void edd_tokenizer_free(edd_tokenizer *tok); /* NULL is a no-op */

/* Tokenize len bytes of UTF-8 (need not be NUL-terminated) into ids[0..max_len): BOS, the
 * first max_len - 2 content ids, EOS, then the pad id to the end (max_len >= 2; pass
 * edd_tokenizer_max_length(tok) for the model's). *full_len (may be NULL) gets the length
 * before truncation, BOS and EOS included, so the caller can warn when it exceeds max_len.
 * Text that is not UTF-8 is EDD_ERR_INVALID_ARGUMENT naming the byte offset where the first
 * invalid sequence starts (Python's UnicodeDecodeError.start); ids is then
 * unspecified. The caller owns ids. */
EDD_API edd_status edd_tokenizer_encode(const edd_tokenizer *tok, const char *utf8, size_t len, int32_t *ids,
                                        size_t max_len, size_t *full_len, char *err, size_t err_size);

EDD_API size_t edd_tokenizer_max_length(const edd_tokenizer *tok); /* model_max_length (default 77) */
EDD_API size_t edd_tokenizer_vocab_size(const edd_tokenizer *tok); /* distinct tokens in the vocabulary */
/* the id of a special token, or -1 for an invalid argument */
EDD_API int32_t edd_tokenizer_special_id(const edd_tokenizer *tok, edd_special_token which);

/* ---- text-to-image: the whole pipeline of a text bundle (pipeline.c, since 0.3) ---------------
 *
 *   prompts[B], negative ──tokenize──► ids int64 [B + 1, L]   (L = info.max_length; the negative
 *                                         │                     prompt is row B; "" by default)
 *                 run(TEXT_ENCODER) once ▼ (every row in one call; one per row for a graph of
 *                                           static batch 1)
 *                          hidden float [B + 1, L, width]: rows 0..B-1 the prompts, row B the
 *                                         │ unconditional embedding, made once, not per step
 *      edd_context (params.cond = rows 0..B-1, null_cond = row B, guidance g) ▼
 *        per step: denoise(x_in [2B rows: conditional first], t, cond [2B, L, width]) in one call
 *                  (in two of B, or 2B of 1, for a denoiser graph of static batch 1)
 *                          latents float [B, C, h, w] (image k: noise stream first_stream + k)
 *                   run(VAE_DECODER) once ▼
 *                          image float [B, 3, H, W] in [-1, 1] ─► clipped; [0, 1] HWC by default
 *
 * It is src/edgediff/runtimes/runner.py generate_text step for step (the same tokenizer ids, the
 * same noise, the same guidance arithmetic), so a backend that computes what the Python one
 * does gives the same images. The application supplies the graphs through edd_pipeline_backend;
 * backends/edgediff_openvino.h has one for OpenVINO (ONNX and IR bundles).
 *
 * Memory: load(c) is called before component c first runs. Normally a loaded component stays
 * loaded until edd_pipeline_free (which unloads what is loaded), so later generations reuse it;
 * with params.low_memory each is unloaded as soon as its phase ends (text encoder, then
 * denoiser, then decoder), so at most one is resident: peak memory is the largest component,
 * not the sum, at the price of loading all three every generation. */

typedef enum edd_component {
    EDD_COMPONENT_TEXT_ENCODER = 0, /* manifest.json components.text_encoder */
    EDD_COMPONENT_DENOISER = 1,     /* manifest.json model (and its timestep groups) */
    EDD_COMPONENT_VAE_DECODER = 2   /* manifest.json components.vae_decoder */
} edd_component;
#define EDD_NUM_COMPONENTS 3

/* What run() is asked to compute; every array is owned by the pipeline and valid during the call. */
typedef struct edd_component_args {
    edd_component component; /* EDD_COMPONENT_TEXT_ENCODER or EDD_COMPONENT_VAE_DECODER */
    size_t batch;            /* rows in this call */
    const int64_t *ids;      /* text encoder: batch * seq_len token ids (BOS ... EOS, pad); else NULL */
    size_t seq_len;          /* text encoder: L = info.max_length; else 0 */
    const float *latents;    /* decoder: batch * in_size floats {C, h, w} (the sampler's output; the
                                graph divides by scaling_factor itself); else NULL */
    size_t in_size;          /* floats (decoder) or ids (text encoder) per row */
    float *out;              /* OUT: batch * out_size floats: {L, width} (text encoder) or {3, H, W}
                                in [-1, 1] (decoder) */
    size_t out_size;         /* floats per output row */
} edd_component_args;

typedef struct edd_pipeline_backend {
    edd_denoise_fn denoise; /* required: the denoiser, as for edd_context_create (args->cond holds the
                               text embeddings, args->cond_shape {L, width}) */
    int (*run)(void *user, const edd_component_args *args); /* required: the text encoder or the
                                                               decoder; 0 = ok */
    int (*load)(void *user, edd_component which);           /* may be NULL (always loaded); 0 = ok */
    void (*unload)(void *user, edd_component which);        /* may be NULL */
    const char *(*error)(void *user);                       /* may be NULL: the backend's text for its last failure */
    void *user;                                             /* passed back to every function unchanged */
} edd_pipeline_backend;

typedef struct edd_text_params {
    size_t batch;                /* images B >= 1 (default 1) */
    const char *prompt;          /* UTF-8, NUL-terminated: the prompt of every image (default NULL) */
    const char *const *prompts;  /* B prompts, one per image; NULL = prompt for all (default NULL) */
    const char *negative_prompt; /* the unconditional prompt; NULL = "" (default NULL) */
    double guidance;             /* classifier-free guidance; < 0 = the bundle's guidance_scale;
                                    exactly 1 = off, one pass a step (default -1) */
    uint64_t seed;               /* noise seed (default 0) */
    uint32_t first_stream;       /* image k uses noise stream first_stream + k (default 0) */
    const edd_plan *plan;        /* NULL = the bundle's; else e.g. from edd_plan_with_steps (then the
                                    bundle's timestep groups / cache schedule are not used) (default NULL) */
    int low_memory;              /* 1: each component is loaded only while it runs (default 0) */
    int unit_hwc;                /* 1: out is [0, 1] float {H, W, 3} per image (diffusers'
                                    output_type "np", runtimes.images.to_unit); 0: the decoder's
                                    {3, H, W} clipped to [-1, 1] (what the image grid writer takes)
                                    (default 1) */
    edd_step_callback on_step;   /* as edd_params.on_step (default NULL) */
    void *on_step_user;          /* (default NULL) */
    const volatile int *cancel;  /* as edd_params.cancel (default NULL) */
} edd_text_params;

EDD_API edd_text_params edd_default_text_params(void);

typedef struct edd_pipeline edd_pipeline; /* opaque: a text bundle's tokenizer and its backend */

/* A pipeline over a text bundle from edd_bundle_load (conditioning EDD_COND_TEXT): loads the
 * tokenizer (info.tokenizer_path) and keeps bundle and backend, which must outlive it. Loads no
 * graph (see edd_pipeline_load). Errors name the file and field (a tokenizer's refusals are
 * edd_tokenizer_load's); EDD_ERR_INVALID_ARGUMENT for a bundle of another kind. */
EDD_API edd_status edd_pipeline_create(const edd_bundle *bundle, const edd_pipeline_backend *backend,
                                       edd_pipeline **out, char *err, size_t err_size);
EDD_API void edd_pipeline_free(edd_pipeline *pipe); /* NULL is a no-op; unloads what is loaded */

/* Load every component now (what a first generation would do), e.g. to time it apart. */
EDD_API edd_status edd_pipeline_load(edd_pipeline *pipe);

/* The tokenizer (owned by the pipeline): edd_tokenizer_encode it to see what a prompt becomes. */
EDD_API const edd_tokenizer *edd_pipeline_tokenizer(const edd_pipeline *pipe);

/* Floats edd_pipeline_generate writes: B * 3 * H * W. */
EDD_API size_t edd_pipeline_output_count(const edd_pipeline *pipe, const edd_text_params *params);

/* Generate params->batch images into out (out_count = edd_pipeline_output_count). Allocates its
 * scratch per call (ids, embeddings, latents, the sampler's context) and frees it. A prompt that
 * is not UTF-8 is EDD_ERR_INVALID_ARGUMENT naming the prompt and the byte offset; a backend failure
 * EDD_ERR_BACKEND naming the component; non-finite latents or images EDD_ERR_BACKEND. The detail
 * is in edd_pipeline_error. Deterministic: the same params give the same bits. */
EDD_API edd_status edd_pipeline_generate(edd_pipeline *pipe, const edd_text_params *params, float *out,
                                         size_t out_count);

/* The detail of the last failure of pipe; "" if none. */
EDD_API const char *edd_pipeline_error(const edd_pipeline *pipe);

/* The longest prompt of the last generation, in tokens with BOS and EOS, before truncation to
 * max_length (greater than max_length: it was truncated, as CLIP does). */
EDD_API size_t edd_pipeline_last_prompt_tokens(const edd_pipeline *pipe);

#ifdef __cplusplus
}
#endif

#endif /* EDGEDIFF_H */
