"""The `edgediff` command line.

    edgediff compile SOURCE --target host-cpu [--sampler S --steps N --guidance G] -o BUNDLE
                     [--quantize w8a8 [--groups G] [--calib calib.npz | --calib-samples N] ...]
    edgediff calibrate SOURCE --sampler S --steps N --guidance G --samples M -o calib.npz
    edgediff generate BUNDLE -n 16 --seed 0 [--label 3] -o grid.png
    edgediff eval BUNDLE [--num-samples 500] --json out.json
    edgediff eval BUNDLE --prompts FILE [--negative-prompt TEXT] [--guidance G] --json out.json   (text-to-image)
    edgediff inspect BUNDLE [--json]
    edgediff distill SOURCE --method progressive|consistency --steps 4 [--guidance-distill] -o STUDENT
    edgediff targets [--json]
    edgediff bench BUNDLE [--device host|ssh://USER@HOST[:PORT]|adb:SERIAL|PROFILE] [--json out.json]
    edgediff report BUNDLE... -o DIR
    edgediff zoo train digits|classifier
    edgediff prune SOURCE --ratio 0.4 [--layer-ratio PATTERN=R] [--importance taylor|magnitude] [--finetune-steps N]
                   [--nproc N] -o DIR

The flags of compile, calibrate, prune and distill are the fields of their options dataclasses
(Recipe, QuantizeOptions, PruneOptions, FinetuneOptions, DistillOptions), added and read back by
src/edgediff/core/options.py: names, defaults, choices and help are written there once.

User errors (EdgediffError) print as one line and exit with status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from edgediff.cli.calibrate import SOURCE_DEFAULTS, SOURCE_NOTE
from edgediff.core.errors import EdgediffError
from edgediff.core.files import Terminated, check_writable, write_file_atomic
from edgediff.core.options import (
    add_options,
    nonneg_int,
    options_from_args,
    pattern_value,
    positive_int,
    verb_defaults,
)


def _bar(total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)


def _write_json(data: dict, dest: str | None) -> None:
    text = json.dumps(data, indent=2)
    if dest in (None, "-"):
        print(text)
        return
    write_file_atomic(Path(dest), text + "\n")  # never a partial file; errors name `dest`


def _check_json_dest(dest: str | None) -> None:
    """A --json file is checked before a long run, not after it."""
    if dest not in (None, "-"):
        check_writable(Path(dest))


def _load(path: str):
    from edgediff.runtimes.bundle import load_bundle

    return load_bundle(path)


# ---------------------------------------------------------------- compile
def cmd_compile(a) -> int:
    from edgediff.compiler.capture import recipe_defaults
    from edgediff.compiler.pipeline import STAGES, compile_model
    from edgediff.compiler.recipe import Recipe
    from edgediff.quantize.w8a8 import QuantizeOptions

    # a distilled student records its sampler, steps, spacing and guidance: those are its defaults
    fill = recipe_defaults(a.source)
    recipe = options_from_args(Recipe, a, fill=fill)
    recipe = replace(recipe, quant_options=options_from_args(QuantizeOptions, a))
    if fill.get("guidance") == 1.0 and recipe.guidance != 1.0:  # asked for, on a model that cannot use it
        raise EdgediffError(
            f"--guidance {recipe.guidance:g}: {a.source} has no null condition to guide against; "
            "omit --guidance (or pass --guidance 1)"
        )
    bar = _bar(len(STAGES) + 1, "compile", "stage")

    def progress(stage):
        bar.set_postfix_str(stage)
        bar.update(0 if stage == "capture" else 1)

    try:
        b = compile_model(a.source, a.output, target=a.target, recipe=recipe, progress=progress)
    finally:
        bar.close()
    if a.json:
        _write_json({"bundle": str(b.root), "manifest": b.manifest, "report": b.report}, None)
    else:
        print(format_report(b))
    return 0


def format_report(b) -> str:
    r, m = b.report, b.manifest
    v = r["verify"]
    lines = [
        f"bundle      {b.root}",
        f"source      {m['source']['spec']}  (sha256 {m['source']['sha256'][:12]}…)",
        f"target      {m['target']}  format {m['model']['format']}  precision {m['model']['precision']}",
        f"sampler     {b.scheduler['solver']}  {len(b.scheduler['plan']['timesteps'])} steps  "
        f"guidance {b.scheduler['guidance_scale']}" + _distilled_note(b.scheduler.get("distilled")),
        f"model       {r['model']['params'] / 1e6:.2f} M params  {r['model']['macs_per_step'] / 1e9:.3f} GMACs/call  "
        f"{r['model']['forward_passes_per_step']} call(s)/step  {r['model']['size_bytes'] / 1e6:.2f} MB",
        _format_verified(v),
        "timings     " + "  ".join(f"{k} {t:.2f}s" for k, t in r["timings_s"].items()),
    ]
    q = r.get("quantize")
    if q and q["scheme"] == "w4":
        packed = (
            f"{q['matmulnbits']} linear layers 4-bit (MatMulNBits), {q['conv_int8']} convolutions int8"
            if "matmulnbits" in q
            else f"{q['int4_constants']} weight constants 4-bit, {q['int8_constants']} int8 (NNCF)"
        )
        lines.insert(
            -1,
            f"quantized   w4 weight-only: {packed}, activations fp32, "
            f"{q['bytes_fp32'] / 1e6:.2f} -> {q['bytes'] / 1e6:.2f} MB",
        )
    elif q:
        lines.insert(
            -1,
            f"quantized   {q['scheme']}: {q['num_int8']} layers int8, {q['num_float']} float, "
            f"{q['groups']} timestep group(s), calibrated on {q['calibration']['rows']} rows",
        )
        for f in q["float_layers"]:
            lines.insert(-1, f"  float     {f['layer'] or f['node']}: {f['why']}")
        if "tflite" in q:
            lines.insert(
                -1, "  xnnpack   " + ", ".join(f"int8 {k} {v}" for k, v in q["tflite"]["xnnpack_int8"].items())
            )
        if "coreml" in q:
            lines.insert(-1, f"  coreml    activation quantization: {q['coreml']['activation_quantization']}")
    if "coverage" in r:
        from edgediff.compiler.coverage import format_coverage

        lines.append(f"ops         {len(r['coverage']['op_counts'])} op types; unit * runs {m['model']['precision']}")
        lines.append(format_coverage(r["coverage"]))
    return "\n".join(lines)


def _distilled_note(d: dict | None) -> str:
    if not d:
        return ""
    g = f", guidance {d['guidance']:g} distilled into the weights" if d.get("guidance") is not None else ""
    return f"  ({d['method']}-distilled student{g})"


def _format_verified(v: dict) -> str:
    if "max_rel_error" not in v:  # structural check only (Core ML off macOS)
        return f"verified    structure only; numerics {v.get('numerics', 'not run')}"
    line = (
        f"verified    {v['runtime']} vs PyTorch at {v['num_timesteps']} timesteps: max rel error "
        f"{v['max_rel_error']:.2e} (bound {v['bound']:g})"
    )
    for name, c in (v.get("components") or {}).items():  # a text-to-image bundle's other graphs
        line += f"\n            {name}: max rel error {c['max_rel_error']:.2e} (bound {c['bound']:g})"
    im = v.get("images")
    if im:
        if not im["run"]:
            line += f"\n            images vs diffusers: not run ({im['why']})"
        elif im.get("psnr_db") is not None:  # a quantized denoiser: PSNR against a floor (compiler/text.py)
            line += (
                f"\n            images vs diffusers StableDiffusionPipeline (fp32): PSNR {im['psnr_db']:.1f} dB "
                f"(floor {im['psnr_floor_db']:g}), max abs error {im['max_abs_error']:.2e} on [0, 1]"
            )
        else:
            line += (
                f"\n            images vs diffusers StableDiffusionPipeline: max abs error {im['max_abs_error']:.2e} "
                f"on [0, 1] (bound {im['bound']:g})"
            )
    return line + (f"\n            {v['note']}" if v.get("note") else "")


# ---------------------------------------------------------------- generate
def cmd_generate(a) -> int:
    from edgediff.runtimes.images import save_grid
    from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels, generate

    out = Path(a.output)
    if out.suffix.lower() not in (".png", ".pgm", ".ppm"):
        raise EdgediffError(f"{out}: output must end in .png, .pgm or .ppm")
    if not out.resolve().parent.is_dir():
        raise EdgediffError(f"{out}: folder {out.resolve().parent} does not exist")
    b = _load(a.bundle)
    if b.conditioning.get("kind") == "text":
        return _generate_text(a, b, out)
    for flag, v in (("--prompt", a.prompt), ("--prompts", a.prompts), ("--latents", a.latents), ("--npy", a.npy)):
        if v is not None:
            raise EdgediffError(f"{flag}: {a.bundle} is not a text-to-image bundle")
    if a.guidance is not None:
        raise EdgediffError(f"--guidance: {a.bundle} is not a text-to-image bundle; its scale is compiled in")
    a.num = 16 if a.num is None else a.num
    a.loop = a.loop or "c"
    setup = SamplingSetup.from_bundle(b)
    labels = default_labels(setup, a.num, a.label)
    bar = _bar(a.num * len(setup.plan.timesteps), "generate", "img·step")
    t0 = time.perf_counter()
    try:
        images = generate(
            bundle_denoiser(b), setup, n=a.num, seed=a.seed, labels=labels, progress=bar.update, loop=a.loop
        )
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    save_grid(images, out)
    info = {
        "output": str(out),
        "num_images": a.num,
        "seed": a.seed,
        "seconds": round(dt, 3),
        "labels": None if labels is None else labels.tolist(),
    }
    if a.json:
        _write_json(info, None)
    else:
        print(f"wrote {out}: {a.num} images, seed {a.seed}, {dt:.2f} s")
    return 0


def read_prompts(path: str) -> list[str]:
    """One prompt a line (blank lines skipped); not UTF-8 is an error naming the file and byte offset."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise EdgediffError(f"{path}: cannot read the prompts file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgediffError(f"{path}: not UTF-8 text: invalid byte at offset {e.start}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise EdgediffError(f"{path}: no prompts (one a line)")
    return prompts


def read_latents(path: str):
    import numpy as np

    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgediffError(f"{path}: not a readable .npy array ({first})") from None
    if not isinstance(a, np.ndarray):
        raise EdgediffError(f"{path}: expected one .npy array, got an archive")
    return a


def _generate_text(a, b, out: Path) -> int:
    import numpy as np

    from edgediff.core.files import write_file_atomic
    from edgediff.runtimes.images import save_grid, to_unit
    from edgediff.runtimes.runner import SamplingSetup, generate_text, text_pipeline

    if a.label is not None:
        raise EdgediffError("--label: this is a text-to-image bundle; give --prompt or --prompts")
    if (a.prompt is None) == (a.prompts is None):
        raise EdgediffError("a text-to-image bundle needs exactly one of --prompt TEXT and --prompts FILE")
    if a.npy is not None:
        npy = Path(a.npy)
        if npy.suffix.lower() != ".npy":
            raise EdgediffError(f"{npy}: --npy output must end in .npy")
        if not npy.resolve().parent.is_dir():
            raise EdgediffError(f"{npy}: folder {npy.resolve().parent} does not exist")
    if a.prompts is not None:
        prompts = read_prompts(a.prompts)
        if a.num is not None and a.num != len(prompts):
            raise EdgediffError(f"-n {a.num}: {a.prompts} has {len(prompts)} prompts (one image each)")
    else:
        prompts = [a.prompt] * (4 if a.num is None else a.num)
    latents = read_latents(a.latents) if a.latents is not None else None
    loop = a.loop or ("python" if latents is not None else "c")
    setup = SamplingSetup.from_bundle(b)
    bar = _bar(len(prompts) * len(setup.plan.timesteps), "generate", "img·step")
    t0 = time.perf_counter()
    try:
        images = generate_text(
            text_pipeline(b),
            setup,
            prompts=prompts,
            negative_prompt=a.negative_prompt,
            guidance=a.guidance,
            seed=a.seed,
            latents=latents,
            loop=loop,
            progress=bar.update,
            warn=lambda m: print(f"warning: {m}", file=sys.stderr),
        )
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    if a.npy is not None:
        buf = io.BytesIO()
        np.save(buf, to_unit(images))
        write_file_atomic(Path(a.npy), buf.getvalue())
    save_grid(images, out)
    info = {
        "output": str(out),
        "npy": a.npy,
        "num_images": len(prompts),
        "seed": a.seed,
        "guidance": setup.guidance if a.guidance is None else a.guidance,
        "loop": loop,
        "seconds": round(dt, 3),
        "prompts": prompts,
    }
    if a.json:
        _write_json(info, None)
    else:
        print(f"wrote {out}: {len(prompts)} images, seed {a.seed}, guidance {info['guidance']:g}, {dt:.2f} s")
    return 0


# ---------------------------------------------------------------- eval
def cmd_eval(a) -> int:
    from edgediff.tools.evaluate import evaluate, evaluate_text

    _check_json_dest(a.json)
    if a.grid:
        check_writable(Path(a.grid))
    b = _load(a.bundle)
    text = b.conditioning.get("kind") == "text"
    if text:
        if a.prompts is None:
            raise EdgediffError(f"{a.bundle} is a text-to-image bundle: give --prompts FILE (one prompt a line)")
        if a.num_samples is not None:
            raise EdgediffError(f"-n {a.num_samples}: a text-to-image bundle makes one image per line of --prompts")
        prompts = read_prompts(a.prompts)
    else:
        for flag, v in (("--prompts", a.prompts), ("--negative-prompt", a.negative_prompt), ("--guidance", a.guidance)):
            if v is not None:
                raise EdgediffError(f"{flag}: {a.bundle} is not a text-to-image bundle")
        a.num_samples = 500 if a.num_samples is None else a.num_samples
    steps = len(b.scheduler["plan"]["timesteps"])
    n = len(prompts) if text else a.num_samples
    bar = _bar(2 * n * steps, "eval", "img·step")
    try:
        if text:
            result, images, ref_images = evaluate_text(
                b,
                prompts,
                negative_prompt=a.negative_prompt or "",
                guidance=a.guidance,
                seed=a.seed,
                progress=bar.update,
            )
        else:
            result, images, ref_images = evaluate(b, num_samples=a.num_samples, seed=a.seed, progress=bar.update)
    finally:
        bar.close()
    if a.grid:
        import numpy as np

        from edgediff.runtimes.images import save_grid

        k = min(32, len(images))
        save_grid(np.concatenate([ref_images[:k], images[:k]]), a.grid, ncols=k if k <= 16 else 16)
    if a.json:
        _write_json(result, a.json)
    print(format_eval(result))
    return 0


def _fmt(v, spec):
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return format("n/a", f">{width}") if v is None else format(v, spec)


def format_eval(r: dict) -> str:
    ref = r["reference"]
    rows = [
        f"{r['sampler']} {r['steps']} steps, guidance {r['guidance']}, {r['num_samples']} samples, seed {r['seed']}",
        f"{'':22}{'bundle':>12}{'fp32 ref':>12}",
        f"{'FD-digits':22}{_fmt(r['fd_digits'], '12.3f')}{_fmt(ref['fd_digits'], '12.3f')}",
        f"{'class accuracy':22}{_fmt(r['class_accuracy'], '12.3f')}{_fmt(ref['class_accuracy'], '12.3f')}",
        f"{'PSNR vs ref (dB)':22}{_fmt(r['psnr_db'], '12.2f')}{'—':>12}",
        f"{'SSIM vs ref':22}{_fmt(r['ssim'], '12.4f')}{1.0:12.4f}",
    ]
    if "trajectory_rel_error" in r:
        rows.append(f"{'trajectory rel error':22}{r['trajectory_rel_error']['mean']:12.2e}{'—':>12}")
    else:  # a text-to-image bundle: one image per prompt
        rows[0] = rows[0].replace("samples", "prompts")
        rows.append(f"{'max abs error [0, 1]':22}{r['max_abs_error']:12.2e}{'—':>12}")
        rows.append(f"reference: {ref['runtime']}" + (f" ({ref['why']})" if ref.get("why") else ""))
    return "\n".join(rows)


# ---------------------------------------------------------------- distill
def cmd_distill(a) -> int:
    """Step distillation (src/edgediff/distill/distill.py); `--nproc N` relaunches under torchrun, rank 0 writes."""
    import os

    from edgediff.compiler.capture import load_source
    from edgediff.distill.distill import DistillOptions, distill, save_student
    from edgediff.training import DistContext, relaunch_under_torchrun

    out = Path(a.output)
    if out.exists() and not out.is_dir():
        raise EdgediffError(f"{out}: exists and is a file; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "edgediff_student.json").exists():
        raise EdgediffError(f"{out}: exists and is not a student folder; refusing to replace it")
    opts = options_from_args(DistillOptions, a)
    if opts.guidance_range is not None and not a.guidance_distill:
        raise EdgediffError("--guidance-range needs --guidance-distill")
    if a.data is not None and not Path(a.data).is_file():
        raise EdgediffError(f"--data {a.data}: no such file")
    if a.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return relaunch_under_torchrun(a.nproc)
    dist = DistContext.from_env()
    try:
        student = distill(
            load_source(a.source),
            method=a.method,
            steps=a.steps,
            guidance=a.guidance,
            guidance_distill=a.guidance_distill,
            data=a.data,
            options=opts,
            dist=dist,
        )
        if dist.is_main:
            save_student(student, out)
        dist.barrier()
    finally:
        dist.close()
    if dist.is_main:
        r = student.record
        for s in r["stages"]:
            print(f"stage -> {s['student_steps']:>3} steps   final loss {s['final_loss']:.4g}   {s['seconds']:.1f} s")
        print(
            f"wrote {out}: {r['method']} student, {r['sampler']} {r['steps']} steps, guidance "
            f"{r['guidance']['mode']} ({r['guidance']['scale']:g}), {r['world_size']} process(es), "
            f"{r['train_seconds']:.0f} s"
        )
    return 0


DISTILL_HELP = "distil a model into a 1-8 step student (progressive or consistency)"


def add_distill_parser(sub) -> None:
    from edgediff.distill.distill import METHODS, DistillOptions, distill

    verb = verb_defaults(distill)
    d = sub.add_parser("distill", help=DISTILL_HELP)
    d.add_argument("source", help="builtin:NAME, a diffusers folder, or package.module:factory (the teacher)")
    d.add_argument(
        "--method",
        required=True,
        choices=METHODS,
        help="progressive: halve the steps stage by stage; consistency: one consistency-training run",
    )
    d.add_argument(
        "--steps",
        type=positive_int,
        default=verb["steps"],
        help=f"the student's sampling steps (default {verb['steps']})",
    )
    d.add_argument(
        "--guidance-distill",
        action="store_true",
        default=verb["guidance_distill"],
        help="the student takes the guidance scale as an input: one forward pass per step",
    )
    d.add_argument(
        "--guidance",
        type=float,
        default=verb["guidance"],
        help=f"the teacher's classifier-free guidance scale (default {verb['guidance']:g}); the student's default",
    )
    d.add_argument(
        "--data",
        default=verb["data"],
        metavar="NPZ",
        help="training images: 'images' (N,C,H,W) in [-1,1] [+ 'labels']; builtin:digits has its own",
    )
    add_options(d, DistillOptions)
    d.add_argument("--nproc", type=positive_int, default=1, help="processes (DDP under torchrun, gloo on CPU)")
    d.add_argument("-o", "--output", required=True, help="student model folder to write")
    d.set_defaults(func=cmd_distill)


# ---------------------------------------------------------------- inspect / targets
def cmd_inspect(a) -> int:
    b = _load(a.bundle)
    if a.json:
        _write_json({"root": str(b.root), "manifest": b.manifest, "scheduler": b.scheduler, "report": b.report}, None)
        return 0
    print(format_report(b))
    print("files")
    for name, rec in b.manifest["files"].items():
        print(f"  {name:28} {rec['bytes']:>10,} B  sha256 {rec['sha256'][:16]}…")
    print("inputs  " + ", ".join(f"{i['name']} {i['dtype']}{i['shape']}" for i in b.manifest["model"]["inputs"]))
    print("outputs " + ", ".join(f"{o['name']} {o['dtype']}{o['shape']}" for o in b.manifest["model"]["outputs"]))
    return 0


def cmd_targets(a) -> int:
    from edgediff.targets import available_targets, load_target
    from edgediff.targets.listing import format_targets_table, targets_json

    profiles = [load_target(n) for n in available_targets()]
    if a.json:
        _write_json(targets_json(profiles), None)
    else:
        print(format_targets_table(profiles))
    return 0


# ---------------------------------------------------------------- bench / report (src/edgediff/tools/bench.py, report.py)
def cmd_bench(a) -> int:
    from edgediff.tools.bench import bench, format_result

    _check_json_dest(a.json)
    remote = {
        "runner_libs": a.runner_libs,
        "identity": a.identity,
        "ssh_options": tuple(a.ssh_option or ()),
        "adb": a.adb,
        "keep": a.keep_remote,
    }
    if a.device == "host" and a.runner == "python":
        bar = _bar(1 + a.warmup_runs + a.num_runs, "bench", "run")
    elif a.device.startswith(("ssh://", "adb:")):
        bar = _bar(3 if a.keep_remote else 4, "bench " + a.device, "stage")
    else:
        bar = None
    try:
        result = bench(
            a.bundle,
            device=a.device,
            warmup_runs=a.warmup_runs,
            num_runs=a.num_runs,
            runner=a.runner,
            runner_binary=a.runner_binary,
            threads=a.threads,
            remote=remote,
            bar=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    if a.json:
        _write_json(result, a.json)
    if a.json != "-":
        print(format_result(result))
    return 0


def cmd_report(a) -> int:
    from edgediff.tools.report import make_report

    out = make_report(
        a.bundles,
        a.output,
        num_samples=a.num_samples,
        seed=a.seed,
        bench_json=a.bench_json or (),
        warmup_runs=a.warmup_runs,
        num_runs=a.num_runs,
    )
    print(f"wrote {out['markdown']}: {len(a.bundles)} bundle(s), figures " + ", ".join(out["figures"]))
    return 0


def add_bench_parsers(sub) -> None:
    b = sub.add_parser("bench", help="latency, memory, size and coverage of a bundle on a device (or an estimate)")
    b.add_argument("bundle")
    b.add_argument(
        "--device",
        default="host",
        help="host | ssh://USER@HOST[:PORT] | adb:SERIAL | a device profile (estimate, see `edgediff targets`)",
    )
    b.add_argument("--warmup-runs", type=nonneg_int, default=2)
    b.add_argument("--num-runs", type=positive_int, default=10)
    b.add_argument("--threads", type=nonneg_int, default=0, help="backend threads (0: the backend's default)")
    b.add_argument(
        "--runner",
        choices=["python", "c"],
        default="python",
        help="host: the bundle's backend in a Python worker (default) or edgediff-run (OpenVINO)",
    )
    b.add_argument(
        "--runner-binary",
        metavar="PATH",
        help="edgediff-run to use (default csrc/build/edgediff-run); for a remote device, one built for it",
    )
    b.add_argument(
        "--runner-libs",
        metavar="DIR",
        help="remote: the libraries to copy with the runner (default: the local openvino wheel's)",
    )
    b.add_argument("--identity", metavar="KEY", help="ssh: private key file")
    b.add_argument("--ssh-option", action="append", metavar="OPT", help="ssh: -o OPT (repeatable)")
    b.add_argument("--adb", default="adb", help="adb: the adb program")
    b.add_argument("--keep-remote", action="store_true", help="remote: keep the copied files")
    b.add_argument("--json", metavar="PATH", help="write the result as JSON ('-' for stdout only)")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser("report", help="Markdown + PNG report: quality vs latency, latency, size, images")
    r.add_argument("bundles", nargs="+", metavar="BUNDLE")
    r.add_argument("-o", "--output", required=True, help="folder for report.md, report.json and the PNGs")
    r.add_argument(
        "-n", "--num-samples", type=positive_int, default=64, help="images per bundle for the quality figures"
    )
    r.add_argument("--seed", type=nonneg_int, default=0)
    r.add_argument(
        "--bench-json",
        action="append",
        metavar="JSON",
        help="a result of `edgediff bench --json` to use instead of measuring that bundle (repeatable)",
    )
    r.add_argument("--warmup-runs", type=nonneg_int, default=1)
    r.add_argument("--num-runs", type=positive_int, default=5)
    r.set_defaults(func=cmd_report)


# ---------------------------------------------------------------- zoo
def cmd_zoo_train(a) -> int:
    from edgediff.zoo import train

    if a.model == "digits-sd":
        return train.run_digits_sd(a.steps, a.seed, a.output)
    if a.model == "digits":
        fn, steps, seed, out = train.train_digits_unet, train.UNET_STEPS, train.UNET_SEED, train.UNET_OUT
    else:
        fn, steps, seed, out = (
            train.train_digits_classifier,
            train.CLASSIFIER_STEPS,
            train.CLASSIFIER_SEED,
            train.CLASSIFIER_OUT,
        )
    result = fn(steps=a.steps or steps, seed=seed if a.seed is None else a.seed, out_path=a.output or out)
    print(
        f"wrote {result.path}: {result.steps} steps, seed {result.seed}, final loss {result.final_loss:.4f}, "
        f"{result.seconds:.0f} s"
    )
    return 0


# ---------------------------------------------------------------- prune
def cmd_prune(a) -> int:
    import os

    from edgediff.compiler.jobs import prune_to_dir
    from edgediff.prune.prune import FINETUNE_OFF_WARNING, FinetuneOptions, PruneOptions, check_ratio
    from edgediff.training import DistContext, relaunch_under_torchrun

    check_ratio(a.ratio)  # before relaunching, so a bad ratio (or option) is one clear line
    options = options_from_args(PruneOptions, a)
    tune = options_from_args(FinetuneOptions, a)
    if tune.steps == 0 and int(os.environ.get("RANK", "0")) == 0:
        print(f"edgediff: warning: {FINETUNE_OFF_WARNING}", file=sys.stderr)
    if a.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return relaunch_under_torchrun(a.nproc)
    dist = DistContext.from_env()
    if tune.threads:  # the Taylor pass too, not only the fine-tune: 2 OpenMP threads crawl on a loaded machine
        import torch

        torch.set_num_threads(tune.threads)
    try:
        log = print if dist.is_main else (lambda *_: None)
        prune_to_dir(a.source, a.output, ratio=a.ratio, options=options, finetune=tune, data=a.data, dist=dist, log=log)
        log(f"wrote {a.output} (compile it with: edgediff compile {a.output} -o BUNDLE)")
    finally:
        dist.close()
    return 0


layer_ratio = pattern_value  # PATTERN=R (benchmarks/prune.py parses its flag with it)


PRUNE_HELP = "structured pruning (+ recovery fine-tune) into a folder compile reads"


def add_prune_parser(sub) -> None:
    from edgediff.compiler.jobs import prune_to_dir
    from edgediff.prune.prune import FinetuneOptions, PruneOptions

    verb = verb_defaults(prune_to_dir)
    p = sub.add_parser("prune", help=PRUNE_HELP)
    p.add_argument("source", help="builtin:NAME or a diffusers folder (UNet2DModel, DiTTransformer2DModel)")
    p.add_argument("--ratio", type=float, required=True, help="fraction of channels removed, in (0, 1)")
    add_options(p, PruneOptions)
    add_options(p, FinetuneOptions)
    p.add_argument("--data", default=verb["data"], metavar="NPZ", help="training images (builtin:digits has its own)")
    p.add_argument("--nproc", type=positive_int, default=1, help="processes (relaunches under torchrun, DDP)")
    p.add_argument("-o", "--output", required=True, help="pruned model folder to write")
    p.set_defaults(func=cmd_prune)


COMPILE_HELP = "compile a model source into a verified bundle"


def add_compile_parser(sub) -> None:
    from edgediff.compiler.pipeline import compile_model
    from edgediff.compiler.recipe import Recipe
    from edgediff.quantize.w8a8 import QuantizeOptions

    target = verb_defaults(compile_model)["target"]
    c = sub.add_parser("compile", help=COMPILE_HELP)
    c.add_argument("source", help="builtin:NAME, a diffusers folder, or package.module:factory")
    c.add_argument("--target", default=target, help=f"device profile (see `edgediff targets`; default {target})")
    add_options(c, Recipe, unset=SOURCE_DEFAULTS, unset_note=SOURCE_NOTE)
    c.add_argument("-o", "--output", required=True, help="bundle folder to write")
    c.add_argument("--json", action="store_true", help="print manifest and report as JSON")
    q = c.add_argument_group("quantization (src/edgediff/quantize/w8a8.py)")
    add_options(q, QuantizeOptions)
    c.set_defaults(func=cmd_compile)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; given `command`, the compile, calibrate, distill and prune parsers
    are filled in only for that command (their options dataclasses live in modules that import
    torch and the converters, which `edgediff generate` or `edgediff --help` need not wait for)."""
    from edgediff.cli import calibrate

    p = argparse.ArgumentParser(prog="edgediff", description="Deployment compiler for diffusion models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def heavy(name: str, add, help_text: str) -> None:
        if command is None or command == name:
            add(sub)
        else:
            sub.add_parser(name, help=help_text)  # listed by `edgediff --help`

    heavy("compile", add_compile_parser, COMPILE_HELP)
    heavy("calibrate", calibrate.add_calibrate_parser, calibrate.HELP)
    heavy("distill", add_distill_parser, DISTILL_HELP)

    g = sub.add_parser("generate", help="sample images from a bundle")
    g.add_argument("bundle")
    g.add_argument(
        "-n", "--num", type=positive_int, default=None, help="images (default 16; a text bundle: 4 of --prompt)"
    )
    g.add_argument("--seed", type=nonneg_int, default=0)
    g.add_argument("--label", type=int, default=None, help="class label for every image (default: 0,1,2,…)")
    g.add_argument("--prompt", default=None, help="text-to-image bundles: the prompt of every image")
    g.add_argument("--prompts", metavar="FILE", default=None, help="text-to-image: one prompt a line, an image each")
    g.add_argument("--negative-prompt", default="", help="text-to-image: the negative prompt (default empty)")
    g.add_argument("--guidance", type=float, default=None, help="text-to-image: guidance scale (default: the bundle's)")
    g.add_argument("--latents", metavar="NPY", default=None, help="text-to-image: initial latents (N, C, h, w) float32")
    g.add_argument(
        "--npy", metavar="FILE", default=None, help="also write the images as float32 (N, H, W, 3) in [0, 1]"
    )
    g.add_argument("-o", "--output", required=True, help="image grid (.png, .pgm, .ppm)")
    g.add_argument(
        "--loop",
        choices=["c", "python"],
        default=None,
        help="sampling loop: the C runtime (default) or the Python reference (the default with --latents)",
    )
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="fidelity of a bundle against its FP32 reference")
    e.add_argument("bundle")
    e.add_argument("-n", "--num-samples", type=positive_int, default=None, help="images (default 500; not for text)")
    e.add_argument("--prompts", metavar="FILE", default=None, help="text-to-image: one prompt a line, an image each")
    e.add_argument("--negative-prompt", default=None, help="text-to-image: the negative prompt (default empty)")
    e.add_argument("--guidance", type=float, default=None, help="text-to-image: guidance scale (default: the bundle's)")
    e.add_argument("--seed", type=nonneg_int, default=0)
    e.add_argument("--json", metavar="PATH", help="write the figures as JSON ('-' for stdout)")
    e.add_argument("--grid", metavar="PNG", help="also write reference (top) vs bundle (bottom) images")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("inspect", help="show a bundle's manifest, files and report")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    add_bench_parsers(sub)

    t = sub.add_parser("targets", help="list device profiles")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_targets)

    z = sub.add_parser("zoo", help="the builtin models")
    zs = z.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    zt = zs.add_parser("train", help="retrain a builtin model's committed weights (seeded)")
    zt.add_argument("model", choices=["digits", "classifier", "digits-sd"])
    zt.add_argument("--steps", type=positive_int, default=None)
    zt.add_argument("--seed", type=nonneg_int, default=None)
    zt.add_argument("-o", "--output", default=None, help="weights file (default: the package's own)")
    zt.set_defaults(func=cmd_zoo_train)

    heavy("prune", add_prune_parser, PRUNE_HELP)

    bd = sub.add_parser("build", help="run a recipe's stages in order: prune -> distill -> compile (quantize + lower)")
    bd.add_argument(
        "recipe", help="recipe TOML (source, [prune], [distill], [compile]; see src/edgediff/compiler/build.py)"
    )
    bd.add_argument("-o", "--output", required=True, help="bundle folder (stage outputs go to OUTPUT.stages/)")
    bd.set_defaults(func=cmd_build)
    return p


def cmd_build(a) -> int:
    """edgediff build: src/edgediff/compiler/build.py."""
    from edgediff.compiler.build import build
    from edgediff.compiler.pipeline import STAGES

    bar = None

    def progress(stage):
        nonlocal bar
        if bar is None:
            bar = _bar(len(STAGES) + 1, "compile", "stage")
        bar.set_postfix_str(stage)
        bar.update(0 if stage == "capture" else 1)

    try:
        b = build(a.recipe, a.output, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    m = b.manifest
    print(
        f"wrote {b.root}: {m['source']['spec']} for {m['target']}, {m['model']['format']} "
        f"{m['model']['precision']}, {b.scheduler['solver']} {len(b.scheduler['plan']['timesteps'])} steps"
    )
    return 0


def _quiet_optional_packages() -> None:
    """torchao (a dependency of the tflite extra) is imported by diffusers when present and logs
    warnings about CUDA kernels on every run; the CLI's stderr is kept for edgediff's own errors."""
    import logging

    for name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _quiet_optional_packages()
    argv = sys.argv[1:] if argv is None else argv
    command = next((x for x in argv if not x.startswith("-")), "")  # the top level takes no valued option
    args = build_parser(command).parse_args(argv)
    try:
        return args.func(args)
    except EdgediffError as e:
        print(f"edgediff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgediff: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:  # SIGTERM while writing: staging already removed by the unwinding
        print(f"edgediff: {e}", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
