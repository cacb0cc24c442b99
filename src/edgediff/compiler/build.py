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
    [compile]                    # src/edgediff/compiler/pipeline.py: target + any Recipe field
    target = "host-cpu"
    quantize = "w8a8"

Each stage's output is a model folder the next stage reads, kept in BUNDLE.stages/ (pruned/,
student/): a second run of the same recipe reuses a finished stage instead of training again
(stage.json records the settings it was made with; a change reruns that stage and the later
ones). The bundle's manifest records the recipe under "build".
"""

from __future__ import annotations

import json
import shutil
import tomllib
from dataclasses import fields
from pathlib import Path

from edgediff.core.errors import EdgediffError
from edgediff.distill.distill import DistillOptions, distill, save_student
from edgediff.prune.prune import FinetuneOptions, PruneOptions

PRUNE_KEYS = {
    "ratio",
    "importance",
    "scope",
    "protect",
    "finetune_steps",
    "batch_size",
    "lr",
    "distill_weight",
    "data",
    "seed",
}
DISTILL_KEYS = {
    "method",
    "steps",
    "guidance",
    "guidance_distill",
    "train_steps",
    "batch_size",
    "lr",
    "teacher_steps",
    "data",
    "seed",
}
TOP_KEYS = {"source", "prune", "distill", "compile"}


def _compile_keys() -> set[str]:
    from edgediff.compiler.recipe import Recipe

    return {f.name for f in fields(Recipe)} | {"target"}


def _check(section: dict, allowed: set[str], where: str) -> dict:
    if not isinstance(section, dict):
        raise EdgediffError(f"{where}: must be a table")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise EdgediffError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return section


def read_recipe(path: str | Path) -> dict:
    """The recipe TOML, every section checked for unknown fields (named with the file)."""
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
    if "prune" in data:
        _check(data["prune"], PRUNE_KEYS, f"{path} [prune]")
        if "ratio" not in data["prune"]:
            raise EdgediffError(f"{path} [prune]: field ratio is required")
    if "distill" in data:
        _check(data["distill"], DISTILL_KEYS, f"{path} [distill]")
    _check(data.get("compile", {}), _compile_keys(), f"{path} [compile]")
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


def _prune(source: str, p: dict, dest: Path, log) -> str:
    from edgediff.compiler.jobs import prune_to_dir

    def run(dest, checkpoints):
        options = PruneOptions(
            importance=p.get("importance", "taylor"),
            scope=p.get("scope", "uniform"),
            protect=tuple(p.get("protect", ())),
            seed=int(p.get("seed", 0)),
        )
        tune = FinetuneOptions(
            steps=int(p.get("finetune_steps", 0)),
            batch_size=int(p.get("batch_size", 64)),
            lr=float(p.get("lr", 5e-4)),
            distill_weight=float(p.get("distill_weight", 1.0)),
        )
        prune_to_dir(source, dest, ratio=float(p["ratio"]), options=options, finetune=tune, data=p.get("data"), log=log)

    return _stage("prune", source, p, dest, run, log)


def _distill(source: str, d: dict, dest: Path, log) -> str:
    from edgediff.compiler.capture import load_source

    def run(dest, checkpoints):
        opts = DistillOptions(
            train_steps=int(d.get("train_steps", 500)),
            batch_size=int(d.get("batch_size", 64)),
            lr=float(d.get("lr", 1e-4)),
            seed=int(d.get("seed", 0)),
            teacher_steps=d.get("teacher_steps"),
            checkpoint_dir=str(checkpoints),
        )
        student = distill(
            load_source(source),
            method=d.get("method", "progressive"),
            steps=int(d.get("steps", 4)),
            guidance=float(d.get("guidance", 3.0)),
            guidance_distill=bool(d.get("guidance_distill", False)),
            data=d.get("data"),
            options=opts,
        )
        save_student(student, dest)

    return _stage("distill", source, d, dest, run, log)


def build(recipe_path: str | Path, out: str | Path, *, log=print, progress=None):
    """Run the recipe's stages in order; returns the compiled bundle."""
    from edgediff.compiler import bundle as bundle_io
    from edgediff.compiler.capture import recipe_defaults
    from edgediff.compiler.pipeline import compile_model
    from edgediff.compiler.recipe import Recipe

    data = read_recipe(recipe_path)
    out = Path(out)
    bundle_io.check_output(out)  # fail before hours of training, not after
    stages = out.parent / f"{out.name}.stages"
    stages.mkdir(parents=True, exist_ok=True)
    source = data["source"]
    if "prune" in data:
        log(f"[1/3] prune {source} by {data['prune']['ratio']}")
        source = _prune(source, data["prune"], stages / "pruned", log)
    if "distill" in data:
        log(f"[2/3] distill {source} to {data['distill'].get('steps', 4)} steps")
        source = _distill(source, data["distill"], stages / "student", log)
    comp = dict(data.get("compile", {}))
    target = comp.pop("target", "host-cpu")
    recipe = Recipe.from_dict({**recipe_defaults(source), **comp})
    log(f"[3/3] compile {source} for {target}")
    record = {
        "build": {
            "recipe": data,
            "stages": {k: str(stages / k) for k in ("pruned", "student") if (stages / k).exists()},
        }
    }
    return compile_model(source, out, target=target, recipe=recipe, progress=progress, extra_manifest=record)
