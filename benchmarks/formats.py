"""Every format x precision that runs on this host, side by side (the README's formats table).

    python benchmarks/formats.py [--models digits,cifar-arch] [--images 16] [--json out/formats.json]

For each builtin model, the lowerings of src/edgediff/lower/registry.py are called directly (not through a
target profile, so that every precision a format writes is measured) and each result is:
  ms/step    median wall time of one denoiser call at batch 2 (one image with classifier-free
             guidance = one sampler step), after warm-up, default threads (this host: 2 cores)
  size       bytes on disk of the model file(s)
  max err    normalised max error vs PyTorch fp32 over 8 timesteps (src/edgediff/compiler/verify.py)
  PSNR       of final images (dpmpp-2m, 20 steps, guidance 3, same seeds) vs the PyTorch fp32
             images; digits only (cifar-arch has random weights, its images are noise)
OpenVINO runs the CPU plugin with INFERENCE_PRECISION_HINT f32 (verification setting) and,
as one more row, bf16 (the plugin's own default on CPUs with AVX-512 BF16 / AMX).
Core ML is converted and sized only: it runs on macOS. Figures are noisy on a shared machine:
read ratios within one run.

The quantize pass's W8A8 rows ("w8a8") are whole compiles (compile_model, --quantize w8a8,
dpmpp-2m 20 steps, guidance 3 where the model is class-conditional) for one target per format:
host-cpu (ONNX, weight range chosen from this CPU's features), intel-core-ultra-npu (OpenVINO
FakeQuantize IR) and pixel-8 (TFLite static int8); every one is calibrated on the same recorded
trajectories (--calib-samples trajectories, recorded once per model). A compile the verifier
refuses (cifar-arch's random weights may miss the int8 bound) is listed as "not built: <reason>".
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgediff.compiler.capture import load_source
from edgediff.compiler.verify import verify
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import torch_denoiser
from edgediff.lower.onnx import export_onnx
from edgediff.lower.registry import LOWERINGS, static_batch_for
from edgediff.runtimes.backends import BACKENDS, FixedBatch, OpenVINODenoiser, open_denoiser
from edgediff.runtimes.bundle import size_bytes
from edgediff.runtimes.quality import psnr_db
from edgediff.runtimes.runner import SamplingSetup, generate
from edgediff.runtimes.samplers import get_solver

ROWS = [
    ("onnx", "fp32"),
    ("onnx", "fp16"),
    ("openvino", "fp32"),
    ("openvino", "fp16"),
    ("tflite", "fp32"),
    ("tflite", "fp16"),
    ("tflite", "int8"),
    ("coreml", "fp16"),
    ("coreml", "int8"),
]
# The quantize pass's W8A8, compiled for one target per format.
W8A8_TARGETS = [("onnx", "host-cpu"), ("openvino", "intel-core-ultra-npu"), ("tflite", "pixel-8")]


class _BF16(OpenVINODenoiser):
    HINT = "bf16"


def time_step(denoise, model, repeats: int) -> float:
    args = [a.numpy() for a in model.example_inputs(batch=2)]
    if len(args) == 2:  # unconditional model
        args.append(None)
    for _ in range(3):
        denoise(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        denoise(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def images(denoise, model, n: int):
    plan = get_solver("dpmpp-2m").plan(model.schedule, 20)
    setup = SamplingSetup(
        plan=plan, guidance=3.0, conditioning=model.conditioning.to_dict(), sample_shape=model.sample_shape
    )
    labels = np.arange(n) % model.conditioning.num_classes
    return generate(denoise, setup, n=n, seed=0, labels=labels)


def w8a8_rows(name: str, model, n_images: int, repeats: int, ref_images, tmp: Path, calib_samples: int) -> list[dict]:
    """One row per W8A8_TARGETS entry: the whole compile, then the same measurements."""
    from edgediff.compiler.pipeline import compile_model
    from edgediff.compiler.recipe import Recipe
    from edgediff.quantize.calibration.record import record_trajectories

    guidance = 3.0 if model.conditioning.kind == "class" else 1.0
    calib = record_trajectories(
        model, sampler="dpmpp-2m", steps=20, guidance=guidance, spacing="linspace", num_samples=calib_samples, seed=0
    )
    calib_path = calib.save(tmp / f"{name}-calib.npz")
    rows = []
    for fmt, target in W8A8_TARGETS:
        recipe = Recipe(
            sampler="dpmpp-2m", steps=20, guidance=guidance, spacing="linspace", quantize="w8a8", calib=str(calib_path)
        )  # the trajectory images() samples
        row = {"model": name, "format": fmt, "precision": "w8a8", "target": target}
        t0 = time.perf_counter()
        try:
            b = compile_model(f"builtin:{name}", tmp / f"{fmt}-w8a8", target=target, recipe=recipe)
        except EdgediffError as e:  # random weights: int8 may miss the verification bound; say so, go on
            print(f"  {name} {fmt} w8a8: not built: {e}", file=sys.stderr)
            rows.append(
                row | {"not_built": str(e), "bytes": None, "ms_per_step": None, "max_rel_error": None, "psnr_db": None}
            )
            continue
        report = json.loads((b.root / "report.json").read_text())
        denoise = open_denoiser(b.root / b.manifest["model"]["file"], fmt)
        r = row | {
            "bytes": size_bytes(b.root / "model"),
            "lower_s": round(time.perf_counter() - t0, 1),
            "runtime": getattr(denoise, "label", fmt),
            "max_rel_error": report["verify"]["max_rel_error"],
            "trajectory_rel_error": report["quantize"]["trajectory"]["mean_rel_error"],
            "ms_per_step": time_step(denoise, model, repeats),
            "psnr_db": psnr_db(images(denoise, model, n_images), ref_images) if ref_images is not None else None,
        }
        rows.append(r)
        print(f"  {name} {fmt} w8a8: {r['ms_per_step']:.2f} ms/step", file=sys.stderr)
    return rows


def run(name: str, n_images: int, repeats: int, calib_samples: int = 16) -> list[dict]:
    model = load_source(f"builtin:{name}")
    rows = []
    ref = torch_denoiser(model)
    ref_images = images(ref, model, n_images) if name == "digits" else None
    rows.append(
        {
            "model": name,
            "format": "pytorch",
            "precision": "fp32",
            "runtime": "PyTorch eager",
            "ms_per_step": time_step(ref, model, repeats),
            "bytes": None,
            "max_rel_error": 0.0,
            "psnr_db": None,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        ir = Path(tmp) / "ir" / "denoiser.onnx"
        ir.parent.mkdir()
        export_onnx(model, ir)
        for fmt, precision in ROWS:
            low = LOWERINGS[fmt]
            out = Path(tmp) / f"{fmt}-{precision}"
            static = static_batch_for(True) if low.always_static else None
            t0 = time.perf_counter()
            try:
                lowered = low(model, out, precision=precision, ir=ir, static_batch=static)
            except EdgediffError as e:
                print(f"  {name} {fmt} {precision}: skipped ({e})", file=sys.stderr)
                continue
            row = {
                "model": name,
                "format": fmt,
                "precision": precision,
                "bytes": size_bytes(out),
                "lower_s": round(time.perf_counter() - t0, 1),
            }
            variants = [(open_denoiser, None)]
            if fmt == "openvino" and precision == "fp32":
                variants.append((lambda p, f: _BF16(p), "bf16 hint"))
            if fmt not in BACKENDS:
                rows.append(
                    row
                    | {
                        "runtime": "not run here (needs macOS)",
                        "ms_per_step": None,
                        "max_rel_error": None,
                        "psnr_db": None,
                    }
                )
                continue
            for opener, tag in variants:
                denoise = opener(lowered.file, fmt)
                if static and not isinstance(denoise, FixedBatch):
                    denoise = FixedBatch(denoise, static)
                label = getattr(denoise, "label", fmt)
                try:
                    err = verify(model, denoise, precision=precision if tag is None else "fp16", label=label)[
                        "max_rel_error"
                    ]
                except EdgediffError as e:  # over the bound: still a figure worth printing
                    err = float(str(e).split("normalised max error ")[1].split(" ")[0])
                if tag is not None:  # say what the plugin actually ran: it falls back to f32 without bf16 units
                    tag = f"asked bf16, ran {getattr(getattr(denoise, 'inner', denoise), 'hint', '?')}"
                r = row | {
                    "precision": precision if tag is None else f"{precision} ({tag})",
                    "runtime": label,
                    "ms_per_step": time_step(denoise, model, repeats),
                    "max_rel_error": err,
                    "psnr_db": psnr_db(images(denoise, model, n_images), ref_images)
                    if ref_images is not None
                    else None,
                }
                rows.append(r)
                print(f"  {name} {r['format']} {r['precision']}: {r['ms_per_step']:.2f} ms/step", file=sys.stderr)
        rows += w8a8_rows(name, model, n_images, repeats, ref_images, Path(tmp), calib_samples)
    return rows


def _cell(v, spec: str, width: int) -> str:
    if v is None:
        return "—".rjust(width)
    if v == float("inf"):
        return "inf".rjust(width)
    return format(v, spec).rjust(width)


def table(rows: list[dict]) -> str:
    head = (
        f"{'model':11}{'format':10}{'precision':24}{'ms/step':>9}{'x onnx32':>9}{'size MB':>9}"
        f"{'max err':>10}{'PSNR dB':>9}"
    )
    lines = [head, "-" * len(head)]
    # speed ratio against ONNX Runtime fp32 of the same run (PyTorch eager is listed, but its
    # thread pool suffers most on a shared machine)
    base = {r["model"]: r["ms_per_step"] for r in rows if r["format"] == "onnx" and r["precision"] == "fp32"}
    for r in rows:
        if r.get("not_built"):
            lines.append(f"{r['model']:11}{r['format']:10}{r['precision']:24}not built: {r['not_built'][:80]}")
            continue
        ms = r["ms_per_step"]
        speedup = None if ms is None or r["model"] not in base else base[r["model"]] / ms
        size = None if r["bytes"] is None else r["bytes"] / 1e6
        lines.append(
            f"{r['model']:11}{r['format']:10}{r['precision']:24}"
            + _cell(ms, ".2f", 9)
            + _cell(speedup, ".2f", 9)
            + _cell(size, ".2f", 9)
            + _cell(r["max_rel_error"], ".1e", 10)
            + _cell(r["psnr_db"], ".1f", 9)
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="digits,cifar-arch")
    ap.add_argument("--images", type=int, default=16, help="images for PSNR (digits)")
    ap.add_argument("--repeats", type=int, default=20, help="timed denoiser calls per row")
    ap.add_argument("--calib-samples", type=int, default=16, help="calibration trajectories for the W8A8 rows")
    ap.add_argument("--json", default="out/formats.json")
    a = ap.parse_args(argv)
    rows = []
    for name in a.models.split(","):
        rows += run(name, a.images, a.repeats, a.calib_samples)
    from edgediff.targets.host import detect_host

    host = detect_host()
    info = {
        "host": {
            "cpu": host.get("cpu_model"),
            "cores": host.get("cores"),
            "features": host.get("features"),
            "python": platform.python_version(),
        },
        "rows": rows,
    }
    print(f"host: {info['host']['cpu']}, {info['host']['cores']} cores, {', '.join(info['host']['features'] or [])}")
    print(table(rows))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
