"""Core ML W8A8 prepared here, finished on macOS (src/edgediff/quantize/coreml_w8a8.py): the kit's files are in
the bundle, the script compiles, the recipe parses as a coremltools config, the calibration rows
fit the package's inputs. The finishing step itself needs Core ML prediction (macOS): not run."""

import importlib.util
import json
import py_compile

import numpy as np
import pytest

from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("coremltools") is None, reason="coremltools not installed: pip install 'edgediff[coreml]'"
)


@pytest.fixture(scope="module")
def cq(tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml-w8a8") / "b"
    return compile_model(
        "tiny_models:tiny_unet",
        out,
        target="iphone-15-pro",
        recipe=Recipe(sampler="ddim", steps=4, guidance=2.0, quantize="w8a8", calib_samples=2),
    )


def test_kit_files_hashed_in_the_bundle(cq):
    files = cq.manifest["files"]
    for name in ("w8a8/calibration.npz", "w8a8/recipe.json", "w8a8/finish_w8a8.py"):
        assert name in files and (cq.root / name).is_file()
    assert "finish on macOS" in cq.manifest["quantization"]["activations"]
    assert cq.report["quantize"]["coreml"]["numerics"] == "not run: needs macOS"
    assert cq.report["verify"]["numerics"].startswith("not run")
    assert cq.report["verify"]["compression_ops"].get("constexpr_affine_dequantize", 0) > 0  # int8 weights


def test_script_compiles_and_recipe_parses(cq, tmp_path):
    py_compile.compile(str(cq.root / "w8a8" / "finish_w8a8.py"), cfile=str(tmp_path / "f.pyc"), doraise=True)
    import coremltools.optimize.coreml as cto

    recipe = json.loads((cq.root / "w8a8" / "recipe.json").read_text())
    config = cto.OptimizationConfig.from_dict(recipe["coremltools_config"])
    assert config.global_config.mode.lower() == "linear_symmetric"
    # the pass's float conv layers are skipped by their MIL op names
    by_layer = {f["layer"]: f["mil_op"] for f in recipe["float_layers"]}
    assert by_layer["model.conv_in"] and by_layer["model.conv_out"]
    assert set(recipe["coremltools_config"]["op_name_configs"]) >= {
        by_layer["model.conv_in"],
        by_layer["model.conv_out"],
    }
    assert all(v is None for v in recipe["coremltools_config"]["op_name_configs"].values())
    assert config.op_name_configs[by_layer["model.conv_in"]] is None


def test_calibration_rows_fit_the_package_inputs(cq):
    recipe = json.loads((cq.root / "w8a8" / "recipe.json").read_text())
    data = np.load(cq.root / "w8a8" / "calibration.npz")
    inputs = cq.manifest["model"]["inputs"]
    assert recipe["inputs"] == [i["name"] for i in inputs] == sorted(data.files, key=recipe["inputs"].index)
    rows = data[inputs[0]["name"]].shape[0]
    assert rows > 0 and rows % recipe["static_batch"] == 0 and rows == recipe["rows"]
    for i in inputs:
        a = data[i["name"]]
        assert a.shape[1:] == tuple(i["shape"][1:]) and a.dtype == np.dtype(i["dtype"]) and a.shape[0] == rows
    # the rows are the recipe's trajectory: the visited timesteps, nothing else
    plan = __import__("edgediff.runtimes.samplers.base", fromlist=["Plan"]).Plan.from_dict(cq.scheduler["plan"])
    assert set(np.unique(data["timestep"]).tolist()) == {float(t) for t in plan.model_timesteps}
