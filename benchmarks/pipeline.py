"""The pipeline figure: PyTorch FP32 with DDIM-100 against the best edgediff bundle, end to end.

    python benchmarks/pipeline.py [--num-samples 200] [--source builtin:digits-distilled-4]
                                  [--cifar-source builtin:cifar-arch] [--out out/bench_pipeline]

One run, same machine, same thread count (2), batch 1, one image at a time:
  baseline   PyTorch FP32 eager, DDIM 100 steps, classifier-free guidance 3 (two passes per step,
             batched), the sampling loop in Python (src/edgediff/runtimes/sampling.py).
  edgediff   bundles compiled here from `--source` (default: the committed 4-step progressive
             student of builtin:digits with guidance distilled into it, one pass per step), in
             FP32 and with --quantize w8a8, run by edgediff-run (the C runtime with its
             OpenVINO backend; no Python in the loop), timed by `edgediff bench --runner c`.
Quality: FD-digits and class accuracy on --num-samples images, seed 0, labels 0..9 in turn.
builtin:cifar-arch (untrained weights: speed only) gets the same treatment: its DDIM-100 PyTorch
baseline against 4-step bundles (the step count a distilled student runs), FP32 and W8A8;
`--cifar-source` may name a pruned version of it (`edgediff prune builtin:cifar-arch ...`).
Writes <out>.json and prints the table with the ratios against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgediff.compiler.capture import load_source
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import torch_denoiser
from edgediff.runtimes.bundle import size_bytes
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels, generate
from edgediff.runtimes.samplers import get_solver
from edgediff.tools.bench import bench
from edgediff.tools.evaluate import DigitsJudge

THREADS = 2


def baseline_setup(spec, steps=100, guidance=3.0):
    plan = get_solver("ddim").plan(spec.schedule, steps, spacing="leading")
    g = guidance if spec.conditioning.kind == "class" else 1.0
    return SamplingSetup(
        plan=plan, guidance=g, conditioning=spec.conditioning.to_dict(), sample_shape=tuple(spec.sample_shape)
    )


def time_torch(spec, setup, images: int) -> list[float]:
    """ms per image of the PyTorch FP32 Python loop, one image at a time (after one warm image)."""
    den = torch_denoiser(spec)
    labels = default_labels(setup, images + 1)
    out = []
    for k in tqdm(range(images + 1), desc="PyTorch DDIM-100", file=sys.stderr, leave=False):
        lab = None if labels is None else labels[k : k + 1]
        t0 = time.perf_counter()
        generate(den, setup, n=1, seed=k, labels=lab, loop="python")
        if k:
            out.append(1000 * (time.perf_counter() - t0))
    return out


def quality_of(denoise, setup, n, judge):
    labels = default_labels(setup, n)
    imgs = generate(denoise, setup, n=n, seed=0, labels=labels, batch_size=100)
    return judge.score(imgs, labels)


def bundle_row(name, source, out: Path, recipe: Recipe, runs: int, judge, n):
    b = compile_model(source, out, recipe=recipe)
    r = bench(out, warmup_runs=1, num_runs=runs, runner="c", threads=THREADS)
    row = {
        "model": name,
        "source": source,
        "sampler": b.scheduler["solver"],
        "steps": len(b.scheduler["plan"]["timesteps"]),
        "passes_per_image": b.report["model"]["forward_passes_per_step"] * len(b.scheduler["plan"]["timesteps"]),
        "precision": b.manifest["model"]["precision"],
        "ms_per_image": r["e2e_ms"]["p50"],
        "size_mb": size_bytes(out / "model") / 1e6,
        "runtime": "edgediff-run (C loop, OpenVINO backend)",
    }
    if judge is not None:
        setup = SamplingSetup.from_bundle(b)
        row |= quality_of(bundle_denoiser(b), setup, n, judge)
    return row


def digits_rows(a, work: Path) -> list[dict]:
    spec = load_source("builtin:digits")
    setup = baseline_setup(spec)
    judge = DigitsJudge()
    print("[digits] PyTorch FP32 DDIM-100 baseline", file=sys.stderr)
    ms = time_torch(spec, setup, a.baseline_images)
    base = {
        "model": "PyTorch FP32, DDIM-100, CFG 3",
        "source": "builtin:digits",
        "sampler": "ddim",
        "steps": 100,
        "passes_per_image": 200,
        "precision": "fp32",
        "ms_per_image": float(np.median(ms)),
        "size_mb": sum(p.numel() * 4 for p in spec.module.parameters()) / 1e6,
        "runtime": "PyTorch eager, Python loop",
        **quality_of(torch_denoiser(spec), setup, a.num_samples, judge),
    }
    rows = [base]
    student = a.source
    for name, q in [(f"edgediff FP32 ({student})", None), (f"edgediff W8A8 ({student})", "w8a8")]:
        print(f"[digits] {name}", file=sys.stderr)
        rows.append(
            bundle_row(name, student, work / name.split()[1], _student_recipe(student, q), a.runs, judge, a.num_samples)
        )
    return rows


def _student_recipe(source: str, quantize: str | None) -> Recipe:
    from edgediff.distill.distill import recipe_defaults

    d = recipe_defaults(source) or {}
    return Recipe(**{**d, "quantize": quantize})


def cifar_rows(a, work: Path) -> list[dict]:
    spec = load_source("builtin:cifar-arch")
    setup = baseline_setup(spec)
    print("[cifar-arch] PyTorch FP32 DDIM-100 baseline", file=sys.stderr)
    ms = time_torch(spec, setup, 1)
    rows = [
        {
            "model": "PyTorch FP32, DDIM-100",
            "source": "builtin:cifar-arch",
            "sampler": "ddim",
            "steps": 100,
            "passes_per_image": 100,
            "precision": "fp32",
            "ms_per_image": float(np.median(ms)),
            "size_mb": sum(p.numel() * 4 for p in spec.module.parameters()) / 1e6,
            "runtime": "PyTorch eager, Python loop",
        }
    ]
    for name, q in [
        (f"edgediff FP32, 4 steps ({a.cifar_source})", None),
        (f"edgediff W8A8, 4 steps ({a.cifar_source})", "w8a8"),
    ]:
        print(f"[cifar-arch] {name}", file=sys.stderr)
        recipe = Recipe(sampler="ddim", steps=4, guidance=1.0, spacing="trailing", quantize=q, calib_samples=4)
        try:
            rows.append(
                bundle_row(
                    name,
                    a.cifar_source,
                    work / ("cifar_" + name.split()[1].rstrip(",")),
                    recipe,
                    max(2, a.runs // 2),
                    None,
                    0,
                )
            )
        except EdgediffError as e:  # random weights: int8 may miss the verification bound; say so, keep going
            print(f"  {name}: not built: {e}", file=sys.stderr)
            rows.append({"model": name, "source": a.cifar_source, "not_built": str(e)})
    return rows


def print_table(result):
    for key, title in (("digits", "builtin:digits"), ("cifar", "builtin:cifar-arch (untrained: speed only)")):
        rows = result.get(key) or []
        if not rows:
            continue
        base = rows[0]
        print(f"\n{title}, batch 1, {THREADS} threads, {result['cpu']}")
        print(f"{'model':52} {'passes':>6} {'ms/image':>10} {'speedup':>8} {'FD-digits':>10} {'acc':>6} {'MB':>6}")
        for r in rows:
            if "not_built" in r:
                print(f"{r['model'][:52]:52} not built: {r['not_built'][:90]}")
                continue
            fd = f"{r['fd_digits']:.3f}" if r.get("fd_digits") is not None else "-"
            acc = f"{r['class_accuracy']:.3f}" if r.get("class_accuracy") is not None else "-"
            print(
                f"{r['model'][:52]:52} {r['passes_per_image']:6d} {r['ms_per_image']:10.1f} "
                f"{base['ms_per_image'] / r['ms_per_image']:7.1f}x {fd:>10} {acc:>6} {r['size_mb']:6.2f}"
            )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-samples", type=int, default=200)
    ap.add_argument("--baseline-images", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--source", default="builtin:digits-distilled-4")
    ap.add_argument("--cifar-source", default="builtin:cifar-arch")
    ap.add_argument("--skip-cifar", action="store_true")
    ap.add_argument("--out", default="out/bench_pipeline")
    a = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    from edgediff.targets.host import detect_host

    info = detect_host()
    result = {
        "cpu": f"{info.get('cpu_model', 'CPU')} ({' '.join(info.get('features', []))})",
        "threads": THREADS,
        "num_samples": a.num_samples,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgediff-pipeline-") as tmp:
        result["digits"] = digits_rows(a, Path(tmp))
        Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
        if not a.skip_cifar:
            result["cifar"] = cifar_rows(a, Path(tmp))
    for key in ("digits", "cifar"):
        rows = result.get(key) or []
        for r in rows:
            if "ms_per_image" in r:
                r["speedup_vs_baseline"] = rows[0]["ms_per_image"] / r["ms_per_image"]
    Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
