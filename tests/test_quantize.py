"""The quantize pass (src/edgediff/quantize/w8a8.py, quant_onnx.py) and timestep groups (src/edgediff/runtimes/groups.py).

The fp32 graph is the tiny UNet's from the shared `tiny_bundle` fixture, so nothing here
exports again; compile_model is run with its lowering stage returning that graph.
"""

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgediff.cli.main import build_parser
from edgediff.compiler.capture import load_source
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import torch_denoiser
from edgediff.quantize.calibration import record_trajectories
from edgediff.quantize.w8a8 import QuantizeOptions, quantize
from edgediff.runtimes.backends import OnnxRuntimeDenoiser
from edgediff.runtimes.groups import GroupedDenoiser
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, generate
from edgediff.runtimes.samplers import get_solver

RECIPE = dict(sampler="ddim", steps=4, guidance=2.0)
INT8_OPS = {"QLinearConv", "MatMulIntegerToFloat", "QGemm", "ConvInteger", "MatMulInteger", "QLinearMatMul"}


@pytest.fixture(scope="module")
def spec():
    return load_source("tiny_models:tiny_unet")


@pytest.fixture(scope="module")
def plan(spec):
    return get_solver("ddim").plan(spec.schedule, 4, spacing="leading")


@pytest.fixture(scope="module")
def calib(spec):
    return record_trajectories(spec, num_samples=6, seed=3, **RECIPE)


def _compile(tiny_bundle, out, **recipe):
    """compile_model on the tiny UNet (the tiny_bundle fixture is requested so the module shares its cost)."""
    return compile_model("tiny_models:tiny_unet", out, recipe=Recipe(**RECIPE, **recipe))


@pytest.fixture(scope="module")
def q1(tiny_bundle, tmp_path_factory):
    return _compile(tiny_bundle, tmp_path_factory.mktemp("q") / "g1", quantize="w8a8", calib_samples=6)


@pytest.fixture(scope="module")
def q2(tiny_bundle, tmp_path_factory):
    return _compile(tiny_bundle, tmp_path_factory.mktemp("q") / "g2", quantize="w8a8", groups=2, calib_samples=6)


def _optimized_ops(path, tmp_path, **session_kwargs):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    for name, value in session_kwargs.get("initializers", {}).items():
        opts.add_initializer(name, value)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    return Counter(n.op_type for n in optimized.graph.node)


def test_int8_kernels_really_run(q1, tmp_path):
    ops = _optimized_ops(q1.model_path, tmp_path)
    q = q1.report["quantize"]
    # every quantized Conv became ONNX Runtime's integer QLinearConv; only the float layers stay Conv
    float_convs = sum(1 for row in q["layers"] if row["op"] == "Conv" and row["precision"] == "fp32")
    int8_convs = sum(1 for row in q["layers"] if row["op"] == "Conv" and row["precision"] == "int8")
    assert ops["QLinearConv"] == int8_convs > 0
    assert ops["Conv"] == float_convs
    int8_linear = sum(1 for row in q["layers"] if row["op"] in ("MatMul", "Gemm") and row["precision"] == "int8")
    assert ops["MatMulIntegerToFloat"] + ops["QGemm"] == int8_linear > 0
    # the int8 weights are stored as int8
    proto = onnx.load(str(q1.model_path))
    int8_inits = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8_inits) == q["num_int8"]


def test_bundle_records_quantization(q1):
    m, r = q1.manifest, q1.report
    assert m["model"]["precision"] == "int8" and m["recipe"]["quantize"] == "w8a8"
    q = m["quantization"]
    assert q["scheme"] == "w8a8" and q["groups"] == 1 and q["num_int8"] > 0
    whys = {f["layer"]: f["why"] for f in q["float_layers"]}
    assert whys["model.conv_in"].startswith("first layer")
    assert whys["model.conv_out"].startswith("last layer")
    assert whys["model.time_embedding.linear_1"].startswith("timestep")
    layer = next(row for row in r["quantize"]["layers"] if row["precision"] == "int8" and row["op"] == "Conv")
    assert layer["input"][0]["scale"] > 0 and 0 <= layer["input"][0]["zero_point"] <= 255
    assert layer["weight"]["channels"] > 1 and layer["weight"]["scale_min"] > 0
    v = r["verify"]
    # CPU-independent: the W8A8 bound (1.0, verify.BOUNDS) only catches a broken graph; int8 kernels on
    # AVX2 and on AVX-512 VNNI sum exactly in int32 and differ by requantization rounding, ~1e-3 of it
    assert v["precision"] == "w8a8" and v["max_rel_error"] < v["bound"]  # the W8A8 bound, not TFLite int8's
    traj = r["quantize"]["trajectory"]
    # 0.5: ~5x margin over the int8-vs-fp32 error read on AVX2 (the quantization itself, not a kernel's
    # rounding, which AVX2 and VNNI both keep to about one int8 step); a broken graph reads ~1
    assert len(traj["per_step"]) == 4 and 0 < traj["max_rel_error"] < 0.5


def test_groups_share_one_copy_of_the_weights(q1, q2, tmp_path):
    groups = q2.scheduler["timestep_groups"]
    assert groups["step_group"] == [0, 0, 1, 1]
    assert groups["files"] == ["model/denoiser.g0.onnx", "model/denoiser.g1.onnx"]
    root = q2.root
    weights = root / groups["shared_weights"]
    int8_bytes = sum(
        int(np.prod(i.dims))
        for i in onnx.load(str(q1.model_path)).graph.initializer
        if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2
    )
    assert int8_bytes <= weights.stat().st_size < 2 * int8_bytes  # once (+ scales and the float layers')
    for f in groups["files"]:  # each group graph holds no int8 weight bytes of its own
        proto = onnx.load(str(root / f), load_external_data=False)
        int8 = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
        assert int8 and all(i.data_location == onnx.TensorProto.EXTERNAL and not i.raw_data for i in int8)
    # each group has its own activation scales
    layer = next(row for row in q2.report["quantize"]["layers"] if row["precision"] == "int8" and row["op"] == "Conv")
    assert len(layer["input"]) == 2 and layer["input"][0]["scale"] != layer["input"][1]["scale"]
    # each group's session reads weights.bin itself and still runs ONNX Runtime's int8 kernels
    assert _optimized_ops(root / groups["files"][1], tmp_path)["QLinearConv"] > 0


def test_one_session_serves_every_group(q2, tmp_path):
    """ONNX Runtime runs all groups in one session (one packed copy of the int8 weights), on its
    integer kernels, and each group's output equals that of the group's own session exactly."""
    groups = q2.scheduler["timestep_groups"]
    root = q2.root
    one = GroupedDenoiser(root, groups, [90.0, 70.0, 50.0, 30.0])
    assert one.sessions == 1 and one.why_sessions is None
    assert one.one_session.ops["QLinearConv"] > 0 and one.one_session.names  # fused, with per-group inputs
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    cond = np.array([1, 4, 2], np.int64)
    t = np.array([90.0, 50.0, 30.0], np.float32)
    for g, f in enumerate(groups["files"]):
        alone = OnnxRuntimeDenoiser(root / f)
        np.testing.assert_array_equal(one(x, t, cond, step=(0, g, False)), alone(x, t, cond))
    # the groups really differ: group 1's values through group 0 give another output
    assert not np.array_equal(one(x, t, cond, step=(0, 0, False)), one(x, t, cond, step=(0, 1, False)))


def test_groups_whose_graphs_differ_get_a_session_each(q2, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(q2.root, root)
    groups = q2.scheduler["timestep_groups"]
    f1 = root / groups["files"][1]
    proto = onnx.load(str(f1), load_external_data=False)
    out = proto.graph.output[0].name
    proto.graph.node[-1].output[0] = out + "_pre"  # one more node at the end of group 1's graph
    proto.graph.node.append(onnx.helper.make_node("Identity", [out + "_pre"], [out]))
    onnx.save(proto, str(f1))
    denoise = GroupedDenoiser(root, groups, [90.0, 70.0, 50.0, 30.0])
    assert denoise.sessions == 2 and "differ in their nodes" in denoise.why_sessions
    x = np.zeros((2, 1, 8, 8), np.float32)
    y = denoise(x, np.array([30.0, 30.0], np.float32), np.array([0, 1], np.int64), step=(3, 1, False))
    assert y.shape == x.shape and np.isfinite(y).all()


def test_damaged_shared_weights_are_named(q2, tmp_path):
    root = tmp_path / "b"
    shutil.copytree(q2.root, root)
    groups = q2.scheduler["timestep_groups"]
    weights = root / groups["shared_weights"]
    weights.write_bytes(weights.read_bytes()[:-64])  # truncated
    with pytest.raises(EdgediffError, match=r"denoiser.g0.onnx: initializer .* does not fit .*weights.bin"):
        GroupedDenoiser(root, groups, [90.0, 70.0, 50.0, 30.0])
    weights.unlink()
    with pytest.raises(EdgediffError, match="shared weights file .* is missing"):
        GroupedDenoiser(root, groups, [90.0, 70.0, 50.0, 30.0])


def test_runtime_picks_the_group_by_step(q2):
    setup = SamplingSetup.from_bundle(q2)
    denoise = bundle_denoiser(q2)
    assert isinstance(denoise, GroupedDenoiser)
    ts = setup.plan.model_timesteps
    assert denoise.group_of(ts).tolist() == [0, 0, 1, 1]
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    cond = np.array([1, 4], np.int64)
    root = q2.root / "model"
    alone = [OnnxRuntimeDenoiser(root / f"denoiser.g{g}.onnx") for g in range(2)]
    for t, g in zip(ts, [0, 0, 1, 1]):
        tt = np.full(2, t, np.float32)
        np.testing.assert_array_equal(denoise(x, tt, cond), alone[g](x, tt, cond))
    # a batch mixing steps of both groups is split by group
    mixed = denoise(x, np.array([ts[0], ts[-1]], np.float32), cond)
    np.testing.assert_array_equal(mixed[1], alone[1](x[1:], np.array([ts[-1]], np.float32), cond[1:])[0])
    images = generate(denoise, setup, n=3, seed=0, labels=np.array([0, 1, 2]))
    assert images.shape == (3, 1, 8, 8) and np.isfinite(images).all()


def test_quantized_close_to_fp32_on_trajectory(q2, spec, calib):
    ref = torch_denoiser(spec)
    ours = bundle_denoiser(q2)
    last = calib.step == 3
    a = ours(calib.x[last], calib.t[last], calib.cond[last])
    b = ref(calib.x[last], calib.t[last], calib.cond[last])
    err = np.linalg.norm(a - b) / np.linalg.norm(b)
    # 0.3 bounds the quantization error (scale choice), which is the same on every CPU; the kernels'
    # AVX2 vs VNNI difference is rounding of exact int32 sums, orders of magnitude smaller
    assert 0 < err < 0.3


def test_sensitivity_keeps_the_worst_layers_float(spec, calib, plan, tiny_bundle, tmp_path):
    path = tmp_path / "model" / "denoiser.onnx"
    path.parent.mkdir()
    shutil.copy(tiny_bundle.model_path, path)
    q = quantize(
        spec,
        calib,
        onnx_path=path,
        plan=plan,
        options=QuantizeOptions(sensitive_float=2, sensitivity_rows=16, keep_float=("*attentions.0.to_q",)),
    )
    rec = q.record
    ranked = [r["layer"] for r in rec["sensitivity"]]
    by_sens = [f for f in rec["float_layers"] if f["why"].startswith("sensitivity rank")]
    assert sorted(f["layer"] for f in by_sens) == sorted(ranked[:2])
    assert any(
        f["why"].startswith("kept float by pattern") and f["layer"].endswith("to_q") for f in rec["float_layers"]
    )
    assert rec["sensitivity"][0]["rel_error"] >= rec["sensitivity"][-1]["rel_error"]
    assert not (path.parent / "weights.bin").exists() and path.exists()


def test_bad_inputs_are_clear_errors(spec, calib, tiny_bundle, tmp_path):
    path = tmp_path / "denoiser.onnx"
    shutil.copy(tiny_bundle.model_path, path)
    other = get_solver("ddim").plan(spec.schedule, 5, spacing="leading")
    with pytest.raises(EdgediffError, match="timesteps"):
        quantize(spec, calib, onnx_path=path, plan=other)
    plan = get_solver("ddim").plan(spec.schedule, 4, spacing="leading")
    with pytest.raises(EdgediffError, match="matches no quantizable layer"):
        quantize(spec, calib, onnx_path=path, plan=plan, options=QuantizeOptions(keep_float=("nope*",)))
    with pytest.raises(EdgediffError, match="at most one group per step"):
        quantize(spec, calib, onnx_path=path, plan=plan, groups=5)
    assert path.exists()  # nothing was replaced
    # a calibration file with NaN, named in the error
    bad = tmp_path / "bad.npz"
    calib.save(bad)
    data = dict(np.load(bad))
    data["x"][0, 0, 0, 0] = np.nan
    np.savez(bad, **data)
    with pytest.raises(EdgediffError, match=r"bad\.npz.*non-finite"):
        compile_model("tiny_models:tiny_unet", tmp_path / "b", recipe=Recipe(**RECIPE, quantize="w8a8", calib=str(bad)))
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(quantize="w2"), "not a scheme"),
        (dict(quantize="w4", groups=2), "needs quantize w8a8"),
        (dict(groups=2), "needs quantize"),
        (dict(quantize="w8a8", groups=9), "groups must be"),
        (dict(quantize="w8a8", precision="fp16"), "starts from fp32"),
        (dict(quantize="w8a8", quant_options={"observer": "bogus"}), "unknown observer"),
        (dict(quantize="w8a8", quant_options={"nope": 1}), "unknown key"),
    ],
)
def test_recipe_validation(kwargs, match):
    with pytest.raises(EdgediffError, match=match):
        Recipe(**RECIPE, **kwargs)


def test_cli_flags_and_calibrate_command():
    p = build_parser()
    a = p.parse_args(
        [
            "compile",
            "builtin:digits",
            "-o",
            "b",
            "--quantize",
            "w8a8",
            "--groups",
            "3",
            "--calib",
            "c.npz",
            "--float-layers",
            "2",
            "--keep-float",
            "*conv_in",
        ]
    )
    assert (a.quantize, a.groups, a.calib, a.float_layers, a.keep_float) == ("w8a8", 3, "c.npz", 2, ["*conv_in"])
    a = p.parse_args(["calibrate", "builtin:digits", "--steps", "4", "--samples", "8", "-o", "c.npz"])
    assert a.func.__name__ == "cmd_calibrate" and a.steps == 4


def test_openvino_int8_runs_our_scales(q1, tiny_bundle, tmp_path):
    """--quantize w8a8 for an OpenVINO target: our QDQ graph becomes FakeQuantize in the IR with
    int8 weight constants, and OpenVINO's int8 error is that of ONNX Runtime on the same scales."""
    pytest.importorskip("openvino")
    import openvino as ov

    b = compile_model(
        "tiny_models:tiny_unet",
        tmp_path / "ov",
        target="intel-core-ultra-npu",
        recipe=Recipe(**RECIPE, quantize="w8a8", calib_samples=6),
    )
    m = b.manifest["model"]
    assert m["format"] == "openvino" and m["precision"] == "int8" and m["file"].endswith(".xml")
    assert not list((tmp_path / "ov" / "model").glob("*.onnx"))
    ir = ov.Core().read_model(str(tmp_path / "ov" / m["file"]))
    ops = Counter(op.get_type_name() for op in ir.get_ops())
    n_int8 = b.report["quantize"]["num_int8"]
    assert ops["FakeQuantize"] >= n_int8  # at least the input of every int8 layer
    # the route lowers fp32 ONNX, the pass writes QDQ, the route's lowering step makes the IR
    assert (
        b.report["lower"]["lowering"] == "onnx"
        and b.report["quantize"]["lowered"]["fake_quantize"] == ops["FakeQuantize"]
    )
    int8_weights = [
        op for op in ir.get_ops() if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"
    ]
    assert len(int8_weights) == n_int8  # the weights stay int8 constants, not float copies
    # the compiler's own w8a8 bound (1.0): a broken graph, not a CPU's kernel choice, exceeds it
    assert b.report["verify"]["max_rel_error"] <= b.report["verify"]["bound"]

    from edgediff.runtimes.backends import open_denoiser

    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    t, y = np.array([40.0, 70.0], np.float32), np.array([1, 2], np.int64)
    ours_ov = open_denoiser(tmp_path / "ov" / m["file"], "openvino")(x, t, y)
    ours_ort = OnnxRuntimeDenoiser(Path(q1.root) / q1.manifest["model"]["file"])(x, t, y)
    ref = torch_denoiser(load_source("tiny_models:tiny_unet"))(x, t, y)
    err_ov, err_ort = (float(np.linalg.norm(o - ref) / np.linalg.norm(ref)) for o in (ours_ov, ours_ort))
    # The two runtimes round at different points (accumulation, requantization), so their int8
    # outputs differ elementwise; what must hold is that OpenVINO loses no more than ONNX Runtime.
    # Both errors are measured on the running CPU (AVX2 or VNNI kernels alike), so the relation is
    # like against like; the 0.02 absolute slack covers the rounding the two kernel sets differ by.
    assert err_ov <= 1.5 * err_ort + 0.02, f"OpenVINO int8 error {err_ov:.3f} vs ONNX Runtime's {err_ort:.3f}"


def test_openvino_int8_refuses_groups(tiny_bundle, tmp_path):
    pytest.importorskip("openvino")
    with pytest.raises(EdgediffError, match="OpenVINO IR takes --groups 1"):
        compile_model(
            "tiny_models:tiny_unet",
            tmp_path / "ovg",
            target="intel-core-ultra-npu",
            recipe=Recipe(**RECIPE, quantize="w8a8", groups=2, calib_samples=6),
        )
    assert not (tmp_path / "ovg").exists()


def test_weight_range_follows_the_target_isa(q1):
    from edgediff.quantize.w8a8 import weight_bits_for
    from edgediff.targets import load_target

    assert weight_bits_for("auto", ("sse4_2", "avx2", "fma"))[0] == 7  # x86 without VNNI: vpmaddubsw saturates
    assert weight_bits_for("auto", ("avx2", "avx512f", "avx512_vnni"))[0] == 8
    assert weight_bits_for("auto", ("asimd", "asimddp"))[0] == 8  # arm64 sdot accumulates in int32
    assert weight_bits_for("full", ("avx2",))[0] == 8 and weight_bits_for("reduced", ("avx512_vnni",))[0] == 7
    # the bundle compiled for this host records what its ISA asked for, and its weights obey it
    bits = weight_bits_for("auto", load_target("host-cpu").features)[0]
    assert q1.manifest["quantization"]["weight_bits"] == bits
    proto = onnx.load(str(Path(q1.root) / q1.manifest["model"]["file"]))
    int8 = [onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert int8 and max(int(np.abs(w).max()) for w in int8) == 2 ** (bits - 1) - 1
