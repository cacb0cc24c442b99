"""The compile stages' extra work for a text-to-image pipeline (ModelSpec.text).

check_recipe         before any work: what is not done yet for text bundles is refused by name
lower_components     model/text_encoder.* and model/vae_decoder.* (lower/components.py),
                     the tokenizer's files copied to tokenizer/
verify_components    each graph against its PyTorch module (as verify.py does for the denoiser)
verify_images        the whole image: the graphs, the tokenizer and the bundle's sampler loop
                     against diffusers' StableDiffusionPipeline with the same prompts, negative
                     prompt "", steps, guidance, initial latents and a matching scheduler
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
from edgediff.runtimes.backends import Graph, load_tokenizer, model_signature, open_denoiser, tokenize
from edgediff.runtimes.images import to_unit
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.runner import SamplingSetup, TextPipeline, generate_text
from edgediff.runtimes.samplers import get_solver

PRECISIONS = ("fp32", "fp16")
# Normalised max error per component (as verify.BOUNDS) and max abs error of whole images in [0, 1].
BOUNDS = {"fp32": 1e-4, "fp16": 2e-2}
IMAGE_BOUNDS = {"fp32": 1e-3, "fp16": 5e-2}
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
    why = "not yet for text-to-image pipelines; compile fp32/fp16"
    if recipe.quantize is not None:
        raise EdgediffError(f"--quantize {recipe.quantize}: {why}")
    if recipe.weights is not None:
        raise EdgediffError(f"--weights {recipe.weights}: {why}")
    if recipe.calib is not None:
        raise EdgediffError(f"--calib {recipe.calib}: {why}")
    if recipe.precision is not None and recipe.precision not in PRECISIONS:
        raise EdgediffError(f"--precision {recipe.precision}: {why}")
    if profile.format not in FORMATS:
        raise EdgediffError(
            f"target {profile.name}: format {profile.format} is not yet done for text-to-image pipelines; "
            f"compile for a target of format {' or '.join(FORMATS)} (e.g. host-cpu)"
        )
    if model.student is not None:
        raise EdgediffError(f"{model.source}: a distilled student of a text-to-image pipeline is not supported yet")


def lower_components(s, *, precision: str) -> dict:
    if precision not in PRECISIONS:
        raise EdgediffError(f"precision {precision}: not yet for text-to-image pipelines; compile fp32/fp16")
    static = 1 if (s.target.static_shapes) else None
    s.components = {}
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
    precision = s.precision
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


def verify_images(s) -> dict:
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
        denoise=open_denoiser(s.model_file, fmt),
        decode=Graph(s.components["vae_decoder"].file, fmt),
    )
    setup = SamplingSetup(
        plan=plan, guidance=r.guidance, conditioning=s.model.conditioning.to_dict(), sample_shape=t.latent_shape
    )
    ours = to_unit(generate_text(pipe, setup, prompts=list(CHECK_PROMPTS), seed=0, loop="c"))
    err = float(np.abs(ours - ref).max())
    bound = IMAGE_BOUNDS[s.precision]
    if not np.isfinite(err) or err > bound:
        raise EdgediffError(
            f"the bundle's images differ from diffusers' StableDiffusionPipeline: max abs error {err:.3g} on "
            f"[0, 1] > bound {bound:g} ({s.precision}); nothing written"
        )
    return record | {
        "run": True,
        "scheduler": DIFFUSERS_SCHEDULERS[r.sampler],
        "steps": r.steps,
        "guidance": r.guidance,
        "negative_prompt": "",
        "latents": "noise streams 0..1 of seed 0, call 0 (x_T)",
        "bound": bound,
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
            "precision": s.precision,
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
