"""The compile pipeline: a source in, a verified bundle out.

    capture -> plan -> calibrate -> coverage -> lower -> quantize -> verify -> write

`plan` resolves the route for (recipe.quantize, profile.format) in ROUTES (routes.py): what the
lower stage writes, the quantize function, the lowering step after it and the route's
constraints; the precision is the scheme's, else the recipe's, else the first the profile lists
that the lowering writes.

Each stage is a function from the compile state to the next state plus a record;
`compile_model` runs them in order, times each one, and report.json holds every stage's record
under the stage's name.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from edgediff import __version__
from edgediff.compiler import bundle as bundle_io
from edgediff.compiler import cache as cache_stage
from edgediff.compiler import text as text_stage
from edgediff.compiler.capture import load_source, plan_options
from edgediff.compiler.coverage import coverage as op_coverage
from edgediff.compiler.coverage import onnx_op_counts
from edgediff.compiler.recipe import Recipe
from edgediff.compiler.routes import QuantizeJob, Route, resolve
from edgediff.compiler.verify import verify
from edgediff.core.errors import EdgediffError
from edgediff.core.files import staging
from edgediff.core.spec import ModelSpec
from edgediff.core.stats import count_macs, count_params
from edgediff.distill.distill import bind_guidance
from edgediff.lower.onnx import export_onnx
from edgediff.lower.registry import LOWERINGS, Lowered, runnable_here, static_batch_for
from edgediff.quantize.calibration.record import record_trajectories
from edgediff.quantize.w8a8 import QuantizedModel, load_calib_for
from edgediff.runtimes.backends import model_signature, open_denoiser
from edgediff.runtimes.bundle import Bundle, load_bundle, size_bytes
from edgediff.runtimes.groups import grouped_denoiser
from edgediff.runtimes.samplers import get_solver
from edgediff.targets import TargetProfile, load_target


@dataclass
class State:
    model: ModelSpec
    target: TargetProfile
    recipe: Recipe
    work: Path
    out: Path | None = None
    records: dict = field(default_factory=dict)  # stage name -> its record
    timings: dict = field(default_factory=dict)  # stage name -> seconds
    t_start: float = 0.0  # time.perf_counter() when the compile began (timings_s "total")
    extra_manifest: dict | None = None
    distilled: dict | None = None  # scheduler.json "distilled" (a step-distilled student)
    deploy_recipe: Recipe | None = None  # the recipe as asked (the manifest's); `recipe` is what runs
    plan: object = None
    route: Route | None = None
    precision: str | None = None  # the bundle's precision (int8 / int4 for a quantize scheme)
    calib: object = None  # the recipe's calibration set (CalibrationSet), from the calibrate stage
    export: Path | None = None  # fp32 ONNX export (dynamic batch): op types for coverage, input to lowerings
    lowered: Lowered | None = None
    model_file: Path | None = None
    quantized: QuantizedModel | None = None
    components: dict | None = None  # a text-to-image pipeline's other graphs: name -> Lowered (compiler/text.py)
    cache: cache_stage.Split | None = None  # the full / shallow pair (--cache, compiler/cache.py)
    cache_flags: tuple[bool, ...] | None = None  # per plan step: True = the shallow graph on the cached feature
    shallow_file: Path | None = None
    component_precision: str | None = None  # their precision (float: a quantize scheme is the denoiser's)


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
    opts = plan_options(s.model, r.sampler)  # a pipeline scheduler's steps_offset, set_alpha_to_one, ...
    s.plan = get_solver(r.sampler).plan(s.model.schedule, r.steps, spacing=r.spacing, **opts)
    _check_finite_at_last_step(s)
    s.route, s.precision = resolve(
        s.target, scheme=r.quantize, precision=r.precision, weights=r.weights, groups=r.groups
    )
    auto = r.cache_auto()  # --cache-schedule auto:K: placed below, on the FP32 trajectory
    s.cache_flags = None if auto is not None else r.cached_steps()
    cache = None
    if s.cache_flags is not None or auto is not None:  # checked before any export: the format, the model, the depth
        cache_stage.check_format(s.target.format, s.target.name)
        s.cache = cache_stage.split(s.model, r.cache_depth)
        chosen = {}
        if auto is not None:
            prompts = text_stage.calibration_prompts(s.model, r)[0] if s.model.text is not None else None
            s.cache_flags, chosen = cache_stage.choose_schedule(
                s.model,
                s.cache,
                sampler=r.sampler,
                steps=r.steps,
                guidance=r.guidance,
                spacing=r.spacing,
                plan_options=opts,
                full=auto,
                prompts=prompts,
            )
        cache = {
            **({"auto": chosen} if chosen else {}),
            "depth": s.cache.depth,
            "feature_shape": list(s.cache.feature_shape),
            "full_steps": s.cache_flags.count(False),
            "cached_steps": s.cache_flags.count(True),
            "macs_per_image": cache_stage.macs_per_image(s.model, s.cache),
        }
    return {
        "solver": r.sampler,
        "steps": r.steps,
        "timesteps": [int(t) for t in s.plan.timesteps],
        "scheme": r.quantize,
        "format": s.target.format,
        "precision": s.precision,
        **({"scheduler_options": opts} if opts else {}),
        **({"cache": cache} if cache else {}),
    }


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


def calibrate(s: State) -> dict | None:
    """The quantize pass's data: the user's calib.npz (checked against the plan) or trajectories
    of the recipe's own sampler recorded here. None for routes that need no activation ranges."""
    r = s.recipe
    if not s.route.calibrate:
        return None
    text = {}
    if r.calib:
        s.calib = load_calib_for(r.calib, s.model, s.plan)
    else:
        kwargs = {}
        if s.model.text is not None:  # prompts embedded by the pipeline's text encoder, the negative "" (text.py)
            kwargs, text = text_stage.calibration_inputs(s, plan_options(s.model, r.sampler))
        s.calib = record_trajectories(
            s.model,
            sampler=r.sampler,
            steps=r.steps,
            guidance=r.guidance,
            spacing=r.spacing,
            num_samples=r.calib_samples,
            seed=r.quant_options.seed,
            **kwargs,
        )
    meta = s.calib.meta.to_dict()
    keep = ("source", "sampler", "steps", "guidance", "seed", "num_samples")
    return {"file": r.calib, "rows": len(s.calib), **{k: meta[k] for k in keep if k in meta}, **text}


def coverage(s: State) -> dict:
    s.export = s.work / "ir" / "denoiser.onnx"
    s.export.parent.mkdir()
    export_onnx(s.model, s.export)
    return op_coverage(
        s.target,
        onnx_op_counts(s.export),
        precision=s.precision,
        fmt=s.target.format,
        decomposes=LOWERINGS[s.target.format].decomposes,
    )


def _guided(s: State) -> bool:
    return s.recipe.guidance != 1.0 and s.model.conditioning.kind in GUIDABLE


def lower(s: State) -> dict:
    low = LOWERINGS[s.route.lowers]
    precision = s.route.writes or s.precision
    static = static_batch_for(_guided(s)) if (s.target.static_shapes or low.always_static) else None
    if s.cache is not None:  # the full / shallow pair in place of the one graph
        s.lowered, s.shallow_file, _ = cache_stage.lower_pair(
            s.model, s.cache, s.work / "model", fmt=s.target.format, precision=precision, static_batch=static
        )
    else:
        s.lowered = low(
            s.model, s.work / "model", precision=precision, ir=s.export, static_batch=static, weights=s.recipe.weights
        )
    s.lowered = replace(s.lowered, runtime=s.lowered.runtime | s.route.runtime)
    s.model_file = s.lowered.file
    extra = {}
    if s.model.text is not None:  # the pipeline's other graphs beside the denoiser, and its tokenizer
        extra["components"] = text_stage.lower_components(s, precision=precision)
    return {
        "format": s.target.format,
        "lowering": s.route.lowers,
        "precision": precision,
        "weights": s.recipe.weights,
        "file": s.model_file.relative_to(s.work).as_posix(),
        "bytes": size_bytes(s.work / "model"),
        **{k: v for k, v in s.lowered.record.items() if k != "structural"},
        **extra,
    }


def quantize_stage(s: State) -> dict | None:
    route, r = s.route, s.recipe
    if route.quantize is None:
        return None
    job = QuantizeJob(
        model=s.model,
        calib=s.calib,
        export=s.export,
        lowered=s.lowered,
        plan=s.plan,
        groups=r.groups,
        options=r.quant_options,
        target_features=tuple(s.target.features or ()),
    )
    s.quantized = route.quantize(job)
    if route.then is not None:  # a lowering step of the route after the pass (OpenVINO IR from QDQ)
        s.lowered = route.then(s.quantized, s.lowered)
        s.quantized.record["lowered"] = s.lowered.record
    s.model_file = s.quantized.files[0]
    return s.quantized.record


def check(s: State) -> dict:
    fmt = s.target.format
    if not runnable_here(fmt):  # e.g. Core ML off macOS: the lowering's structural check
        return s.lowered.record.get("structural") or {"numerics": f"not run: no {fmt} backend on this host"}
    if s.quantized is not None:
        denoise = grouped_denoiser(s.work, _groups_entry(s), s.plan.model_timesteps, model_file=s.model_file, fmt=fmt)
        record = verify(s.model, denoise, precision=s.recipe.quantize, label=getattr(denoise, "label", "ONNX Runtime"))
    elif s.cache is not None:  # the full graph's eps at 8 timesteps, then the split and whole images
        return _check_cached(s)
    else:
        denoise = open_denoiser(s.model_file, fmt)
        record = verify(s.model, denoise, precision=s.precision, label=getattr(denoise, "label", fmt))
    if s.model.text is not None:  # each component against PyTorch, then whole images against diffusers
        record["components"] = text_stage.verify_components(s)
        record["images"] = text_stage.verify_images(s, denoise, _groups_entry(s))
    if not s.target.detected:  # a device profile, not this machine
        record["note"] = f"run on this host's CPU, not on {s.target.name}'s {s.records['coverage']['unit']}"
    return record


def _check_cached(s: State) -> dict:
    from edgediff.runtimes.cache import cached_denoiser
    from edgediff.runtimes.runner import SamplingSetup, default_labels

    manifest = {"model": {"format": s.target.format, "file": _rel(s, s.model_file)}, "cache": _manifest_cache(s)}
    denoise = cached_denoiser(s.work, manifest)
    record = verify(s.model, denoise, precision=s.precision, label=denoise.label)
    setup = SamplingSetup(
        plan=s.plan,
        guidance=s.recipe.guidance if s.model.conditioning.kind in GUIDABLE else 1.0,
        conditioning=s.model.conditioning.to_dict(),
        sample_shape=tuple(s.model.sample_shape),
        steps=cache_stage.step_table(s.cache_flags),
    )
    record["cache"] = {"split": cache_stage.verify_split(s.model, s.cache)}
    if s.model.text is not None:  # the components as for any text bundle (the full graph's eps is the model's)
        record["components"] = text_stage.verify_components(s)
        record["images"] = text_stage.verify_images(
            s, open_denoiser(s.model_file, s.target.format)
        )  # the full graph, uncached
        record["cache"]["images"] = cache_stage.verify_text_images(
            s.model,
            s.cache,
            s.work,
            manifest,
            setup,
            components=s.components,
            precision=s.precision,
            prompts=text_stage.CHECK_PROMPTS,
        )
    else:
        record["cache"]["images"] = cache_stage.verify_images(
            s.model, s.cache, s.work, manifest, setup, precision=s.precision, labels=default_labels(setup, 4)
        )
    if not s.target.detected:
        record["note"] = f"run on this host's CPU, not on {s.target.name}'s {s.records['coverage']['unit']}"
    return record


def _rel(s: State, path: Path) -> str:
    return path.relative_to(s.work).as_posix()


def _manifest_cache(s: State) -> dict | None:
    """manifest.json "cache": the shallow graph and its signature, the feature, the split's depth."""
    if s.cache is None:
        return None
    fmt = s.target.format
    shallow = {"file": _rel(s, s.shallow_file), **model_signature(s.shallow_file, fmt)}
    shared = s.lowered.record.get("shared_weights")
    return {
        "shallow": shallow,
        "feature": {"name": "cached_feature", "shape": list(s.cache.feature_shape)},
        "depth": s.cache.depth,
        "shared_weights": shared,
        "macs_per_image": s.records["plan"]["cache"]["macs_per_image"],
    }


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


def write(s: State) -> dict:
    """Drop the export, write scheduler.json, report.json and manifest.json, verify and rename
    the bundle into place (compiler/bundle.py). The record lists the model files and their bytes."""
    shutil.rmtree(s.export.parent)  # the export is not part of the bundle
    files = {}  # as manifest.json lists them: a .mlpackage folder is one entry
    for p in sorted(s.work.rglob("*")):
        in_package = any(d.suffix == ".mlpackage" for d in p.relative_to(s.work).parents)
        if (p.is_file() and not in_package) or (p.is_dir() and p.suffix == ".mlpackage"):
            files[p.relative_to(s.work).as_posix()] = size_bytes(p)
    model_bytes = sum(size_bytes(f) for f in (s.work / "model").iterdir())
    s.records["write"] = {"files": files, "bytes": sum(files.values()), "model_bytes": model_bytes}
    s.timings["total"] = time.perf_counter() - s.t_start  # report.json is written below: its own time is not in it
    bundle_io.publish(s.work, s.out, manifest=_manifest(s), scheduler=_scheduler(s), report=_report(s))
    return s.records["write"]


STAGES = [
    ("capture", capture),
    ("plan", plan),
    ("calibrate", calibrate),
    ("coverage", coverage),
    ("lower", lower),
    ("quantize", quantize_stage),
    ("verify", check),
    ("write", write),
]


def _scheduler(s: State) -> dict:
    asked = s.deploy_recipe
    scheduler = {
        "solver": asked.sampler,
        "spacing": asked.spacing,
        "plan": s.plan.to_dict(),
        "guidance_scale": s.recipe.guidance,
        "timestep_groups": _groups_entry(s),
        "cache_schedule": None
        if s.cache_flags is None
        else {"steps": ["cached" if c else "full" for c in s.cache_flags]},
    }
    if s.distilled is not None:
        scheduler["distilled"] = s.distilled
    if s.model.text is not None:
        scheduler |= text_stage.scheduler_entries(s.model)
    return scheduler


def _report(s: State) -> dict:
    """report.json: every stage's record under its name, the model's size, the stage timings."""
    model = s.model
    return {
        "source": model.source,
        "target": s.target.name,
        "model": {
            "params": s.records["capture"]["params"],
            "macs_per_step": s.records["capture"]["macs_per_step"],
            "forward_passes_per_step": 2 if _guided(s) else 1,
            "size_bytes": s.records["write"]["model_bytes"],
        },
        **s.records,
        "timings_s": {k: round(v, 3) for k, v in s.timings.items()},
    }


def _manifest(s: State) -> dict:
    model = s.model
    return {
        "created_by": f"edgediff {__version__}",
        "source": {"spec": model.source, "sha256": model.source_sha256, "description": model.description},
        "target": s.target.name,
        "recipe": asdict(s.deploy_recipe) | {"precision": s.precision},
        "model": {
            "format": s.target.format,
            "file": s.model_file.relative_to(s.work).as_posix(),
            "precision": s.precision,
            "runtime": s.lowered.runtime,
            **model_signature(s.model_file, s.target.format),
        },
        "conditioning": model.conditioning.to_dict(),
        "quantization": _manifest_quantization(s.records["quantize"]),
        "pruning": model.pruning,
        **({"cache": _manifest_cache(s)} if s.cache is not None else {}),
        "provenance": _provenance(),
        **({"components": text_stage.manifest_components(s)} if s.model.text is not None else {}),
        **(s.extra_manifest or {}),
    }


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


GUIDABLE = ("class", "text")  # conditioning kinds with a null condition to guide against


def _check_guidance(model: ModelSpec, recipe: Recipe) -> Recipe:
    """Guidance is never changed silently: a scale != 1 for a model with no null condition to guide
    against is refused, naming the flag. The Python API's default (Recipe().guidance, not asked for)
    is the one exception: it means "no guidance" for such a model."""
    if recipe.guidance == 1.0 or model.conditioning.kind in GUIDABLE:
        return recipe
    if recipe.guidance == Recipe().guidance:
        return Recipe(**{**asdict(recipe), "guidance": 1.0})
    raise EdgediffError(
        f"--guidance {recipe.guidance:g}: {model.source} has conditioning {model.conditioning.kind!r}, with no "
        "null condition to guide against; omit --guidance (or pass --guidance 1)"
    )


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
    model = load_source(source, allow_extra_tensors=recipe.allow_extra_tensors)
    timings = {"load": time.perf_counter() - t_start}
    recipe = _check_guidance(model, recipe)
    if model.text is not None:
        text_stage.check_recipe(model, recipe, profile)
    elif recipe.calib_prompts is not None:
        raise EdgediffError(
            f"--calib-prompts {recipe.calib_prompts}: {model.source} is not a text-to-image pipeline "
            f"(conditioning {model.conditioning.kind!r}); it calibrates without prompts"
        )
    model, run_recipe, distilled = _bind_student(model, recipe)
    with staging(out) as work:
        s = State(
            model=model,
            target=profile,
            recipe=run_recipe,
            work=work,
            out=out,
            timings=timings,
            t_start=t_start,
            extra_manifest=extra_manifest,
            distilled=distilled,
            deploy_recipe=recipe,
        )
        for name, stage in STAGES:
            if progress:
                progress(name)
            t0 = time.perf_counter()
            s.records[name] = stage(s)
            s.timings[name] = time.perf_counter() - t0
    return load_bundle(out)
