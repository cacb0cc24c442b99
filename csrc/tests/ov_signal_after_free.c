/* ov_signal_after_free.c — a signal handled on the alternate signal stack after two text
 * pipelines have run on OpenVINO and been freed in the order they were made, as an app that
 * opens two bundles may free them (tests/test_c_text.py builds and runs it).
 *
 *   ov_signal_after_free BUNDLE
 *
 * OpenVINO's CPU plugin points the thread's signal stack at a buffer of its own and puts back the
 * one it found when its core is freed. With one ov_core_t per backend, cores freed first-in
 * first-out left the thread on a freed buffer, and the SA_ONSTACK handler below crashed with
 * SIGSEGV. Exit 0 and "handled" when the handler ran.
 */
#define _XOPEN_SOURCE 700 /* sigaction with SA_ONSTACK */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgediff.h"
#include "edgediff_openvino.h"

static volatile sig_atomic_t handled;

static void on_term(int sig) {
    char pad[4096]; /* the handler uses its stack, as any real one does */
    memset(pad, sig, sizeof pad);
    handled = pad[sizeof pad - 1] == (char)sig;
}

/* one app's use of the bundle: its backend and pipeline, one image; 0 or 1 with err set */
static int generate(const edd_bundle *bundle, edd_ov_text **ov, edd_pipeline **pipe, char *err, size_t err_size) {
    const edd_bundle_info *info = edd_bundle_get_info(bundle);
    edd_ov_params op = edd_ov_default_params();
    edd_text_params tp = edd_default_text_params();
    edd_pipeline_backend backend;
    float *image;
    size_t count;
    int bad;
    op.static_batch = info->inputs[0].shape[0] > 0 ? 0 : (info->guidance_scale != 1.0 ? 2 : 1);
    if (edd_ov_text_create(info, &op, ov, err, err_size) != EDD_OK) return 1;
    backend = edd_ov_text_backend(*ov);
    if (edd_pipeline_create(bundle, &backend, pipe, err, err_size) != EDD_OK) return 1;
    tp.prompt = "a handwritten 7";
    count = edd_pipeline_output_count(*pipe, &tp);
    if (!(image = (float *)malloc(count * sizeof(float)))) return snprintf(err, err_size, "out of memory") > 0;
    bad = edd_pipeline_generate(*pipe, &tp, image, count) != EDD_OK;
    if (bad) snprintf(err, err_size, "%s", edd_pipeline_error(*pipe));
    free(image);
    return bad;
}

int main(int argc, char **argv) {
    edd_bundle *bundle = NULL;
    edd_ov_text *ov[2] = {NULL, NULL};
    edd_pipeline *pipe[2] = {NULL, NULL};
    struct sigaction sa;
    char err[1024] = "";
    int k, bad = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: ov_signal_after_free BUNDLE\n");
        return 2;
    }
    bad = edd_bundle_load(argv[1], &bundle, err, sizeof err) != EDD_OK;
    for (k = 0; k < 2 && !bad; k++) bad = generate(bundle, &ov[k], &pipe[k], err, sizeof err);
    for (k = 0; k < 2; k++) { /* first made, first freed */
        edd_pipeline_free(pipe[k]);
        edd_ov_text_free(ov[k]);
    }
    edd_bundle_free(bundle);
    if (bad) {
        fprintf(stderr, "ov_signal_after_free: %s\n", err);
        return 1;
    }

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sa.sa_flags = SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0) {
        perror("sigaction");
        return 1;
    }
    raise(SIGTERM);
    if (!handled) {
        fprintf(stderr, "ov_signal_after_free: the handler did not run\n");
        return 1;
    }
    printf("handled\n");
    return 0;
}
