"""TFLite W8A8 from the quantize pass (src/edgediff/quantize/tflite_int8.py): int8 kernels in LiteRT, our
float layers and our activation scales in the flatbuffer, the bundle runs and is verified."""

import importlib.util

import numpy as np
import pytest

from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import torch_denoiser
from edgediff.quantize.tflite_int8 import int8_census, match_layers, tflite_ops
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, generate

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ai_edge_quantizer") is None,
    reason="ai-edge-quantizer not installed: pip install 'edgediff[tflite]'",
)

RECIPE = dict(sampler="ddim", steps=4, guidance=2.0)  # leading spacing: the trajectory reaches t=0


@pytest.fixture(scope="module")
def tq(tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite-w8a8") / "b"
    return compile_model(
        "tiny_models:tiny_unet", out, target="pixel-8", recipe=Recipe(**RECIPE, quantize="w8a8", calib_samples=6)
    )


def _details(path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    return it, {t["index"]: t for t in it.get_tensor_details()}


def test_int8_convs_on_xnnpack(tq):
    q = tq.report["quantize"]
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
    q = tq.report["quantize"]
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
    q = tq.report["quantize"]
    ours = np.array(sorted({e["input"][0]["scale"] for e in q["layers"] if e["precision"] == "int8"}))
    it, tensors = _details(tq.model_path)
    seen = 0
    for op in it._get_ops_details():
        t = tensors[op["inputs"][0]]
        if op["op_name"] == "CONV_2D" and t["dtype"] == np.int8:
            s = float(t["quantization_parameters"]["scales"][0])
            # 1e-5: scales are stored numbers (float32 round trip), not computed by a CPU's kernels
            assert np.min(np.abs(ours - s) / ours) < 1e-5, (t["name"], s)
            seen += 1
    assert seen > 0


def test_verified_and_generates(tq):
    v = tq.report["verify"]
    # 1.0 (the w8a8 bound) only catches a broken graph; XNNPACK's int8 kernels on AVX2 and VNNI differ
    # by requantization rounding, far below it
    assert v["precision"] == "w8a8" and "LiteRT" in v["runtime"] and v["max_rel_error"] < 1.0
    assert tq.manifest["model"]["precision"] == "int8" and tq.manifest["model"]["format"] == "tflite"
    # 0.5 bounds the quantization error, not a kernel's rounding (AVX2 or VNNI: about one int8 step)
    assert tq.report["quantize"]["trajectory"]["max_rel_error"] < 0.5  # random tiny weights; a broken graph: ~1
    setup = SamplingSetup.from_bundle(tq)
    labels = np.array([0, 1, 2, 3])
    ours = generate(bundle_denoiser(tq), setup, n=4, seed=0, labels=labels)
    torch_fp32 = torch_denoiser(__import__("tiny_models").tiny_unet())
    ref = generate(torch_fp32, setup, n=4, seed=0, labels=labels)
    other_seed = generate(torch_fp32, setup, n=4, seed=1, labels=labels)
    assert ours.shape == ref.shape and np.isfinite(ours).all()
    # the int8 bundle's images are far closer to FP32's (same seed) than FP32's own at another seed
    # relative to another seed's distance (same CPU, same run), so no CPU-specific figure enters
    assert np.abs(ours - ref).mean() < 0.25 * np.abs(other_seed - ref).mean()


def _signature_outputs(path, feeds_from):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    out = {}
    for key in it.get_signature_list():
        runner = it.get_signature_runner(key)
        ins = runner.get_input_details()
        rng = np.random.default_rng(0)
        feeds = {
            k: (rng.standard_normal(d["shape"]) * 0.5).astype(d["dtype"])
            if d["dtype"] == np.float32
            else np.zeros(d["shape"], d["dtype"])
            for k, d in ins.items()
        }
        feeds.update({k: np.full(d["shape"], feeds_from, d["dtype"]) for k, d in ins.items() if "timestep" in k})
        out[key] = next(iter(runner(**feeds).values()))
    return out


def test_merge_groups_stores_each_buffer_once(tq, tmp_path):
    from edgediff.quantize.tflite_int8 import merge_groups

    merged = tmp_path / "two.tflite"
    rec = merge_groups([tq.model_path, tq.model_path], merged)
    assert rec["signatures"] == ["group0", "group1"]
    assert rec["buffer_bytes"] * 2 == rec["buffer_bytes_if_separate"]  # the same groups: every buffer shared
    outs = _signature_outputs(merged, 300.0)
    single = next(iter(_signature_outputs(tq.model_path, 300.0).values()))
    assert np.array_equal(outs["group0"], single) and np.array_equal(outs["group1"], single)


def test_merge_groups_refuses_different_graphs(tq, tmp_path):
    import flatbuffers
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    from edgediff.quantize.tflite_int8 import merge_groups

    m = fb.read_model(str(tq.model_path))
    m.subgraphs[0].operators.pop()  # one op fewer: not the same graph
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    other = tmp_path / "other.tflite"
    other.write_bytes(builder.Output())
    with pytest.raises(EdgediffError, match="other.tflite: its ops or tensors differ"):
        merge_groups([tq.model_path, other], tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()


def test_groups_in_one_flatbuffer(tmp_path):
    b = compile_model(
        "tiny_models:tiny_unet",
        tmp_path / "g2",
        target="pixel-8",
        recipe=Recipe(**RECIPE, quantize="w8a8", groups=2, calib_samples=6),
    )
    tg = b.scheduler["timestep_groups"]
    assert tg["files"] == ["model/denoiser.tflite"] * 2 and tg["step_group"] == [0, 0, 1, 1]
    assert sorted(p.name for p in (b.root / "model").iterdir()) == ["denoiser.tflite"]
    q = b.report["quantize"]
    assert q["groups"] == 2 and q["tflite"]["groups"]["signatures"] == ["group0", "group1"]
    # the int8 weights once: the merged buffers hold far less than two separate flatbuffers' buffers
    assert q["tflite"]["groups"]["buffer_bytes"] < 0.65 * q["tflite"]["groups"]["buffer_bytes_if_separate"]
    outs = _signature_outputs(b.model_path, 300.0)
    assert not np.array_equal(outs["group0"], outs["group1"])  # each group its own activation scales
    # as above: 0.5 bounds the quantization error; AVX2 and VNNI kernels differ by rounding only
    assert q["trajectory"]["max_rel_error"] < 0.5
    assert "2 timestep groups" in b.report["verify"]["runtime"]
    setup = SamplingSetup.from_bundle(b)
    imgs = generate(bundle_denoiser(b), setup, n=2, seed=0, labels=np.array([0, 1]))
    assert imgs.shape[0] == 2 and np.isfinite(imgs).all()


def test_groups_refused_for_coreml_by_name(tmp_path):
    with pytest.raises(EdgediffError, match=r"iphone-15-pro.*--groups 2.*Core ML package carries its own weights"):
        compile_model(
            "tiny_models:tiny_unet",
            tmp_path / "g2",
            target="iphone-15-pro",
            recipe=Recipe(**RECIPE, quantize="w8a8", groups=2, calib_samples=2),
        )
