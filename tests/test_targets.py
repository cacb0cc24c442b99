"""Device profiles: one battery run over every profile file, then the schema's error paths."""

import json

import onnx
import pytest

from edgediff.core.errors import EdgediffError
from edgediff.lower.registry import LOWERINGS
from edgediff.targets import (
    PRECISIONS,
    available_targets,
    format_targets_table,
    load_profile_file,
    load_target,
    targets_json,
)
from edgediff.targets.host import INTERESTING, detect_host, merge_host

ONNX_OPS = {s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}
EXPECTED = {"host-cpu", "intel-core-ultra-npu", "iphone-15-pro", "pixel-8", "snapdragon-8-gen-3", "raspberry-pi-5"}


def test_every_expected_device_has_a_profile():
    assert EXPECTED <= set(available_targets())


# ---- the battery: every profile file ------------------------------------------------------


@pytest.fixture(params=available_targets())
def profile(request):
    return load_target(request.param)


def test_required_fields(profile):
    assert profile.name == profile.path.stem
    assert profile.format in LOWERINGS
    assert profile.runtime and profile.description
    assert isinstance(profile.static_shapes, bool)
    assert profile.units, "at least one unit"
    assert list(profile.units) == list(profile.compute_units)


def test_units_have_valid_precisions(profile):
    for unit, precs in profile.units.items():
        assert precs, f"unit {unit} has no precisions"
        assert set(precs) <= set(PRECISIONS)
        assert profile.unit(unit).precisions == precs
    assert set(profile.precisions) == {p for precs in profile.units.values() for p in precs}


def test_throughput_and_memory_positive(profile):
    for unit, precs in profile.units.items():
        assert set(profile.unit(unit).peak_tops) == set(precs)
        for p in precs:
            assert profile.peak_ops(unit, p) > 1e9  # at least a giga-op per second
        assert profile.unit(unit).peak_source
    assert profile.bandwidth_gbps > 0
    assert 0 < profile.memory_budget_mb <= profile.memory.total_mb
    assert profile.memory.source


def test_op_lists_are_onnx_op_types(profile):
    for unit in profile.units:
        supported, unsupported = profile.op_support(unit)
        named = supported | unsupported | set(profile.unit(unit).ops.notes)
        assert named <= ONNX_OPS, f"{profile.name}.{unit}: not ONNX op types: {sorted(named - ONNX_OPS)}"
        assert not supported & unsupported


def test_op_support_cites_its_source(profile):
    assert "http" in profile.path.read_text()
    for unit in profile.units:
        source = profile.unit(unit).ops.source
        assert source.startswith("http") or source.startswith("not documented")
        if not profile.unit(unit).ops.supported and not profile.unit(unit).ops.unsupported:
            # empty lists are either "not documented" or a documented default for every op
            assert source.startswith("not documented") or profile.unit(unit).ops.default == "supported"


def test_unit_for_picks_the_first_unit_listing_the_precision(profile):
    first_unit = next(iter(profile.units))
    assert profile.unit_for(profile.precisions[0]) == first_unit
    for p in profile.precisions:
        unit = profile.unit_for(p)
        assert p in profile.units[unit]
        assert all(p not in profile.units[u] for u in list(profile.units)[: list(profile.units).index(unit)])


def test_check_ops_partitions_the_input(profile):
    ops = {"Conv", "MatMul", "Softmax", "Loop", "If", "Resize", "InstanceNormalization"}
    for unit in profile.units:
        report = profile.check_ops(ops, unit)
        groups = [report.supported, report.unsupported, report.unknown]
        assert sorted(op for g in groups for op in g) == sorted(ops)
        assert sum(len(g) for g in groups) == len(ops)
        assert report.ok == (not report.unsupported)
        assert set(report.notes) <= ops


def test_listing_keeps_the_old_json_shape(profile):
    data = json.loads(json.dumps(targets_json([profile])))[profile.name]
    assert data["format"] == profile.format and data["runtime"] == profile.runtime
    assert data["units"] == {u: list(v) for u, v in profile.units.items()}
    assert data["static_shapes"] == profile.static_shapes and data["description"] == profile.description
    assert data["memory"]["budget_mb"] == profile.memory_budget_mb
    assert set(data["compute_units"]) == set(profile.units)
    table = format_targets_table([profile])
    assert profile.name in table and table.splitlines()[0].startswith("NAME")


# ---- facts the profiles must keep (from the vendor pages they cite) -----------------------


def test_documented_constraints():
    assert load_target("intel-core-ultra-npu").static_shapes  # "only models with static shapes"
    assert load_target("snapdragon-8-gen-3").static_shapes  # "QNN EP does not support ... dynamic shapes"
    qnn = load_target("snapdragon-8-gen-3")
    assert {"int8", "int16"} <= set(qnn.units["htp"])
    report = qnn.check_ops({"Conv", "If"}, "htp")
    assert report.supported == ("Conv",) and report.unsupported == ("If",)
    assert load_target("pixel-8").check_ops({"Resize"}, "gpu").notes["Resize"].startswith("bilinear only")
    assert load_target("iphone-15-pro").unit_for("int8") == "ane"
    assert load_target("iphone-15-pro").unit_for("fp32") == "gpu"


def test_host_cpu_merges_detected_features():
    host = load_target("host-cpu")
    assert host.detected["cores"] == host.cores >= 1
    assert set(host.features) <= set(INTERESTING)
    if "memory_available_mb" in host.detected:
        assert host.memory_budget_mb == host.detected["memory_available_mb"]
        assert host.memory.source.startswith("detected")


def test_merge_host_uses_isa_for_peaks():
    host = load_target("host-cpu")
    info = {"cores": 4, "mhz": 3000.0, "features": ["avx2", "fma"], "memory_total_mb": 1000, "memory_available_mb": 600}
    merged = merge_host(host, info)
    assert merged.peak_ops("cpu", "fp32") == pytest.approx(4 * 3e9 * 32)
    assert merged.peak_ops("cpu", "fp16") == pytest.approx(4 * 3e9 * 32)  # no native fp16: fp32 rate
    vnni = merge_host(host, {**info, "features": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_fp16"]})
    assert vnni.peak_ops("cpu", "int8") == pytest.approx(4 * 3e9 * 256)
    assert vnni.peak_ops("cpu", "fp16") == pytest.approx(2 * vnni.peak_ops("cpu", "fp32"))
    assert (merged.memory.total_mb, merged.memory_budget_mb, merged.cores) == (1000, 600, 4)
    blind = merge_host(host, {"cores": 1})  # no clock, features or memory readable: those stay
    assert blind.compute_units["cpu"].peak_tops == host.compute_units["cpu"].peak_tops
    assert blind.memory == host.memory and blind.cores == 1


def test_detect_host_reports_usable_cores():
    info = detect_host()
    assert info["cores"] >= 1
    assert set(info.get("features", [])) <= set(INTERESTING)


# ---- schema errors: one line, naming the file and the field --------------------------------

GOOD = """\
name = "{name}"
description = "a test device"
format = "onnx"
runtime = "onnxruntime"
static_shapes = true

[memory]
total_mb = 1024
budget_mb = 512
bandwidth_gbps = 10.0
source = "https://example.com/spec"

[units.cpu]
delegate = "test"
precisions = ["fp32", "int8"]
peak_source = "estimate: test"

[units.cpu.peak_tops]
fp32 = 0.1
int8 = 0.4

[units.cpu.ops]
source = "https://example.com/ops"
supported = ["Conv", "Relu"]
unsupported = ["Loop"]

[units.cpu.ops.notes]
Conv = "2D only"
"""


def write(tmp_path, text, name="dev"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text.format(name=name) if "{name}" in text else text)
    return path


def expect_error(path, *fragments):
    with pytest.raises(EdgediffError) as e:
        load_profile_file(path)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_good_profile_loads_by_path(tmp_path):
    path = write(tmp_path, GOOD)
    p = load_target(path)
    assert p.name == "dev" and p.unit_for("int8") == "cpu" and p.peak_ops("cpu", "int8") == pytest.approx(4e11)
    assert load_target(str(path)).units == {"cpu": ("fp32", "int8")}
    report = p.check_ops(["Conv", "Loop", "Gather"], "cpu")
    assert (report.supported, report.unsupported, report.unknown) == (("Conv",), ("Loop",), ("Gather",))
    assert report.notes == {"Conv": "2D only"} and not report.ok and not report.complete
    with pytest.raises(EdgediffError, match="target dev, unit cpu: .*unsupported: Loop.*not documented: Gather"):
        report.raise_if_unsupported()
    p.check_ops(["Conv", "Gather"], "cpu").raise_if_unsupported(allow_unknown=True)  # passes


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda t: t.replace("static_shapes = true", 'static_shapes = true\ncolour = "red"'), ["unknown field colour"]),
        (lambda t: t.replace('delegate = "test"', 'delegate = "test"\nspeed = 3'), ["units.cpu.speed"]),
        (
            lambda t: t.replace('source = "https://example.com/ops"', 'source = "https://example.com/ops"\nextra = []'),
            ["units.cpu.ops.extra"],
        ),
        (lambda t: t.replace("static_shapes = true", 'static_shapes = "yes"'), ["static_shapes", "true or false"]),
        (lambda t: t.replace("total_mb = 1024", 'total_mb = "1GB"'), ["memory.total_mb", "integer"]),
        (lambda t: t.replace("fp32 = 0.1", "fp32 = true"), ["units.cpu.peak_tops.fp32", "number"]),
        (lambda t: t.replace('["fp32", "int8"]', '["fp32", "fp8"]'), ["units.cpu.precisions", "fp8"]),
        (lambda t: t.replace('["fp32", "int8"]', "[]"), ["units.cpu.precisions", "non-empty"]),
        (lambda t: t.replace('["fp32", "int8"]', '["fp32", 8]'), ["units.cpu.precisions", "strings"]),
        (lambda t: t.replace("int8 = 0.4\n", ""), ["missing field units.cpu.peak_tops.int8"]),
        (lambda t: t.replace("int8 = 0.4", "int8 = 0.4\nfp16 = 1.0"), ["units.cpu.peak_tops.fp16"]),
        (lambda t: t.replace("int8 = 0.4", "int8 = 0"), ["units.cpu.peak_tops.int8", "positive"]),
        (lambda t: t.replace("bandwidth_gbps = 10.0", "bandwidth_gbps = -1"), ["memory.bandwidth_gbps", "positive"]),
        (lambda t: t.replace("budget_mb = 512", "budget_mb = 4096"), ["memory.budget_mb", "exceeds"]),
        (lambda t: t.replace('["Conv", "Relu"]', '["conv2d"]'), ["units.cpu.ops.supported", "conv2d"]),
        (lambda t: t.replace('["Loop"]', '["Loop", "Relu"]'), ["both list Relu"]),
        (lambda t: t.replace('Conv = "2D only"', 'Gather = "x"'), ["units.cpu.ops.notes.Gather"]),
        (
            lambda t: t.replace('source = "https://example.com/ops"', 'source = "my notes"'),
            ["units.cpu.ops.source", "not documented"],
        ),
        (
            lambda t: t.replace('supported = ["Conv"', 'default = "maybe"\nsupported = ["Conv"'),
            ["units.cpu.ops.default", "maybe"],
        ),
        (lambda t: t.replace('runtime = "onnxruntime"\n', ""), ["missing field runtime"]),
        (lambda t: t.replace('name = "{name}"', 'name = "other"'), ["other", "must match"]),
        (lambda t: t.split("[units.cpu]")[0], ["missing field units"]),
        (lambda t: t.replace("[memory]", "memory = 3\n[nothing]"), ["memory"]),
        (lambda t: t + '\n[units.gpu]\ndelegate = "x"\n', ["missing field units.gpu.precisions"]),
        (lambda t: t.replace("static_shapes = true", 'static_shapes = true\ndetect = "cloud"'), ["detect", "cloud"]),
        (lambda t: t.replace("static_shapes = true", "static_shapes = true\ncores = 0"), ["cores", "positive"]),
        (lambda t: t.replace("[memory]", "[memory"), ["not valid TOML"]),
    ],
)
def test_malformed_profile(tmp_path, edit, fragments):
    expect_error(write(tmp_path, edit(GOOD)), *fragments)


def test_unknown_target_lists_available():
    with pytest.raises(EdgediffError, match="unknown target 'toaster'.*host-cpu"):
        load_target("toaster")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "gone.toml", "missing (device profile)")


def test_query_errors_name_target_and_unit(tmp_path):
    p = load_target(write(tmp_path, GOOD))
    with pytest.raises(EdgediffError, match="target dev: no unit 'npu' \\(units: cpu\\)"):
        p.check_ops({"Conv"}, "npu")
    with pytest.raises(EdgediffError, match="target dev: unit cpu does not run precision 'fp16'"):
        p.peak_ops("cpu", "fp16")
    with pytest.raises(EdgediffError, match="target dev: precision 'int4' is not supported"):
        p.unit_for("int4")


def test_unknown_format_refused_naming_file_and_field(tmp_path):
    """The lowering registry is the one list of formats: a profile naming another format loads
    (targets sit below lower) and is refused, one line naming the file and the field, as soon as
    a compile resolves its route, before any export."""
    from edgediff.compiler.routes import resolve

    path = write(tmp_path, GOOD.replace('format = "onnx"', 'format = "gguf"'))
    with pytest.raises(EdgediffError) as e:
        resolve(load_target(path), scheme=None, precision=None, weights=None, groups=1)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for fragment in ("field format", "gguf", "onnx, openvino, tflite, coreml"):
        assert fragment in msg, msg
