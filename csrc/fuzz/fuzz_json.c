/* fuzz_json.c — libFuzzer harness for the JSON reader and the bundle loader.
 *
 * Each input is tried three ways: as one JSON document (edd__json_parse, then every value
 * is walked), as scheduler.json next to a valid manifest, and as manifest.json next to a
 * valid scheduler.json; an input with a NUL byte is also split there into (manifest,
 * scheduler). Under ASan + UBSan any out-of-bounds read, leak, overflow or crash is a
 * finding; a refusal with a message is the expected outcome for garbage.
 *
 *   make -C csrc fuzz FUZZ_SECONDS=60       (clang with libFuzzer)
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "edgediff.h"
#include "json.h"

static const char MANIFEST[] =
    "{\"format\": \"edgediff-bundle\", \"format_version\": 1, \"model\": {\"format\": \"onnx\", \"file\": \"m.onnx\","
    " \"inputs\": [{\"name\": \"sample\", \"dtype\": \"float32\", \"shape\": [\"batch\", 1, 4, 4]},"
    " {\"name\": \"timestep\", \"dtype\": \"float32\", \"shape\": [\"batch\"]},"
    " {\"name\": \"class_labels\", \"dtype\": \"int64\", \"shape\": [\"batch\"]}],"
    " \"outputs\": [{\"name\": \"eps\", \"dtype\": \"float32\", \"shape\": [\"batch\", 1, 4, 4]}]},"
    " \"conditioning\": {\"kind\": \"class\", \"num_classes\": 3, \"null_label\": 3},"
    " \"files\": {\"m.onnx\": {}, \"scheduler.json\": {}}}";

static const char SCHEDULER[] =
    "{\"guidance_scale\": 2.0, \"plan\": {\"solver\": \"dpmpp-2m\", \"timesteps\": [3, 1],"
    " \"schedule\": {\"alphas_cumprod\": [0.9, 0.8, 0.7, 0.6], \"prediction_type\": \"epsilon\"},"
    " \"params\": {\"sigmas\": [1.5, 0.7, 0.0]}}}";

/* touch every byte the tree claims to own, so a wrong length shows up under ASan */
static size_t walk(const edd_json *v) {
    size_t i, sum = (size_t)v->type;
    if (v->type == EDD_JSON_STRING)
        for (i = 0; i <= v->len; i++) sum += (unsigned char)v->string[i];
    if (v->type == EDD_JSON_ARRAY || v->type == EDD_JSON_OBJECT)
        for (i = 0; i < v->len; i++) {
            if (v->type == EDD_JSON_OBJECT) sum += strlen(v->items[i].key) + v->items[i].key_len;
            sum += walk(&v->items[i]);
        }
    return sum;
}

static void try_bundle(const char *m, size_t ml, const char *s, size_t sl) {
    edd_bundle *b = NULL;
    char err[256];
    if (edd_bundle_parse(m, ml, s, sl, &b, err, sizeof err) == EDD_OK) {
        const edd_bundle_info *info = edd_bundle_get_info(b);
        edd_params p = edd_default_params();
        edd_bundle_fill_params(b, &p);
        (void)edd_plan_num_steps(edd_bundle_plan(b));
        (void)strlen(info->model_file);
        edd_bundle_free(b);
    } else {
        (void)strlen(err); /* always a terminated message */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    const char *nul = (const char *)memchr(data, 0, size);
    edd_json *root = NULL;
    char err[160];
    if (edd__json_parse(text, size, &root, err, sizeof err) == EDD_OK) {
        size_t sum = walk(root); /* used below, so the reads are not optimised away */
        (void)edd__json_get(root, "plan");
        edd__json_free(root);
        if (sum == (size_t)-1) return -1;
    }
    try_bundle(MANIFEST, sizeof MANIFEST - 1, text, size);
    try_bundle(text, size, SCHEDULER, sizeof SCHEDULER - 1);
    if (nul) try_bundle(text, (size_t)(nul - text), nul + 1, size - (size_t)(nul - text) - 1);
    return 0;
}
