"""`edgediff calibrate`: record a calibration set from the deployment sampler's trajectory.

    edgediff calibrate SOURCE --sampler S --steps N --guidance G --samples M [--seed S] -o calib.npz

src/edgediff/cli/main.py wires it in with `add_calibrate_parser(subparsers)`; the command runs
`cmd_calibrate(args)`. Defaults match `edgediff compile`, so a calibration set recorded with
the same flags follows the trajectory of the bundle that compile writes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgediff.core.errors import EdgediffError


def positive_int(text: str) -> int:
    """argparse type shared by every `edgediff` subcommand (src/edgediff/cli/main.py imports it)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def add_calibrate_parser(subparsers) -> argparse.ArgumentParser:
    from edgediff.runtimes.samplers import SOLVERS

    c = subparsers.add_parser("calibrate", help="record calibration data along the deployment sampler's trajectory")
    c.add_argument("source", help="builtin:NAME, a diffusers folder, or package.module:factory")
    c.add_argument("--sampler", default="dpmpp-2m", choices=sorted(SOLVERS))
    c.add_argument("--steps", type=positive_int, default=20)
    c.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = off)")
    c.add_argument("--spacing", default="leading", choices=["leading", "trailing", "linspace"])
    c.add_argument("--samples", type=positive_int, default=64, help="images (trajectories) to record")
    c.add_argument("--seed", type=nonneg_int, default=0)
    c.add_argument("--batch-size", type=positive_int, default=64)
    c.add_argument("-o", "--output", required=True, help="calibration set to write (.npz)")
    c.add_argument("--json", action="store_true", help="print a summary as JSON")
    c.set_defaults(func=cmd_calibrate)
    return c


def cmd_calibrate(a) -> int:
    from tqdm import tqdm

    from edgediff.compiler.capture import load_source
    from edgediff.quantize.calibration.record import record_trajectories

    out = Path(a.output)
    if out.suffix != ".npz":
        raise EdgediffError(f"{out}: output must end in .npz")
    if not out.resolve().parent.is_dir():
        raise EdgediffError(f"{out}: folder {out.resolve().parent} does not exist")
    model = load_source(a.source)
    guidance = a.guidance
    if model.student is not None and model.student["guidance"]["mode"] == "distilled":
        # a guidance-distilled student runs with w folded in and one pass per step, as compile does
        from edgediff.distill.distill import bind_guidance

        model, guidance = bind_guidance(model, a.guidance), 1.0
    bar = tqdm(
        total=a.samples * a.steps,
        desc="calibrate",
        unit="img·step",
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
        disable=None,
    )
    t0 = time.perf_counter()
    try:
        calib = record_trajectories(
            model,
            sampler=a.sampler,
            steps=a.steps,
            guidance=guidance,
            spacing=a.spacing,
            num_samples=a.samples,
            seed=a.seed,
            batch_size=a.batch_size,
            progress=bar.update,
        )
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    calib.save(out)
    info = {
        "output": str(out),
        "rows": len(calib),
        "steps": calib.num_steps,
        "samples": a.samples,
        "guidance": calib.meta.guidance,
        "timesteps": calib.timesteps.tolist(),
        "seed": a.seed,
        "bytes": out.stat().st_size,
        "seconds": round(dt, 3),
    }
    if a.json:
        print(json.dumps(info, indent=2))
    else:
        halves = " x 2 (CFG halves)" if calib.meta.guidance != 1.0 else ""
        print(
            f"wrote {out}: {len(calib)} rows = {calib.num_steps} steps x {a.samples} samples{halves}, "
            f"{a.sampler}, seed {a.seed}, {dt:.2f} s"
        )
    return 0
