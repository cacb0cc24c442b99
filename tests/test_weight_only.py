"""Weight-only 4-bit (`--quantize w4`, src/edgediff/quantize/weight_only.py) for ONNX Runtime and OpenVINO."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgediff.compiler.capture import load_source
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import torch_denoiser
from edgediff.runtimes.backends import open_denoiser
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, generate

RECIPE = dict(sampler="ddim", steps=5, guidance=2.0)  # tiny_bundle's recipe


@pytest.fixture(scope="module")
def w4(tmp_path_factory):
    return compile_model(
        "tiny_models:tiny_unet", tmp_path_factory.mktemp("w4") / "b", recipe=Recipe(**RECIPE, quantize="w4")
    )


def test_linear_layers_run_the_4bit_kernel(w4, tmp_path):
    path = Path(w4.root) / w4.manifest["model"]["file"]
    q = w4.report["quantize"]
    assert w4.manifest["model"]["precision"] == "int4" and q["calibration"] is None
    proto = onnx.load(str(path))
    ops = Counter(n.op_type for n in proto.graph.node)
    linear = [row for row in q["layers"] if row["op"] in ("MatMul", "Gemm")]
    convs = [row for row in q["layers"] if row["op"] == "Conv"]
    # every linear layer (attention projections, and the Gemms of the time embedding) is packed
    assert ops["MatMulNBits"] == q["matmulnbits"] == len(linear) > 0 and ops["Gemm"] == 0
    assert all(row["precision"] == "int4 weights" for row in linear)
    assert all(row["precision"] == "int8 weights" for row in convs) and q["conv_int8"] == len(convs)
    for n in proto.graph.node:
        if n.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["bits"] == 4 and attrs["block_size"] == 32
    int8 = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(int8) == len({row["layer"] for row in convs})  # conv weights stored as int8
    # ONNX Runtime keeps MatMulNBits after graph optimisation (its 4-bit GEMM runs, no float copy)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    assert Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)["MatMulNBits"] == len(linear)


def test_smaller_and_close_to_fp32(w4, tiny_bundle):
    fp32 = Path(tiny_bundle.root) / tiny_bundle.manifest["model"]["file"]
    q = w4.report["quantize"]
    assert q["bytes"] < q["bytes_fp32"] == fp32.stat().st_size
    v = w4.report["verify"]
    # w4 bound 0.25 (verify.BOUNDS): the tiny random UNet reads up to 0.12 from 4-bit rounding of the
    # weights; activations stay float32 (MatMulNBits at its default accuracy level computes in float), so
    # no AVX2 vs VNNI int8 kernel choice enters
    assert v["precision"] == "w4" and v["max_rel_error"] <= v["bound"]
    # sampling with the 4-bit bundle follows the fp32 model's trajectory (same plan, same noise;
    # the random tiny UNet drives many pixels to the clip at +-1, so a few flip sign)
    fp32 = tiny_bundle
    labels = np.array([0, 1, 2])
    a, b = (generate(bundle_denoiser(x), SamplingSetup.from_bundle(x), n=3, seed=0, labels=labels) for x in (w4, fp32))
    # 0.2: weight rounding is fixed at compile time; float activations make this CPU-independent
    assert float(np.linalg.norm(a - b) / np.linalg.norm(b)) < 0.2


def test_keep_float_and_refusals(tmp_path):
    b = compile_model(
        "tiny_models:tiny_unet",
        tmp_path / "k",
        recipe=Recipe(**RECIPE, quantize="w4", quant_options={"keep_float": ["*conv_out"]}),
    )
    kept = [row for row in b.report["quantize"]["layers"] if row["precision"] == "fp32"]
    assert [row["layer"] for row in kept] == ["model.conv_out"] and "pattern" in kept[0]["why"]
    with pytest.raises(EdgediffError, match="matches no quantizable layer"):
        compile_model(
            "tiny_models:tiny_unet",
            tmp_path / "k2",
            recipe=Recipe(**RECIPE, quantize="w4", quant_options={"keep_float": ["nothing*"]}),
        )
    assert not (tmp_path / "k2").exists()
    with pytest.raises(EdgediffError, match="onnxruntime-qnn"):  # MatMulNBits is a CPU kernel, not QNN's
        compile_model(
            "tiny_models:tiny_unet", tmp_path / "q", target="snapdragon-8-gen-3", recipe=Recipe(**RECIPE, quantize="w4")
        )
    with pytest.raises(EdgediffError, match="int4"):  # a target without 4-bit weights names the precision
        compile_model("tiny_models:tiny_unet", tmp_path / "p", target="pixel-8", recipe=Recipe(**RECIPE, quantize="w4"))


def test_openvino_4bit_weights(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import openvino as ov

    b = compile_model(
        "tiny_models:tiny_unet", tmp_path / "ov", target="intel-core-ultra-npu", recipe=Recipe(**RECIPE, quantize="w4")
    )
    m = b.manifest["model"]
    assert m["format"] == "openvino" and m["precision"] == "int4" and m["runtime"]["inference_precision_hint"] == "f32"
    ir = ov.Core().read_model(str(tmp_path / "ov" / m["file"]))
    types = Counter(op.get_element_type().get_type_name() for op in ir.get_ops() if op.get_type_name() == "Constant")
    q = b.report["quantize"]
    assert types["i4"] + types["u4"] == q["int4_constants"] > 0 and q["int8_constants"] > 0
    # f32 inference hint: int4/int8 weights are decompressed to float32 on AVX2 and VNNI alike
    assert b.report["verify"]["max_rel_error"] <= b.report["verify"]["bound"]
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    t, y = np.array([40.0, 70.0], np.float32), np.array([1, 2], np.int64)
    out = open_denoiser(tmp_path / "ov" / m["file"], "openvino")(x, t, y)
    ref = torch_denoiser(load_source("tiny_models:tiny_unet"))(x, t, y)
    # 0.1: the weights' 4-bit rounding (compile time); f32 inference hint, so no int8 kernel choice
    assert float(np.linalg.norm(out - ref) / np.linalg.norm(ref)) < 0.1
