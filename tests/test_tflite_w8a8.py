"""TFLite W8A8 from the quantize pass (compiler/quant_tflite.py): int8 kernels in LiteRT, our
float layers and our activation scales in the flatbuffer, the bundle runs and is verified."""

import importlib.util

import numpy as np
import pytest

from edgediff.compiler.pipeline import Recipe, compile_model
from edgediff.compiler.quant_tflite import int8_census, match_layers, tflite_ops
from edgediff.compiler.sources import torch_denoiser
from edgediff.runtimes.errors import EdgediffError
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, generate

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ai_edge_quantizer") is None,
                                reason="ai-edge-quantizer not installed: pip install 'edgediff[tflite]'")

RECIPE = dict(sampler="ddim", steps=4, guidance=2.0)  # leading spacing: the trajectory reaches t=0


@pytest.fixture(scope="module")
def tq(tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite-w8a8") / "b"
    return compile_model("tiny_models:tiny_unet", out, target="pixel-8",
                         recipe=Recipe(**RECIPE, quantize="w8a8", calib_samples=6))


def _details(path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    return it, {t["index"]: t for t in it.get_tensor_details()}


def test_int8_convs_on_xnnpack(tq):
    q = tq.report["quantization"]
    it, tensors = _details(tq.model_path)
    int8 = {"CONV_2D": 0, "FULLY_CONNECTED": 0}
    for op in it._get_ops_details():
        if op["op_name"] in int8 and tensors[op["inputs"][0]]["dtype"] == np.int8:
            assert tensors[op["inputs"][1]]["dtype"] == np.int8  # int8 weights too
            assert tensors[op["outputs"][0]]["dtype"] == np.int8  # and an int8 output: static, not dynamic range
            int8[op["op_name"]] += 1
    assert int8["CONV_2D"] > 0
    assert int8["CONV_2D"] + int8["FULLY_CONNECTED"] == q["num_int8"]
    census = int8_census(tq.model_path)
    # every int8 conv/FC sits inside an XNNPACK partition (its filter is a DELEGATE node's input)
    assert census["xnnpack_int8"]["CONV_2D"] == f"{int8['CONV_2D']}/{int8['CONV_2D']} delegated"
    assert q["tflite"]["xnnpack_int8"] == census["xnnpack_int8"]


def test_float_layers_stay_float_with_their_weights(tq):
    q = tq.report["quantization"]
    spec = __import__("tiny_models").tiny_unet()
    floats = [f["layer"] for f in q["float_layers"]]
    assert "model.conv_in" in floats and "model.conv_out" in floats
    ops = tflite_ops(tq.model_path)  # float weights only: int8 filters never equal the torch ones
    found = match_layers(spec.module, floats, [o for o in ops if o.weight.dtype == np.float32])
    assert set(found) == set(floats)
    _, tensors = _details(tq.model_path)
    by_out = {t["name"]: t for t in tensors.values()}
    assert all(by_out[m.op.output]["dtype"] == np.float32 for m in found.values())


def test_activation_scales_are_ours(tq):
    """The scale of every int8 conv's input tensor is one the quantize pass computed."""
    q = tq.report["quantization"]
    ours = np.array(sorted({e["input"][0]["scale"] for e in q["layers"] if e["precision"] == "int8"}))
    it, tensors = _details(tq.model_path)
    seen = 0
    for op in it._get_ops_details():
        t = tensors[op["inputs"][0]]
        if op["op_name"] == "CONV_2D" and t["dtype"] == np.int8:
            s = float(t["quantization_parameters"]["scales"][0])
            assert np.min(np.abs(ours - s) / ours) < 1e-5, (t["name"], s)
            seen += 1
    assert seen > 0


def test_verified_and_generates(tq):
    v = tq.report["verification"]
    assert v["precision"] == "w8a8" and "LiteRT" in v["runtime"] and v["max_rel_error"] < 1.0
    assert tq.manifest["model"]["precision"] == "int8" and tq.manifest["model"]["format"] == "tflite"
    assert tq.report["quantization"]["trajectory"]["max_rel_error"] < 0.5  # random tiny weights; a broken graph: ~1
    setup = SamplingSetup.from_bundle(tq)
    labels = np.array([0, 1, 2, 3])
    ours = generate(bundle_denoiser(tq), setup, n=4, seed=0, labels=labels)
    torch_fp32 = torch_denoiser(__import__("tiny_models").tiny_unet())
    ref = generate(torch_fp32, setup, n=4, seed=0, labels=labels)
    other_seed = generate(torch_fp32, setup, n=4, seed=1, labels=labels)
    assert ours.shape == ref.shape and np.isfinite(ours).all()
    # the int8 bundle's images are far closer to FP32's (same seed) than FP32's own at another seed
    assert np.abs(ours - ref).mean() < 0.25 * np.abs(other_seed - ref).mean()


def test_groups_refused_for_tflite_by_name(tmp_path):
    with pytest.raises(EdgediffError, match=r"pixel-8.*--groups 2.*TFLite flatbuffer carries its own weights"):
        compile_model("tiny_models:tiny_unet", tmp_path / "g2", target="pixel-8",
                      recipe=Recipe(**RECIPE, quantize="w8a8", groups=2, calib_samples=2))
