/* embed.c — embedding the edgediff runtime in a program with its own backend.
 *
 * The "model" here is the exact denoiser of a known data distribution, so the result can
 * be checked without any weights: class k's images are i.i.d. pixels ~ N(mu_k, s^2), and
 * for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps the best eps prediction is
 *
 *     E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu_k) / (abar s^2 + 1 - abar)
 *
 * A real application puts an ONNX Runtime / TFLite / OpenVINO call in denoise() instead and
 * takes the plan from the bundle's scheduler.json. Build: make -C csrc example.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "edgediff.h"

#define T_TRAIN 1000
#define STEPS   50
#define BATCH   32
#define SIDE    8

typedef struct {
    const double *alphas_cumprod; /* the backend's own copy of the schedule */
    double mu[2], s;              /* the data distribution of each class */
    int calls;
} gaussian_model;

static int denoise(void *user, const edd_denoise_args *a) {
    gaussian_model *m = (gaussian_model *)user;
    size_t r, j;
    m->calls++;
    for (r = 0; r < a->batch; r++) {
        long t = lround(a->t[r]);
        double abar, mu;
        if (t < 0 || t >= T_TRAIN || !a->labels || a->labels[r] < 0 || a->labels[r] > 1)
            return 1; /* -> EDD_ERR_BACKEND */
        abar = m->alphas_cumprod[t];
        mu = m->mu[a->labels[r]];
        for (j = 0; j < a->sample_size; j++) {
            double x = a->x[r * a->sample_size + j];
            a->eps[r * a->sample_size + j] =
                (float)(sqrt(1 - abar) * (x - sqrt(abar) * mu) / (abar * m->s * m->s + 1 - abar));
        }
    }
    return 0;
}

static int progress(void *user, const edd_step_info *info) {
    (void)user;
    if (info->step + 1 == info->num_steps) printf("embed: %lu steps done\n", (unsigned long)info->num_steps);
    return 0; /* non-zero would cancel */
}

int main(void) {
    static double ac[T_TRAIN];
    static float images[BATCH * SIDE * SIDE];
    int64_t timesteps[STEPS], labels[BATCH];
    double prev[STEPS], prod = 1.0, sum[2] = {0, 0}, sq[2] = {0, 0};
    gaussian_model model;
    edd_plan_param params[4];
    edd_plan_desc desc;
    edd_plan *plan = NULL;
    edd_params p = edd_default_params();
    edd_backend backend;
    edd_context *ctx = NULL;
    edd_status st;
    char err[256];
    size_t i, k, n = 0, count[2] = {0, 0};
    int ok = 1;

    /* the schedule and a 50-step DDIM plan ("leading" spacing), as scheduler.json would carry them */
    for (i = 0; i < T_TRAIN; i++) {
        prod *= 1.0 - (1e-4 + (0.02 - 1e-4) * (double)i / (T_TRAIN - 1));
        ac[i] = prod;
    }
    for (i = 0; i < STEPS; i++) {
        timesteps[i] = (int64_t)((STEPS - 1 - i) * (T_TRAIN / STEPS));
        prev[i] = (double)(timesteps[i] - T_TRAIN / STEPS);
    }
    params[0].key = "eta", params[0].kind = EDD_VALUE_NUMBER, params[0].number = 0.0;
    params[1].key = "prev_timesteps", params[1].kind = EDD_VALUE_ARRAY, params[1].values = prev,
    params[1].count = STEPS;
    params[2].key = "final_alpha_cumprod", params[2].kind = EDD_VALUE_NUMBER, params[2].number = 1.0;
    params[3].key = "clip_sample", params[3].kind = EDD_VALUE_NULL;
    desc.solver = "ddim";
    desc.prediction_type = "epsilon";
    desc.alphas_cumprod = ac;
    desc.num_train_timesteps = T_TRAIN;
    desc.timesteps = timesteps;
    desc.num_steps = STEPS;
    desc.params = params;
    desc.num_params = 4;
    if ((st = edd_plan_create(&desc, &plan, err, sizeof err)) != EDD_OK) {
        fprintf(stderr, "embed: plan: %s: %s\n", edd_status_str(st), err);
        return 1;
    }

    /* one generation: 32 images of 1x8x8, alternating classes 0 and 1 */
    model.alphas_cumprod = ac;
    model.mu[0] = -1.0;
    model.mu[1] = 1.0;
    model.s = 0.5;
    model.calls = 0;
    backend.denoise = denoise;
    backend.user = &model;
    for (k = 0; k < BATCH; k++) labels[k] = (int64_t)(k % 2);
    p.batch = BATCH;
    p.sample_ndim = 3;
    p.sample_shape[0] = 1;
    p.sample_shape[1] = SIDE;
    p.sample_shape[2] = SIDE;
    p.seed = 42;
    p.labels = labels;
    p.on_step = progress;
    if ((st = edd_context_create(plan, &backend, &p, &ctx, err, sizeof err)) != EDD_OK) {
        fprintf(stderr, "embed: context: %s: %s\n", edd_status_str(st), err);
        edd_plan_free(plan);
        return 1;
    }
    st = edd_context_sample(ctx, images, edd_context_output_count(ctx));
    if (st != EDD_OK) {
        fprintf(stderr, "embed: sample: %s: %s\n", edd_status_str(st), edd_context_error(ctx));
        ok = 0;
    }
    edd_context_free(ctx);
    edd_plan_free(plan);

    /* the samples should follow the data distribution of their class */
    for (k = 0; ok && k < BATCH; k++)
        for (i = 0; i < SIDE * SIDE; i++, n++) {
            int c = (int)labels[k];
            sum[c] += images[n];
            sq[c] += (double)images[n] * images[n];
            count[c]++;
        }
    for (k = 0; ok && k < 2; k++) {
        double mean = sum[k] / (double)count[k], sd = sqrt(sq[k] / (double)count[k] - mean * mean);
        printf("embed: class %lu: mean %+.3f (want %+.1f), std %.3f (want %.1f)\n", (unsigned long)k, mean, model.mu[k],
               sd, model.s);
        ok &= fabs(mean - model.mu[k]) < 0.05 && fabs(sd - model.s) < 0.05;
    }
    ok &= model.calls == STEPS;
    printf("embed: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
