"""One recipe, every stage: prune -> distill -> compile (quantize + lower).

    edgediff build RECIPE.toml -o BUNDLE

    source = "builtin:digits"
    [prune]                      # optional: src/edgediff/prune/prune.py
    ratio = 0.2
    importance = "taylor"        # taylor | magnitude
    finetune_steps = 500
    [distill]                    # optional: src/edgediff/distill/distill.py
    method = "progressive"       # progressive | consistency
    steps = 4
    guidance = 3.0
    guidance_distill = true
    train_steps = 300
    [compile]                    # src/edgediff/compiler/recipe.py and quantize/w8a8.py (QuantizeOptions)
    target = "host-cpu"
    quantize = "w8a8"

A section's keys are the flags of the matching command with underscores for dashes (`edgediff
prune --finetune-steps` is [prune] finetune_steps, `edgediff compile --calib-seed` is [compile]
calib_seed), with the same defaults and choices: all come from the options dataclasses
(src/edgediff/core/options.py). A repeatable flag is a list (protect = ["mid_block*"]); a switch
sets its field (defaults = "none" for --no-float-defaults, progress = false for --quiet).

Each stage's output is a model folder the next stage reads, kept in BUNDLE.stages/ (pruned/,
student/): a second run of the same recipe reuses a finished stage instead of training again
(stage.json records the settings it was made with; a change reruns that stage and the later
ones). The bundle's manifest records the recipe under "build".
"""

from __future__ import annotations

import json
import shutil
import tomllib
from dataclasses import fields, replace
from pathlib import Path

from edgediff.compiler import bundle as bundle_io
from edgediff.compiler.capture import load_source, recipe_defaults
from edgediff.compiler.jobs import prune_to_dir
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.core.options import option_names, options_from_table, verb_defaults
from edgediff.distill.distill import DistillOptions, distill, save_student
from edgediff.prune.prune import FinetuneOptions, PruneOptions
from edgediff.quantize.w8a8 import QuantizeOptions

# Each section's keys are the matching command's flags (dashes as underscores): the verb's own
# arguments, then its options dataclasses' fields (src/edgediff/core/options.py).
PRUNE_VERB = ("ratio", "data")  # compiler.jobs.prune_to_dir
DISTILL_VERB = ("method", "steps", "guidance", "guidance_distill", "data")  # distill.distill
BUILD_SETS = {"checkpoint_dir"}  # DistillOptions field the build points at BUNDLE.stages/
TOP_KEYS = {"source", "prune", "distill", "compile"}


def _distill_fields() -> tuple[str, ...]:
    return tuple(f.name for f in fields(DistillOptions) if f.name not in BUILD_SETS)


def section_keys(section: str) -> set[str]:
    """The keys a recipe section takes."""

    if section == "prune":
        return set(PRUNE_VERB) | option_names(PruneOptions) | option_names(FinetuneOptions)
    if section == "distill":
        return set(DISTILL_VERB) | option_names(DistillOptions, only=_distill_fields())
    return {"target"} | option_names(Recipe) | option_names(QuantizeOptions)


def _check(section: dict, allowed: set[str], where: str) -> dict:
    if not isinstance(section, dict):
        raise EdgediffError(f"{where}: must be a table")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise EdgediffError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return section


def _verb_args(fn, section: dict, names, where: str) -> dict:
    """The verb arguments `section` sets, checked against the type of the verb's default."""
    defaults = verb_defaults(fn)
    out = {}
    for name in names:
        if name not in section:
            continue
        v, default = section[name], defaults.get(name)
        if isinstance(default, bool) and not isinstance(v, bool):
            raise EdgediffError(f"{where}: field {name} must be true or false, got {v!r}")
        if isinstance(default, int | float) and not isinstance(default, bool):
            ok = isinstance(v, int | float) and not isinstance(v, bool)
            if not ok or (isinstance(default, int) and isinstance(v, float)):
                kind = "an integer" if isinstance(default, int) else "a number"
                raise EdgediffError(f"{where}: field {name} must be {kind}, got {v!r}")
            v = type(default)(v)
        if default is None or isinstance(default, str):
            if not isinstance(v, str):
                raise EdgediffError(f"{where}: field {name} must be a string, got {v!r}")
        out[name] = v
    return out


def prune_stage_args(p: dict, where: str) -> tuple[dict, PruneOptions, FinetuneOptions]:
    """[prune] -> (prune_to_dir's ratio and data, its options, the fine-tune's options)."""

    if "ratio" not in p:
        raise EdgediffError(f"{where}: field ratio is required")
    verb = _verb_args(prune_to_dir, p, ("data",), where)
    if isinstance(p["ratio"], bool) or not isinstance(p["ratio"], int | float):
        raise EdgediffError(f"{where}: field ratio must be a number in (0, 1), got {p['ratio']!r}")
    verb["ratio"] = float(p["ratio"])
    return verb, options_from_table(PruneOptions, p, where), options_from_table(FinetuneOptions, p, where)


def distill_stage_args(d: dict, where: str, checkpoints: str | None = None) -> tuple[dict, DistillOptions]:
    """[distill] -> (distill's method, steps, guidance, guidance_distill and data; its options)."""
    verb = _verb_args(distill, d, DISTILL_VERB, where)
    fill = {"checkpoint_dir": checkpoints} if checkpoints else None
    return verb, options_from_table(DistillOptions, d, where, only=_distill_fields(), fill=fill)


def read_recipe(path: str | Path) -> dict:
    """The recipe TOML, every section checked for unknown fields and bad values (named with the file)."""

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise EdgediffError(f"{path}: no such recipe file") from None
    except tomllib.TOMLDecodeError as e:
        raise EdgediffError(f"{path}: not valid TOML: {e}") from None
    _check(data, TOP_KEYS, str(path))
    if not isinstance(data.get("source"), str):
        raise EdgediffError(f"{path}: field source is required (builtin:NAME, a model folder, or module:factory)")
    # every stage's options are built now, so a bad value fails before hours of training
    if "prune" in data:
        where = f"{path} [prune]"
        prune_stage_args(_check(data["prune"], section_keys("prune"), where), where)
    if "distill" in data:
        where = f"{path} [distill]"
        distill_stage_args(_check(data["distill"], section_keys("distill"), where), where)
    where = f"{path} [compile]"
    comp = _check(data.get("compile", {}), section_keys("compile"), where)
    options_from_table(QuantizeOptions, comp, where)  # the Recipe itself waits for the student's defaults
    if "target" in comp and not isinstance(comp["target"], str):
        raise EdgediffError(f"{where}: field target must be a string, got {comp['target']!r}")
    return data


def _done(folder: Path, settings: dict) -> bool:
    stamp = folder / "stage.json"
    return stamp.is_file() and json.loads(stamp.read_text()).get("settings") == settings


def _stamp(folder: Path, settings: dict) -> None:
    (folder / "stage.json").write_text(json.dumps({"settings": settings}, indent=2) + "\n")


def _stage(name: str, source: str, section: dict, dest: Path, run, log) -> str:
    """Run `run(dest)` unless dest holds this stage made with the same settings; returns dest."""
    settings = {"source": source, **section}
    if _done(dest, settings):
        log(f"{name}: reusing {dest}")
        return str(dest)
    if dest.exists():
        shutil.rmtree(dest)
    checkpoints = dest.parent / f"{dest.name}.checkpoints"
    run(dest, checkpoints)
    shutil.rmtree(checkpoints, ignore_errors=True)
    _stamp(dest, settings)
    return str(dest)


def _prune(source: str, p: dict, dest: Path, log, where: str) -> str:

    def run(dest, checkpoints):
        verb, options, tune = prune_stage_args(p, where)
        prune_to_dir(source, dest, **verb, options=options, finetune=tune, log=log)

    return _stage("prune", source, p, dest, run, log)


def _distill(source: str, d: dict, dest: Path, log, where: str) -> str:

    def run(dest, checkpoints):
        verb, opts = distill_stage_args(d, where, checkpoints=str(checkpoints))
        save_student(distill(load_source(source), **verb, options=opts), dest)

    return _stage("distill", source, d, dest, run, log)


def build(recipe_path: str | Path, out: str | Path, *, log=print, progress=None):
    """Run the recipe's stages in order; returns the compiled bundle."""

    data = read_recipe(recipe_path)
    out = Path(out)
    bundle_io.check_output(out)  # fail before hours of training, not after
    stages = out.parent / f"{out.name}.stages"
    stages.mkdir(parents=True, exist_ok=True)
    source = data["source"]
    if "prune" in data:
        log(f"[1/3] prune {source} by {data['prune']['ratio']}")
        source = _prune(source, data["prune"], stages / "pruned", log, f"{recipe_path} [prune]")
    if "distill" in data:
        steps = data["distill"].get("steps", verb_defaults(distill)["steps"])
        log(f"[2/3] distill {source} to {steps} steps")
        source = _distill(source, data["distill"], stages / "student", log, f"{recipe_path} [distill]")
    comp, where = data.get("compile", {}), f"{recipe_path} [compile]"
    target = comp.get("target", verb_defaults(compile_model)["target"])
    recipe = options_from_table(Recipe, comp, where, fill=recipe_defaults(source))
    recipe = replace(recipe, quant_options=options_from_table(QuantizeOptions, comp, where))
    log(f"[3/3] compile {source} for {target}")
    record = {
        "build": {
            "recipe": data,
            "stages": {k: str(stages / k) for k in ("pruned", "student") if (stages / k).exists()},
        }
    }
    return compile_model(source, out, target=target, recipe=recipe, progress=progress, extra_manifest=record)
