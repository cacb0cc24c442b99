"""The compile pipeline: a source in, a verified bundle out.

    capture -> plan -> coverage -> lower -> quantize -> verify -> write

The target profile picks the format (LOWERINGS in lowering.py), the precision (the recipe's,
else the first the profile lists that the lowering writes) and whether shapes are static.
`--quantize w8a8` lowers the fp32 ONNX graph and the quantize pass turns it into int8.

Each stage is a function from the compile state to the next state plus a record for the
report; `compile_model` runs them in order and times each one.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from edgediff import __version__
from edgediff.compiler import bundle as bundle_io
from edgediff.compiler.capture import load_source
from edgediff.compiler.coverage import coverage as op_coverage
from edgediff.compiler.coverage import onnx_op_counts
from edgediff.compiler.recipe import Recipe
from edgediff.compiler.verify import verify
from edgediff.core.errors import EdgediffError
from edgediff.core.files import staging
from edgediff.core.spec import ModelSpec
from edgediff.core.stats import count_macs, count_params
from edgediff.distill.distill import bind_guidance
from edgediff.lower.onnx import export_onnx
from edgediff.lower.openvino import lower_openvino_int8
from edgediff.lower.registry import (
    LOWERINGS,
    check_precision,
    check_weights,
    get_lowering,
    runnable_here,
    static_batch_for,
)
from edgediff.quantize.calibration.record import record_trajectories
from edgediff.quantize.w8a8 import (
    COREML_GROUPS,
    QuantizedModel,
    load_calib_for,
    quantize,
    quantize_coreml,
    quantize_tflite,
)
from edgediff.quantize.weight_only import SCHEME_TEXT, quantize_w4_onnx, quantize_w4_openvino
from edgediff.runtimes.backends import model_signature, open_denoiser
from edgediff.runtimes.bundle import Bundle, load_bundle, size_bytes
from edgediff.runtimes.groups import grouped_denoiser
from edgediff.runtimes.samplers import get_solver
from edgediff.targets import TargetProfile, load_target

# where the quantize pass's int8 graph can go (coreml: int8 weights + the kit that finishes W8A8 on macOS)
QUANTIZED_FORMATS = ("onnx", "openvino", "tflite", "coreml")
# Weight-only 4-bit (src/edgediff/quantize/weight_only.py) needs ONNX Runtime's CPU MatMulNBits kernel or OpenVINO.
W4_RUNTIMES = ("onnxruntime", "openvino")
SCHEME_PRECISION = {"w8a8": "int8", "w4": "int4"}  # the profile precision each scheme needs


@dataclass
class State:
    model: ModelSpec
    target: TargetProfile
    recipe: Recipe
    work: Path
    plan: object = None
    model_file: Path | None = None
    records: dict | None = None
    precision: str | None = None
    ir: Path | None = None  # fp32 ONNX export (dynamic batch): op types for coverage, input to onnx/openvino
    lowered: object = None
    quantized: object = None  # quantize.QuantizedModel when the recipe quantizes
    calib: object = None  # the recipe's calibration set (CalibrationSet), loaded at plan


def capture(s: State) -> dict:
    inputs = s.model.example_inputs(batch=1)
    try:  # the first time the model runs: a model that cannot run its own inputs stops here, named
        macs = count_macs(s.model.module, inputs)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in zip(s.model.input_names(), inputs))
        raise EdgediffError(
            f"{s.model.source}: the PyTorch model fails on its own inputs ({shapes}): {type(e).__name__}: {first}"
        ) from None
    return {"params": count_params(s.model.module), "macs_per_step": macs, "sample_shape": list(s.model.sample_shape)}


def plan(s: State) -> dict:
    r = s.recipe
    if r.steps > s.model.schedule.num_train_timesteps:
        raise EdgediffError(
            f"recipe: steps {r.steps} exceeds the model's {s.model.schedule.num_train_timesteps} training timesteps"
        )
    s.plan = get_solver(r.sampler).plan(s.model.schedule, r.steps, spacing=r.spacing)
    _check_finite_at_last_step(s)
    if r.quantize and r.calib:  # a bad calibration file fails before the export, not after
        s.calib = load_calib_for(r.calib, s.model, s.plan)
    return {"solver": r.sampler, "steps": r.steps, "timesteps": [int(t) for t in s.plan.timesteps]}


def _check_finite_at_last_step(s: State) -> None:
    """A model that is undefined at the plan's smallest timestep would give NaN images at the last
    step (a UNet2DModel with time_embedding_type "fourier" takes log(t) and divides by t: t = 0)."""
    t = float(np.min(s.plan.model_timesteps))
    x, _, *cond = s.model.example_inputs(batch=1)
    with torch.no_grad():
        out = s.model.module(x, torch.full((1,), t), *cond)
    if not torch.isfinite(out).all():
        raise EdgediffError(
            f"{s.model.source}: the model outputs inf/nan at timestep {t:g}, which the "
            f"{s.recipe.sampler} plan ({s.recipe.spacing} spacing) visits; choose a spacing that "
            "avoids it (--spacing trailing)"
        )


def choose_precision(target: TargetProfile, recipe: Recipe) -> str:
    fmt = target.format
    low = get_lowering(fmt, target.name)
    if recipe.quantize:  # int8 / int4 come from the quantize pass (which lowers fp32 ONNX first)
        precision = SCHEME_PRECISION[recipe.quantize]
        target.check_precision(precision)
        if recipe.quantize == "w4" and target.runtime not in W4_RUNTIMES:
            raise EdgediffError(
                f"target {target.name}: --quantize w4 runs on ONNX Runtime's CPU kernels "
                f"(MatMulNBits) or OpenVINO; this target's runtime is {target.runtime}"
            )
        if recipe.quantize == "w8a8":
            _check_quantized_format(target, recipe)
        check_weights(fmt, recipe.weights, target.name)
        return precision
    if recipe.precision is not None:
        target.check_precision(recipe.precision)  # names the precision and the target
        check_precision(fmt, recipe.precision, target.name)
        precision = recipe.precision
    else:
        usable = [p for p in target.precisions if p in low.precisions]
        if not usable:
            raise EdgediffError(
                f"target {target.name}: none of its precisions ({', '.join(target.precisions)}) "
                f"can be written by the {fmt} lowering ({', '.join(low.precisions)})"
            )
        precision = usable[0]
    check_weights(fmt, recipe.weights, target.name)
    return precision


def _check_quantized_format(target: TargetProfile, recipe: Recipe) -> None:
    """Before any export: can the quantize pass write this target's format with these groups?"""
    fmt = target.format
    if fmt not in QUANTIZED_FORMATS:
        raise EdgediffError(
            f"target {target.name}: --quantize {recipe.quantize} writes "
            f"{', '.join(QUANTIZED_FORMATS)} only; the {fmt} format has no int8 path from "
            "the quantize pass yet"
        )
    if fmt == "openvino" and recipe.groups > 1:
        raise EdgediffError(
            f"target {target.name}: timestep groups (--groups {recipe.groups}) share one "
            "weight file across ONNX graphs; OpenVINO IR takes --groups 1"
        )
    if fmt == "coreml" and recipe.groups > 1:
        raise EdgediffError(f"target {target.name}: --groups {recipe.groups}: {COREML_GROUPS}")


def coverage(s: State) -> dict:
    s.precision = choose_precision(s.target, s.recipe)
    s.ir = s.work / "ir" / "denoiser.onnx"
    s.ir.parent.mkdir()
    export_onnx(s.model, s.ir)
    return op_coverage(
        s.target,
        onnx_op_counts(s.ir),
        precision=s.precision,
        fmt=s.target.format,
        decomposes=LOWERINGS[s.target.format].decomposes,
    )


def _guided(s: State) -> bool:
    return s.recipe.guidance != 1.0 and s.model.conditioning.kind == "class"


def lower(s: State) -> dict:
    fmt = s.target.format
    low = LOWERINGS[fmt]
    precision = s.precision
    if s.recipe.quantize:  # the quantize pass starts from the fp32 ONNX graph
        if s.recipe.quantize == "w4":  # weight_only.py rewrites the fp32 ONNX graph
            precision, low = "fp32", LOWERINGS["onnx"]
        else:
            precision = "int8" if fmt == "coreml" else "fp32"  # Core ML: int8 weights; activations on macOS
            if fmt not in ("tflite", "coreml"):  # these convert from PyTorch; the pass writes into their model
                low = LOWERINGS["onnx"]
    static = static_batch_for(_guided(s)) if (s.target.static_shapes or low.always_static) else None
    s.lowered = low(
        s.model, s.work / "model", precision=precision, ir=s.ir, static_batch=static, weights=s.recipe.weights
    )
    if not (s.recipe.quantize and fmt in ("tflite", "coreml")):  # their quantize pass still reads the export
        shutil.rmtree(s.ir.parent)  # the export is not part of the bundle
    s.model_file = s.lowered.file
    return {
        "format": fmt,
        "precision": precision,
        "weights": s.recipe.weights,
        "file": s.model_file.relative_to(s.work).as_posix(),
        "bytes": size_bytes(s.work / "model"),
        **{k: v for k, v in s.lowered.record.items() if k != "structural"},
    }


def quantize_stage(s: State) -> dict | None:
    r = s.recipe
    if r.quantize is None:
        return None
    if r.quantize == "w4":
        return _quantize_w4(s)
    if s.calib is not None:
        calib = s.calib
    else:
        calib = record_trajectories(
            s.model,
            sampler=r.sampler,
            steps=r.steps,
            guidance=r.guidance,
            spacing=r.spacing,
            num_samples=r.calib_samples,
            seed=r.quant_options.seed,
        )
    if s.target.format == "tflite":  # our plan and ranges, written into the fp32 TFLite model
        s.quantized = quantize_tflite(
            s.model,
            calib,
            onnx_path=s.ir,
            tflite_path=s.model_file,
            plan=s.plan,
            scheme=r.quantize,
            groups=r.groups,
            options=r.quant_options,
        )
        shutil.rmtree(s.ir.parent)
        s.quantized.record["tflite"]["lowering"] = s.lowered.record
        return s.quantized.record
    if s.target.format == "coreml":  # int8 weights here, the activation kit for macOS in the bundle
        s.quantized = quantize_coreml(
            s.model,
            calib,
            onnx_path=s.ir,
            package=s.model_file,
            plan=s.plan,
            static_batch=s.lowered.runtime["static_batch"],
            scheme=r.quantize,
            options=r.quant_options,
        )
        shutil.rmtree(s.ir.parent)
        return s.quantized.record
    s.quantized = quantize(
        s.model,
        calib,
        onnx_path=s.model_file,
        plan=s.plan,
        scheme=r.quantize,
        groups=r.groups,
        options=r.quant_options,
        target_features=s.target.features,
    )
    s.model_file = s.quantized.files[0]
    if s.target.format == "openvino":  # our scales, as FakeQuantize in the IR
        s.lowered = lower_openvino_int8(
            s.model_file, s.model_file.parent, static_batch=s.lowered.runtime.get("static_batch")
        )
        s.model_file = s.lowered.file
        s.quantized.files[0] = s.model_file
        s.quantized.record["files"] = [s.model_file.name]
        s.quantized.record["openvino"] = s.lowered.record
    return s.quantized.record


def _quantize_w4(s: State) -> dict:
    """Weight-only 4-bit: no calibration, one graph (src/edgediff/quantize/weight_only.py)."""

    keep = s.recipe.quant_options.keep_float
    if s.target.format == "openvino":
        s.model_file, rec = quantize_w4_openvino(
            s.model_file, s.model_file.parent, keep_float=keep, static_batch=s.lowered.runtime.get("static_batch")
        )
        s.lowered.runtime["inference_precision_hint"] = "f32"
    else:
        rec = quantize_w4_onnx(s.model_file, keep_float=keep)
    record = {
        "scheme": "w4",
        "precision": "int4",
        "weights": SCHEME_TEXT,
        "weight_bits": 4,
        "activations": "fp32 (weight-only)",
        "groups": 1,
        "step_group": [0] * len(s.plan),
        "files": [s.model_file.name],
        "shared_weights": None,
        "calibration": None,
        **rec,
    }
    s.quantized = QuantizedModel(files=[s.model_file], shared=None, step_group=record["step_group"], record=record)
    return record


def check(s: State) -> dict:
    fmt = s.target.format
    if not runnable_here(fmt):  # e.g. Core ML off macOS: the lowering's structural check
        return s.lowered.record.get("structural") or {"numerics": f"not run: no {fmt} backend on this host"}
    if s.quantized is not None:
        denoise = grouped_denoiser(s.work, _groups_entry(s), s.plan.model_timesteps, model_file=s.model_file, fmt=fmt)
        record = verify(s.model, denoise, precision=s.recipe.quantize, label=getattr(denoise, "label", "ONNX Runtime"))
    else:
        denoise = open_denoiser(s.model_file, fmt)
        record = verify(s.model, denoise, precision=s.precision, label=getattr(denoise, "label", fmt))
    if not s.target.detected:  # a device profile, not this machine
        record["note"] = f"run on this host's CPU, not on {s.target.name}'s {s.records['coverage']['unit']}"
    return record


def _groups_entry(s: State) -> dict | None:
    """scheduler.json "timestep_groups": which graph serves which plan step (None: one graph)."""
    q = s.quantized
    if q is None or len(q.files) == 1:
        return None
    rel = [f.relative_to(s.work).as_posix() for f in q.files]
    return {
        "files": rel,
        "step_group": q.step_group,
        "shared_weights": q.shared.relative_to(s.work).as_posix() if q.shared else None,
    }


STAGES = [
    ("capture", capture),
    ("plan", plan),
    ("coverage", coverage),
    ("lower", lower),
    ("quantize", quantize_stage),
    ("verify", check),
]


def _manifest_quantization(record: dict | None) -> dict | None:
    """The manifest's short form; report.json keeps the per-layer scales."""
    if record is None:
        return None
    keep = (
        "scheme",
        "weights",
        "weight_bits",
        "activations",
        "groups",
        "step_group",
        "files",
        "shared_weights",
        "num_int8",
        "num_float",
        "float_layers",
        "calibration",
        "matmulnbits",
        "conv_int8",
        "int4_constants",
        "int8_constants",
    )
    return {k: record[k] for k in keep if k in record}


def _provenance() -> dict:
    import diffusers
    import onnx
    import onnxruntime

    return {
        "edgediff": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "diffusers": diffusers.__version__,
        "host": f"{platform.system()} {platform.machine()}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _bind_student(model: ModelSpec, recipe: Recipe) -> tuple[ModelSpec, Recipe, dict | None]:
    """A step-distilled student (src/edgediff/distill/distill.py): a guidance-distilled one gets the recipe's
    guidance folded into its weights and is sampled with guidance_scale 1 (one forward pass per
    step); scheduler.json records it under "distilled"."""
    if model.student is None:
        return model, recipe, None

    st = model.student
    distilled = {
        "method": st["method"],
        "steps": st["steps"],
        "guidance_mode": st["guidance"]["mode"],
        "guidance": None,
    }
    if st["guidance"]["mode"] == "distilled":
        distilled["guidance"] = recipe.guidance
        return bind_guidance(model, recipe.guidance), Recipe(**{**asdict(recipe), "guidance": 1.0}), distilled
    return model, recipe, distilled


def compile_model(
    source: str | ModelSpec,
    out: str | Path,
    *,
    target: str = "host-cpu",
    recipe: Recipe = Recipe(),
    progress=None,
    extra_manifest: dict | None = None,
) -> Bundle:
    """Compile `source` for `target` into the bundle folder `out`; returns the loaded bundle.

    `progress(stage_name)` is called before each stage (the CLI draws a bar with it).
    """
    out = Path(out)
    profile = load_target(target)
    bundle_io.check_output(out)
    t_start = time.perf_counter()
    model = load_source(source)
    timings = {"load": time.perf_counter() - t_start}
    c = model.conditioning
    if recipe.guidance != 1.0 and c.kind != "class":
        recipe = Recipe(**{**asdict(recipe), "guidance": 1.0})  # no null condition to guide against
    model, run_recipe, distilled = _bind_student(model, recipe)
    with staging(out) as work:
        s = State(model=model, target=profile, recipe=run_recipe, work=work, records={})
        for name, stage in STAGES:
            if progress:
                progress(name)
            t0 = time.perf_counter()
            s.records[name] = stage(s)
            timings[name] = time.perf_counter() - t0
        sig = model_signature(s.model_file, profile.format)
        precision = (
            SCHEME_PRECISION[run_recipe.quantize] if s.quantized is not None else s.records["lower"]["precision"]
        )
        model_bytes = sum(size_bytes(f) for f in (s.work / "model").iterdir())
        scheduler = {
            "solver": recipe.sampler,
            "spacing": recipe.spacing,
            "plan": s.plan.to_dict(),
            "guidance_scale": run_recipe.guidance,
            "timestep_groups": _groups_entry(s),
            "cache_schedule": None,
        }
        if distilled is not None:
            scheduler["distilled"] = distilled
        report = {
            "source": model.source,
            "target": profile.name,
            "model": {
                "params": s.records["capture"]["params"],
                "macs_per_step": s.records["capture"]["macs_per_step"],
                "forward_passes_per_step": 2 if (run_recipe.guidance != 1.0 and c.kind == "class") else 1,
                "size_bytes": model_bytes,
            },
            "lowering": s.records["lower"],
            "coverage": s.records["coverage"],
            "quantization": s.records["quantize"],
            "verification": s.records["verify"],
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
        }
        manifest = {
            "created_by": f"edgediff {__version__}",
            "source": {"spec": model.source, "sha256": model.source_sha256, "description": model.description},
            "target": profile.name,
            "recipe": asdict(recipe) | {"precision": precision},
            "model": {
                "format": profile.format,
                "file": s.model_file.relative_to(s.work).as_posix(),
                "precision": precision,
                "runtime": s.lowered.runtime,
                **sig,
            },
            "conditioning": c.to_dict(),
            "quantization": _manifest_quantization(s.records["quantize"]),
            "pruning": model.pruning,
            "provenance": _provenance(),
            **(extra_manifest or {}),
        }
        if progress:
            progress("write")
        report["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
        bundle_io.publish(work, out, manifest=manifest, scheduler=scheduler, report=report)
    return load_bundle(out)
