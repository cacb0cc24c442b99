"""Bad input to the command line (issue 20): a signal, flags that do not go together, a bundle
whose manifest.json or scheduler.json cannot run, output paths that cannot be written. Each
gives one line on stderr and a status, never a traceback, and nothing half-written."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

from edgediff.cli.main import main
from edgediff.core.errors import EdgediffError
from edgediff.core.files import staging
from edgediff.runtimes.bundle import load_bundle
from edgediff.runtimes.samplers import Plan

SCHED = '{"_class_name": "DDPMScheduler", "num_train_timesteps": 100, "beta_schedule": "linear"}'


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ---- 1. SIGTERM: one line, exit 143, staging removed ------------------------------------------------
def test_sigterm_during_compile_is_one_line_and_exit_143(monkeypatch, tmp_path, capsys):
    import edgediff.compiler.pipeline as pipeline

    seen = []

    def fake_compile(
        source, out, *, target="host-cpu", **kw
    ):  # what compile_model does: stage, then work inside the staging
        with staging(out) as work:
            (work / "part").write_bytes(b"x")
            seen.append(work)
            os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the compile")

    monkeypatch.setattr(pipeline, "compile_model", fake_compile)
    code, out, err = run(capsys, "compile", "tiny_models:tiny_unet", "--steps", 2, "-o", tmp_path / "b")
    assert code == 143
    assert one_line(err) == f"edgediff: terminated by signal {int(signal.SIGTERM)}"
    assert seen and not seen[0].exists() and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back


# ---- 1. --allow-extra-tensors -------------------------------------------------------------------------
@pytest.fixture
def extra_folder(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    )
    folder = tmp_path / "m"
    unet.save_pretrained(folder, safe_serialization=True)
    (folder / "scheduler_config.json").write_text(SCHED)
    path = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    tensors["leftover.weight"] = torch.zeros(3)
    save_file(tensors, str(path))
    return folder


@pytest.mark.slow  # a real compile of the folder (~15 s idle, ~60 s on the shared 2 cores)
def test_allow_extra_tensors_flag(extra_folder, tmp_path, capsys):
    out = tmp_path / "b"
    code, _, err = run(capsys, "compile", extra_folder, "--sampler", "ddim", "--steps", 2, "-o", out)
    line = one_line(err)
    assert code == 2 and "leftover.weight" in line and "--allow-extra-tensors" in line
    assert not out.exists()
    code, _, err = run(
        capsys, "compile", extra_folder, "--sampler", "ddim", "--steps", 2, "--allow-extra-tensors", "-o", out
    )
    assert code == 0, err
    b = load_bundle(out)
    assert b.report["verify"]["max_rel_error"] < b.report["verify"]["bound"]


# ---- 2. --calib without a route that calibrates ------------------------------------------------------
@pytest.mark.parametrize("extra", [(), ("--quantize", "w4")])
def test_calib_without_quantize_w8a8_is_refused_before_any_work(tmp_path, capsys, extra):
    calib = tmp_path / "calib.npz"  # never read: the flags are refused first
    out = tmp_path / "b"
    code, _, err = run(capsys, "compile", "tiny_models:tiny_unet", "--calib", calib, *extra, "-o", out)
    line = one_line(err)
    assert code == 2 and "--calib" in line and "--quantize" in line and "w8a8" in line
    assert list(tmp_path.iterdir()) == []


def test_calib_in_a_recipe_table_names_the_keys():
    from edgediff.compiler.recipe import Recipe
    from edgediff.core.options import options_from_table

    with pytest.raises(EdgediffError, match=r"r.toml \[compile\]: recipe: calib .* quantize"):
        options_from_table(Recipe, {"calib": "c.npz"}, "r.toml [compile]")
    assert options_from_table(Recipe, {"calib": "c.npz", "quantize": "w8a8"}, "r.toml [compile]").calib == "c.npz"


# ---- 3/4. inspect validates manifest.json and scheduler.json as load_bundle and the C reader do ------
def _edit_json(root, name, fn):
    d = json.loads((root / name).read_text())
    fn(d)
    (root / name).write_text(json.dumps(d).replace('"INF"', "1e999"))  # a number beyond float range


def _pop(key):
    return lambda d: d.pop(key)


def _set(path, value):
    def edit(d):
        *head, last = path
        for k in head:
            d = d[k]
        d[last] = value

    return edit


BAD_BUNDLES = [
    ("scheduler.json", _pop("guidance_scale"), "scheduler.json: missing the field 'guidance_scale'"),
    ("scheduler.json", _set(["guidance_scale"], "3"), "scheduler.json: guidance_scale must be a number"),
    ("scheduler.json", _set(["guidance_scale"], "INF"), "scheduler.json: guidance_scale must be finite"),
    ("scheduler.json", _pop("plan"), "scheduler.json: missing the field 'plan'"),
    ("scheduler.json", _set(["plan", "timesteps"], [4, 3.5, 2, 1, 0]), "scheduler.json: plan"),
    ("scheduler.json", _set(["plan", "solver"], "nope"), "scheduler.json: "),
    ("manifest.json", _set(["conditioning", "num_classes"], 0), "conditioning.num_classes must be a positive integer"),
    ("manifest.json", _set(["conditioning", "num_classes"], 2.5), "conditioning.num_classes must be a positive"),
    ("manifest.json", _set(["conditioning", "kind"], "texture"), "conditioning.kind 'texture' is not one of"),
    (
        "manifest.json",
        _set(["conditioning", "kind"], "text"),
        "field components must be an object for conditioning kind text",
    ),
    ("manifest.json", _set(["model", "inputs"], []), "model.inputs must list 1..4 tensors"),
    ("manifest.json", _set(["model", "outputs"], "x"), "model.outputs must be a list"),
]


@pytest.mark.parametrize("name, edit, message", BAD_BUNDLES, ids=[m for _, _, m in BAD_BUNDLES])
def test_inspect_refuses_a_bundle_that_cannot_run(bundle_copy, capsys, name, edit, message):
    _edit_json(bundle_copy, name, edit)
    for argv in (("inspect", bundle_copy), ("inspect", bundle_copy, "--json")):
        code, out, err = run(capsys, *argv)
        line = one_line(err)
        assert code == 2 and line.startswith("edgediff: error: ") and message in line, line
        assert str(bundle_copy / name) in line and out == ""
        assert len(line) < 300  # never a whole array
    with pytest.raises(EdgediffError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_bundle(bundle_copy, verify=False)


def test_plan_errors_name_the_file_only_when_given():
    d = {"solver": "ddim", "timesteps": [3, 2.5], "schedule": {}, "params": {}}
    with pytest.raises(EdgediffError) as bare:
        Plan.from_dict(d)
    with pytest.raises(EdgediffError) as named:
        Plan.from_dict(d, where="b/scheduler.json")
    assert str(named.value) == f"b/scheduler.json: {bare.value}"


# ---- 5. no partial output; --json checked before the run -------------------------------------------
def test_eval_json_destination_checked_before_the_run(tiny_bundle, tmp_path, capsys):
    code, _, err = run(capsys, "eval", tiny_bundle.root, "-n", 8, "--json", tmp_path / "no" / "e.json")
    assert code == 2 and "folder" in one_line(err) and "does not exist" in err
    code, _, err = run(capsys, "eval", tiny_bundle.root, "--json", tmp_path)
    assert code == 2 and "is a folder" in one_line(err)


def test_bench_json_destination_checked_before_the_run(tiny_bundle, tmp_path, capsys):
    code, _, err = run(capsys, "bench", tiny_bundle.root, "--json", tmp_path / "no" / "b.json")
    assert code == 2 and "does not exist" in one_line(err)


def test_report_makes_no_folder_when_a_bundle_does_not_load(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "rep"
    code, _, err = run(capsys, "report", tiny_bundle.root, tmp_path / "missing", "-o", out)
    assert code == 2 and "missing" in one_line(err)
    assert not out.exists()


def test_digits_eval_json_checked_first(tmp_path, capsys):
    from edgediff.tools import digits_eval

    with pytest.raises(SystemExit) as e:
        digits_eval.main(["--json", str(tmp_path / "no" / "d.json"), "--per-class", "1", "--steps", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert one_line(err).startswith("digits_eval: error: ") and "does not exist" in err


def test_json_is_written_atomically_on_a_full_disk(tiny_bundle, tmp_path, capsys, monkeypatch):
    """A failing write leaves the old file (here: none) and no temporary beside it."""
    import edgediff.core.files as files

    real = files.os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(
        files.os, "fdopen", lambda fd, mode="r": Full(real(fd, mode)) if "w" in mode else real(fd, mode)
    )
    dest = tmp_path / "e.json"
    code, _, err = run(capsys, "eval", tiny_bundle.root, "-n", 4, "--json", dest)
    assert code == 2 and "No space left on device" in one_line(err) and str(dest) in err
    assert list(tmp_path.iterdir()) == []
