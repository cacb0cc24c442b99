"""The standalone C runner (csrc/tools/edgediff_run.c) against the Python path.

- with OpenVINO (f32) on the tiny bundle: the samples equal `runner.generate` with ONNX
  Runtime within 1e-4 absolute, and the PNG grid equals `edgediff generate`'s to one grey
  level (see BACKEND_TOL for why not bit for bit);
- with the fake backend (the model of test_c_runtime.py, computed in C) on a bundle whose
  scheduler.json holds each solver's plan: the first model input is the Python reference's
  noise bit for bit, every step's model input and output and the samples agree to 1e-6
  relative; the same runner core cross-compiled for aarch64 under qemu (if present);
- --bench prints every figure; bad bundles and options fail with one line naming the field.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgediff.core.errors import EdgediffError
from edgediff.runtimes import rng
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels, generate
from edgediff.runtimes.samplers import SOLVERS, get_solver
from edgediff.runtimes.sampling import sample

C_DIR = Path(__file__).resolve().parents[1] / "csrc"
HAVE_CC = bool(shutil.which("make") and (shutil.which("cc") or shutil.which("gcc")))
HAVE_CROSS = bool(shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64"))

# OpenVINO (f32 hint) and ONNX Runtime compute the same convolutions with different kernels
# and summation orders: one denoiser call differs by ~1e-7..1e-6 relative. A 5-step DDIM
# with guidance 2 amplifies that by at most a few times, so 1e-4 absolute on samples in
# [-1, 1] is ~100x the observed 1e-6 yet far below one 8-bit grey level (2/255 = 7.8e-3).
BACKEND_TOL = 1e-4

try:
    import openvino  # noqa: F401

    HAVE_OV = True
except ImportError:
    HAVE_OV = False


@pytest.fixture(scope="module")
def build(c_runner_build):
    return c_runner_build  # conftest.py: built once per session


def run(exe, *args, check=True):
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


# ---- OpenVINO: the same images as the Python path ----------------------------------------------


@pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed")
def test_runner_matches_python_generate(build, tiny_bundle, tmp_path):
    from PIL import Image

    from edgediff.cli.main import main as cli

    n, seed = 6, 3
    run(
        build / "edgediff-run",
        tiny_bundle.root,
        "-n",
        n,
        "--seed",
        seed,
        "-o",
        tmp_path / "c.png",
        "--raw",
        tmp_path / "c.f32",
    )
    setup = SamplingSetup.from_bundle(tiny_bundle)
    want = generate(bundle_denoiser(tiny_bundle), setup, n=n, seed=seed, labels=default_labels(setup, n))
    got = np.clip(np.fromfile(tmp_path / "c.f32", np.float32).reshape(want.shape), -1, 1)
    err = float(np.abs(got - want).max())
    assert err <= BACKEND_TOL, f"C runner (OpenVINO) vs Python (ONNX Runtime): max abs {err:.2e}"
    assert np.abs(want).max() > 0.1 and np.abs(got[0] - got[1]).max() > 1e-3  # real, distinct images

    assert (
        cli(["generate", str(tiny_bundle.root), "-n", str(n), "--seed", str(seed), "-o", str(tmp_path / "py.png")]) == 0
    )
    a = np.asarray(Image.open(tmp_path / "c.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "py.png")).astype(int)
    assert a.shape == b.shape and a.ndim == 2
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01

    # the label option, and a different seed changing the images
    run(build / "edgediff-run", tiny_bundle.root, "-n", 2, "--seed", 4, "--label", 3, "--raw", tmp_path / "d.f32")
    want = generate(bundle_denoiser(tiny_bundle), setup, n=2, seed=4, labels=default_labels(setup, 2, 3))
    got = np.clip(np.fromfile(tmp_path / "d.f32", np.float32).reshape(want.shape), -1, 1)
    assert float(np.abs(got - want).max()) <= BACKEND_TOL


@pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed")
def test_runner_bench_prints_every_figure(build, tiny_bundle, tmp_path):
    r = run(build / "edgediff-run", tiny_bundle.root, "-n", 2, "--bench", "--runs", 3, "-o", tmp_path / "g.pgm")
    text = r.stdout
    for label in ("init", "first run", "warm runs", "per step", "outside", "peak RSS"):
        assert re.search(rf"^\s+{label}\s", text, re.M), text
    figures = dict(
        init=r"init\s+([\d.]+) ms",
        first=r"first run\s+([\d.]+) ms",
        p50=r"warm runs\s+3: avg [\d.]+ ms, "
        r"p50 ([\d.]+) ms",
        p90=r"p90 ([\d.]+) ms",
        rss=r"peak RSS\s+([\d.]+) MB",
    )
    values = {k: float(re.search(p, text).group(1)) for k, p in figures.items()}
    assert all(v > 0 for v in values.values()), values
    assert "OpenVINO" in text and "precision f32" in text and "4 rows per call" in text  # guidance: 2 x 2 rows
    assert (tmp_path / "g.pgm").read_bytes().startswith(b"P5\n")


# ---- fake backend: conformance of the loader + loop + noise, here and on aarch64 -----------------


def fake_model(x, t, labels):
    """csrc/tools/edgediff_run.c's fake backend, in numpy float32."""
    t = np.asarray(t, np.float32).reshape(-1, 1, 1, 1)
    shift = 0 if labels is None else labels.astype(np.float32).reshape(-1, 1, 1, 1) * np.float32(0.1)
    tt = np.float32(0.01) * t / np.float32(1000)
    th = np.tanh(x.astype(np.float64)).astype(np.float32)  # as the C: tanh in double, rounded once
    return ((np.float32(0.5) * th + tt) + shift).astype(np.float32)


def solver_bundle(tiny_bundle, dest: Path, name: str, spacing: str = "trailing", steps: int = 6) -> SamplingSetup:
    """A copy of the tiny bundle whose scheduler.json holds a `steps`-step plan of `name`."""
    shutil.copytree(tiny_bundle.root, dest)
    sched = json.loads((dest / "scheduler.json").read_text())
    opts = {} if name == "lcm" else {"spacing": spacing}
    plan = get_solver(name).plan(tiny_bundle_schedule(tiny_bundle), steps, **opts)
    sched["plan"] = plan.to_dict()
    sched["solver"] = name
    sched["spacing"] = "lcm" if name == "lcm" else spacing
    (dest / "scheduler.json").write_text(json.dumps(sched))
    manifest = json.loads((dest / "manifest.json").read_text())  # keep the bundle valid: new digest
    manifest["files"]["scheduler.json"]["sha256"] = hashlib.sha256((dest / "scheduler.json").read_bytes()).hexdigest()
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return SamplingSetup(
        plan=plan,
        guidance=sched["guidance_scale"],
        conditioning=tiny_bundle.conditioning,
        sample_shape=tiny_bundle.sample_shape,
    )


def tiny_bundle_schedule(tiny_bundle):
    from edgediff.runtimes.samplers import Plan

    return Plan.from_dict(tiny_bundle.scheduler["plan"]).schedule


def python_trajectory(setup: SamplingSetup, n: int, seed: int):
    steps = []
    labels = default_labels(setup, n)
    out = sample(
        fake_model,
        setup.plan,
        NoiseSource(seed=seed, streams=tuple(range(n))),
        labels=labels,
        guidance=setup.guidance,
        null_label=setup.conditioning["null_label"],
        sample_shape=setup.sample_shape,
        callback=lambda i, t, x_in, eps: steps.append((np.array(x_in), np.array(eps))),
    )
    return steps, out


def check_conformance(exe_cmd, tiny_bundle, tmp_path, names, spacing="trailing", replan=None):
    """Run each solver's bundle through the runner (fake backend) and the Python loop. With
    replan=N the runner is asked for --steps N and Python plans N steps itself."""
    n, seed = 3, 11
    worst = 0.0
    for name in names:
        setup = solver_bundle(tiny_bundle, tmp_path / f"{name}-{spacing}", name, spacing)
        extra = []
        if replan is not None:
            opts = {} if name == "lcm" else {"spacing": spacing}
            setup = SamplingSetup(
                plan=get_solver(name).plan(setup.plan.schedule, replan, **opts),
                guidance=setup.guidance,
                conditioning=setup.conditioning,
                sample_shape=setup.sample_shape,
            )
            extra = ["--steps", str(replan)]
        r = subprocess.run(
            [
                *exe_cmd,
                str(tmp_path / f"{name}-{spacing}"),
                "-n",
                str(n),
                "--seed",
                str(seed),
                "--backend",
                "fake",
                "--raw",
                str(tmp_path / f"{name}.f32"),
                "--trace",
                str(tmp_path / f"{name}.trace"),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        steps, want = python_trajectory(setup, n, seed)
        got = np.fromfile(tmp_path / f"{name}.f32", np.float32).reshape(want.shape)
        trace = np.fromfile(tmp_path / f"{name}.trace", np.float32).reshape(len(steps), 2, *want.shape)
        if name in ("ddpm", "ddim", "dpmpp-2m", "lcm"):  # x_T is the first model input, unscaled
            z = np.stack([rng.normal(seed, k, 0, int(np.prod(setup.sample_shape))) for k in range(n)])
            np.testing.assert_array_equal(trace[0, 0].reshape(n, -1).view(np.uint32), z.view(np.uint32))
        for i, (x_in, eps) in enumerate(steps):
            for a, b in ((trace[i, 0], x_in), (trace[i, 1], eps)):
                rel = float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-8))
                worst = max(worst, rel)
                assert rel <= 1e-6, f"{name} {spacing} {replan} step {i}: relative error {rel:.2e}"
        final = float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1.0))
        assert final <= 1e-6, f"{name}: final samples differ by {final:.2e} (relative to max(|x|, 1))"
    return worst


def test_runner_core_conformance_every_solver(build, tiny_bundle, tmp_path):
    check_conformance([str(build / "edgediff-run-core")], tiny_bundle, tmp_path, list(SOLVERS))


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_runner_steps_replans_like_python(build, tiny_bundle, tmp_path, spacing):
    """--steps N: edd_plan_with_steps computes the plan the Python planner computes (the
    trajectories agree to 1e-6, which a single different timestep or sigma would break)."""
    names = [s for s in SOLVERS if s != "lcm"] + (["lcm"] if spacing == "leading" else [])
    for steps in (1, 3, 7, 16):
        check_conformance(
            [str(build / "edgediff-run-core")], tiny_bundle, tmp_path / str(steps), names, spacing, replan=steps
        )


@pytest.mark.skipif(
    not (HAVE_CC and HAVE_CROSS), reason="no aarch64-linux-gnu-gcc / qemu-aarch64 (.ci/run installs them)"
)
def test_runner_core_conformance_on_aarch64_under_qemu(tiny_bundle, tmp_path):
    """The runner core (bundle loader, JSON reader, planner, loop, noise) cross-compiled for aarch64."""
    out = tmp_path / "arm"
    r = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(C_DIR),
            "runner-core",
            f"BUILD={out}",
            "CC=aarch64-linux-gnu-gcc",
            "AR=aarch64-linux-gnu-ar",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert b"\xb7\x00" == (out / "edgediff-run-core").read_bytes()[18:20]  # ELF e_machine = EM_AARCH64
    qemu = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(out / "edgediff-run-core")]
    check_conformance(qemu, tiny_bundle, tmp_path, ["ddpm", "dpmpp-2m", "euler"])
    check_conformance(qemu, tiny_bundle, tmp_path / "replan", ["ddim", "euler"], "linspace", replan=7)  # the planner


# ---- errors: one line naming the file and field ---------------------------------------------------


def test_runner_errors_name_the_field(build, tiny_bundle, bundle_copy, tmp_path):
    exe = build / "edgediff-run-core"
    sched = json.loads((bundle_copy / "scheduler.json").read_text())
    cases = []
    broken = dict(sched, plan=dict(sched["plan"], timesteps=[99, 50.5, 3, 2, 1]))
    cases.append((json.dumps(broken), "scheduler.json: plan.timesteps[1] must be an integer"))
    cases.append(
        (
            json.dumps({k: v for k, v in sched.items() if k != "guidance_scale"}),
            "scheduler.json: missing the field 'guidance_scale'",
        )
    )
    cases.append((json.dumps(sched)[:-7], "scheduler.json: invalid JSON at line 1"))
    for text, message in cases:
        (bundle_copy / "scheduler.json").write_text(text)
        r = run(exe, bundle_copy, "-o", tmp_path / "x.png", "--no-verify", check=False)
        assert r.returncode == 1 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert str(bundle_copy) in r.stderr
    # the manifest's digests: a changed file is refused by name, unless --no-verify
    (bundle_copy / "scheduler.json").write_text(json.dumps(sched))
    r = run(exe, bundle_copy, "--raw", tmp_path / "ok.f32", check=False)
    assert r.returncode == 1 and "scheduler.json: sha256" in r.stderr and "does not match manifest.json" in r.stderr
    assert run(exe, bundle_copy, "--raw", tmp_path / "ok.f32", "--no-verify").returncode == 0
    shutil.copy(tiny_bundle.root / "scheduler.json", bundle_copy)
    assert run(exe, bundle_copy, "--raw", tmp_path / "ok.f32").returncode == 0
    (bundle_copy / "report.json").unlink()
    r = run(exe, bundle_copy, "--raw", tmp_path / "ok.f32", check=False)
    assert r.returncode == 1 and "report.json: listed in manifest.json files but missing" in r.stderr
    shutil.copy(tiny_bundle.root / "report.json", bundle_copy)
    usage = [
        (["--seed", "-1"], "--seed"),
        (["--label", "9"], "label 9 out of range"),
        (["--steps", "0"], "--steps"),
        (["--steps", "101"], "--steps 101: steps must be an integer in 1..100"),
        (["-o", "x.jpg"], ".png, .pgm or .ppm"),
        (["--frobnicate", "1"], "unknown option --frobnicate"),
        ([], "nothing to do"),
    ]
    for args, message in usage:
        r = run(exe, bundle_copy, *args, *(["--raw", tmp_path / "u.f32"] if args else []), check=False)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    r = run(exe, tmp_path / "missing", "-o", tmp_path / "x.png", check=False)
    assert r.returncode == 1 and "missing/manifest.json: cannot open" in r.stderr


# ---- `edgediff generate`: the C loop by default, the Python loop as the oracle -------------------


def test_generate_uses_the_c_loop_and_matches_python(tiny_bundle, monkeypatch):
    from edgediff.runtimes import runner

    setup = SamplingSetup.from_bundle(tiny_bundle)
    denoise = bundle_denoiser(tiny_bundle)
    labels = default_labels(setup, 5)
    steps = []
    want = generate(denoise, setup, n=5, seed=9, labels=labels, loop="python", batch_size=2)

    def no_python_loop(*args, **kwargs):
        raise AssertionError("the default loop called sampling.sample")

    monkeypatch.setattr(runner, "sample", no_python_loop)
    got = generate(denoise, setup, n=5, seed=9, labels=labels, batch_size=2, progress=steps.append)
    assert got.dtype == np.float32 and got.shape == want.shape
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= 1e-5, f"C loop vs Python loop through ONNX Runtime: max abs {err:.2e}"
    assert steps == [2] * len(setup.plan) * 2 + [1] * len(setup.plan)  # progress: images advanced per step
    with pytest.raises(EdgediffError, match="unknown sampling loop 'rust'"):
        generate(denoise, setup, n=1, seed=0, labels=labels[:1], loop="rust")


def test_generate_cli_loop_option(tiny_bundle, tmp_path):
    from PIL import Image

    from edgediff.cli.main import main as cli

    for loop in ("c", "python"):
        assert (
            cli(
                [
                    "generate",
                    str(tiny_bundle.root),
                    "-n",
                    "3",
                    "--seed",
                    "1",
                    "--loop",
                    loop,
                    "-o",
                    str(tmp_path / f"{loop}.png"),
                ]
            )
            == 0
        )
    a, b = (np.asarray(Image.open(tmp_path / f"{loop}.png")) for loop in ("c", "python"))
    assert a.shape == b.shape and np.abs(a.astype(int) - b).max() <= 1
