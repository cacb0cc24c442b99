"""Feature caching across steps: speed and quality against the uncached bundle, in one run.

    python benchmarks/cache.py [--models digits,cifar-arch] [--sampler ddim] [--steps 50]
                               [--intervals 1,2,3,5] [--per-class 20] [--speed-images 3] [--threads 0]
                               [--keep DIR]

Per model, two bundles are compiled for host-cpu (ONNX, fp32): the uncached one and a cached one
(`--cache 2`). The full / shallow pair does not depend on N, so the cached bundle runs every
interval N by replacing its step table ({"interval": N} as the compiler writes it for --cache N);
N = 1 runs the pair's full graph at every step (the cost of the extra feature output).

- speed: ms per image, one image per call (guidance doubles it to 2 rows for builtin:digits),
  the C loop (`generate`'s default) calling ONNX Runtime back in Python; --speed-images images
  per configuration, the configurations interleaved for --repeats rounds, the best round of each;
  the ratio is uncached / cached, measured in this run; "vs N=1" is against the same pair run
  with every step full (the same sessions and threading, so only the skipped deep work differs). --spin lets the pair's ONNX Runtime
  threads spin-wait between calls (the runtime's default is off for the pair, on for one graph).
  The C runtime's own backend does not run cached bundles yet (it refuses them), so these are
  not edgediff-run figures.
- the shallow graph's share of the full graph's MACs (manifest.json cache.macs_per_image), and
  the speedup that share predicts: N / (1 + (N - 1) * share).
- quality (builtin:digits only): --per-class images per digit, the same seeds and labels for every
  configuration: PSNR against the uncached bundle's images, FD-digits against the held-out digits
  and class accuracy (the digits classifier, src/edgediff/tools/digits_eval.py).
- auto:K (after each N > 1, unless --no-auto): the schedule `--cache-schedule auto:K` compiles, with
  K the full steps of N (ceil(steps / N)), placed by compiler/cache.py choose_schedule on the FP32
  trajectory (its own 8 images, seed 0: not the images measured here), run by the same pair.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.runtimes.bundle import load_bundle
from edgediff.runtimes.quality import frechet_distance, gaussian_stats, psnr_db
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, generate
from edgediff.runtimes.steps import StepTable, cache_flags
from edgediff.targets.host import detect_host


def host_line() -> str:
    info = detect_host()
    feats = set(info.get("features", ()))
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in feats]
    return (
        f"{info.get('cpu_model', info['machine'])}, {info['cores']} cores visible, flags {' '.join(flags) or 'none'} "
        "(a shared machine: other jobs ran beside this one; compare the ratios, not the absolute times)"
    )


def bundles(model: str, a, root: Path):
    recipe = dict(sampler=a.sampler, steps=a.steps)
    out = {}
    for name, extra in (("uncached", {}), ("cached", {"cache": 2})):
        dest = root / f"{model}-{a.sampler}{a.steps}-{name}"
        if not (dest / "manifest.json").exists():
            print(f"compiling builtin:{model} ({name}) into {dest} ...", flush=True)
            compile_model(f"builtin:{model}", dest, recipe=Recipe(**recipe, **extra))
        out[name] = load_bundle(dest)
    return out["uncached"], out["cached"]


def with_interval(setup: SamplingSetup, n: int) -> SamplingSetup:
    steps = len(setup.plan.model_timesteps)
    return dataclasses.replace(setup, steps=StepTable(num_steps=steps, cached=cache_flags(n, steps)))


def with_flags(setup: SamplingSetup, flags: tuple[bool, ...]) -> SamplingSetup:
    return dataclasses.replace(setup, steps=StepTable(num_steps=len(flags), cached=flags))


def auto_flags(model: str, a, setup: SamplingSetup, depth: int) -> dict[int, tuple[bool, ...]]:
    """Per interval N > 1: the auto schedule with N's number of full steps (what auto:K compiles)."""
    from edgediff.compiler import cache as cache_stage
    from edgediff.compiler.capture import load_source, plan_options

    m = load_source(f"builtin:{model}")
    sp = cache_stage.split(m, depth)
    out = {}
    for n in a.intervals:
        if n > 1:
            out[n] = cache_stage.choose_schedule(
                m,
                sp,
                sampler=a.sampler,
                steps=a.steps,
                guidance=setup.guidance,
                spacing=Recipe().spacing,
                plan_options=plan_options(m, a.sampler),
                full=len(range(0, a.steps, n)),
            )[0]
    return out


def labels_for(setup: SamplingSetup, count: int) -> np.ndarray | None:
    c = setup.conditioning
    return None if c["kind"] != "class" else (np.arange(count) % c["num_classes"]).astype(np.int64)


def ms_per_image(configs: list, a) -> list[float]:
    """Best ms per image of each (denoiser, setup), the configurations interleaved round by round so
    that a change in the shared machine's load reaches them all alike."""
    best = [float("inf")] * len(configs)
    for denoise, setup in configs:  # warm-up
        labels = labels_for(setup, 1)
        generate(denoise, setup, n=1, seed=0, labels=labels, batch_size=1)
    for _ in range(a.repeats):
        for k, (denoise, setup) in enumerate(configs):
            labels = labels_for(setup, a.speed_images)
            t0 = time.perf_counter()
            generate(denoise, setup, n=a.speed_images, seed=0, labels=labels, batch_size=1)
            best[k] = min(best[k], (time.perf_counter() - t0) * 1000 / a.speed_images)
    return best


def digits_quality(images: np.ndarray, labels: np.ndarray) -> dict:
    import torch

    from edgediff.tools.digits_eval import features
    from edgediff.training.data import digits_splits
    from edgediff.zoo.builtin import load_classifier

    clf = load_classifier()
    with torch.no_grad():
        pred = clf(torch.from_numpy(np.ascontiguousarray(images))).argmax(1).numpy()
    held, _ = digits_splits()["heldout"]
    fd = frechet_distance(gaussian_stats(features(clf, images)), gaussian_stats(features(clf, held)))
    return {"fd": fd, "acc": float((pred == labels).mean())}


def run_model(model: str, a, root: Path) -> None:
    plain_b, cached_b = bundles(model, a, root)
    plain_setup, cached_setup = SamplingSetup.from_bundle(plain_b), SamplingSetup.from_bundle(cached_b)
    macs = cached_b.manifest["cache"]["macs_per_image"]
    share = macs["shallow"] / macs["full"]
    print(
        f"\nbuiltin:{model}, {a.sampler} {a.steps} steps, guidance {plain_setup.guidance:g}, ONNX fp32, "
        f"split depth {cached_b.manifest['cache']['depth']}; shallow graph = {share:.1%} of the full graph's MACs "
        f"({macs['shallow'] / 1e6:.1f} M of {macs['full'] / 1e6:.1f} M per image)",
        flush=True,
    )
    quality = model == "digits" and a.per_class > 0
    plain_d, cached_d = bundle_denoiser(plain_b, threads=a.threads), bundle_denoiser(cached_b, threads=a.threads)
    setups = {f"N={n}": with_interval(cached_setup, n) for n in a.intervals}
    predicted = {f"N={n}": n / (1 + (n - 1) * share) for n in a.intervals}
    if a.auto:
        for n, flags in auto_flags(model, a, plain_setup, cached_b.manifest["cache"]["depth"]).items():
            k = flags.count(False)
            setups[f"auto:{k}"] = with_flags(cached_setup, flags)
            predicted[f"auto:{k}"] = a.steps / (k + (a.steps - k) * share)
        setups = dict(sorted(setups.items(), key=lambda kv: -kv[1].steps.cached.count(False)))
    times = ms_per_image([(plain_d, plain_setup)] + [(cached_d, st) for st in setups.values()], a)
    base_ms = times[0]
    rows = [("uncached", base_ms, 1.0, 1.0)]
    rows += [(name, ms, base_ms / ms, predicted[name]) for name, ms in zip(setups, times[1:])]
    print("  timed", flush=True)
    if quality:
        labels = np.repeat(np.arange(10), a.per_class).astype(np.int64)
        ref = generate(plain_d, plain_setup, n=len(labels), seed=a.seed, labels=labels)
        q = {"uncached": digits_quality(ref, labels) | {"psnr": float("inf")}}
        for name, st in setups.items():
            imgs = generate(cached_d, st, n=len(labels), seed=a.seed, labels=labels)
            q[name] = digits_quality(imgs, labels) | {"psnr": psnr_db(imgs, ref)}
    full_ms = times[1 + list(setups).index("N=1")] if "N=1" in setups else None
    head = f"  {'':9} {'ms/image':>9} {'speedup':>8} {'vs N=1':>7} {'MAC-predicted':>13}"
    if quality:
        head += f" {'PSNR dB':>8} {'FD-digits':>9} {'(ratio)':>8} {'class acc':>9}"
    print(head)
    for name, ms, speed, pred in rows:
        vs1 = f"{full_ms / ms:6.2f}x" if full_ms else "      -"
        line = f"  {name:9} {ms:9.1f} {speed:7.2f}x {vs1} {pred:12.2f}x"
        if quality:
            r = q[name]
            fd_ratio = r["fd"] / q["uncached"]["fd"]
            line += f" {r['psnr']:8.2f} {r['fd']:9.3f} {fd_ratio:7.3f}x {r['acc']:9.3f}"
        print(line)
    if quality:
        print(
            f"  quality: {len(labels)} images ({a.per_class} per digit), seed {a.seed}; PSNR against the uncached images"
        )
    for name, st in setups.items():
        if name.startswith("auto"):
            print(f"  {name} full steps: {[i for i, c in enumerate(st.steps.cached) if not c]}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="digits,cifar-arch")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--intervals", default="1,2,3,5")
    p.add_argument("--per-class", type=int, default=20, help="digits images per class for quality (0: speed only)")
    p.add_argument("--speed-images", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="rounds over the configurations (best of them)")
    p.add_argument("--spin", action="store_true", help="let the pair's ONNX Runtime threads spin-wait")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-auto", dest="auto", action="store_false", help="leave out the auto:K schedules")
    p.add_argument("--keep", type=Path, default=None, help="compile into (and reuse bundles from) this folder")
    a = p.parse_args(argv)
    a.intervals = [int(n) for n in a.intervals.split(",")]
    import edgediff.runtimes.cache as rc

    rc.SPIN = a.spin
    print(f"host: {host_line()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="edgediff-cache-bench-") as tmp:
        root = a.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for model in a.models.split(","):
            run_model(model, a, root)


if __name__ == "__main__":
    sys.exit(main())
