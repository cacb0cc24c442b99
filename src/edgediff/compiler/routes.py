"""Compile routes: for each (scheme, format), what the lower stage writes and how it is quantized.

To add a scheme or format, edit ROUTES below (a new format also needs its lowering in
src/edgediff/lower/registry.py LOWERINGS and a backend in src/edgediff/runtimes/backends.py; a new
scheme needs its pass in src/edgediff/quantize/ and its name in quantize/w8a8.py SCHEMES).

    (recipe.quantize, profile.format) ──ROUTES──> Route
        lower stage:     LOWERINGS[route.lowers] at route.writes (None: the float precision chosen
                         from the recipe or the profile)
        quantize stage:  route.quantize(QuantizeJob) -> QuantizedModel          (None: a float build)
                         route.then(QuantizedModel, Lowered) -> Lowered          (a lowering step after
                         the pass: OpenVINO IR from the QDQ graph)

The scheme is None for float builds. `resolve` picks the route and the bundle's precision and
checks the route's constraints before anything is exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec
from edgediff.lower.openvino import lower_openvino_int8
from edgediff.lower.registry import Lowered, check_precision, check_weights, get_lowering
from edgediff.quantize.calibration.record import CalibrationSet
from edgediff.quantize.w8a8 import (
    COREML_GROUPS,
    QuantizedModel,
    QuantizeOptions,
    quantize,
    quantize_coreml,
    quantize_tflite,
)
from edgediff.quantize.weight_only import quantize_w4_onnx, quantize_w4_openvino, weight_only_model
from edgediff.runtimes.samplers.base import Plan
from edgediff.targets import TargetProfile

SCHEME_PRECISION = {"w8a8": "int8", "w4": "int4"}  # the profile precision each scheme needs


@dataclass(frozen=True)
class QuantizeJob:
    """What a route's quantize function reads: the model, its files so far, the recipe's choices."""

    model: ModelSpec
    calib: CalibrationSet | None  # from the calibrate stage (None: the route does not calibrate)
    export: Path  # the fp32 ONNX export (dynamic batch) made by the coverage stage
    lowered: Lowered  # what the lower stage wrote
    plan: Plan
    groups: int
    options: QuantizeOptions
    target_features: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    lowers: str  # the LOWERINGS entry the lower stage runs
    writes: str | None  # the precision it writes; None: the float precision chosen for the build
    quantize: Callable[[QuantizeJob], QuantizedModel] | None = None
    then: Callable[[QuantizedModel, Lowered], Lowered] | None = None  # lowering after the pass
    calibrate: bool = False  # the pass needs activation ranges along the deployment trajectory
    max_groups: int | None = None  # timestep groups the format can hold (None: any)
    groups_why: str = ""
    runtimes: tuple[str, ...] = ()  # target runtimes that run the result (empty: any)
    runtimes_why: str = ""
    runtime: dict = field(default_factory=dict)  # manifest model.runtime hints the route sets

    def check(self, target: TargetProfile, scheme: str | None, groups: int) -> None:
        if self.runtimes and target.runtime not in self.runtimes:
            raise EdgediffError(
                f"target {target.name}: --quantize {scheme} {self.runtimes_why}; this target's runtime is {target.runtime}"
            )
        if self.max_groups is not None and groups > self.max_groups:
            raise EdgediffError(f"target {target.name}: --groups {groups}: {self.groups_why}")


# ---------------------------------------------------------------- the quantize functions, one per route
def _w8a8_onnx(j: QuantizeJob) -> QuantizedModel:
    """QDQ into the lowered fp32 ONNX graph (replaced); G > 1: one graph per group + weights.bin."""
    return quantize(
        j.model,
        j.calib,
        onnx_path=j.lowered.file,
        plan=j.plan,
        scheme="w8a8",
        groups=j.groups,
        options=j.options,
        target_features=j.target_features,
    )


def _w8a8_tflite(j: QuantizeJob) -> QuantizedModel:
    """The same plan and ranges written into the lowered fp32 TFLite model."""
    return quantize_tflite(
        j.model,
        j.calib,
        onnx_path=j.export,
        tflite_path=j.lowered.file,
        plan=j.plan,
        scheme="w8a8",
        groups=j.groups,
        options=j.options,
    )


def _w8a8_coreml(j: QuantizeJob) -> QuantizedModel:
    """The int8-weight package stays; the kit that finishes W8A8 on macOS goes into the bundle."""
    return quantize_coreml(
        j.model,
        j.calib,
        onnx_path=j.export,
        package=j.lowered.file,
        plan=j.plan,
        static_batch=j.lowered.runtime["static_batch"],
        scheme="w8a8",
        options=j.options,
    )


def _w4_onnx(j: QuantizeJob) -> QuantizedModel:
    rec = quantize_w4_onnx(j.lowered.file, keep_float=j.options.keep_float)
    return weight_only_model(j.lowered.file, rec, steps=len(j.plan))


def _w4_openvino(j: QuantizeJob) -> QuantizedModel:
    path, rec = quantize_w4_openvino(
        j.lowered.file,
        j.lowered.file.parent,
        keep_float=j.options.keep_float,
        static_batch=j.lowered.runtime.get("static_batch"),
    )
    return weight_only_model(path, rec, steps=len(j.plan))


def _openvino_ir(q: QuantizedModel, lowered: Lowered) -> Lowered:
    """The QDQ graph as OpenVINO IR (QuantizeLinear/DequantizeLinear -> FakeQuantize, our scales)."""
    ir = lower_openvino_int8(q.files[0], q.files[0].parent, static_batch=lowered.runtime.get("static_batch"))
    q.files[0] = ir.file
    q.record["files"] = [ir.file.name]
    return ir


_W4_RUNTIMES = "runs on ONNX Runtime's CPU kernels (MatMulNBits) or OpenVINO"
_OPENVINO_GROUPS = "timestep groups share one weight file across ONNX graphs; OpenVINO IR takes --groups 1"

ROUTES: dict[tuple[str | None, str], Route] = {
    (None, "onnx"): Route("onnx", None),
    (None, "openvino"): Route("openvino", None),
    (None, "tflite"): Route("tflite", None),
    (None, "coreml"): Route("coreml", None),
    ("w8a8", "onnx"): Route("onnx", "fp32", _w8a8_onnx, calibrate=True),
    ("w8a8", "openvino"): Route(
        "onnx", "fp32", _w8a8_onnx, then=_openvino_ir, calibrate=True, max_groups=1, groups_why=_OPENVINO_GROUPS
    ),
    ("w8a8", "tflite"): Route("tflite", "fp32", _w8a8_tflite, calibrate=True),
    # int8 weights from the lowering; the activations are quantized on macOS (coreml_w8a8.py)
    ("w8a8", "coreml"): Route("coreml", "int8", _w8a8_coreml, calibrate=True, max_groups=1, groups_why=COREML_GROUPS),
    ("w4", "onnx"): Route("onnx", "fp32", _w4_onnx, runtimes=("onnxruntime",), runtimes_why=_W4_RUNTIMES),
    ("w4", "openvino"): Route(
        "onnx",
        "fp32",
        _w4_openvino,
        runtimes=("openvino",),
        runtimes_why=_W4_RUNTIMES,
        runtime={"inference_precision_hint": "f32"},
    ),
}


def _pair(scheme: str | None, fmt: str) -> str:
    return f"{scheme or 'float'}/{fmt}"


def formats_for(scheme: str | None) -> tuple[str, ...]:
    """The formats a scheme has a route to (None: float builds)."""
    return tuple(f for s, f in ROUTES if s == scheme)


def get_route(scheme: str | None, fmt: str, target: str) -> Route:
    route = ROUTES.get((scheme, fmt))
    if route is None:
        raise EdgediffError(
            f"target {target}: no compile route for scheme {scheme or 'none (float)'} and format {fmt} "
            f"(routes: {', '.join(_pair(s, f) for s, f in ROUTES)})"
        )
    return route


def resolve(target: TargetProfile, *, scheme: str | None, precision: str | None, weights: str | None, groups: int):
    """(route, the bundle's precision) for a recipe on a target; every check before any export."""
    get_lowering(target.format, str(target.path) if target.path else f"target {target.name}")  # a known format
    if scheme is not None:
        target.check_precision(SCHEME_PRECISION[scheme])  # names the precision and the target
    route = get_route(scheme, target.format, target.name)
    route.check(target, scheme, groups)
    chosen = SCHEME_PRECISION.get(scheme) or precision or _float_precision(target, route)
    if precision is not None and scheme is None:
        target.check_precision(precision)  # names the precision and the target
        check_precision(route.lowers, precision, target.name)
    check_weights(target.format, weights, target.name)
    return route, chosen


def _float_precision(target: TargetProfile, route: Route) -> str:
    """The target's first precision that the route's lowering writes."""
    low = get_lowering(route.lowers, target.name)
    usable = [p for p in target.precisions if p in low.precisions]
    if not usable:
        raise EdgediffError(
            f"target {target.name}: none of its precisions ({', '.join(target.precisions)}) "
            f"can be written by the {route.lowers} lowering ({', '.join(low.precisions)})"
        )
    return usable[0]
