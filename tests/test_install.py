"""The package as pip installs it: console scripts, the C runner in edgediff/bin, the wheel.

- `edgediff` and `edgediff-run` are console scripts beside this interpreter;
- edgediff/bin holds edgediff-run (with OpenVINO when openvino is installed, as the build
  requirements bring it), edgediff-run-core and runner.json; `edgediff-run --help` prints the
  runner's usage and what was built, `--version` the same line; the binary starts on its own
  (its rpath finds the openvino wheel's libraries) and samples the tiny bundle as the Python
  path does;
- without a usable libopenvino_c the console script runs the core for --help and --backend
  fake, and otherwise fails with one line; a core-only build runs only with --backend fake;
  `edgediff bench` picks the installed runner, or the checkout's, or says why neither;
- (slow) a wheel built from this tree carries the runner, the extension and no C sources.
The fresh-venv install of that wheel is .ci/run's (it takes minutes).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from edgediff.core.errors import EdgediffError
from edgediff.tools import bench, runner

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sys.executable).parent
HAVE_OV = importlib.util.find_spec("openvino") is not None
USAGE = "usage: edgediff-run BUNDLE"


def run(*cmd, check=True):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def test_console_scripts_are_installed():
    ours = {e.name: e.value for e in entry_points(group="console_scripts") if e.dist and e.dist.name == "edgediff"}
    assert ours == {"edgediff": "edgediff.cli.main:main", "edgediff-run": "edgediff.cli.run:main"}
    for name in ours:
        assert is_executable(SCRIPTS / name), f"{SCRIPTS / name}: not installed"


def test_the_runner_is_built_into_the_package():
    info = runner.build_info()
    assert info["backend"] in ("openvino", "fake"), info
    for name in ("edgediff-run", "edgediff-run-core"):
        exe = runner.installed_runner(name)
        assert exe is not None and is_executable(exe), f"{runner.BIN / name}: not built"
        # each starts on its own, without the console script: the OpenVINO build through its rpath
        assert run(exe, "--help").stdout.startswith(USAGE)
    if HAVE_OV:
        assert info["backend"] == "openvino", f"openvino is installed, yet edgediff-run is {info['note']}"
        assert info["library"].startswith("libopenvino_c.so") and runner.openvino_problem(info) is None


def test_edgediff_run_help_and_version():
    note = runner.build_info()["note"]
    r = run(SCRIPTS / "edgediff-run", "--help")
    lines = r.stdout.splitlines()
    assert lines[0].startswith(USAGE) and "--backend openvino|fake" in r.stdout
    assert lines[-1].startswith("edgediff-run (edgediff ") and lines[-1].endswith(note)
    assert run(SCRIPTS / "edgediff-run", "--version").stdout.splitlines() == [lines[-1]]
    bad = run(SCRIPTS / "edgediff-run", "--no-such-option", "1", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("edgediff-run: unknown option --no-such-option")


@pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed")
def test_installed_runner_samples_like_python(tiny_bundle, tmp_path):
    from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels, generate

    run(SCRIPTS / "edgediff-run", tiny_bundle.root, "-n", 2, "--seed", 1, "--raw", tmp_path / "c.f32")
    setup = SamplingSetup.from_bundle(tiny_bundle)
    want = generate(bundle_denoiser(tiny_bundle), setup, n=2, seed=1, labels=default_labels(setup, 2))
    got = np.clip(np.fromfile(tmp_path / "c.f32", np.float32).reshape(want.shape), -1, 1)
    # OpenVINO against ONNX Runtime: the tolerance of test_c_runner.py (BACKEND_TOL)
    assert float(np.abs(got - want).max()) <= 1e-4 and np.abs(want).max() > 0.1


# ---- when libopenvino_c is missing or another version ------------------------------------------


def test_openvino_problem_names_the_library(tmp_path, monkeypatch):
    info = {"backend": "openvino", "openvino": "2026.4.1", "library": "libopenvino_c.so.2641"}
    monkeypatch.setattr(runner, "openvino_libs", lambda: None)
    assert "not installed (pip install 'edgediff[openvino]')" in runner.openvino_problem(info)
    (tmp_path / "libopenvino_c.so.2599").touch()
    monkeypatch.setattr(runner, "openvino_libs", lambda: tmp_path)
    problem = runner.openvino_problem(info)
    assert "libopenvino_c.so.2641" in problem and "has libopenvino_c.so.2599" in problem
    assert "pip install openvino==2026.4.1" in problem
    (tmp_path / "libopenvino_c.so.2641").touch()
    assert runner.openvino_problem(info) is None


def test_console_script_without_openvino(tmp_path, monkeypatch, capfd):
    from edgediff.cli import run as cli_run

    if runner.build_info()["backend"] != "openvino":
        pytest.skip("edgediff-run was built without OpenVINO")
    monkeypatch.setattr(cli_run, "openvino_problem", lambda info: "needs libopenvino_c.so.1 (test)")
    assert cli_run.main(["--help"]) == 0
    out = capfd.readouterr().out
    assert out.startswith(USAGE) and out.rstrip().endswith(
        "now the runner core (fake backend only): needs libopenvino_c.so.1 (test)"
    )
    assert cli_run.main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 1
    assert capfd.readouterr().err == "edgediff-run: needs libopenvino_c.so.1 (test)\n"


def test_console_script_of_a_core_build_runs_the_fake_backend_only_by_name(tmp_path, monkeypatch, capfd):
    from edgediff.cli import run as cli_run

    note = "runner core, fake backend only: the openvino package was not importable at build time"
    monkeypatch.setattr(cli_run, "build_info", lambda: {"backend": "fake", "note": note})
    monkeypatch.setattr(
        cli_run, "installed_runner", lambda name="edgediff-run": runner.installed_runner("edgediff-run-core")
    )
    assert cli_run.main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 1
    assert capfd.readouterr().err.startswith(f"edgediff-run: this build is the {note}; pass --backend fake")
    assert cli_run.main(["--help"]) == 0
    assert capfd.readouterr().out.rstrip().endswith(note)


def test_bench_finds_the_installed_runner_then_the_checkouts(tmp_path, monkeypatch):
    installed, checkout = tmp_path / "bin" / "edgediff-run", tmp_path / "csrc" / "edgediff-run"
    installed.parent.mkdir()
    installed.touch()
    ov = {"backend": "openvino", "library": "libopenvino_c.so.2641", "note": "OpenVINO backend"}
    monkeypatch.setattr(bench, "installed_runner", lambda: installed)
    monkeypatch.setattr(bench, "CHECKOUT_RUNNER", checkout)
    monkeypatch.setattr(bench, "build_info", lambda: ov)
    monkeypatch.setattr(bench, "openvino_problem", lambda info: None)
    assert bench.find_runner(None) == installed

    monkeypatch.setattr(bench, "openvino_problem", lambda info: "needs libopenvino_c.so.2641 (test)")
    with pytest.raises(EdgediffError, match=r"edgediff-run: needs libopenvino_c.so.2641 \(test\)$"):
        bench.find_runner(None)
    checkout.parent.mkdir()
    checkout.touch()
    assert bench.find_runner(None) == checkout

    # a core-only install: bench needs OpenVINO, so the checkout's runner or a message saying why not
    monkeypatch.setattr(bench, "build_info", lambda: {"backend": "fake", "note": "runner core, fake backend only"})
    assert bench.find_runner(None) == checkout
    checkout.unlink()
    with pytest.raises(EdgediffError, match=r"not found \(the installed one: runner core, fake backend only\)"):
        bench.find_runner(None)
    # an explicit path is taken as given
    assert bench.find_runner(str(installed)) == installed
    with pytest.raises(EdgediffError, match="edgediff-run not found; build it"):
        bench.find_runner(str(tmp_path / "nope"))


# ---- the wheel -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_has_the_runner_and_the_extension_and_no_c_sources(tmp_path):
    # --no-build-isolation: this venv's setuptools and openvino, no download (.ci/run builds isolated)
    r = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        tmp_path,
        ROOT,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = tmp_path.glob("edgediff-*.whl")
    assert "-cp311-abi3-" in whl.name  # the stable ABI: one wheel for every CPython >= 3.11
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = z.read(entry).decode()
        info = z.read("edgediff/bin/runner.json").decode()
    for exe in ("edgediff/bin/edgediff-run", "edgediff/bin/edgediff-run-core"):
        assert exe in names and modes[exe] & stat.S_IXUSR, f"{exe}: missing or not executable"
    assert any(n.startswith("edgediff/runtimes/_cruntime.") and n.endswith(".so") for n in names)
    assert not [n for n in names if n.startswith("csrc/") or n.endswith((".c", ".h"))]
    assert "edgediff-run = edgediff.cli.run:main" in scripts and "edgediff = edgediff.cli.main:main" in scripts
    assert ('"backend": "openvino"' in info) == HAVE_OV
