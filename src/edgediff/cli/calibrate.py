"""`edgediff calibrate`: record a calibration set from the deployment sampler's trajectory.

    edgediff calibrate SOURCE --sampler S --steps N --guidance G --samples M [--seed S] -o calib.npz

src/edgediff/cli/main.py wires it in with `add_calibrate_parser(subparsers)`; the command runs
`cmd_calibrate(args)`. --sampler, --steps, --guidance and --spacing are the Recipe's flags with
the same defaults as `edgediff compile` (a distilled student's own, else the Recipe's), so a
calibration set recorded with the same flags follows the trajectory of the bundle compile writes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edgediff.core.errors import EdgediffError
from edgediff.core.options import add_options, nonneg_int, options_from_args, positive_int, verb_defaults

# recipe fields a distilled student records (compiler.capture.recipe_defaults): their flags default
# to the student's value, else to the Recipe default
SOURCE_DEFAULTS = ("sampler", "steps", "guidance", "spacing")
SOURCE_NOTE = "or what a distilled student records"
HELP = "record calibration data along the deployment sampler's trajectory"
SAMPLES = 64  # trajectories `edgediff calibrate` records unless told


def add_calibrate_parser(subparsers) -> argparse.ArgumentParser:
    from edgediff.compiler.recipe import Recipe
    from edgediff.quantize.calibration.record import record_trajectories

    rec = verb_defaults(record_trajectories)
    c = subparsers.add_parser("calibrate", help=HELP)
    c.add_argument("source", help="builtin:NAME, a diffusers folder, or package.module:factory")
    add_options(c, Recipe, only=SOURCE_DEFAULTS, unset=SOURCE_DEFAULTS, unset_note=SOURCE_NOTE)
    c.add_argument(
        "--samples", type=positive_int, default=SAMPLES, help=f"images (trajectories) to record (default {SAMPLES})"
    )
    c.add_argument("--seed", type=nonneg_int, default=rec["seed"], help=f"noise seed (default {rec['seed']})")
    c.add_argument("--batch-size", type=positive_int, default=rec["batch_size"], help="images per denoiser call")
    c.add_argument("-o", "--output", required=True, help="calibration set to write (.npz)")
    c.add_argument("--json", action="store_true", help="print a summary as JSON")
    c.set_defaults(func=cmd_calibrate)
    return c


def cmd_calibrate(a) -> int:
    from tqdm import tqdm

    from edgediff.compiler.capture import load_source, recipe_defaults
    from edgediff.compiler.recipe import Recipe
    from edgediff.quantize.calibration.record import record_trajectories

    out = Path(a.output)
    if out.suffix != ".npz":
        raise EdgediffError(f"{out}: output must end in .npz")
    if not out.resolve().parent.is_dir():
        raise EdgediffError(f"{out}: folder {out.resolve().parent} does not exist")
    r = options_from_args(Recipe, a, fill=recipe_defaults(a.source))
    model = load_source(a.source)
    guidance = r.guidance
    if model.student is not None and model.student["guidance"]["mode"] == "distilled":
        # a guidance-distilled student runs with w folded in and one pass per step, as compile does
        from edgediff.distill.distill import bind_guidance

        model, guidance = bind_guidance(model, r.guidance), 1.0
    bar = tqdm(
        total=a.samples * r.steps,
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
            sampler=r.sampler,
            steps=r.steps,
            guidance=guidance,
            spacing=r.spacing,
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
            f"{r.sampler}, seed {a.seed}, {dt:.2f} s"
        )
    return 0
