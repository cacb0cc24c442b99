"""The quantize pass: W8A8 on ONNX Runtime's int8 kernels, calibrated on the deployment trajectory.

    ModelSpec (FP32 torch) + fp32 ONNX + CalibrationSet (the recipe's own sampler, steps, guidance)
        │ weighted_nodes: every Conv/Gemm/MatMul with a constant weight -> its torch layer
        │ float_plan: which layers stay float, and why (structural defaults, globs, sensitivity)
        │ collect_activations(groups=G): per timestep group, each layer's input/output range
        │ quantize_weight: int8 per output channel, symmetric, computed ONCE for all groups
        ▼ insert_qdq per group
    G = 1: model/denoiser.onnx                      (QDQ graph, int8 weights inside)
    G > 1: model/denoiser.g0.onnx .. g{G-1}.onnx    (graphs with their own activation scales)
           model/weights.bin                        (the int8 weights and every other weight the
                                                     groups share, once; each group graph
                                                     references it by offset as external data)

Timestep groups: the plan's steps split into G contiguous runs (calibration.step_groups,
group 0 = the noisy end); the runtime runs group g's graph at the steps of group g.

Default float layers (defaults="literature"), found from the graph's structure, not names:
  - the first layer (reads the sample x_t, whose range spans the whole trajectory),
  - the last layer (writes the model output),
  - the timestep/condition embedding path (layers whose input does not depend on x_t).
Attention's activation-by-activation products and softmax are never quantized (only layers
with a constant weight are), which is the other literature default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

from edgediff.core.errors import EdgediffError, check_known_keys
from edgediff.core.options import nonneg_int, option, positive_int
from edgediff.core.spec import ModelSpec, torch_denoiser
from edgediff.lower.registry import converter_output
from edgediff.quantize import tflite_int8
from edgediff.quantize.calibration.activations import collect_activations, match_layers, step_groups
from edgediff.quantize.calibration.observers import OBSERVERS, QuantRange
from edgediff.quantize.calibration.record import CalibrationSet
from edgediff.quantize.calibration.select import SELECTORS, select
from edgediff.quantize.calibration.sensitivity import layer_sensitivity
from edgediff.quantize.coreml_w8a8 import FINISH, write_kit
from edgediff.quantize.qdq_onnx import (
    QuantWeight,
    WeightedNode,
    insert_qdq,
    keep_float_reasons,
    quantize_weight,
    share_weights,
    weighted_nodes,
)
from edgediff.runtimes.backends import model_signature
from edgediff.runtimes.groups import grouped_denoiser
from edgediff.runtimes.samplers.base import Plan

SCHEMES = ("w8a8", "w4")  # w4: weight-only 4-bit, src/edgediff/quantize/weight_only.py
SHARED_WEIGHTS = "weights.bin"


@dataclass(frozen=True)
class QuantizeOptions:
    """The rarer knobs of `quantize` (the recipe carries scheme, groups and the calibration)."""

    observer: str = option("minmax", help="activation range observer", choices=lambda: tuple(OBSERVERS))
    # structural float layers (module docstring): the first/last layer and the timestep-embedding path
    defaults: Literal["literature", "none"] = option(
        "literature",
        switch=("no-float-defaults", "none"),
        help="quantize the first/last layer and the timestep-embedding path too",
    )
    keep_float: tuple[str, ...] = option((), metavar="GLOB", help="torch layer names to keep float (globs)")
    sensitive_float: int = option(
        0,
        name="float_layers",
        parse=nonneg_int,
        metavar="N",
        help="also keep the N most quantization-sensitive layers in float (mixed precision)",
    )
    sensitivity_rows: int = option(
        128, parse=positive_int, help="calibration rows the sensitivity ranking runs (uniform over steps)"
    )
    # int8 weights on the full 8-bit range, or 7-bit (|q| <= 63) for x86 CPUs without VNNI, whose
    # u8 x s8 kernels saturate an int16 sum of two products; "auto" decides from the target's features.
    weight_range: Literal["auto", "full", "reduced"] = option(
        "auto", help="int8 weights on the full range, or 7-bit for x86 CPUs without VNNI (auto: from the target)"
    )
    selection: str | None = option(
        None, choices=lambda: tuple(SELECTORS), help="use a subset of the calibration rows (default: all rows)"
    )
    selection_budget: int = option(0, parse=nonneg_int, help="rows the selection keeps")
    seed: int = option(
        0,
        name="calib_seed",
        parse=nonneg_int,
        help="seed of the recorded calibration trajectories and of the row selection",
    )

    def __post_init__(self):
        if self.observer not in OBSERVERS:
            raise EdgediffError(f"quantize: unknown observer {self.observer!r} (known: {', '.join(OBSERVERS)})")
        if self.defaults not in ("literature", "none"):
            raise EdgediffError(f"quantize: defaults must be 'literature' or 'none' (got {self.defaults!r})")
        if not isinstance(self.sensitive_float, int) or self.sensitive_float < 0:
            raise EdgediffError(f"quantize: sensitive_float must be an integer >= 0 (got {self.sensitive_float!r})")
        if self.weight_range not in ("auto", "full", "reduced"):
            raise EdgediffError(f"quantize: weight_range must be auto, full or reduced (got {self.weight_range!r})")
        if self.selection is not None and self.selection not in SELECTORS:
            raise EdgediffError(f"quantize: unknown selection {self.selection!r} (known: {', '.join(SELECTORS)})")
        if self.selection is not None and self.selection_budget <= 0:
            raise EdgediffError("quantize: a selection needs selection_budget > 0")
        object.__setattr__(self, "keep_float", tuple(self.keep_float))

    @classmethod
    def from_dict(cls, d: dict) -> QuantizeOptions:
        check_known_keys(d, cls, "quantize options")
        return cls(**d)


@dataclass
class QuantizedModel:
    """What the pass wrote: one graph per timestep group (+ the shared weights when G > 1)."""

    files: list[Path]
    shared: Path | None
    step_group: list[int]  # plan step -> group
    record: dict = field(default_factory=dict)  # for manifest.json "quantization" and report.json


# ---------------------------------------------------------------- which layers stay float
def _depends_on(proto: onnx.ModelProto, source: str) -> set[str]:
    """Tensors computed (transitively) from graph input `source`."""
    reach = {source}
    for n in proto.graph.node:  # ONNX graphs are topologically sorted
        if any(i in reach for i in n.input):
            reach.update(n.output)
    return reach


def structural_float(proto: onnx.ModelProto, nodes: list[WeightedNode]) -> dict[str, str]:
    """The literature defaults, found from the graph: node name -> reason."""
    sample = proto.graph.input[0].name
    outputs = {o.name for o in proto.graph.output}
    from_x = _depends_on(proto, sample)
    reasons = {}
    for wn in nodes:
        if wn.input == sample:
            reasons[wn.node] = "first layer: reads x_t, whose range spans the whole trajectory"
        elif wn.output in outputs:
            reasons[wn.node] = "last layer: writes the model output"
        elif wn.input not in from_x:
            reasons[wn.node] = "timestep/condition embedding path: its input does not depend on x_t"
    return reasons


def float_plan(
    model: ModelSpec,
    proto: onnx.ModelProto,
    nodes: list[WeightedNode],
    calib: CalibrationSet,
    opts: QuantizeOptions,
    progress=None,
) -> tuple[dict[str, str], dict | None]:
    """node name -> why it stays float; and the sensitivity ranking used (or None)."""
    reasons: dict[str, str] = {}
    modules = dict(model.module.named_modules())
    for wn in nodes:
        if wn.layer not in modules:
            reasons[wn.node] = "no torch layer recorded for this node (cannot calibrate it)"
    if opts.defaults == "literature":
        for k, v in structural_float(proto, nodes).items():
            reasons.setdefault(k, v)
    for k, v in keep_float_reasons(nodes, opts.keep_float).items():
        reasons.setdefault(k, v)
    ranking = None
    if opts.sensitive_float:
        rows = calib
        if len(calib) > opts.sensitivity_rows:
            rows = select(calib, "uniform", opts.sensitivity_rows, seed=opts.seed)
        candidates = [wn.layer for wn in nodes if wn.node not in reasons]
        table = layer_sensitivity(
            model, rows, observer=opts.observer, layers=sorted(set(candidates)), progress=progress
        )
        ranking = [{"layer": r.name, "rel_error": r.rel_error} for r in table.layers]
        worst = [r.name for r in table.layers[: opts.sensitive_float]]
        for wn in nodes:
            if wn.layer in worst:
                rank = worst.index(wn.layer) + 1
                err = table.layers[rank - 1].rel_error
                reasons.setdefault(
                    wn.node, f"sensitivity rank {rank}: alone in int8 it moves the output by {err:.2e} (relative)"
                )
    return reasons, ranking


# ---------------------------------------------------------------- the pass
_X86 = {"sse4_2", "avx", "avx2", "avx512f"}
_INT8_DOT = {"avx512_vnni", "avx_vnni", "amx_int8"}


def weight_bits_for(option: str, features) -> tuple[int, str]:
    """(bits, why) of the int8 weights for a target with ISA `features` (profile.features)."""
    f = set(features or ())
    if option == "full":
        return 8, "full 8-bit range (set by weight_range)"
    if option == "reduced":
        return 7, "7-bit range |q| <= 63 (set by weight_range)"
    if f & _X86 and not f & _INT8_DOT:
        return 7, (
            "7-bit range |q| <= 63: an x86 CPU without VNNI multiplies u8 x s8 with vpmaddubsw, which "
            "adds two products in a saturating int16; full-range weights would overflow it"
        )
    return 8, "full 8-bit range: the target's int8 dot products accumulate in int32"


@dataclass
class QuantPlan:
    """What the pass decided, before any graph is written: shared by the ONNX and TFLite writers."""

    proto: onnx.ModelProto
    nodes: list[WeightedNode]
    chosen: list[WeightedNode]
    reasons: dict[str, str]  # node -> why it stays float
    ranking: list | None
    stats: dict  # "<layer>:input|output" -> {group: Observer}
    step_group: np.ndarray
    calib: CalibrationSet
    groups: int
    options: QuantizeOptions

    def layer_ranges(self, g: int) -> dict[str, tuple[QuantRange, QuantRange]]:
        """torch layer -> (input range, output range) of timestep group g, for every chosen layer."""
        return {
            wn.layer: (self.stats[f"{wn.layer}:input"][g].result(), self.stats[f"{wn.layer}:output"][g].result())
            for wn in self.chosen
        }

    def int8_weights(self, bits: int) -> dict[str, QuantWeight]:
        """ONNX initializer -> its int8 weight (symmetric per output channel), for every chosen node."""
        inits = {i.name: i for i in self.proto.graph.initializer}
        weights: dict[str, QuantWeight] = {}
        for wn in self.chosen:
            if wn.weight not in weights:
                w = numpy_helper.to_array(inits[wn.weight]).astype(np.float32)
                weights[wn.weight] = quantize_weight(w, wn.axis, bits)
        return weights

    def tensor_ranges(self, g: int) -> dict[str, QuantRange]:
        """ONNX tensor -> range of timestep group g (each chosen node's input and output)."""
        act = {}
        for wn in self.chosen:
            act.setdefault(wn.input, self.stats[f"{wn.layer}:input"][g].result())
            act.setdefault(wn.output, self.stats[f"{wn.layer}:output"][g].result())
        return act


def plan_quantization(
    model: ModelSpec,
    calib: CalibrationSet,
    *,
    onnx_path: Path,
    plan: Plan,
    scheme: str = "w8a8",
    groups: int = 1,
    options: QuantizeOptions = QuantizeOptions(),
    progress=None,
) -> QuantPlan:
    """Which layers of the fp32 ONNX graph at `onnx_path` become int8, and their activation
    ranges per timestep group (observed on `calib`, recorded along `plan`)."""
    if scheme != "w8a8":
        raise EdgediffError(
            f"quantize: this pass writes w8a8 (got {scheme!r}); w4 is src/edgediff/quantize/weight_only.py"
        )
    calib.check_model(model)
    calib.check_plan(plan)
    step_group = step_groups(len(plan), groups)
    if options.selection is not None:
        calib = select(calib, options.selection, options.selection_budget, seed=options.seed)

    proto = onnx.load(str(onnx_path))
    # Only the nodes of weight layers (Conv, Linear): a functional conv with a constant filter inside
    # another module (diffusers' FIR resampling in Skip*Block2D) has no layer to observe and stays float.
    layer_names = set(match_layers(model.module))
    nodes = [wn for wn in weighted_nodes(proto) if wn.layer in layer_names]
    if not nodes:
        raise EdgediffError(f"{onnx_path}: no Conv/Gemm/MatMul with a constant weight to quantize")
    reasons, ranking = float_plan(model, proto, nodes, calib, options)
    chosen = [wn for wn in nodes if wn.node not in reasons]
    if not chosen:
        raise EdgediffError("quantize: every quantizable layer is kept float; nothing to quantize")
    layers = sorted({wn.layer for wn in chosen})
    stats = collect_activations(model, calib, kind=options.observer, groups=groups, layers=layers, progress=progress)
    return QuantPlan(
        proto=proto,
        nodes=nodes,
        chosen=chosen,
        reasons=reasons,
        ranking=ranking,
        stats=stats,
        step_group=step_group,
        calib=calib,
        groups=groups,
        options=options,
    )


def quantize(
    model: ModelSpec,
    calib: CalibrationSet,
    *,
    onnx_path: Path,
    plan: Plan,
    scheme: str = "w8a8",
    groups: int = 1,
    options: QuantizeOptions = QuantizeOptions(),
    target_features=(),
    progress=None,
) -> QuantizedModel:
    """Quantize the fp32 ONNX graph at `onnx_path` (lowered from `model`) in place of it.

    `calib` must be recorded along `plan` (the bundle's sampler trajectory). Writes into
    onnx_path's folder and removes the fp32 file; returns the files and the record.
    `target_features` (the target profile's ISA features) decides weight_range "auto".
    """
    qp = plan_quantization(
        model, calib, onnx_path=onnx_path, plan=plan, scheme=scheme, groups=groups, options=options, progress=progress
    )
    proto, chosen = qp.proto, qp.chosen
    bits, bits_why = weight_bits_for(options.weight_range, target_features)
    weights = qp.int8_weights(bits)

    per_group_ranges = [qp.tensor_ranges(g) for g in range(groups)]
    protos = [insert_qdq(proto, chosen, act, weights) for act in per_group_ranges]

    out_dir = onnx_path.parent
    onnx_path.unlink()
    shared = None
    if groups == 1:
        files = [out_dir / onnx_path.name]
        onnx.save(protos[0], str(files[0]))
    else:
        stem = onnx_path.stem
        files = [out_dir / f"{stem}.g{g}.onnx" for g in range(groups)]
        names = shareable(protos)
        shared = out_dir / SHARED_WEIGHTS
        shared.write_bytes(share_weights(protos, names, SHARED_WEIGHTS))
        for p, f in zip(protos, files):
            onnx.save(p, str(f))

    record = _record(
        scheme,
        groups,
        qp.step_group,
        plan,
        options,
        qp.nodes,
        chosen,
        qp.reasons,
        weights,
        per_group_ranges,
        qp.calib,
        qp.ranking,
        files,
        shared,
    )
    record["weight_bits"] = bits
    record["weights"] = f"int8 symmetric per output channel (min-max), {bits_why}"
    q = QuantizedModel(files=files, shared=shared, step_group=qp.step_group.tolist(), record=record)
    record["trajectory"] = trajectory_error(model, q, qp.calib, plan)
    return q


def quantize_tflite(
    model: ModelSpec,
    calib: CalibrationSet,
    *,
    onnx_path: Path,
    tflite_path: Path,
    plan: Plan,
    scheme: str = "w8a8",
    groups: int = 1,
    options: QuantizeOptions = QuantizeOptions(),
    progress=None,
) -> QuantizedModel:
    """The same plan as `quantize` (float layers, ranges from `calib`), written into the fp32
    TFLite model at `tflite_path` (replaced) through ai-edge-quantizer (src/edgediff/quantize/tflite_int8.py).

    `onnx_path`: the fp32 ONNX export of `model`, from which the float layers are found as for
    ONNX. With `groups` > 1 each group is written with its own ranges and the G flatbuffers are
    merged into one (tflite_int8.merge_groups: a subgraph and signature "group{k}" per group,
    every buffer stored once, so one copy of the int8 weights).
    """
    qp = plan_quantization(
        model, calib, onnx_path=onnx_path, plan=plan, scheme=scheme, groups=groups, options=options, progress=progress
    )
    layers = sorted({wn.layer for wn in qp.chosen})
    ops = tflite_int8.match_layers(model.module, layers, tflite_int8.tflite_ops(tflite_path))
    fp32 = tflite_path.with_name(tflite_path.stem + ".fp32.tflite")
    tflite_path.rename(fp32)
    parts = (
        [tflite_path]
        if groups == 1
        else [tflite_path.with_name(f"{tflite_path.stem}.g{g}.tflite") for g in range(groups)]
    )
    merged = None
    try:
        with converter_output("TFLite W8A8 (ai-edge-quantizer)"):
            for g, part in enumerate(parts):
                written = tflite_int8.write_w8a8(fp32, part, ops, qp.layer_ranges(g))
        if groups > 1:
            merged = tflite_int8.merge_groups(parts, tflite_path)
    finally:
        fp32.unlink()
        for part in parts:
            if part != tflite_path:
                part.unlink(missing_ok=True)
    census = tflite_int8.int8_census(tflite_path)
    record = _record(
        scheme,
        groups,
        qp.step_group,
        plan,
        options,
        qp.nodes,
        qp.chosen,
        qp.reasons,
        qp.int8_weights(8),
        [qp.tensor_ranges(g) for g in range(groups)],
        qp.calib,
        qp.ranking,
        [tflite_path],
        None,
    )
    record["weight_bits"] = 8
    record["weights"] = (
        "int8 symmetric per output channel (min-max, ai-edge-quantizer); full 8-bit range: "
        "XNNPACK's int8 kernels widen to int16 before multiplying, no saturating pair sums"
    )
    record["activations"] = (
        f"int8 asymmetric per tensor ({options.observer}, our ranges written as the calibration result)"
    )
    record["tflite"] = {
        "writer": "ai-edge-quantizer static int8 recipe, one entry per chosen op",
        "ops_matched": len(ops),
        "folded_scales": {k: m.factor for k, m in ops.items() if m.factor != 1.0},
        "tensors_with_our_ranges": len(written),
        **census,
    }
    if merged:
        record["tflite"]["groups"] = merged
    # one flatbuffer serves every group (its signature "group{k}"): scheduler.json lists it once per group
    q = QuantizedModel(files=[tflite_path] * groups, shared=None, step_group=qp.step_group.tolist(), record=record)

    entry = None if groups == 1 else {"files": [tflite_path.name] * groups, "step_group": q.step_group}
    record["trajectory"] = trajectory_error(
        model,
        q,
        qp.calib,
        plan,
        denoise=grouped_denoiser(tflite_path.parent, entry, plan.model_timesteps, model_file=tflite_path, fmt="tflite"),
    )
    return q


def quantize_coreml(
    model: ModelSpec,
    calib: CalibrationSet,
    *,
    onnx_path: Path,
    package: Path,
    plan: Plan,
    static_batch: int,
    scheme: str = "w8a8",
    options: QuantizeOptions = QuantizeOptions(),
    progress=None,
) -> QuantizedModel:
    """Core ML W8A8 prepared for macOS (src/edgediff/quantize/coreml_w8a8.py): the package keeps its int8 weights;
    the bundle gets the calibration rows, the activation-quantization recipe with the pass's float
    layers as skipped MIL ops, and the script that finishes it where Core ML predicts."""
    qp = plan_quantization(
        model, calib, onnx_path=onnx_path, plan=plan, scheme=scheme, groups=1, options=options, progress=progress
    )
    sig = model_signature(package, "coreml")
    float_layers = [{"layer": wn.layer, "why": qp.reasons[wn.node]} for wn in qp.nodes if wn.node in qp.reasons]
    kit = write_kit(
        package.parents[1],
        package,
        qp.calib,
        input_names=[i["name"] for i in sig["inputs"]],
        input_dtypes=[np.dtype(i["dtype"]) for i in sig["inputs"]],
        static_batch=static_batch,
        layers_in_order=[wn.layer for wn in qp.nodes],
        float_layers=float_layers,
        module=model.module,
    )
    record = _record(
        scheme,
        1,
        qp.step_group,
        plan,
        options,
        qp.nodes,
        qp.chosen,
        qp.reasons,
        qp.int8_weights(8),
        [qp.tensor_ranges(0)],
        qp.calib,
        qp.ranking,
        [package],
        None,
    )
    record["weight_bits"] = 8
    record["weights"] = "int8 symmetric per output channel (coremltools linear_quantize_weights)"
    record["activations"] = f"fp16 in the shipped package; int8 after the macOS step: {FINISH}"
    record["coreml"] = kit
    return QuantizedModel(files=[package], shared=None, step_group=qp.step_group.tolist(), record=record)


# Why the Core ML writer takes one timestep group (the message of the error for --groups > 1).
COREML_GROUPS = (
    "a Core ML package carries its own weights, so G groups would be G full copies of the int8 "
    "weights (G times the download and memory) instead of one shared set; use --groups 1 for Core ML"
)


def shareable(protos: list[onnx.ModelProto], min_bytes: int = 256) -> list[str]:
    """Initializers that every group graph holds with identical bytes: the int8 weights, their
    per-channel scales, and the float layers' weights (biases differ: they scale with s_x)."""
    first = {i.name: i for i in protos[0].graph.initializer}
    names = []
    for name, init in first.items():
        raw = numpy_helper.to_array(init).tobytes()
        if len(raw) < min_bytes and init.data_type != onnx.TensorProto.INT8:  # int8 weights: always
            continue
        if all(
            numpy_helper.to_array(o).tobytes() == raw for p in protos[1:] for o in p.graph.initializer if o.name == name
        ):
            if all(any(o.name == name for o in p.graph.initializer) for p in protos[1:]):
                names.append(name)
    return names


def trajectory_error(
    model: ModelSpec, q: QuantizedModel, calib: CalibrationSet, plan: Plan, rows_per_step: int = 16, denoise=None
) -> dict:
    """Relative error ||eps_int8 - eps_fp32|| / ||eps_fp32|| of the written graphs on calibration
    rows, per plan step: the error where the bundle actually runs."""

    ours = denoise
    if ours is None:
        groups = None
        if len(q.files) > 1:
            groups = {
                "files": [f.name for f in q.files],
                "step_group": q.step_group,
                "shared_weights": q.shared.name if q.shared else None,
            }
        ours = grouped_denoiser(q.files[0].parent, groups, plan.model_timesteps, model_file=q.files[0])
    ref = torch_denoiser(model)
    per_step = {}
    for s in calib.visited_steps:
        idx = np.nonzero(calib.step == s)[0][:rows_per_step]
        args = [calib.x[idx], calib.t[idx], calib.conditions(idx)]  # a text model: the prompts' embeddings
        a, b = ours(*args), ref(*args)
        per_step[int(s)] = float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))
    vals = list(per_step.values())
    return {
        "rows_per_step": rows_per_step,
        "mean_rel_error": float(np.mean(vals)),
        "max_rel_error": float(np.max(vals)),
        "per_step": per_step,
    }


def _record(
    scheme,
    groups,
    step_group,
    plan,
    options,
    nodes,
    chosen,
    reasons,
    weights,
    per_group_ranges,
    calib,
    ranking,
    files,
    shared,
) -> dict:
    def act(g, tensor):
        r = per_group_ranges[g][tensor]
        return {
            "scale": float(r.scale),
            "zero_point": int(r.zero_point) + 128,
            "min": float(r.min),
            "max": float(r.max),
        }

    layers = []
    for wn in nodes:
        entry = {"layer": wn.layer, "node": wn.node, "op": wn.op}
        if wn.node in reasons:
            entry |= {"precision": "fp32", "why": reasons[wn.node]}
        else:
            w = weights[wn.weight]
            entry |= {
                "precision": "int8",
                "weight": {
                    "dtype": "int8",
                    "symmetric": True,
                    "axis": w.axis,
                    "channels": int(w.scale.size),
                    "scale_min": float(w.scale.min()),
                    "scale_max": float(w.scale.max()),
                },
                "input": [act(g, wn.input) for g in range(groups)],
            }
            if wn.op == "Conv":
                entry["output"] = [act(g, wn.output) for g in range(groups)]
        layers.append(entry)
    return {
        "scheme": scheme,
        "weights": "int8 symmetric per output channel (min-max)",
        "activations": f"uint8 asymmetric per tensor ({options.observer}), per timestep group",
        "groups": groups,
        "step_group": step_group.tolist(),
        "group_timesteps": [
            [float(t) for t, gg in zip(plan.model_timesteps, step_group) if gg == g] for g in range(groups)
        ],
        "calibration": {
            "rows": len(calib),
            **{
                k: v
                for k, v in calib.meta.to_dict().items()
                if k in ("source", "sampler", "steps", "guidance", "seed", "num_samples", "selection")
            },
        },
        "options": asdict(options) | {"keep_float": list(options.keep_float)},
        "num_layers": len(nodes),
        "num_int8": len(chosen),
        "num_float": len(nodes) - len(chosen),
        "float_layers": [
            {"layer": wn.layer, "node": wn.node, "why": reasons[wn.node]} for wn in nodes if wn.node in reasons
        ],
        "files": [f.name for f in files],
        "shared_weights": shared.name if shared else None,
        "sensitivity": ranking,
        "layers": layers,
        "never_quantized": "attention score/value products and softmax (activation x activation), "
        "normalisation and activations: float",
    }


def load_calib_for(path: str | Path, model: ModelSpec, plan: Plan) -> CalibrationSet:
    """A user's calib.npz, checked against the model and the bundle's trajectory."""
    calib = CalibrationSet.load(path, model=model)
    calib.check_plan(plan, where=str(path))
    return calib
