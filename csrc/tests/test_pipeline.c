/* test_pipeline.c — C-level checks of the text-to-image pipeline (pipeline.c) with a recording
 * fake backend over a text bundle written to a temporary folder, run by `make check` under
 * ASan + UBSan. What is checked: the ids the text encoder gets (B prompts, then the negative
 * prompt), one text-encoder call per generation, the condition rows the denoiser gets (conditional
 * first, then the negative prompt's embedding), static-batch splitting, the load / unload order
 * in both memory modes, identical bits in both, the output layouts, and the refusals.
 * The images against the Python runtime are tests/test_c_text.py. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "edgediff.h"

static int failures, checks;

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        checks++;                                                                                                      \
        if (!(cond)) {                                                                                                 \
            failures++;                                                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                                   \
        }                                                                                                              \
    } while (0)

#define L      5  /* max_length */
#define WIDTH  4  /* embedding width */
#define LATENT 16 /* 4 x 2 x 2 */
#define IMAGE  48 /* 3 x 4 x 4 */

static const char MANIFEST[] =
    "{\"format\": \"edgediff-bundle\", \"format_version\": 1,\n"
    " \"model\": {\"format\": \"onnx\", \"file\": \"model/d.onnx\",\n"
    "  \"inputs\": [{\"name\": \"sample\", \"dtype\": \"float32\", \"shape\": [%s, 4, 2, 2]},\n"
    "             {\"name\": \"timestep\", \"dtype\": \"float32\", \"shape\": [%s]},\n"
    "             {\"name\": \"encoder_hidden_states\", \"dtype\": \"float32\", \"shape\": [%s, 5, 4]}],\n"
    "  \"outputs\": [{\"name\": \"out\", \"dtype\": \"float32\", \"shape\": [%s, 4, 2, 2]}]},\n"
    " \"conditioning\": {\"kind\": \"text\", \"shape\": [5, 4]},\n"
    " \"components\": {\n"
    "  \"text_encoder\": {\"file\": \"model/t.onnx\", \"format\": \"onnx\",\n"
    "   \"inputs\": [{\"name\": \"input_ids\", \"dtype\": \"int64\", \"shape\": [\"batch\", 5]}],\n"
    "   \"outputs\": [{\"name\": \"h\", \"dtype\": \"float32\", \"shape\": [\"batch\", 5, 4]}]},\n"
    "  \"vae_decoder\": {\"file\": \"model/v.onnx\", \"format\": \"onnx\",\n"
    "   \"inputs\": [{\"name\": \"latents\", \"dtype\": \"float32\", \"shape\": [1, 4, 2, 2]}],\n"
    "   \"outputs\": [{\"name\": \"image\", \"dtype\": \"float32\", \"shape\": [1, 3, 4, 4]}]},\n"
    "  \"tokenizer\": {\"folder\": \"tok\", \"max_length\": 5, \"files\": [\"tok/vocab.json\", \"tok/merges.txt\"]}},\n"
    " \"files\": {\"model/d.onnx\": {\"bytes\": 64}, \"model/t.onnx\": {\"bytes\": 64}, \"model/v.onnx\": {\"bytes\": "
    "64},\n"
    "  \"tok/vocab.json\": {\"bytes\": 4096}, \"tok/merges.txt\": {\"bytes\": 64}, \"scheduler.json\": {\"bytes\": "
    "4096}}}";

static const char SCHEDULER[] =
    "{\"guidance_scale\": 3.0, \"conditioning\": \"text\",\n"
    " \"latent\": {\"shape\": [4, 2, 2], \"scaling_factor\": 0.5, \"image_shape\": [3, 4, 4]},\n"
    " \"plan\": {\"solver\": \"ddim\", \"timesteps\": [3, 1], \"schedule\": {\"alphas_cumprod\": [0.99, 0.9, 0.7, "
    "0.5]},\n"
    "  \"params\": {\"eta\": 0, \"prev_timesteps\": [1, -1], \"final_alpha_cumprod\": 1.0, \"clip_sample\": null}}}";

/* ids: 0 a</w>, 1 b</w>, 2 <|startoftext|>, 3 <|endoftext|> (also pad and unk) */
static const char VOCAB[] = "{\"a</w>\": 0, \"b</w>\": 1, \"<|startoftext|>\": 2, \"<|endoftext|>\": 3, \"a\": 4}";
static const char MERGES[] = "#version: 0.2\n";

typedef struct fake {
    char log[64]; /* "L0 U0 L1 ..." load / unload in order */
    int64_t ids[8 * L];
    size_t encode_calls, encode_rows, decode_calls, denoise_calls, max_denoise_rows;
    float cond_first[8]; /* step 0: first value of each row's condition */
    int fail_encoder;
} fake;

static void say(fake *f, char what, int c) {
    size_t n = strlen(f->log);
    if (n + 3 < sizeof f->log) snprintf(f->log + n, sizeof f->log - n, "%c%d", what, c);
}

static int f_load(void *user, edd_component c) {
    say((fake *)user, 'L', (int)c);
    return 0;
}

static void f_unload(void *user, edd_component c) {
    say((fake *)user, 'U', (int)c);
}

static int f_run(void *user, const edd_component_args *a) {
    fake *f = (fake *)user;
    size_t r, j;
    if (a->component == EDD_COMPONENT_TEXT_ENCODER) {
        if (f->fail_encoder) return 7;
        if (a->seq_len != L || a->out_size != L * WIDTH || !a->ids) return 9;
        f->encode_calls++;
        f->encode_rows += a->batch;
        memcpy(f->ids, a->ids, a->batch * L * sizeof(int64_t));
        for (r = 0; r < a->batch; r++) /* row r's embedding: its first id + 1 (the BOS...) + a row mark */
            for (j = 0; j < L * WIDTH; j++)
                a->out[r * L * WIDTH + j] = 0.1f * (float)a->ids[r * L + 1] + 0.01f * (float)j;
        return 0;
    }
    if (a->batch != 1 || a->in_size != LATENT || a->out_size != IMAGE) return 8; /* static batch 1 */
    f->decode_calls++;
    for (j = 0; j < IMAGE; j++) a->out[j] = (float)tanh(3.0 * (double)a->latents[j % LATENT]);
    return 0;
}

static int f_denoise(void *user, const edd_denoise_args *a) {
    fake *f = (fake *)user;
    size_t r, j;
    if (!a->cond || a->cond_size != L * WIDTH || a->cond_shape[0] != L || a->cond_shape[1] != WIDTH) return 9;
    f->denoise_calls++;
    if (a->batch > f->max_denoise_rows) f->max_denoise_rows = a->batch;
    for (r = 0; r < a->batch; r++) {
        if (a->step == 0 && a->first_row + r < 8) f->cond_first[a->first_row + r] = a->cond[r * L * WIDTH];
        for (j = 0; j < a->sample_size; j++)
            a->eps[r * a->sample_size + j] =
                0.5f * (float)tanh((double)a->x[r * a->sample_size + j]) + a->cond[r * L * WIDTH];
    }
    return 0;
}

static void put(const char *dir, const char *name, const char *text) {
    char path[512];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void write_bundle(const char *dir, const char *batch) {
    char m[4096], sub[512];
    snprintf(m, sizeof m, MANIFEST, batch, batch, batch, batch);
    snprintf(sub, sizeof sub, "%s/model", dir);
    mkdir(sub, 0700);
    snprintf(sub, sizeof sub, "%s/tok", dir);
    mkdir(sub, 0700);
    put(dir, "manifest.json", m);
    put(dir, "scheduler.json", SCHEDULER);
    put(dir, "model/d.onnx", "x");
    put(dir, "model/t.onnx", "x");
    put(dir, "model/v.onnx", "x");
    put(dir, "tok/vocab.json", VOCAB);
    put(dir, "tok/merges.txt", MERGES);
}

static edd_pipeline *open_pipeline(const char *dir, fake *f, edd_bundle **b) {
    edd_pipeline_backend be;
    edd_pipeline *p = NULL;
    char err[512] = "";
    CHECK(edd_bundle_load(dir, b, err, sizeof err) == EDD_OK);
    if (!*b) {
        fprintf(stderr, "  load: %s\n", err);
        return NULL;
    }
    be.denoise = f_denoise;
    be.run = f_run;
    be.load = f_load;
    be.unload = f_unload;
    be.error = NULL;
    be.user = f;
    CHECK(edd_pipeline_create(*b, &be, &p, err, sizeof err) == EDD_OK);
    if (!p) fprintf(stderr, "  create: %s\n", err);
    return p;
}

static void test_pipeline(const char *dir) {
    static const char *const prompts[] = {"a b", "b"};
    edd_bundle *b = NULL;
    fake f, g;
    edd_pipeline *p;
    edd_text_params tp = edd_default_text_params();
    float out[2 * IMAGE], low[2 * IMAGE], chw[2 * IMAGE];
    size_t k, c, q;
    write_bundle(dir, "\"batch\"");
    memset(&f, 0, sizeof f);
    if (!(p = open_pipeline(dir, &f, &b))) goto done;
    tp.batch = 2;
    tp.prompts = prompts;
    tp.seed = 4;
    CHECK(edd_pipeline_output_count(p, &tp) == 2 * IMAGE);
    CHECK(edd_pipeline_generate(p, &tp, out, 2 * IMAGE) == EDD_OK);
    /* one text-encoder call of B + 1 rows: the prompts, then the negative prompt "" */
    CHECK(f.encode_calls == 1 && f.encode_rows == 3);
    CHECK(f.ids[0] == 2 && f.ids[1] == 0 && f.ids[2] == 1 && f.ids[3] == 3 && f.ids[4] == 3);
    CHECK(f.ids[L] == 2 && f.ids[L + 1] == 1 && f.ids[L + 2] == 3);
    CHECK(f.ids[2 * L] == 2 && f.ids[2 * L + 1] == 3 && f.ids[2 * L + 4] == 3);
    /* guidance 3 (the bundle's): 2B rows in one call a step, conditional first */
    CHECK(f.denoise_calls == 2 && f.max_denoise_rows == 4 && f.decode_calls == 2);
    CHECK(f.cond_first[0] == 0.0f && fabsf(f.cond_first[1] - 0.1f) < 1e-7f && fabsf(f.cond_first[2] - 0.3f) < 1e-7f &&
          f.cond_first[3] == f.cond_first[2]);
    CHECK(strcmp(f.log, "L0L1L2") == 0); /* loaded on first use, kept */
    for (k = 0; k < 2 * IMAGE; k++) CHECK(out[k] >= 0.0f && out[k] <= 1.0f);
    CHECK(edd_pipeline_last_prompt_tokens(p) == 4);
    /* a second run loads nothing; the [-1, 1] CHW layout is the same numbers */
    tp.unit_hwc = 0;
    CHECK(edd_pipeline_generate(p, &tp, chw, 2 * IMAGE) == EDD_OK && strcmp(f.log, "L0L1L2") == 0);
    for (k = 0; k < 2; k++)
        for (c = 0; c < 3; c++)
            for (q = 0; q < 16; q++) CHECK(out[k * IMAGE + q * 3 + c] == chw[k * IMAGE + c * 16 + q] / 2.0f + 0.5f);
    tp.unit_hwc = 1;
    /* refusals */
    tp.prompts = NULL;
    tp.prompt = "a\xff";
    CHECK(edd_pipeline_generate(p, &tp, out, 2 * IMAGE) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(strstr(edd_pipeline_error(p), "prompt 0: the text is not valid UTF-8") != NULL);
    tp.prompt = "a";
    tp.negative_prompt = "\xc3";
    CHECK(edd_pipeline_generate(p, &tp, out, 2 * IMAGE) == EDD_ERR_INVALID_ARGUMENT);
    CHECK(strstr(edd_pipeline_error(p), "the negative prompt: ") != NULL);
    tp.negative_prompt = NULL;
    CHECK(edd_pipeline_generate(p, &tp, out, 2 * IMAGE - 1) == EDD_ERR_INVALID_ARGUMENT);
    f.fail_encoder = 1;
    CHECK(edd_pipeline_generate(p, &tp, out, 2 * IMAGE) == EDD_ERR_BACKEND);
    CHECK(strstr(edd_pipeline_error(p), "the text encoder failed (backend returned 7)") != NULL);
    f.fail_encoder = 0;
    tp.prompt = NULL;
    tp.prompts = prompts;
    edd_pipeline_free(p);
    CHECK(strcmp(f.log, "L0L1L2U0U1U2") == 0);
    edd_bundle_free(b);
    b = NULL;

    /* a denoiser of static batch 2: guidance takes two calls a step; low memory: one resident */
    write_bundle(dir, "2");
    memset(&g, 0, sizeof g);
    if (!(p = open_pipeline(dir, &g, &b))) goto done;
    tp.low_memory = 1;
    CHECK(edd_pipeline_generate(p, &tp, low, 2 * IMAGE) == EDD_OK);
    CHECK(g.denoise_calls == 4 && g.max_denoise_rows == 2);
    CHECK(memcmp(g.cond_first, f.cond_first, 4 * sizeof(float)) == 0);
    CHECK(memcmp(low, out, sizeof out) == 0); /* the same bits: only memory and call sizes differ */
    CHECK(strcmp(g.log, "L0U0L1U1L2U2") == 0);
    tp.guidance = 1.0; /* no guidance: B rows, and the null embedding is not used */
    CHECK(edd_pipeline_generate(p, &tp, low, 2 * IMAGE) == EDD_OK && g.max_denoise_rows == 2);
    edd_pipeline_free(p);
done:
    edd_bundle_free(b);
}

int main(void) {
    char dir[] = "/tmp/edd_pipeline_XXXXXX";
    edd_pipeline *p = NULL;
    edd_pipeline_backend be;
    char err[256];
    memset(&be, 0, sizeof be);
    CHECK(edd_pipeline_create(NULL, &be, &p, err, sizeof err) == EDD_ERR_INVALID_ARGUMENT && p == NULL);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_pipeline(dir);
    {
        static const char *const names[] = {"manifest.json", "scheduler.json", "model/d.onnx",   "model/t.onnx",
                                            "model/v.onnx",  "tok/vocab.json", "tok/merges.txt", NULL};
        char path[512];
        int k;
        for (k = 0; names[k]; k++) {
            snprintf(path, sizeof path, "%s/%s", dir, names[k]);
            remove(path);
        }
        snprintf(path, sizeof path, "%s/model", dir);
        rmdir(path);
        snprintf(path, sizeof path, "%s/tok", dir);
        rmdir(path);
        rmdir(dir);
    }
    printf("test_pipeline: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
