"""Per-step time spent outside the denoiser: the C loop vs a Python loop over diffusers' scheduler.

    python benchmarks/c_loop_overhead.py [--bundle DIR] [--runs 5] [--steps 20] [--threads 0]

Both loops run the same bundle (default: builtin:cifar-arch compiled for host-cpu with
DPM-Solver++ 2M, 20 steps, into a temporary folder) on OpenVINO's CPU plugin with the f32
precision hint, with the model reshaped to the static batch of one call:

- C: csrc's standalone runner `edgediff-run --bench` (the library's loop, the
  OpenVINO backend through OpenVINO's C API). It times every denoiser call; "outside" is
  the run's wall time minus the calls (noise, solver update, guidance, the loop itself).
- Python: a loop over diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, the
  bundle's schedule and timesteps) calling an OpenVINO compiled model through its Python
  API, torch tensors converted to numpy and back; "outside" is again the wall time minus
  the denoiser calls (scheduler.step, noise, conversions, the loop).

Printed per step and as a percentage of the denoiser time, measured in the same run (the
machine may be shared: compare the ratios, not the absolute times). Goal: C <= 1 %.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "csrc"


def compile_bundle(dest: Path, steps: int) -> Path:
    from edgediff.cli.main import main as cli

    print(f"compiling builtin:cifar-arch (dpmpp-2m, {steps} steps) into {dest} ...", flush=True)
    rc = cli(
        [
            "compile",
            "builtin:cifar-arch",
            "--target",
            "host-cpu",
            "--sampler",
            "dpmpp-2m",
            "--steps",
            str(steps),
            "-o",
            str(dest),
        ]
    )
    if rc != 0:
        sys.exit(f"compile failed ({rc})")
    return dest


def build_runner(build: Path) -> Path:
    r = subprocess.run(
        ["make", "-s", "-C", str(C_DIR), "runner", f"BUILD={build}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit("building edgediff-run failed:\n" + r.stdout + r.stderr)
    return build / "edgediff-run"


def c_loop(runner: Path, bundle: Path, runs: int, threads: int) -> dict:
    r = subprocess.run(
        [str(runner), str(bundle), "--bench", "--runs", str(runs), "--threads", str(threads)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit("edgediff-run failed:\n" + r.stderr)
    text = r.stdout
    outside_us = float(re.search(r"outside\s+([\d.]+) us per step", text).group(1))
    den_ms = float(re.search(r"denoiser avg ([\d.]+) ms", text).group(1))
    return {"outside_ms": outside_us / 1e3, "denoise_ms": den_ms, "text": text}


def python_loop(bundle_dir: Path, runs: int, threads: int) -> dict:
    import openvino as ov
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from edgediff.runtimes.backends import openvino_core
    from edgediff.runtimes.bundle import load_bundle
    from edgediff.runtimes.rng import NoiseSource
    from edgediff.runtimes.samplers import Plan

    bundle = load_bundle(bundle_dir)
    plan = Plan.from_dict(bundle.scheduler["plan"])
    guidance = float(bundle.scheduler["guidance_scale"]) if bundle.conditioning["kind"] == "class" else 1.0
    rows = 2 if guidance != 1.0 else 1
    shape = tuple(bundle.sample_shape)

    abar = np.asarray(plan.schedule.alphas_cumprod, np.float64)
    betas = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=len(abar),
        trained_betas=betas.tolist(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing=bundle.scheduler.get("spacing", "leading"),
        steps_offset=0,
        prediction_type="epsilon",
        lower_order_final=True,
    )

    core = openvino_core()
    model = core.read_model(str(bundle.model_path))
    inputs = bundle.manifest["model"]["inputs"]
    model.reshape({i: ov.PartialShape([rows, *d["shape"][1:]]) for i, d in enumerate(inputs)})
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = core.compile_model(model, "CPU", config).create_infer_request()
    labels = np.array([0, bundle.conditioning.get("null_label") or 0], np.int64)[:rows]

    den_times, totals = [], []
    for run in range(runs + 1):  # run 0 warms up
        sched.set_timesteps(len(plan.timesteps))
        x = torch.from_numpy(NoiseSource(seed=run, streams=(0,)).draw(0, shape)) * sched.init_noise_sigma
        den = 0.0
        t_start = time.perf_counter()
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            feed = np.ascontiguousarray(np.concatenate([x_in.numpy()] * rows).astype(np.float32))
            t_arr = np.full((rows,), float(t), np.float32)
            a = time.perf_counter()
            request.infer([feed, t_arr, labels] if len(inputs) > 2 else [feed, t_arr])
            out = request.get_output_tensor(0).data
            b = time.perf_counter()
            den += b - a
            eps = out[:1] if rows == 1 else out[1:2] + np.float32(guidance) * (out[:1] - out[1:2])
            x = sched.step(torch.from_numpy(np.array(eps)), t, x).prev_sample
        total = time.perf_counter() - t_start
        if run:
            den_times.append(den / len(sched.timesteps))
            totals.append(total / len(sched.timesteps))
    outside = [tot - d for tot, d in zip(totals, den_times)]
    return {"outside_ms": statistics.mean(outside) * 1e3, "denoise_ms": statistics.mean(den_times) * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="a compiled bundle (default: compile builtin:cifar-arch)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="OpenVINO inference threads (0 = its choice)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = a.bundle or compile_bundle(Path(tmp) / "cifar-arch", a.steps)
        runner = build_runner(Path(tmp) / "build")
        c = c_loop(runner, bundle, a.runs, a.threads)
        py = python_loop(bundle, a.runs, a.threads)
    print(c["text"].rstrip())
    print()
    print(f"per-step time outside the denoiser ({bundle.name}, OpenVINO CPU f32, {a.runs} runs each):")
    for name, r in (("C loop (libedgediff)", c), ("Python loop (diffusers)", py)):
        pct = 100 * r["outside_ms"] / r["denoise_ms"]
        print(
            f"  {name:26s} {r['outside_ms'] * 1e3:9.1f} us/step  = {pct:6.3f} % of the denoiser "
            f"({r['denoise_ms']:.2f} ms/step)"
        )
    ratio = py["outside_ms"] / max(c["outside_ms"], 1e-9)
    print(f"  the Python loop spends {ratio:.0f}x the C loop's time outside the denoiser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
