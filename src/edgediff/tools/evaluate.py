"""`edgediff eval`: a bundle's fidelity against its own FP32 PyTorch reference.

    bundle ──run (same seeds)──> images ─┬─ PSNR / SSIM vs reference images
       │  every denoiser call ──> relative error vs PyTorch on the same input (trajectory)
    source (FP32 PyTorch) ──run──> reference images
    digits classifier: FD-digits vs the real held-out split, class accuracy (both runs)

FD-digits and class accuracy need the committed digits classifier, so they are reported
for models that generate 1x16x16 digits with 10 classes; other models get null there.

Text-to-image bundles (evaluate_text): one image per prompt, the bundle's graphs, tokenizer and
C sampling loop against diffusers' StableDiffusionPipeline over the source's PyTorch modules with
the same prompts, negative prompt, steps, guidance and initial latents (image k: noise stream k of
the seed, call 0). Samplers that draw noise inside their steps, and scales in (0, 1) (where
diffusers applies no guidance), are compared with the runtime's Python loop over the same PyTorch
modules and the same noise instead; `reference.runtime` says which. For builtin:digits-sd also
class accuracy (over the prompts naming one digit) and FD-digits, both on the classifier's input
(gray, 16x16: zoo/digits_sd.classifier_input).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from edgediff.compiler.capture import load_source
from edgediff.compiler.recipe import Recipe
from edgediff.compiler.text import reference_images
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec, torch_denoiser
from edgediff.distill.distill import bind_guidance
from edgediff.runtimes import quality
from edgediff.runtimes.backends import load_tokenizer
from edgediff.runtimes.bundle import Bundle
from edgediff.runtimes.images import to_unit
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.runner import (
    SamplingSetup,
    TextPipeline,
    bundle_denoiser,
    default_labels,
    generate,
    generate_text,
    text_pipeline,
)
from edgediff.runtimes.samplers import get_solver
from edgediff.training.data import digits_splits
from edgediff.zoo.builtin import load_classifier


class DigitsJudge:
    """The committed digits classifier and the real held-out digits' feature statistics."""

    def __init__(self):

        self.net = load_classifier()
        real, _ = digits_splits()["heldout"]
        self.real_stats = quality.gaussian_stats(self.features(real))

    @torch.inference_mode()
    def _run(self, images: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
        return self.net.features(x).numpy(), self.net(x).argmax(1).numpy()

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._run(images)[0]

    def score(self, images: np.ndarray, labels: np.ndarray | None) -> dict:
        """FD-digits over all images; class accuracy over those whose label is >= 0 (None if none is)."""
        feats, pred = self._run(images)
        fd = quality.frechet_distance(quality.gaussian_stats(feats), self.real_stats)
        known = None if labels is None else np.asarray(labels) >= 0
        acc = float((pred[known] == labels[known]).mean()) if known is not None and known.any() else None
        return {"fd_digits": fd, "class_accuracy": acc}

    @staticmethod
    def applies(setup: SamplingSetup) -> bool:
        c = setup.conditioning
        return tuple(setup.sample_shape) == (1, 16, 16) and c["kind"] == "class" and c["num_classes"] == 10


def evaluate(
    bundle: Bundle, *, num_samples: int = 500, seed: int = 0, batch_size: int = 250, progress=None
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Returns (figures for JSON, bundle images, reference images)."""
    setup = SamplingSetup.from_bundle(bundle)
    src = bundle.manifest["source"]
    model = load_source(src["spec"])
    if src.get("sha256") and model.source_sha256 != src["sha256"]:
        raise EdgediffError(
            f"source {src['spec']}: its weights changed since the bundle was compiled "
            "(sha256 differs from manifest.json source.sha256); the reference would not match"
        )
    distilled = bundle.scheduler.get("distilled") or {}
    if distilled.get("guidance") is not None:  # a guidance-distilled student: w as compiled
        model = bind_guidance(model, distilled["guidance"])
    reference = torch_denoiser(model)
    labels = default_labels(setup, num_samples)

    errors: dict[float, list[float]] = defaultdict(list)

    def on_call(x, t, cond, eps):
        ref = reference(x, t, cond)
        errors[float(t[0])].append(quality.relative_error(eps, ref))

    images = generate(
        bundle_denoiser(bundle),
        setup,
        n=num_samples,
        seed=seed,
        labels=labels,
        batch_size=batch_size,
        progress=progress,
        on_call=on_call,
    )
    ref_images = generate(
        reference, setup, n=num_samples, seed=seed, labels=labels, batch_size=batch_size, progress=progress
    )

    per_step = [float(np.mean(errors[float(t)])) for t in setup.plan.model_timesteps if float(t) in errors]
    psnr = quality.psnr_db(images, ref_images)
    common = {
        "num_samples": num_samples,
        "seed": seed,
        "sampler": setup.plan.solver,
        "steps": len(setup.plan.timesteps),
        "guidance": setup.guidance,
    }
    result = {
        "bundle": str(bundle.root),
        "precision": bundle.manifest["model"].get("precision"),
        **common,
        "psnr_db": psnr if np.isfinite(psnr) else None,
        "ssim": quality.ssim(images, ref_images),
        "trajectory_rel_error": {
            "mean": float(np.mean(per_step)),
            "max": float(np.max(per_step)),
            "per_step": per_step,
        },
        "fd_digits": None,
        "class_accuracy": None,
    }
    ref_result = {
        "runtime": "pytorch-fp32",
        **common,
        "psnr_db": None,
        "ssim": 1.0,
        "fd_digits": None,
        "class_accuracy": None,
    }
    if DigitsJudge.applies(setup):
        judge = DigitsJudge()
        result.update(judge.score(images, labels))
        ref_result.update(judge.score(ref_images, labels))
    result["reference"] = ref_result
    result["notes"] = (
        "psnr_db/ssim compare with the FP32 PyTorch reference run on identical noise; "
        "the reference's own psnr_db is null (identical images)."
    )
    return result, images, ref_images


# ---- text-to-image bundles -------------------------------------------------------------------------

DIGITS_SD = "builtin:digits-sd"


def _source(bundle: Bundle) -> ModelSpec:
    src = bundle.manifest["source"]
    model = load_source(src["spec"])
    if src.get("sha256") and model.source_sha256 != src["sha256"]:
        raise EdgediffError(
            f"source {src['spec']}: its weights changed since the bundle was compiled "
            "(sha256 differs from manifest.json source.sha256); the reference would not match"
        )
    return model


def torch_text_pipeline(model: ModelSpec) -> TextPipeline:
    """The runtime's TextPipeline over the source's PyTorch modules (fp32)."""

    def run(module):
        def f(x):
            with torch.inference_mode():
                return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

        return f

    t = model.text
    return TextPipeline(
        load_tokenizer(t.tokenizer_dir), t.max_length, run(t.text_encoder), torch_denoiser(model), run(t.vae_decoder)
    )


def _diffusers_applies(setup: SamplingSetup, guidance: float) -> str | None:
    """None when diffusers' StableDiffusionPipeline computes what the bundle does; else why not."""
    plan = setup.plan
    solver = get_solver(plan.solver)
    if any(solver.uses_noise(plan, i) for i in range(len(plan.model_timesteps))):
        return f"sampler {plan.solver} draws noise in its steps; diffusers draws its own"
    if guidance != 1.0 and guidance <= 1.0:
        return f"diffusers' pipeline applies no guidance at scale {guidance:g} <= 1"
    return None


def _reference_text(
    model, bundle, setup, prompts, *, negative_prompt, guidance, seed, batch_size, progress
) -> tuple[np.ndarray, dict]:
    """(N, 3, H, W) in [-1, 1] from the FP32 PyTorch pipeline, and what produced it."""
    why = _diffusers_applies(setup, guidance)
    if why is not None:
        images = generate_text(
            torch_text_pipeline(model),
            setup,
            prompts=prompts,
            negative_prompt=negative_prompt,
            guidance=guidance,
            seed=seed,
            loop="python",
            batch_size=batch_size,
            progress=progress,
        )
        return images, {"runtime": "edgediff Python loop over the source's PyTorch modules (fp32)", "why": why}
    r = bundle.manifest["recipe"]
    recipe = Recipe(sampler=r["sampler"], steps=r["steps"], spacing=r["spacing"], guidance=guidance)
    shape = tuple(setup.sample_shape)
    out = []
    for start in range(0, len(prompts), batch_size):
        stop = min(len(prompts), start + batch_size)
        latents = NoiseSource(seed=seed, streams=tuple(range(start, stop))).draw(0, shape)
        unit = reference_images(
            model, recipe, prompts[start:stop], latents, guidance=guidance, negative_prompt=negative_prompt
        )
        out.append(unit.transpose(0, 3, 1, 2) * 2 - 1)
        if progress:
            progress((stop - start) * len(setup.plan.timesteps))
    return np.concatenate(out).astype(np.float32), {"runtime": "diffusers StableDiffusionPipeline (PyTorch fp32)"}


def evaluate_text(
    bundle: Bundle,
    prompts: list[str],
    *,
    negative_prompt: str = "",
    guidance: float | None = None,
    seed: int = 0,
    batch_size: int = 50,
    progress=None,
) -> tuple[dict, np.ndarray, np.ndarray]:
    """A text-to-image bundle against the FP32 PyTorch pipeline, one image per prompt.
    Returns (figures for JSON, bundle images, reference images), images (N, 3, H, W) in [-1, 1]."""
    if bundle.conditioning.get("kind") != "text":
        raise EdgediffError(f"{bundle.root}: --prompts is for text-to-image bundles; this one is not")
    if not prompts:
        raise EdgediffError("prompts: none given (one image per prompt)")
    setup = SamplingSetup.from_bundle(bundle)
    g = setup.guidance if guidance is None else guidance
    model = _source(bundle)
    images = generate_text(
        text_pipeline(bundle),
        setup,
        prompts=prompts,
        negative_prompt=negative_prompt,
        guidance=g,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    ref_images, ref_info = _reference_text(
        model,
        bundle,
        setup,
        prompts,
        negative_prompt=negative_prompt,
        guidance=g,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    psnr = quality.psnr_db(images, ref_images)
    common = {
        "num_samples": len(prompts),
        "seed": seed,
        "sampler": setup.plan.solver,
        "steps": len(setup.plan.timesteps),
        "guidance": g,
        "negative_prompt": negative_prompt,
    }
    result = {
        "bundle": str(bundle.root),
        "precision": bundle.manifest["model"].get("precision"),
        "conditioning": "text",
        **common,
        "psnr_db": psnr if np.isfinite(psnr) else None,
        "ssim": quality.ssim(images, ref_images),
        "max_abs_error": float(np.abs(to_unit(images) - to_unit(ref_images)).max()),
        "fd_digits": None,
        "class_accuracy": None,
    }
    ref_result = {**ref_info, **common, "psnr_db": None, "ssim": 1.0, "fd_digits": None, "class_accuracy": None}
    if bundle.manifest["source"]["spec"] == DIGITS_SD:
        from edgediff.zoo.digits_sd import classifier_input, digit_named

        labels = np.array([-1 if (d := digit_named(p)) is None else d for p in prompts], np.int64)
        judge = DigitsJudge()
        result.update(judge.score(classifier_input(to_unit(images)), labels))
        ref_result.update(judge.score(classifier_input(to_unit(ref_images)), labels))
        result["labeled_prompts"] = int((labels >= 0).sum())
    result["reference"] = ref_result
    result["notes"] = (
        "psnr_db/ssim/max_abs_error (images in [0, 1]) compare with the FP32 PyTorch pipeline run on the same "
        "prompts, negative prompt, guidance and initial latents (image k: noise stream k of the seed)"
        + (
            "; class_accuracy counts the prompts naming exactly one digit (labeled_prompts), FD-digits all images"
            if result.get("labeled_prompts") is not None
            else ""
        )
        + "."
    )
    return result, images, ref_images
