"""`edgediff eval`: a bundle's fidelity against its own FP32 PyTorch reference.

    bundle ──run (same seeds)──> images ─┬─ PSNR / SSIM vs reference images
       │  every denoiser call ──> relative error vs PyTorch on the same input (trajectory)
    source (FP32 PyTorch) ──run──> reference images
    digits classifier: FD-digits vs the real held-out split, class accuracy (both runs)

FD-digits and class accuracy need the committed digits classifier, so they are reported
for models that generate 1x16x16 digits with 10 classes; other models get null there.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from edgediff.compiler.capture import load_source
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import torch_denoiser
from edgediff.distill.distill import bind_guidance
from edgediff.runtimes import quality
from edgediff.runtimes.bundle import Bundle
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels, generate
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
        feats, pred = self._run(images)
        fd = quality.frechet_distance(quality.gaussian_stats(feats), self.real_stats)
        acc = float((pred == labels).mean()) if labels is not None else None
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
