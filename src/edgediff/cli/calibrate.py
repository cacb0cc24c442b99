"""`edgediff calibrate`: record a calibration set from the deployment sampler's trajectory.

    edgediff calibrate SOURCE --sampler S --steps N --guidance G --samples M [--seed S] -o calib.npz
    edgediff calibrate PIPELINE [--prompts FILE] [--negative-prompt TEXT] ... -o calib.npz

A text-to-image pipeline records with prompts: image k gets prompt k mod P (FILE: one prompt a
line; without it, the same builtin list `edgediff compile --quantize w8a8` calibrates on), the CFG
half the negative prompt; the set keeps the prompts' text-encoder states, so `compile --calib`
quantizes on exactly these trajectories.

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
    c.add_argument(
        "--prompts",
        metavar="FILE",
        default=None,
        help="a text-to-image pipeline: prompts to record with, one a line (default: the list compile uses)",
    )
    c.add_argument(
        "--negative-prompt",
        default="",
        metavar="TEXT",
        help="a text-to-image pipeline: the CFG half's prompt (default: empty)",
    )
    c.add_argument("-o", "--output", required=True, help="calibration set to write (.npz)")
    c.add_argument("--json", action="store_true", help="print a summary as JSON")
    c.set_defaults(func=cmd_calibrate)
    return c


def cmd_calibrate(a) -> int:
    from tqdm import tqdm

    from edgediff.compiler.capture import load_source, plan_options, recipe_defaults
    from edgediff.compiler.recipe import Recipe
    from edgediff.quantize.calibration.prompts import read_prompt_file
    from edgediff.quantize.calibration.record import record_trajectories

    out = Path(a.output)
    if out.suffix != ".npz":
        raise EdgediffError(f"{out}: output must end in .npz")
    if not out.resolve().parent.is_dir():
        raise EdgediffError(f"{out}: folder {out.resolve().parent} does not exist")
    r = options_from_args(Recipe, a, fill=recipe_defaults(a.source))
    prompts = read_prompt_file(a.prompts, what="--prompts") if a.prompts is not None else None
    model = load_source(a.source)
    text = {}
    if model.text is not None:
        from edgediff.compiler.text import calibration_prompts

        if prompts is None:
            prompts = calibration_prompts(model, Recipe())[0]
        truncated: list[str] = []
        text = {"prompts": prompts, "negative_prompt": a.negative_prompt, "warn": truncated.append}
    elif a.prompts is not None or a.negative_prompt:
        flag = "--prompts" if a.prompts is not None else "--negative-prompt"
        raise EdgediffError(
            f"{flag}: {model.source} is not a text-to-image pipeline (conditioning "
            f"{model.conditioning.kind!r}); it calibrates without prompts"
        )
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
            plan_options=plan_options(model, r.sampler),  # a pipeline scheduler's steps_offset, ... as compile plans
            **text,
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
        **({"prompts": len(prompts), "truncated": len(truncated)} if text else {}),
        "bytes": out.stat().st_size,
        "seconds": round(dt, 3),
    }
    if a.json:
        print(json.dumps(info, indent=2))
    else:
        halves = " x 2 (CFG halves)" if calib.meta.guidance != 1.0 else ""
        on = f", {len(prompts)} prompts" if text else ""
        print(
            f"wrote {out}: {len(calib)} rows = {calib.num_steps} steps x {a.samples} samples{halves}{on}, "
            f"{r.sampler}, seed {a.seed}, {dt:.2f} s"
        )
        if text and truncated:
            print(f"note: {len(truncated)} prompt(s) cut to the text encoder's length", file=sys.stderr)
    return 0
