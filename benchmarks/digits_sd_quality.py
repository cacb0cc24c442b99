"""Class accuracy of builtin:digits-sd under diffusers' own StableDiffusionPipeline, and of its bundles.

    .venv/bin/python benchmarks/digits_sd_quality.py [--n 200] [--steps 20] [--guidance 5 7.5] [--scheduler dpm|folder]
    .venv/bin/python benchmarks/digits_sd_quality.py --quantize w8a8 [--target host-cpu] [--guidance 1 5]

Prompts name each digit ("a handwritten 0" .. "a handwritten 9", "the digit zero", ...,
"number 0 written by hand", ...); decoded images -> gray -> 16x16 -> the committed digits
classifier (zoo/digits_sd.py quality()). Prints one line per guidance scale and the CPU.

With --quantize SCHEME it also compiles, per guidance scale, an FP32 bundle and a SCHEME bundle of
builtin:digits-sd for --target (the default sampler dpmpp-2m, --steps, the guidance as the recipe's;
W8A8 calibrated on compiler/text.py's builtin prompts, which avoid the measured caption forms),
generates the same prompts with each (the bundles' own noise, the same for both, so the FP32 and
quantized images are paired; diffusers' pipeline draws its own noise) and prints their accuracy
as a ratio against the PyTorch pipeline's in the same run, the quantized bundle's loss in points
against the FP32 bundle, the PSNR between the two bundles' images and how often they are
classified alike.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edgediff.zoo import digits_sd


def bundle_quality(bundle, prompts, labels, *, seed: int) -> tuple[dict, np.ndarray]:
    import edgediff
    from edgediff.runtimes.images import to_unit

    t0 = time.perf_counter()
    images = to_unit(edgediff.generate(bundle, prompt=list(prompts), seed=seed))  # (n, 3, H, W) -> (n, H, W, 3)
    preds = digits_sd.classify_images(images)
    return {"accuracy": float((preds == labels).mean()), "seconds": time.perf_counter() - t0, "preds": preds}, images


def compare_bundles(a, ref: dict, *, guidance: float, root: Path) -> None:
    from edgediff.compiler.capture import recipe_defaults
    from edgediff.compiler.pipeline import compile_model
    from edgediff.compiler.recipe import Recipe
    from edgediff.runtimes.quality import psnr_db

    prompts, labels = digits_sd.quality_prompts(a.n)
    out = {}
    for scheme in (None, a.quantize):
        name = scheme or "fp32"
        spacing = recipe_defaults("builtin:digits-sd")["spacing"]  # the folder's scheduler config, as compile's CLI
        recipe = Recipe(steps=a.steps, guidance=guidance, quantize=scheme, spacing=spacing)
        t0 = time.perf_counter()
        b = compile_model("builtin:digits-sd", root / f"{name}-g{guidance:g}", target=a.target, recipe=recipe)
        compile_s = time.perf_counter() - t0
        q, images = bundle_quality(b, prompts, labels, seed=a.seed)
        out[name] = (q, images, b, compile_s)
    (qf, imf, _, _), (qq, imq, _, _) = out["fp32"], out[a.quantize]
    pt = ref["accuracy"]
    for name, (q, _, b, c) in out.items():
        im = b.report["verify"]["images"]
        check = (
            (f"PSNR {im['psnr_db']:.1f} dB" if im.get("psnr_db") is not None else f"max abs {im['max_abs_error']:.1e}")
            if im.get("run")
            else "not run"
        )
        print(
            f"  bundle {name:5s} {a.target}  {b.manifest['model']['precision']:5s} accuracy {q['accuracy']:.3f}  "
            f"= {q['accuracy'] / pt:.3f} x PyTorch pipeline  ({b.report['model']['size_bytes'] / 1e6:.2f} MB "
            f"denoiser; vs diffusers at compile: {check}; compile {c:.0f} s, generate {q['seconds']:.0f} s)"
        )
    agree = float((qf["preds"] == qq["preds"]).mean())
    db = psnr_db(imq * 2 - 1, imf * 2 - 1)
    print(
        f"  {a.quantize} - fp32 bundle: {100 * (qq['accuracy'] - qf['accuracy']):+.1f} points; images PSNR "
        f"{db:.1f} dB vs the fp32 bundle's; same class on {agree:.3f} of images"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=str(digits_sd.FOLDER))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0, 5.0, 7.5])
    p.add_argument("--scheduler", choices=["dpm", "folder"], default="dpm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quantize", choices=["w8a8", "w4"], default=None, help="also compile FP32 and SCHEME bundles")
    p.add_argument("--target", default="host-cpu", help="the bundles' target (with --quantize)")
    a = p.parse_args()
    flags = ", ".join(digits_sd.cpu_flags()) or "none of avx2/avx512f/vnni"
    print(f"cpu: {digits_sd.cpu_name()} ({platform.machine()}; {flags}), threads {digits_sd.THREADS}")
    if a.quantize and a.folder != str(digits_sd.FOLDER):
        p.error("--quantize compiles builtin:digits-sd (the committed folder); drop --folder")
    if a.quantize and a.scheduler != "dpm":
        p.error("--quantize compares with the bundles' default sampler dpmpp-2m: use --scheduler dpm")
    with tempfile.TemporaryDirectory(prefix="digits-sd-bundles-") as tmp:
        for g in a.guidance:
            q = digits_sd.quality(a.folder, n=a.n, guidance=g, steps=a.steps, scheduler=a.scheduler, seed=a.seed)
            per = " ".join(f"{v:.2f}" for v in q["per_digit"])
            print(
                f"guidance {g:4.1f}  {q['scheduler']}  {q['steps']} steps  {q['images']} images  "
                f"accuracy {q['accuracy']:.3f}  per digit [{per}]  {q['seconds']:.0f} s"
            )
            if a.quantize:
                compare_bundles(a, q, guidance=g, root=Path(tmp))


if __name__ == "__main__":
    main()
