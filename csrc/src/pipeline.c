/* pipeline.c — a text bundle's whole pipeline (edgediff.h, "text-to-image"): the loop of
 * src/edgediff/runtimes/runner.py generate_text in C.
 *
 *   tokenize prompts[0..B) and the negative prompt -> ids [B + 1, L]
 *   text encoder (one call, or one per row for a static batch of 1) -> hidden [B + 1, L, width]
 *   edd_context: cond = hidden[0..B), null_cond = hidden[B]; guidance over both halves of a batch
 *   decoder -> [B, 3, H, W] in [-1, 1], clipped; [0, 1] HWC as to_unit by default
 *
 * Components are loaded just before their phase; with low_memory each is unloaded after it.
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct edd_pipeline {
    const edd_bundle *bundle;
    const edd_bundle_info *info;
    edd_pipeline_backend backend;
    edd_tokenizer *tok;
    int loaded[EDD_NUM_COMPONENTS];
    size_t last_tokens;
    char error[768];
};

static const char *const COMPONENT_NAMES[EDD_NUM_COMPONENTS] = {"text encoder", "denoiser", "VAE decoder"};

edd_text_params edd_default_text_params(void) {
    edd_text_params p;
    memset(&p, 0, sizeof p);
    p.batch = 1;
    p.prompt = NULL;
    p.prompts = NULL;
    p.negative_prompt = NULL;
    p.guidance = -1.0;
    p.seed = 0;
    p.first_stream = 0;
    p.plan = NULL;
    p.low_memory = 0;
    p.unit_hwc = 1;
    p.on_step = NULL;
    p.on_step_user = NULL;
    p.cancel = NULL;
    return p;
}

edd_status edd_pipeline_create(const edd_bundle *bundle, const edd_pipeline_backend *backend, edd_pipeline **out,
                               char *err, size_t err_size) {
    const edd_bundle_info *info;
    edd_pipeline *p;
    edd_status st;
    if (err && err_size) err[0] = '\0';
    if (!out) return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_pipeline_create: out is NULL");
    *out = NULL;
    if (!bundle || !backend)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_pipeline_create: %s is NULL",
                         bundle ? "backend" : "bundle");
    info = edd_bundle_get_info(bundle);
    if (info->conditioning != EDD_COND_TEXT)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                         "edd_pipeline_create: the bundle is not a text-to-image bundle (conditioning kind text)");
    if (!info->tokenizer_path)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT,
                         "edd_pipeline_create: needs a bundle from edd_bundle_load (the tokenizer folder)");
    if (!backend->denoise || !backend->run)
        return edd__fail(err, err_size, EDD_ERR_INVALID_ARGUMENT, "edd_pipeline_create: backend.%s is NULL",
                         backend->denoise ? "run" : "denoise");
    p = (edd_pipeline *)calloc(1, sizeof *p);
    if (!p) return edd__fail(err, err_size, EDD_ERR_OUT_OF_MEMORY, "out of memory");
    p->bundle = bundle;
    p->info = info;
    p->backend = *backend;
    if ((st = edd_tokenizer_load(info->tokenizer_path, &p->tok, err, err_size)) != EDD_OK) {
        free(p);
        return st;
    }
    *out = p;
    return EDD_OK;
}

static void unload(edd_pipeline *p, edd_component c) {
    if (!p->loaded[c]) return;
    if (p->backend.unload) p->backend.unload(p->backend.user, c);
    p->loaded[c] = 0;
}

void edd_pipeline_free(edd_pipeline *p) {
    int c;
    if (!p) return;
    for (c = 0; c < EDD_NUM_COMPONENTS; c++) unload(p, (edd_component)c);
    edd_tokenizer_free(p->tok);
    free(p);
}

const edd_tokenizer *edd_pipeline_tokenizer(const edd_pipeline *p) {
    return p ? p->tok : NULL;
}

const char *edd_pipeline_error(const edd_pipeline *p) {
    return p ? p->error : "edd_pipeline_error: pipe is NULL";
}

size_t edd_pipeline_last_prompt_tokens(const edd_pipeline *p) {
    return p ? p->last_tokens : 0;
}

#define FAIL(...) snprintf(p->error, sizeof p->error, __VA_ARGS__)

static const char *backend_error(const edd_pipeline *p) {
    const char *e = p->backend.error ? p->backend.error(p->backend.user) : NULL;
    return e && e[0] ? e : NULL;
}

static edd_status load(edd_pipeline *p, edd_component c) {
    int rc;
    if (p->loaded[c]) return EDD_OK;
    rc = p->backend.load ? p->backend.load(p->backend.user, c) : 0;
    if (rc != 0) {
        const char *e = backend_error(p);
        FAIL("the backend could not load the %s (returned %d)%s%s", COMPONENT_NAMES[c], rc, e ? ": " : "", e ? e : "");
        return EDD_ERR_BACKEND;
    }
    p->loaded[c] = 1;
    return EDD_OK;
}

/* before a phase: with low_memory nothing else stays resident */
static edd_status enter(edd_pipeline *p, const edd_text_params *tp, edd_component c) {
    int k;
    if (tp->low_memory)
        for (k = 0; k < EDD_NUM_COMPONENTS; k++)
            if (k != (int)c) unload(p, (edd_component)k);
    return load(p, c);
}

static void leave(edd_pipeline *p, const edd_text_params *tp, edd_component c) {
    if (tp->low_memory) unload(p, c);
}

edd_status edd_pipeline_load(edd_pipeline *p) {
    edd_status st;
    int c;
    if (!p) return EDD_ERR_INVALID_ARGUMENT;
    p->error[0] = '\0';
    for (c = 0; c < EDD_NUM_COMPONENTS; c++)
        if ((st = load(p, (edd_component)c)) != EDD_OK) return st;
    return EDD_OK;
}

static size_t image_size(const edd_bundle_info *info) {
    return (size_t)info->image_shape[0] * (size_t)info->image_shape[1] * (size_t)info->image_shape[2];
}

size_t edd_pipeline_output_count(const edd_pipeline *p, const edd_text_params *tp) {
    if (!p || !tp || tp->batch < 1 || tp->batch > ((size_t)-1) / image_size(p->info)) return 0;
    return tp->batch * image_size(p->info);
}

/* the rows one call of a component graph takes: its fixed batch, or all (0) */
static size_t fixed_batch(const edd_tensor_info *t) {
    return t->ndim >= 1 && t->shape[0] > 0 ? (size_t)t->shape[0] : 0;
}

/* run a component over rows, in calls of its fixed batch if it has one */
static edd_status run_rows(edd_pipeline *p, edd_component c, size_t rows, const int64_t *ids, const float *latents,
                           size_t in_size, float *out, size_t out_size, size_t fixed) {
    size_t r0, chunk;
    for (r0 = 0; r0 < rows; r0 += chunk) {
        edd_component_args a;
        int rc;
        chunk = fixed && fixed < rows - r0 ? fixed : rows - r0;
        if (fixed && chunk != fixed) {
            FAIL("the %s graph takes %lu rows per call; %lu rows do not divide into such calls", COMPONENT_NAMES[c],
                 (unsigned long)fixed, (unsigned long)rows);
            return EDD_ERR_INVALID_ARGUMENT;
        }
        memset(&a, 0, sizeof a);
        a.component = c;
        a.batch = chunk;
        a.ids = ids ? ids + r0 * in_size : NULL;
        a.seq_len = ids ? in_size : 0;
        a.latents = latents ? latents + r0 * in_size : NULL;
        a.in_size = in_size;
        a.out = out + r0 * out_size;
        a.out_size = out_size;
        rc = p->backend.run(p->backend.user, &a);
        if (rc != 0) {
            const char *e = backend_error(p);
            FAIL("the %s failed (backend returned %d)%s%s", COMPONENT_NAMES[c], rc, e ? ": " : "", e ? e : "");
            return EDD_ERR_BACKEND;
        }
    }
    return EDD_OK;
}

static int all_finite(const float *x, size_t n) {
    size_t k;
    for (k = 0; k < n; k++)
        if (!isfinite(x[k])) return 0;
    return 1;
}

edd_status edd_pipeline_generate(edd_pipeline *p, const edd_text_params *tp, float *out, size_t out_count) {
    const edd_bundle_info *info;
    size_t B, L, width, rows, k, j, hidden_row, latent_size, img, count;
    int64_t *ids = NULL;
    int32_t *ids32 = NULL;
    float *hidden = NULL, *latents = NULL, *decoded = NULL;
    edd_context *ctx = NULL;
    edd_params params;
    edd_backend den;
    const edd_plan *plan;
    edd_status st = EDD_ERR_OUT_OF_MEMORY;
    char err[512];
    if (!p) return EDD_ERR_INVALID_ARGUMENT;
    p->error[0] = '\0';
    if (!tp) {
        FAIL("edd_pipeline_generate: params is NULL");
        return EDD_ERR_INVALID_ARGUMENT;
    }
    info = p->info;
    B = tp->batch;
    count = edd_pipeline_output_count(p, tp);
    if (B < 1 || !count) {
        FAIL("params.batch must be >= 1, got %lu", (unsigned long)B);
        return EDD_ERR_INVALID_ARGUMENT;
    }
    if (!out || out_count != count) {
        FAIL("out must hold batch * 3 * H * W = %lu floats, got %lu%s", (unsigned long)count, (unsigned long)out_count,
             out ? "" : " (NULL)");
        return EDD_ERR_INVALID_ARGUMENT;
    }
    if (!tp->prompts && !tp->prompt) {
        FAIL("params.prompt (or params.prompts) is NULL: a text bundle needs a prompt");
        return EDD_ERR_INVALID_ARGUMENT;
    }
    if (tp->guidance != tp->guidance || isinf(tp->guidance)) {
        FAIL("params.guidance must be finite");
        return EDD_ERR_INVALID_ARGUMENT;
    }
    L = info->max_length;
    width = (size_t)info->cond_shape[1];
    rows = B + 1;
    hidden_row = L * width;
    latent_size = (size_t)info->sample_shape[0] * (size_t)info->sample_shape[1] * (size_t)info->sample_shape[2];
    img = image_size(info);
    if (rows > ((size_t)-1) / 8 / (hidden_row > L ? hidden_row : L) || B > ((size_t)-1) / 4 / latent_size) {
        FAIL("params.batch %lu is too large", (unsigned long)B);
        return EDD_ERR_INVALID_ARGUMENT;
    }
    ids = (int64_t *)malloc(rows * L * sizeof *ids);
    ids32 = (int32_t *)malloc(L * sizeof *ids32);
    hidden = (float *)malloc(rows * hidden_row * sizeof *hidden);
    latents = (float *)malloc(B * latent_size * sizeof *latents);
    decoded = (float *)malloc(B * img * sizeof *decoded);
    if (!ids || !ids32 || !hidden || !latents || !decoded) {
        FAIL("out of memory for %lu images", (unsigned long)B);
        goto done;
    }

    /* 1. tokenize: the B prompts, then the negative prompt (row B) */
    p->last_tokens = 0;
    for (k = 0; k < rows; k++) {
        const char *text =
            k < B ? (tp->prompts ? tp->prompts[k] : tp->prompt) : (tp->negative_prompt ? tp->negative_prompt : "");
        size_t full = 0;
        if (!text) {
            FAIL("params.prompts[%lu] is NULL", (unsigned long)k);
            st = EDD_ERR_INVALID_ARGUMENT;
            goto done;
        }
        st = edd_tokenizer_encode(p->tok, text, strlen(text), ids32, L, &full, err, sizeof err);
        if (st != EDD_OK) {
            if (k < B)
                FAIL("prompt %lu: %s", (unsigned long)k, err);
            else
                FAIL("the negative prompt: %s", err);
            goto done;
        }
        if (full > p->last_tokens) p->last_tokens = full;
        for (j = 0; j < L; j++) ids[k * L + j] = ids32[j];
    }

    /* 2. the text encoder, once for all rows */
    if ((st = enter(p, tp, EDD_COMPONENT_TEXT_ENCODER)) != EDD_OK) goto done;
    st = run_rows(p, EDD_COMPONENT_TEXT_ENCODER, rows, ids, NULL, L, hidden, hidden_row,
                  fixed_batch(&info->text_encoder.inputs[0]));
    leave(p, tp, EDD_COMPONENT_TEXT_ENCODER);
    if (st != EDD_OK) goto done;
    if (!all_finite(hidden, rows * hidden_row)) {
        FAIL("the text encoder produced non-finite values (NaN or inf)");
        st = EDD_ERR_BACKEND;
        goto done;
    }

    /* 3. the sampler loop over the embeddings */
    plan = tp->plan ? tp->plan : edd_bundle_plan(p->bundle);
    params = edd_default_params();
    edd_bundle_fill_params(p->bundle, &params);
    if (tp->plan && tp->plan != edd_bundle_plan(p->bundle)) { /* the tables are made for the bundle's steps */
        params.table_steps = 0;
        params.step_group = NULL;
        params.num_groups = 0;
        params.cache_flags = NULL;
    }
    params.batch = B;
    params.seed = tp->seed;
    params.first_stream = tp->first_stream;
    if (tp->guidance >= 0) params.guidance = tp->guidance;
    params.cond_ndim = 2;
    params.cond_shape[0] = (int64_t)L;
    params.cond_shape[1] = (int64_t)width;
    params.cond = hidden;
    params.null_cond = hidden + B * hidden_row;
    params.max_rows = fixed_batch(&info->inputs[0]);
    params.on_step = tp->on_step;
    params.on_step_user = tp->on_step_user;
    params.cancel = tp->cancel;
    den.denoise = p->backend.denoise;
    den.user = p->backend.user;
    if ((st = edd_context_create(plan, &den, &params, &ctx, err, sizeof err)) != EDD_OK) {
        FAIL("%s", err);
        goto done;
    }
    if ((st = enter(p, tp, EDD_COMPONENT_DENOISER)) != EDD_OK) goto done;
    st = edd_context_sample(ctx, latents, B * latent_size);
    leave(p, tp, EDD_COMPONENT_DENOISER);
    if (st != EDD_OK) {
        const char *e = st == EDD_ERR_BACKEND ? backend_error(p) : NULL;
        FAIL("%s%s%s", edd_context_error(ctx), e ? ": " : "", e ? e : "");
        goto done;
    }
    if (!all_finite(latents, B * latent_size)) {
        FAIL("the denoiser produced non-finite latents (NaN or inf)");
        st = EDD_ERR_BACKEND;
        goto done;
    }

    /* 4. the decoder, then [-1, 1] -> the output layout */
    if ((st = enter(p, tp, EDD_COMPONENT_VAE_DECODER)) != EDD_OK) goto done;
    st = run_rows(p, EDD_COMPONENT_VAE_DECODER, B, NULL, latents, latent_size, decoded, img,
                  fixed_batch(&info->vae_decoder.inputs[0]));
    leave(p, tp, EDD_COMPONENT_VAE_DECODER);
    if (st != EDD_OK) goto done;
    if (!all_finite(decoded, B * img)) {
        FAIL("the VAE decoder produced non-finite values (NaN or inf)");
        st = EDD_ERR_BACKEND;
        goto done;
    }
    {
        size_t H = (size_t)info->image_shape[1], W = (size_t)info->image_shape[2], plane = H * W, c, q;
        for (k = 0; k < B * img; k++) decoded[k] = decoded[k] < -1.0f ? -1.0f : decoded[k] > 1.0f ? 1.0f : decoded[k];
        if (!tp->unit_hwc) {
            memcpy(out, decoded, B * img * sizeof(float));
        } else { /* to_unit: clip(x / 2 + 0.5, 0, 1), (3, H, W) -> (H, W, 3), in float32 */
            for (k = 0; k < B; k++)
                for (c = 0; c < 3; c++)
                    for (q = 0; q < plane; q++) {
                        float half = decoded[k * img + c * plane + q] / 2.0f;
                        float u = half + 0.5f;
                        out[k * img + q * 3 + c] = u < 0.0f ? 0.0f : u > 1.0f ? 1.0f : u;
                    }
        }
    }
    st = EDD_OK;
done:
    edd_context_free(ctx);
    free(ids);
    free(ids32);
    free(hidden);
    free(latents);
    free(decoded);
    return st;
}
