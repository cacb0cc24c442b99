/*
 * edgediff_openvino.h — an edd_backend that runs a bundle's denoiser with OpenVINO's C API.
 *
 * Optional: it is the only part of the runtime that links a library other than libm
 * (libopenvino_c, shipped by the `openvino` wheel together with its headers). The core
 * library (edgediff.h) does not depend on it.
 *
 *   edd_bundle_info (model_path, inputs) ──edd_ov_create──► edd_ov (core, compiled model, request)
 *                                                              │ edd_ov_backend()
 *                                                              ▼
 *                                     edd_backend {edd_ov_denoise, ov} ──► edd_context_create
 *
 * The model file is read with ov_core_read_model, so an ONNX bundle (model/denoiser.onnx)
 * runs directly, as does OpenVINO IR (.xml + .bin). Inputs are bound by position, as the
 * manifest lists them: 0 the sample (float32, batch first), 1 the timestep (float32, one per
 * row), 2 the condition if any (int64 labels for "class", float32 zeros for "embedding",
 * edd_denoise_args.cond for "text"). Output 0 is the model output, written straight into
 * the runtime's buffer (no copy).
 *
 * Signature check: before compiling, each graph's inputs and outputs are compared with
 * manifest.json model.inputs / model.outputs by position: the name, the element type (dtype)
 * and every fixed size (a dimension dynamic on either side, such as "batch", matches any).
 * A mismatch is EDD_ERR_BAD_BUNDLE with a message naming the tensor ("DIR/model/denoiser.onnx:
 * input 'sample' has shape [?,1,8,8] in the model, manifest.json model.inputs[0].shape says
 * [?,1,16,16]"), instead of a shape error at the first step.
 *
 * Timestep groups: for a bundle with scheduler.json timestep_groups (info->num_groups > 0) one
 * graph is read and compiled per group file (ONNX files whose int8 weights sit in the shared
 * weights file as external data; OpenVINO reads that file once per group, so the weights are
 * held once per group in memory), and each call runs the graph of edd_denoise_args.group.
 * edd_denoise_args.cached is ignored: this backend keeps no feature cache and runs the full
 * model at every step.
 *
 * One edd_ov per thread: its infer requests are not shared. Every edd_ov and edd_ov_text of the
 * process shares one ov_core_t (created by the first, freed with the last, under a mutex on
 * POSIX), so backends may be created and freed in any order: one core per backend, freed first
 * in first out, left the thread on a signal stack OpenVINO's CPU plugin had freed (a crash at
 * the next signal handled on the alternate stack). Errors: every call returns an
 * edd_status; the create function fills err, and edd_ov_error() gives the text of the last
 * failed denoise (OpenVINO's own message included).
 */
#ifndef EDGEDIFF_OPENVINO_H
#define EDGEDIFF_OPENVINO_H

#include "edgediff.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct edd_ov edd_ov; /* opaque */

typedef struct edd_ov_params {
    const char *device;           /* OpenVINO device name (default "CPU") */
    const char *precision;        /* INFERENCE_PRECISION_HINT, e.g. "f32" (exact), "bf16"; NULL = the
                                     device's default (bf16 on CPUs with AMX / AVX-512 BF16) (default "f32") */
    int threads;                  /* INFERENCE_NUM_THREADS; 0 = OpenVINO's choice (default 0) */
    const char *performance_mode; /* PERFORMANCE_HINT: "LATENCY" or "THROUGHPUT"; NULL = default
                                     (default "LATENCY") */
    size_t static_batch;          /* > 0: reshape the model to this many rows per call before compiling
                                     (faster on CPU; every call must then have exactly this many rows);
                                     0 = keep the model's dynamic batch (default 0) */
} edd_ov_params;

edd_ov_params edd_ov_default_params(void);

/* Read info->model_path (or, with timestep groups, every info->group_paths[g]), check each
 * against the manifest's signature, compile it for params->device, create its infer request. */
edd_status edd_ov_create(const edd_bundle_info *info, const edd_ov_params *params, edd_ov **out, char *err,
                         size_t err_size);
void edd_ov_free(edd_ov *ov); /* NULL is a no-op */

/* Graphs compiled: info->num_groups, or 1 without groups. */
size_t edd_ov_num_graphs(const edd_ov *ov);

/* The backend table for edd_context_create: {edd_ov_denoise, ov}. */
edd_backend edd_ov_backend(edd_ov *ov);

/* The edd_denoise_fn (user = the edd_ov): returns 0, or non-zero with edd_ov_error() set. */
int edd_ov_denoise(void *user, const edd_denoise_args *args);

/* What stopped the last failed edd_ov_denoise; "" if none. */
const char *edd_ov_error(const edd_ov *ov);

/* The OpenVINO build string (e.g. "2026.4.1-...") into buf. */
void edd_ov_version(char *buf, size_t size);

/* ---- a text-to-image bundle: the three graphs for edd_pipeline_create ----
 *
 * edd_ov_text reads nothing at create: load(component) reads the graph (ONNX or IR), checks it
 * against its manifest entry (model, components.text_encoder, components.vae_decoder: names,
 * element types, fixed sizes, as above) and compiles it; unload frees it (the model, the compiled
 * model and the infer request), so with edd_text_params.low_memory one graph is resident at a
 * time. The denoiser is an edd_ov (params.static_batch applies to it only; the text encoder and
 * decoder keep their dynamic batch and run each call's rows); it binds args->cond as the float
 * input 2 {rows, L, width}. The components take input_ids int64 [rows, L] -> [rows, L, width] and
 * latents float [rows, C, h, w] -> [rows, 3, H, W]. info must outlive the backend (its strings
 * point into the bundle). */
typedef struct edd_ov_text edd_ov_text;

edd_status edd_ov_text_create(const edd_bundle_info *info, const edd_ov_params *params, edd_ov_text **out, char *err,
                              size_t err_size);
void edd_ov_text_free(edd_ov_text *t); /* NULL is a no-op; frees whatever is loaded */

/* {denoise, run, load, unload, error, t} for edd_pipeline_create */
edd_pipeline_backend edd_ov_text_backend(edd_ov_text *t);

/* What stopped the last failed call (load, run or denoise); "" if none. */
const char *edd_ov_text_error(const edd_ov_text *t);

#ifdef __cplusplus
}
#endif

#endif /* EDGEDIFF_OPENVINO_H */
