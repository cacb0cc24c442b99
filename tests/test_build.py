"""edgediff build: one recipe runs prune -> distill -> compile (quantize + lower)."""

import json

import numpy as np
import pytest
from ddp_train_worker import tiny_data

from edgediff.cli.main import main
from edgediff.compiler.build import build, read_recipe
from edgediff.compiler.capture import load_source
from edgediff.core.errors import EdgediffError


@pytest.fixture
def data_npz(tmp_path):
    d = tiny_data()
    path = tmp_path / "data.npz"
    np.savez(path, images=d["x0"].numpy(), labels=d["label"].numpy())
    return path


def _recipe(tmp_path, data_npz, extra=""):
    text = f'''
source = "tiny_models:tiny_unet"
[prune]
ratio = 0.3
importance = "magnitude"
finetune_steps = 2
batch_size = 8
data = "{data_npz}"
[distill]
method = "progressive"
steps = 2
teacher_steps = 4
guidance = 2.0
guidance_distill = true
train_steps = 2
batch_size = 8
data = "{data_npz}"
[compile]
quantize = "w8a8"
calib_samples = 4
{extra}'''
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_prune_distill_quantize_lower_in_one_recipe(tmp_path, data_npz):
    recipe = _recipe(tmp_path, data_npz)
    assert main(["build", str(recipe), "-o", str(tmp_path / "bundle")]) == 0
    b = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    sched = json.loads((tmp_path / "bundle" / "scheduler.json").read_text())
    assert b["quantization"]["scheme"] == "w8a8" and b["model"]["precision"] == "int8"
    assert sched["solver"] == "ddim" and len(sched["plan"]["timesteps"]) == 2  # the student's steps
    assert sched["guidance_scale"] == 1.0 and sched["distilled"]["guidance"] == 2.0  # one pass per step
    assert b["build"]["recipe"]["prune"]["ratio"] == 0.3
    assert b["pruning"] is not None  # the student of a pruned teacher is still pruned
    # the student keeps the pruned widths: fewer parameters than the unpruned teacher
    stages = tmp_path / "bundle.stages"
    student = load_source(str(stages / "student"))
    teacher = load_source("tiny_models:tiny_unet")
    n = lambda m: sum(p.numel() for p in m.module.parameters())  # noqa: E731
    assert n(student) < n(teacher)
    # a second run (say, after the compile failed or the bundle was removed) reuses the finished
    # stages instead of training again
    import shutil

    shutil.rmtree(tmp_path / "bundle")
    logs = []
    build(recipe, tmp_path / "bundle", log=logs.append)
    assert any("prune: reusing" in m for m in logs) and any("distill: reusing" in m for m in logs), logs


def test_recipe_errors_name_the_field(tmp_path, data_npz):
    bad = tmp_path / "bad.toml"
    bad.write_text('source = "builtin:digits"\n[prune]\nratio = 0.2\nimportanse = "taylor"\n')
    with pytest.raises(EdgediffError, match=r"bad.toml \[prune\]: unknown field 'importanse'"):
        read_recipe(bad)
    bad.write_text('[compile]\nquantize = "w8a8"\n')
    with pytest.raises(EdgediffError, match="field source is required"):
        read_recipe(bad)
    bad.write_text('source = "builtin:digits"\n[compile]\nsteps = [1\n')
    with pytest.raises(EdgediffError, match="not valid TOML"):
        read_recipe(bad)
    bad.write_text('source = "builtin:digits"\n[compile]\nquantise = "w8a8"\n')
    with pytest.raises(EdgediffError, match="unknown field 'quantise'"):
        read_recipe(bad)
    with pytest.raises(EdgediffError, match="no such recipe file"):
        read_recipe(tmp_path / "missing.toml")


def test_recipe_values_are_checked_before_any_stage_runs(tmp_path):
    bad = tmp_path / "bad.toml"
    cases = [
        ("[prune]\nratio = 0.2\nfinetune_steps = -1\n", r"bad.toml \[prune\]: field finetune_steps: must be >= 0"),
        ('[prune]\nratio = "a lot"\n', r"bad.toml \[prune\]: field ratio must be a number"),
        ('[distill]\nmethod = "progressive"\nsteps = 2.5\n', r"bad.toml \[distill\]: field steps must be an integer"),
        ("[distill]\nlr = 0\n", r"bad.toml \[distill\]: field lr: must be a positive number"),
        ('[distill]\ncheckpoint_dir = "x"\n', r"unknown field 'checkpoint_dir'"),  # the build keeps them in .stages
        ('[compile]\nobserver = "median"\n', r"bad.toml \[compile\]: field observer is 'median'; choose one of minmax"),
        ("[compile]\nquant_options = {seed = 1}\n", r"unknown field 'quant_options'"),  # calib_seed = 1 is the key
    ]
    for text, match in cases:
        bad.write_text('source = "tiny_models:tiny_unet"\n' + text)
        with pytest.raises(EdgediffError, match=match):
            read_recipe(bad)
    # the compile section takes the quantize flags' names, as `edgediff compile` does
    bad.write_text('source = "tiny_models:tiny_unet"\n[compile]\ncalib_seed = 3\nfloat_layers = 1\ndefaults = "none"\n')
    assert read_recipe(bad)["compile"]["calib_seed"] == 3
