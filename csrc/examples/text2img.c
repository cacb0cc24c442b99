/* text2img.c — a complete program that embeds the library: a prompt in, an image out.
 *
 *   text2img BUNDLE "a handwritten 7" SEED OUT.ppm [--low-memory]
 *
 * It loads a text-to-image bundle (edd_bundle_load, with every file's sha256 checked), runs its
 * three graphs on OpenVINO (backends/edgediff_openvino.h: edd_ov_text) through the library's
 * pipeline (tokenize, text encoder once, the guided sampler loop, VAE decoder) and writes the one
 * image as a binary PPM, [0, 1] -> uint8 as (int)(255 u + 0.5). Built by `make -C csrc example-text`
 * (tests/test_c_text.py builds and runs it).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgediff.h"
#include "edgediff_openvino.h"

static int write_ppm(const char *path, const float *hwc, size_t h, size_t w) {
    FILE *f = fopen(path, "wb");
    size_t k;
    int ok;
    if (!f) return 1;
    fprintf(f, "P6\n%lu %lu\n255\n", (unsigned long)w, (unsigned long)h);
    for (k = 0; k < h * w * 3; k++) fputc((int)(hwc[k] * 255.0f + 0.5f), f);
    ok = !ferror(f);
    return fclose(f) != 0 || !ok;
}

int main(int argc, char **argv) {
    edd_bundle *bundle = NULL;
    edd_ov_text *ov = NULL;
    edd_pipeline *pipe = NULL;
    edd_pipeline_backend backend;
    edd_text_params tp = edd_default_text_params();
    const edd_bundle_info *info;
    float *image = NULL;
    size_t count;
    char err[1024];
    edd_status st;
    int rc = 1;

    if (argc < 5 || argc > 6 || (argc == 6 && strcmp(argv[5], "--low-memory") != 0)) {
        fprintf(stderr, "usage: text2img BUNDLE PROMPT SEED OUT.ppm [--low-memory]\n");
        return 2;
    }
    /* 1. the bundle: manifest.json + scheduler.json, every listed file inside it and hashed */
    if ((st = edd_bundle_load(argv[1], &bundle, err, sizeof err)) != EDD_OK ||
        (st = edd_bundle_verify(bundle, err, sizeof err)) != EDD_OK) {
        fprintf(stderr, "text2img: %s\n", err);
        goto done;
    }
    info = edd_bundle_get_info(bundle);
    if (info->conditioning != EDD_COND_TEXT) {
        fprintf(stderr, "text2img: %s is not a text-to-image bundle\n", argv[1]);
        goto done;
    }
    /* 2. the backend: OpenVINO on the CPU, f32; the denoiser at the static batch of one guided step */
    {
        edd_ov_params op = edd_ov_default_params();
        op.static_batch = info->inputs[0].shape[0] > 0 ? 0 : (info->guidance_scale != 1.0 ? 2 : 1);
        if ((st = edd_ov_text_create(info, &op, &ov, err, sizeof err)) != EDD_OK) {
            fprintf(stderr, "text2img: %s\n", err);
            goto done;
        }
    }
    backend = edd_ov_text_backend(ov);
    /* 3. the pipeline: the tokenizer is read here, each graph when it first runs */
    if ((st = edd_pipeline_create(bundle, &backend, &pipe, err, sizeof err)) != EDD_OK) {
        fprintf(stderr, "text2img: %s\n", err);
        goto done;
    }
    tp.prompt = argv[2];
    tp.seed = strtoull(argv[3], NULL, 10);
    tp.low_memory = argc == 6;
    count = edd_pipeline_output_count(pipe, &tp); /* 1 x H x W x 3 floats in [0, 1] */
    if (!(image = (float *)malloc(count * sizeof(float)))) {
        fprintf(stderr, "text2img: out of memory\n");
        goto done;
    }
    /* 4. one image: noise stream 0 of SEED, the bundle's guidance, negative prompt "" */
    if ((st = edd_pipeline_generate(pipe, &tp, image, count)) != EDD_OK) {
        fprintf(stderr, "text2img: %s: %s\n", edd_status_str(st), edd_pipeline_error(pipe));
        goto done;
    }
    if (write_ppm(argv[4], image, (size_t)info->image_shape[1], (size_t)info->image_shape[2])) {
        fprintf(stderr, "text2img: %s: cannot write\n", argv[4]);
        goto done;
    }
    printf("text2img: wrote %s (%lld x %lld) for \"%s\", seed %s\n", argv[4], (long long)info->image_shape[2],
           (long long)info->image_shape[1], argv[2], argv[3]);
    rc = 0;
done:
    free(image);
    edd_pipeline_free(pipe); /* before the backend: it unloads the graphs through it */
    edd_ov_text_free(ov);
    edd_bundle_free(bundle);
    return rc;
}
