"""Lower a text-to-image pipeline's other components: one graph each beside the denoiser.

    model/text_encoder.{onnx,xml,tflite,mlpackage}  input_ids int64 [B, max_length] -> last_hidden_state
                                                    [B, max_length, hidden] (Core ML: int32 ids)
    model/vae_decoder.{onnx,xml,tflite,mlpackage}   latents float32 [B, *latent_shape] -> image [B, 3, H, W]
                                                    in [-1, 1]

Each is exported from PyTorch with the batch axis dynamic (opset 18, as the denoiser), then
written as ONNX (fp32 or fp16, float32 inputs/outputs) or converted to OpenVINO IR. The formats
done for text-to-image bundles are FORMATS; the compiler refuses the others before any work.

fp16 overflows in many VAE decoders (activations past 65504). With calibration inputs given,
an fp16 lowering first runs the fp32 graph on them (fp16_overflow): the nodes with a float input,
output or weight past the fp16 range are found. ONNX keeps those nodes fp32 (casts around them),
then runs the fp16 graph on the same inputs and, while its output is not finite or differs
beyond `bound`, keeps fp32 the first node whose fp16 output is non-finite where fp32's is finite
(keep_fp32_nodes); the record's "fp16" says which nodes and why. OpenVINO IR, TFLite and Core ML have no
per-node precision here: an overflow there is refused with the nodes named.

    fp32 graph --run on calib--> |x| per tensor --> nodes past 65504 --> fp16 with those in fp32
                                                        ^                      | non-finite / > bound
                                                        +-- first non-finite --+
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec, sha256_state
from edgediff.lower.onnx import OPSET, cached_export, fix_batch, remove_onnx, save_onnx, to_fp16, torch_export
from edgediff.lower.registry import Lowered

FORMATS = ("onnx", "openvino", "tflite", "coreml")  # the formats a text-to-image bundle's components are lowered to
NAMES = ("text_encoder", "vae_decoder")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite", "coreml": ".mlpackage"}


class _TextEncoderInput(torch.nn.Module):
    """litert-torch names a graph's inputs after forward's parameters."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, input_ids):
        return self.module(input_ids)


class _LatentsInput(_TextEncoderInput):
    def forward(self, latents):
        return self.module(latents)


_TFLITE_WRAPPERS = {"text_encoder": _TextEncoderInput, "vae_decoder": _LatentsInput}


def _lower_tflite(c: Component, out_dir: Path, *, precision: str, source: str, static_batch: int | None) -> Lowered:
    """litert-torch from PyTorch (static shapes: batch `static_batch`, 1 by default); fp16 weights by
    the quantizer's float casting, as the denoiser's lowering (lower/tflite.py)."""
    from importlib.metadata import version

    from edgediff.lower.registry import converter_output, require
    from edgediff.lower.tflite import _quantize

    lt = require("litert_torch", "tflite", "tflite")
    batch = static_batch or 1
    example = c.example[0][:1].repeat(batch, *([1] * (c.example[0].ndim - 1)))
    path = out_dir / f"{c.name}.tflite"
    with converter_output(f"TFLite conversion (litert-torch) of {source} component {c.name}"), torch.no_grad():
        lt.convert(_TFLITE_WRAPPERS[c.name](c.module).eval(), sample_kwargs={c.inputs[0]: example}).export(str(path))
        if precision != "fp32":
            _quantize(path, precision)
    return Lowered(
        path,
        {"converter": f"litert-torch {version('litert-torch')}", "static_batch": batch},
        {"static_batch": batch},
    )


def _lower_coreml(c: Component, out_dir: Path, *, precision: str, source: str, static_batch: int | None) -> Lowered:
    """An ML program from torch.export (lower/coreml.py), static shapes: batch `static_batch`, 1 by default.
    Checked structurally here (inputs, outputs, shapes); Core ML prediction needs macOS."""
    from edgediff.lower.coreml import NUMERICS, lower_coreml_graph

    batch = static_batch or 1
    example = tuple(x[:1].repeat(batch, *([1] * (x.ndim - 1))) for x in c.example)
    path = out_dir / f"{c.name}.mlpackage"
    what = f"{source} component {c.name}"
    record = lower_coreml_graph(
        c.module, example, path, inputs=c.inputs, outputs=c.outputs, precision=precision, what=what
    )
    return Lowered(path, record | {"numerics": NUMERICS}, {"static_batch": batch, "compute_units": "ALL"})


@dataclass(frozen=True)
class Component:
    """A graph of a pipeline: its module, example inputs and the names of its inputs and outputs."""

    name: str
    module: torch.nn.Module
    example: tuple[torch.Tensor, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def components(model: ModelSpec) -> list[Component]:
    t = model.text
    if t is None:
        raise EdgediffError(f"{model.source}: not a text-to-image pipeline (no text encoder or VAE)")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (2, t.max_length), generator=g, dtype=torch.int64)
    latents = torch.randn((2, *t.latent_shape), generator=g)
    return [
        Component("text_encoder", t.text_encoder, (ids,), ("input_ids",), ("last_hidden_state",)),
        Component("vae_decoder", t.vae_decoder, (latents,), ("latents",), ("image",)),
    ]


FP16_MAX = 65504.0  # the largest finite float16
# |x| at or past this is the float32 "minus infinity" of attention masks (torch.finfo(float32).min):
# the fp16 converter clamps it to -65504, which masks as well; not an overflow
MASK_SENTINEL = float(np.finfo(np.float32).max) / 2
_FLOAT = onnx.TensorProto.FLOAT
MAX_KEEP_ROUNDS = 32


def _named(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every node with a unique name (the converter's node_block_list selects nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return proto


def _run_all(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The float tensors among `names` (those `proto` has) of one run of `proto` on `feeds`, as float32."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    made = {o for n in probe.graph.node for o in n.output} | {i.name for i in probe.graph.input}
    have = {o.name for o in probe.graph.output}
    want = [n for n in dict.fromkeys(names) if n in made]
    for n in want:
        if n not in have:
            probe.graph.output.append(onnx.ValueInfoProto(name=n))  # ONNX Runtime infers its type
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = sess.run(want, feeds)
    return {n: np.asarray(v, np.float32) for n, v in zip(want, out) if np.issubdtype(np.asarray(v).dtype, np.floating)}


def fp16_overflow(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Nodes of an fp32 graph with a float input, output or weight past the fp16 range on `feeds`:
    node name -> the largest |x| among them (attention masks' float32 extremes left out: MASK_SENTINEL)."""

    def peak_of(v: np.ndarray) -> float:
        a = np.abs(v)
        if np.isnan(a).any():
            return float("nan")
        return float(a[a < MASK_SENTINEL].max(initial=0.0))  # mask sentinels (and inf) left out

    tensors = [t for node in proto.graph.node for t in (*node.input, *node.output) if t]
    peak = {n: peak_of(v) for n, v in _run_all(proto, feeds, tensors).items()}
    for init in proto.graph.initializer:
        if init.data_type == _FLOAT:
            peak[init.name] = peak_of(onnx.numpy_helper.to_array(init))
    found = {}
    for node in proto.graph.node:
        m = max((peak.get(t, 0.0) for t in (*node.input, *node.output) if t), default=0.0)
        if not m <= FP16_MAX:  # NaN counts as past the range
            found[node.name] = m
    return found


def _max_rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def keep_fp32_nodes(
    proto: onnx.ModelProto, feeds: dict[str, np.ndarray], *, bound: float, what: str
) -> tuple[onnx.ModelProto, dict]:
    """`proto` (fp32) in fp16 with the nodes that overflow on `feeds` kept fp32; and the record."""
    proto = _named(proto)
    order = [n.name for n in proto.graph.node]
    outputs = {n.name: [t for t in n.output if t] for n in proto.graph.node}
    final = [o.name for o in proto.graph.output]
    past = fp16_overflow(proto, feeds)
    keep = set(past)
    ref = _run_all(proto, feeds, [t for ts in outputs.values() for t in ts] + final)
    added = []
    for _ in range(MAX_KEEP_ROUNDS):
        half = to_fp16(proto, keep_fp32=tuple(n for n in order if n in keep))
        got = _run_all(half, feeds, [t for ts in outputs.values() for t in ts] + final)
        err = max(_max_rel(got[o], ref[o]) for o in final)
        if np.isfinite(err) and err <= bound:
            break
        first = next(
            (
                n
                for n in order
                if n not in keep
                and any(t in got and not np.isfinite(got[t]).all() and np.isfinite(ref[t]).all() for t in outputs[n])
            ),
            None,
        )
        if first is None:
            raise EdgediffError(
                f"{what}: fp16 differs from fp32 by normalised max error {err:.3g} > bound {bound:g} on the "
                f"calibration inputs with no fp16 overflow left to keep in fp32 "
                f"({len(keep)} node(s) kept); compile --precision fp32"
            )
        keep.add(first)
        added.append(first)
    else:
        raise EdgediffError(
            f"{what}: fp16 output still not within bound {bound:g} after keeping {len(keep)} nodes in fp32; "
            "compile --precision fp32"
        )
    kept = [n for n in order if n in keep]
    record = {
        "overflow_check": f"fp32 graph on {len(next(iter(feeds.values())))} calibration rows; fp16 max {FP16_MAX:g}",
        "fp32_nodes": kept,
        "max_abs": {n: past[n] for n in kept if n in past},
        "non_finite_in_fp16": added,
        "max_rel_error": err,
        "kept": (
            f"{len(kept)} of {len(order)} nodes kept in fp32 (activations past the fp16 range)"
            if kept
            else "none: no activation past the fp16 range"
        ),
    }
    return half, record


def _refuse_overflow(c: Component, proto: onnx.ModelProto, feeds: dict, fmt: str, source: str) -> dict:
    past = fp16_overflow(_named(proto), feeds)
    if past:
        worst = max(past, key=past.get)
        raise EdgediffError(
            f"{source} component {c.name}: fp16 overflows on the calibration inputs in {len(past)} node(s) "
            f"(|x| up to {past[worst]:.3g} > {FP16_MAX:g} at {worst}); format {fmt} cannot keep nodes in fp32 "
            "here: compile --precision fp32"
        )
    return {
        "overflow_check": f"fp32 graph on {len(next(iter(feeds.values())))} calibration rows; fp16 max {FP16_MAX:g}",
        "fp32_nodes": [],
        "kept": "none: no activation past the fp16 range",
    }


# module -> (its weights' hash, the ONNX bytes): compiling one pipeline for several formats exports once
def export_component(c: Component, path: Path, source: str) -> onnx.ModelProto:
    """fp32 ONNX of one component, the batch axis dynamic."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = ({0: batch},) * len(c.example)
    what = f"{source} component {c.name}"
    return cached_export(
        c.module,
        sha256_state(c.module),
        path,
        lambda: torch_export(c.module, c.example, path, c.inputs, c.outputs, dynamic, what=what),
    )


def lower_component(
    c: Component,
    out_dir: Path,
    *,
    fmt: str,
    precision: str,
    source: str,
    static_batch: int | None = None,
    calib: np.ndarray | None = None,
    bound: float = 2e-2,
) -> Lowered:
    """Write out_dir/NAME.onnx, NAME.xml (+ .bin) or NAME.tflite at `precision`. For fp16,
    `calib` (inputs of the component) drives the overflow check above; `bound` is fp16's."""
    if fmt not in FORMATS:
        raise EdgediffError(f"format {fmt}: not yet for text-to-image pipelines; compile for {' or '.join(FORMATS)}")
    if precision not in ("fp32", "fp16"):
        raise EdgediffError(f"{c.name}: precision {precision!r} is not supported (supported: fp32, fp16)")
    out_dir.mkdir(parents=True, exist_ok=True)
    check = precision == "fp16" and calib is not None
    feeds = {c.inputs[0]: calib} if check else None
    tmp = out_dir / f".{c.name}.export.onnx"
    try:
        if fmt in ("tflite", "coreml"):
            fp16 = _refuse_overflow(c, export_component(c, tmp, source), feeds, fmt, source) if check else None
            lower = _lower_tflite if fmt == "tflite" else _lower_coreml
            low = lower(c, out_dir, precision=precision, source=source, static_batch=static_batch)
            return replace(low, record=low.record | ({"fp16": fp16} if fp16 else {}))
        proto = export_component(c, tmp, source)
        if fmt == "onnx":
            fp16 = None
            if precision == "fp16" and check:
                proto, fp16 = keep_fp32_nodes(proto, feeds, bound=bound, what=f"{source} component {c.name}")
            elif precision == "fp16":
                proto = to_fp16(proto)
            if static_batch is not None:
                proto = fix_batch(proto, static_batch)
            proto.producer_name = "edgediff"
            path = out_dir / f"{c.name}.onnx"
            save_onnx(proto, path)
            record = {"opset": OPSET, "static_batch": static_batch} | ({"fp16": fp16} if fp16 else {})
            return Lowered(path, record, {"static_batch": static_batch})
        from edgediff.lower.openvino import HINTS, convert_onnx
        from edgediff.lower.registry import require

        fp16 = _refuse_overflow(c, proto, feeds, fmt, source) if check else None
        ov = require("openvino", "openvino", "openvino")
        m = convert_onnx(tmp, f"{source} component {c.name}", static_batch=static_batch)
        path = out_dir / f"{c.name}.xml"
        ov.save_model(m, str(path), compress_to_fp16=precision == "fp16")
        return Lowered(
            path,
            {"openvino": ov.__version__, "compress_to_fp16": precision == "fp16", "static_batch": static_batch}
            | ({"fp16": fp16} if fp16 else {}),
            {"static_batch": static_batch, "inference_precision_hint": HINTS[precision]},
        )
    finally:
        remove_onnx(tmp)
