import os

import pytest
import torch

from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe

# `make test` runs the suite in two pytest-xdist workers (one per core of the CI machine): each
# worker's PyTorch then uses one thread, and so do the processes it starts (OpenMP
# oversubscription on 2 cores slowed training several-fold here); a serial run keeps the defaults.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """One compiled bundle of the tiny test UNet, shared (read-only) by many tests."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return compile_model("tiny_models:tiny_unet", out, recipe=Recipe(sampler="ddim", steps=5, guidance=2.0))


@pytest.fixture(scope="session")
def text_folders(tmp_path_factory):
    """The tiny SD 1.x and SD 2.x pipeline folders of tiny_pipelines.py, built once per session."""
    import tiny_pipelines as tp

    root = tmp_path_factory.mktemp("pipelines")
    return {"sd1": tp.sd1_folder(root / "sd1"), "sd2": tp.sd2_folder(root / "sd2")}


@pytest.fixture(scope="session")
def sd1_text_bundle(text_folders, tmp_path_factory):
    """One compiled text-to-image bundle (the tiny SD 1.x folder, ONNX fp32, ddim 8 steps, guidance 7.5),
    shared (read-only) by the text-to-image tests."""
    out = tmp_path_factory.mktemp("t2i") / "sd1"
    return compile_model(str(text_folders["sd1"]), out, recipe=Recipe(sampler="ddim", steps=8, guidance=7.5))


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle that a test may damage."""
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(tiny_bundle.root, dst)
    return dst


@pytest.fixture(scope="session")
def c_runner_build(tmp_path_factory):
    """csrc built once per session: edgediff-run's core, and the runner itself when the
    openvino wheel (its C API) is installed."""
    import importlib.util
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if not (shutil.which("make") and (shutil.which("cc") or shutil.which("gcc"))):
        pytest.skip("no C compiler / make")
    out = tmp_path_factory.mktemp("cbuild")
    targets = ["runner-core"] + (["runner"] if importlib.util.find_spec("openvino") else [])
    c_dir = Path(__file__).resolve().parents[1] / "csrc"
    r = subprocess.run(
        ["make", "-s", "-C", str(c_dir), *targets, f"BUILD={out}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out
