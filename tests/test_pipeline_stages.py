"""The compile pipeline as a list of stages: report.json from the stage records, the route table."""

import re
from pathlib import Path

import pytest

import edgediff.compiler.pipeline as pipeline
import edgediff.lower.onnx as lower_onnx
from edgediff.compiler.pipeline import STAGES, compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.compiler.routes import ROUTES, SCHEME_PRECISION, formats_for, get_route, resolve
from edgediff.core.errors import EdgediffError
from edgediff.lower.registry import LOWERINGS
from edgediff.quantize.w8a8 import SCHEMES
from edgediff.targets import load_target

NAMES = [name for name, _ in STAGES]


def test_stage_list_in_order():
    assert NAMES == ["capture", "plan", "calibrate", "coverage", "lower", "quantize", "verify", "write"]
    assert all(callable(fn) for _, fn in STAGES)


def test_report_holds_every_stage_record(tiny_bundle):
    r = tiny_bundle.report
    assert set(NAMES) <= set(r)
    assert {"source", "target", "model", "timings_s"} <= set(r)
    for old in ("lowering", "quantization", "verification"):  # the hand-built report's keys are gone
        assert old not in r
    assert r["plan"]["timesteps"] == tiny_bundle.scheduler["plan"]["timesteps"]
    assert r["plan"]["solver"] == "ddim" and r["plan"]["precision"] == tiny_bundle.manifest["model"]["precision"]
    assert r["calibrate"] is None and r["quantize"] is None  # a float build: the stages ran and recorded nothing
    assert r["capture"]["params"] == r["model"]["params"] > 0
    assert r["verify"]["max_rel_error"] <= r["verify"]["bound"]


def test_write_record_lists_the_model_files(tiny_bundle):
    w = tiny_bundle.report["write"]
    json_files = ("manifest.json", "scheduler.json", "report.json")  # written after the record
    listed = {k: v["bytes"] for k, v in tiny_bundle.manifest["files"].items() if k not in json_files}
    assert w["files"] == listed and w["bytes"] == sum(listed.values())
    assert w["model_bytes"] == tiny_bundle.report["model"]["size_bytes"] == listed["model/denoiser.onnx"]
    assert not (tiny_bundle.root / "ir").exists()  # the fp32 export is scratch


def test_timings_name_the_stages(tiny_bundle):
    t = tiny_bundle.report["timings_s"]
    assert [k for k in t if k in NAMES] == NAMES[:-1]  # write is still running when report.json is written
    assert t["total"] >= sum(t[n] for n in NAMES[:-1])


def test_route_table_is_consistent():
    for (scheme, fmt), route in ROUTES.items():
        assert fmt in LOWERINGS and route.lowers in LOWERINGS, (scheme, fmt)
        assert route.writes is None or route.writes in LOWERINGS[route.lowers].precisions, (scheme, fmt)
        assert (route.quantize is None) == (scheme is None) == (route.writes is None), (scheme, fmt)
        assert not route.calibrate or scheme == "w8a8"
        assert route.max_groups is None or route.groups_why
    assert set(formats_for(None)) == set(LOWERINGS)  # every format has a float build
    assert {s for s, _ in ROUTES if s} == set(SCHEMES) == set(SCHEME_PRECISION)
    assert get_route("w8a8", "openvino", "t").then is not None  # the IR conversion is the route's lowering step


def test_unsupported_pair_names_scheme_format_and_routes():
    with pytest.raises(
        EdgediffError, match=r"target pixel-8: no compile route for scheme w4 and format tflite.*w8a8/onnx"
    ):
        get_route("w4", "tflite", "pixel-8")
    # a target whose precisions allow int4 still stops at the route, before any export
    pixel = load_target("pixel-8")
    with_int4 = type(pixel)(**{**pixel.__dict__, "units": {**pixel.units, "cpu": (*pixel.units["cpu"], "int4")}})
    with pytest.raises(EdgediffError, match=r"scheme w4 and format tflite.*float/coreml"):
        resolve(with_int4, scheme="w4", precision=None, weights=None, groups=1)


def test_resolve_picks_precision():
    host = load_target("host-cpu")
    assert resolve(host, scheme=None, precision=None, weights=None, groups=1)[1] == "fp32"
    assert resolve(host, scheme=None, precision="fp16", weights=None, groups=1)[1] == "fp16"
    route, precision = resolve(host, scheme="w8a8", precision=None, weights=None, groups=2)
    assert precision == "int8" and route.lowers == "onnx" and route.writes == "fp32"


def test_pipeline_has_no_format_or_scheme_branches():
    """pipeline.py compares with no format and no scheme name: they live in routes.py (and
    lower/registry.py). Dict keys (the provenance's package versions) are not choices."""
    src = Path(pipeline.__file__).read_text()
    names = [*LOWERINGS, *SCHEMES]
    found = re.findall(r"[\"'](" + "|".join(map(re.escape, names)) + r")[\"'](?!\s*:)", src)  # keys: provenance
    assert found == []


def test_one_export_per_compile(tmp_path, monkeypatch):
    """Coverage exports the fp32 ONNX once; the lowering reads that file, nothing exports again."""
    from tiny_models import tiny_unet

    calls = []
    real = lower_onnx._export
    monkeypatch.setattr(lower_onnx, "_export", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = tiny_unet()
    b = compile_model(spec, tmp_path / "a", recipe=Recipe(sampler="ddim", steps=3))
    assert len(calls) == 1 and b.report["lower"]["lowering"] == "onnx"
    compile_model(spec, tmp_path / "b", recipe=Recipe(sampler="ddim", steps=3, precision="fp16"))
    assert len(calls) == 1  # same module, same weights: the export is reused
