"""The compile stages' extra work for a text-to-image pipeline (ModelSpec.text).

check_recipe         before any work: what is not done yet for text bundles is refused by name
calibration_inputs   --quantize w8a8: the prompts (--calib-prompts FILE, else a builtin list) the
                     calibrate stage records the deployment trajectory with, embedded by the
                     pipeline's own text encoder, the negative prompt "" as the CFG half
lower_components     model/text_encoder.* and model/vae_decoder.* (lower/components.py),
                     the tokenizer's files copied to tokenizer/
verify_components    each graph against its PyTorch module (as verify.py does for the denoiser)
verify_images        the whole image: the graphs, the tokenizer and the bundle's sampler loop
                     against diffusers' StableDiffusionPipeline with the same prompts, negative
                     prompt "", steps, guidance, initial latents and a matching scheduler (float:
                     max abs error; a quantized denoiser: PSNR against a floor, QUANTIZED_PSNR)
scheduler_entries    scheduler.json "conditioning" and "latent"
manifest_components  manifest.json "components"
"""

from __future__ import annotations

import inspect
import shutil

import numpy as np
import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec
from edgediff.lower.components import FORMATS, components, lower_component
from edgediff.lower.registry import check_weights
from edgediff.quantize.calibration.prompts import GENERIC_PROMPTS, read_prompt_file
from edgediff.runtimes.backends import Graph, load_tokenizer, model_signature, tokenize
from edgediff.runtimes.images import to_unit
from edgediff.runtimes.quality import psnr_db
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.runner import SamplingSetup, TextPipeline, generate_text
from edgediff.runtimes.samplers import get_solver
from edgediff.runtimes.steps import StepTable

PRECISIONS = ("fp32", "fp16")
# Normalised max error per component (as verify.BOUNDS) and max abs error of whole images in [0, 1].
BOUNDS = {"fp32": 1e-4, "fp16": 2e-2}
IMAGE_BOUNDS = {"fp32": 1e-3, "fp16": 5e-2}
# A quantized denoiser's images are not the fp32 pipeline's to 1e-3: each step's int8 error moves the
# trajectory. The whole-image check records PSNR (dB, images in [0, 1]) and max abs error against
# diffusers' fp32 pipeline and refuses below this floor, which catches a broken graph (noise or a
# constant image reads under 10 dB), not a small loss; the benchmark measures the loss.
QUANTIZED_PSNR = {"w8a8": 15.0, "w4": 15.0}
CHECK_PROMPTS = ("a handwritten 7", "the digit one in thick strokes")
# the bundle's sampler -> diffusers' scheduler class it equals (tests/test_samplers.py checks each)
DIFFUSERS_SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpmpp-2m": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "lcm": "LCMScheduler",
}
_TIMESTEP_FIELDS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "steps_offset",
    "set_alpha_to_one",
    "clip_sample",
    "clip_sample_range",
)


def check_recipe(model: ModelSpec, recipe, profile) -> None:
    """What a text-to-image compile cannot do, refused by name before any work. --quantize w8a8 / w4
    quantize the denoiser (the text encoder and VAE decoder stay float); the routes per format are
    compiler/routes.py's, checked at the plan stage as for any source."""
    if recipe.quantize is None and recipe.precision is not None and recipe.precision not in PRECISIONS:
        raise EdgediffError(
            f"--precision {recipe.precision}: not yet for text-to-image pipelines; compile fp32/fp16, "
            "or --quantize w8a8 / w4 for the denoiser"
        )
    if profile.format not in FORMATS:
        raise EdgediffError(
            f"target {profile.name}: format {profile.format} is not yet done for text-to-image pipelines; "
            f"compile for a target of format {' or '.join(FORMATS)} (e.g. host-cpu)"
        )
    # --weights (Core ML's weight compressions) names the formats that carry it, as for any source
    check_weights(profile.format, recipe.weights, profile.name)
    if model.student is not None:
        raise EdgediffError(f"{model.source}: a distilled student of a text-to-image pipeline is not supported yet")
    if recipe.calib_prompts is not None:
        read_prompt_file(recipe.calib_prompts)  # a bad file stops here, before any work


# builtin:digits-sd's calibration prompts: each digit in the caption forms it was trained on, apart
# from the forms benchmarks/digits_sd_quality.py measures with (zoo.digits_sd.QUALITY_TEMPLATES), so
# the measured accuracy is not on the calibration prompts; digit-major within each form, so any
# first 10k prompts name every digit k times.
def digits_sd_prompts() -> list[str]:
    from edgediff.zoo import digits_sd as d

    forms = [t for t in d.TEMPLATES if t not in d.QUALITY_TEMPLATES]
    forms += [t.replace("{s}", s) for s in ("thick", "thin") for t in d.STYLED]
    return [f.format(n=k, w=d.WORDS[k]) for f in forms for k in range(10)]


def calibration_prompts(model: ModelSpec, recipe) -> tuple[list[str], str]:
    """(prompts, where they come from): --calib-prompts FILE, else the source's builtin list."""
    if recipe.calib_prompts is not None:
        return read_prompt_file(recipe.calib_prompts), recipe.calib_prompts
    if model.source == "builtin:digits-sd":
        return digits_sd_prompts(), "builtin: each digit in the training caption forms (compiler/text.py)"
    return list(GENERIC_PROMPTS), "builtin: generic captions (quantize/calibration/prompts.py)"


def calibration_inputs(s, plan_options: dict) -> tuple[dict, dict]:
    """record_trajectories' text arguments for the calibrate stage, and what the record says of them."""
    prompts, origin = calibration_prompts(s.model, s.recipe)
    truncated = []
    kwargs = {
        "prompts": prompts,
        "negative_prompt": "",
        "warn": truncated.append,
        "plan_options": plan_options,
    }
    record = {"prompts": origin, "num_prompts": len(prompts), "negative_prompt": "", "truncated": truncated}
    return kwargs, record


def lower_components(s, *, precision: str) -> dict:
    """The text encoder and VAE decoder at `precision` (the denoiser's); beside a quantized denoiser
    (whose route writes fp32 before its pass) they stay float: --precision if given, else the
    target's first float precision (fp16 on an fp16 NPU profile)."""
    if s.recipe.quantize is not None:
        asked = s.recipe.precision if s.recipe.precision in PRECISIONS else None
        precision = asked or next((p for p in s.target.precisions if p in PRECISIONS), "fp32")
    if precision not in PRECISIONS:
        raise EdgediffError(f"precision {precision}: not yet for text-to-image pipelines; compile fp32/fp16")
    static = 1 if (s.target.static_shapes) else None
    s.components = {}
    s.component_precision = precision
    record = {}
    calib = component_inputs(s.model, load_tokenizer(s.model.text.tokenizer_dir), seed=99, rows=8)
    for c in components(s.model):
        low = lower_component(
            c,
            s.work / "model",
            fmt=s.target.format,
            precision=precision,
            source=s.model.source,
            static_batch=static,
            calib=calib[c.name],  # fp16: which nodes overflow (lower/components.py)
            bound=BOUNDS[precision],
        )
        s.components[c.name] = low
        record[c.name] = {"file": low.file.relative_to(s.work).as_posix(), "precision": precision, **low.record}
    t = s.model.text
    tok = s.work / "tokenizer"
    tok.mkdir()
    for name in t.tokenizer_files:
        shutil.copyfile(t.tokenizer_dir / name, tok / name)
    load_tokenizer(tok)  # the copied files load as the runtime will load them
    record["tokenizer"] = {"folder": "tokenizer", "files": list(t.tokenizer_files)}
    return record


def _max_rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def component_inputs(model: ModelSpec, tokenizer, *, seed: int, rows: int) -> dict[str, np.ndarray]:
    """Inputs of each component: the check prompts and "" (tokenized), and `rows` random latents
    of scale 4 (wider than the sampler's ~1: a decoder that overflows on them is caught)."""
    t = model.text
    ids = tokenize(tokenizer, [*CHECK_PROMPTS, ""], t.max_length)
    g = torch.Generator().manual_seed(seed)
    latents = (torch.randn((rows, *t.latent_shape), generator=g) * 4).numpy()
    return {"text_encoder": ids, "vae_decoder": latents}


def verify_components(s) -> dict:
    precision = s.component_precision
    inputs = component_inputs(s.model, load_tokenizer(s.work / "tokenizer"), seed=1234, rows=3)
    modules = {"text_encoder": s.model.text.text_encoder, "vae_decoder": s.model.text.vae_decoder}
    out = {}
    for name, low in s.components.items():
        graph = Graph(low.file, s.target.format)
        with torch.inference_mode():
            ref = modules[name](torch.from_numpy(inputs[name])).numpy()
        got = graph(inputs[name])
        if got.shape != ref.shape:
            raise EdgediffError(f"{graph.label}: {name} output shape {got.shape} differs from PyTorch {ref.shape}")
        err = _max_rel(got, ref)
        if not np.isfinite(err) or err > BOUNDS[precision]:
            raise EdgediffError(
                f"{graph.label}: {name} differs from PyTorch: normalised max error {err:.3g} > bound "
                f"{BOUNDS[precision]:g} ({precision}); nothing written"
            )
        out[name] = {"runtime": graph.label, "bound": BOUNDS[precision], "max_rel_error": err}
    return out


def reference_scheduler(model: ModelSpec, recipe):
    """diffusers' scheduler equal to the recipe's sampler over the pipeline's scheduler config."""
    import diffusers

    cfg = model.text.scheduler_config
    kw = {k: cfg[k] for k in _TIMESTEP_FIELDS if k in cfg}
    kw["timestep_spacing"] = recipe.spacing
    cls = getattr(diffusers, DIFFUSERS_SCHEDULERS[recipe.sampler])
    takes = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kw.items() if k in takes})


def reference_images(
    model: ModelSpec, recipe, prompts, latents: np.ndarray, *, guidance: float, negative_prompt: str = ""
) -> np.ndarray:
    """diffusers' StableDiffusionPipeline over the source's PyTorch modules: float32 (N, H, W, 3) in [0, 1]."""
    import diffusers

    t = model.text
    pipe = diffusers.StableDiffusionPipeline(
        vae=t.vae_decoder.vae,
        text_encoder=t.text_encoder.model,
        tokenizer=load_tokenizer(t.tokenizer_dir),
        unet=model.module.model,
        scheduler=reference_scheduler(model, recipe),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        out = pipe(
            list(prompts),
            negative_prompt=[negative_prompt] * len(prompts),
            num_inference_steps=recipe.steps,
            guidance_scale=guidance,
            latents=torch.from_numpy(latents),
            height=t.image_shape[1],
            width=t.image_shape[2],
            output_type="np",
        )
    return np.asarray(out.images, np.float32)


def verify_images(s, denoise, groups: dict | None = None) -> dict:
    """`denoise`: the bundle's denoiser as the verify stage opened it (its timestep groups, `groups`)."""
    r, plan = s.recipe, s.plan
    solver = get_solver(r.sampler)
    record = {"against": "diffusers StableDiffusionPipeline (PyTorch fp32)", "prompts": list(CHECK_PROMPTS)}
    if any(solver.uses_noise(plan, i) for i in range(len(plan.model_timesteps))):
        return record | {"run": False, "why": f"sampler {r.sampler} draws noise in its steps; diffusers draws its own"}
    if r.guidance != 1.0 and r.guidance <= 1.0:
        return record | {"run": False, "why": f"diffusers' pipeline applies no guidance at scale {r.guidance:g} <= 1"}
    t = s.model.text
    latents = NoiseSource(seed=0, streams=tuple(range(len(CHECK_PROMPTS)))).draw(0, t.latent_shape)
    ref = reference_images(s.model, r, CHECK_PROMPTS, latents, guidance=r.guidance)
    fmt = s.target.format
    pipe = TextPipeline(
        tokenizer=load_tokenizer(s.work / "tokenizer"),
        max_length=t.max_length,
        encode=Graph(s.components["text_encoder"].file, fmt),
        denoise=denoise,
        decode=Graph(s.components["vae_decoder"].file, fmt),
    )
    steps = StepTable.from_scheduler({"timestep_groups": groups}, len(plan.model_timesteps))
    setup = SamplingSetup(
        plan=plan,
        guidance=r.guidance,
        conditioning=s.model.conditioning.to_dict(),
        sample_shape=t.latent_shape,
        steps=steps,
    )
    ours = to_unit(generate_text(pipe, setup, prompts=list(CHECK_PROMPTS), seed=0, loop="c"))
    err = float(np.abs(ours - ref).max())
    if r.quantize is not None:  # int8 / int4 denoiser: a PSNR floor, not the float bound (QUANTIZED_PSNR)
        floor = QUANTIZED_PSNR[r.quantize]
        db = psnr_db(ours * 2 - 1, ref * 2 - 1)  # psnr_db maps [-1, 1] to [0, 1]
        if not np.isfinite(err) or not db >= floor:
            raise EdgediffError(
                f"the bundle's images ({r.quantize} denoiser) differ from diffusers' fp32 StableDiffusionPipeline: "
                f"PSNR {db:.1f} dB < floor {floor:g} dB (max abs error {err:.3g} on [0, 1]); nothing written"
            )
        quantized = {"psnr_db": db, "psnr_floor_db": floor, "bound": None}
    else:
        bound = IMAGE_BOUNDS[s.precision]
        if not np.isfinite(err) or err > bound:
            raise EdgediffError(
                f"the bundle's images differ from diffusers' StableDiffusionPipeline: max abs error {err:.3g} on "
                f"[0, 1] > bound {bound:g} ({s.precision}); nothing written"
            )
        quantized = {"bound": bound}
    return record | {
        "run": True,
        "scheduler": DIFFUSERS_SCHEDULERS[r.sampler],
        "steps": r.steps,
        "guidance": r.guidance,
        "negative_prompt": "",
        "latents": "noise streams 0..1 of seed 0, call 0 (x_T)",
        "denoiser": r.quantize or s.precision,
        **quantized,
        "max_abs_error": err,
    }


def scheduler_entries(model: ModelSpec) -> dict:
    t = model.text
    return {
        "conditioning": "text",
        "latent": {
            "shape": list(t.latent_shape),
            "scaling_factor": t.scaling_factor,
            "image_shape": list(t.image_shape),
        },
    }


def manifest_components(s) -> dict:
    out = {}
    for name, low in s.components.items():
        out[name] = {
            "file": low.file.relative_to(s.work).as_posix(),
            "format": s.target.format,
            "precision": s.component_precision,
            "runtime": low.runtime,
            **model_signature(low.file, s.target.format),
        }
    t = s.model.text
    out["tokenizer"] = {
        "kind": "CLIPTokenizer",
        "folder": "tokenizer",
        "files": [f"tokenizer/{n}" for n in t.tokenizer_files],
        "max_length": t.max_length,
    }
    return out
