"""The command line: real commands, and one test per kind of bad input (one-line error,
non-zero exit, nothing half-written)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from edgediff.cli.main import main

TESTS = Path(__file__).parent


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgediff: error:"), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_generate_writes_grid(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, stdout, _ = run(capsys, "generate", tiny_bundle.root, "-n", 6, "--seed", 1, "-o", out, "--json")
    assert code == 0
    info = json.loads(stdout)
    assert info["labels"] == [0, 1, 2, 3, 0, 1]
    img = Image.open(out)
    assert img.mode == "L" and img.width > 8 * 3
    # --label fixes every image's class
    code, stdout, _ = run(
        capsys, "generate", tiny_bundle.root, "-n", 3, "--label", 2, "-o", tmp_path / "g.pgm", "--json"
    )
    assert code == 0 and json.loads(stdout)["labels"] == [2, 2, 2]


def test_inspect_json(tiny_bundle, capsys):
    code, stdout, _ = run(capsys, "inspect", tiny_bundle.root, "--json")
    assert code == 0
    data = json.loads(stdout)
    assert data["manifest"]["model"]["format"] == "onnx" and data["scheduler"]["solver"] == "ddim"
    code, stdout, _ = run(capsys, "inspect", tiny_bundle.root)
    assert "verified" in stdout and "model/denoiser.onnx" in stdout


def test_eval_json_keys(tiny_bundle, tmp_path, capsys):
    dest = tmp_path / "eval.json"
    code, stdout, _ = run(capsys, "eval", tiny_bundle.root, "-n", 8, "--json", dest)
    assert code == 0
    r = json.loads(dest.read_text())
    for key in ("fd_digits", "class_accuracy", "psnr_db", "ssim", "num_samples", "sampler", "steps"):
        assert key in r and key in r["reference"]
    assert r["num_samples"] == 8 and r["sampler"] == "ddim" and r["steps"] == 5
    assert r["psnr_db"] > 60  # fp32 ONNX vs fp32 PyTorch: nearly identical images
    assert r["trajectory_rel_error"]["max"] < 1e-4 and len(r["trajectory_rel_error"]["per_step"]) == 5
    assert r["fd_digits"] is None  # the tiny model does not make 16x16 digits


def test_targets_lists_host_cpu(capsys):
    code, stdout, _ = run(capsys, "targets", "--json")
    assert code == 0 and json.loads(stdout)["host-cpu"]["format"] == "onnx"


# ---- bad input: one test each ------------------------------------------------------------


def test_missing_source(tmp_path, capsys):
    code, _, err = run(capsys, "compile", tmp_path / "nope", "-o", tmp_path / "b")
    assert_one_line_error(code, err, "nope", "no such folder")
    assert not (tmp_path / "b").exists()


def test_broken_diffusers_config(tmp_path, capsys):
    src = tmp_path / "m"
    (src / "unet").mkdir(parents=True)
    (src / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel", "in_channels": ')
    code, _, err = run(capsys, "compile", src, "-o", tmp_path / "b")
    assert_one_line_error(code, err, "config.json", "not valid JSON")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_wrong_class_in_diffusers_config(tmp_path, capsys):
    src = tmp_path / "m"
    src.mkdir()
    (src / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    code, _, err = run(capsys, "compile", src, "-o", tmp_path / "b")
    assert_one_line_error(code, err, "_class_name", "AutoencoderKL")


def test_unknown_target(tmp_path, capsys):
    code, _, err = run(capsys, "compile", "tiny_models:tiny_unet", "--target", "toaster", "-o", tmp_path / "b")
    assert_one_line_error(code, err, "unknown target 'toaster'", "host-cpu")
    assert list(tmp_path.iterdir()) == []


def test_unknown_sampler(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compile", "tiny_models:tiny_unet", "--sampler", "heun9", "-o", str(tmp_path / "b")])
    assert e.value.code == 2
    assert "invalid choice: 'heun9'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_label_out_of_range(tiny_bundle, tmp_path, capsys):
    code, _, err = run(capsys, "generate", tiny_bundle.root, "--label", 7, "-o", tmp_path / "g.png")
    assert_one_line_error(code, err, "label 7 out of range", "0..3")
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("steps", ["-3", "0", "two"])
def test_bad_steps(tmp_path, capsys, steps):
    with pytest.raises(SystemExit) as e:
        main(["compile", "tiny_models:tiny_unet", "--steps", steps, "-o", str(tmp_path / "b")])
    assert e.value.code == 2
    assert "--steps" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_too_many_steps(tmp_path, capsys):
    code, _, err = run(capsys, "compile", "tiny_models:tiny_unet", "--steps", 500, "-o", tmp_path / "b")
    assert_one_line_error(code, err, "steps 500", "100")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = run(capsys, "compile", "tiny_models:tiny_unet", "-o", blocker / "sub" / "b")
    assert_one_line_error(code, err, "afile", "is a file")
    code, _, err = run(capsys, "compile", "tiny_models:tiny_unet", "-o", blocker)
    assert_one_line_error(code, err, "exists and is a file")
    assert blocker.read_text() == "x"


def test_changed_byte_in_bundle(bundle_copy, tmp_path, capsys):
    model = bundle_copy / "model" / "denoiser.onnx"
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))
    for argv in (["generate", bundle_copy, "-o", tmp_path / "g.png"], ["eval", bundle_copy], ["inspect", bundle_copy]):
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, "denoiser.onnx", "sha256", "does not match")
    assert not (tmp_path / "g.png").exists()


def test_not_a_bundle(tmp_path, capsys):
    code, _, err = run(capsys, "inspect", tmp_path)
    assert_one_line_error(code, err, "manifest.json", "missing")


def test_console_script_exit_code(tmp_path):
    """The installed `edgediff` entry point: errors give exit status 2 and one stderr line."""
    exe = Path(sys.executable).parent / "edgediff"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    p = subprocess.run(
        [str(exe), "compile", "builtin:nope", "-o", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "nope" in p.stderr
