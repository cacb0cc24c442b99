"""W8A8 TFLite from the quantize pass: our layer choice and activation ranges written through
ai-edge-quantizer's static int8 recipe.

    fp32 .tflite (litert-torch) ──tflite_ops──► [CONV_2D | DEPTHWISE_CONV_2D | FULLY_CONNECTED, weight, in, out]
        │ match_layers: torch layer -> TFLite op, by equal weights (OIHW -> OHWI for convs), or
        │               weights equal up to a scalar the converter folded in (attention's q/k scale:
        │               that op's output range is our range times the scalar)
        │
        │ recipe: one static int8 entry per chosen op (regex = that op's exact output tensor
        │         name), nothing else: every other op, and every layer the quantize pass keeps
        │         float, stays float (ai-edge-quantizer's default is no quantization)
        │ calibration result: {input/output tensor of each chosen op: min/max of OUR range}
        │         (the quantize pass's observer on the recipe's trajectory, per timestep group);
        │         ai-edge-quantizer's own calibration (a moving average) is not run
        ▼ Quantizer(recipe).quantize(calibration_result)
    int8 .tflite: int8 weights (symmetric per output channel, min-max), int8 activations
    (asymmetric per tensor) at the chosen ops, QUANTIZE / DEQUANTIZE where float ops meet them;
    XNNPACK runs the int8 CONV_2D / FULLY_CONNECTED on its QS8 kernels.

The mapping is by weights, not names: litert-torch names tensors after the module path with
ModuleList levels left out, while equal weights identify a layer whatever the converter
calls it. A chosen layer that no TFLite op carries is an error naming it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgediff.core.errors import EdgediffError
from edgediff.quantize.calibration.observers import QuantRange
from edgediff.runtimes.backends import quiet_output

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class TfliteOp:
    index: int  # operator index in subgraph 0
    op: str  # CONV_2D | DEPTHWISE_CONV_2D | FULLY_CONNECTED
    weight: np.ndarray  # the constant filter, TFLite layout
    input: str  # activation tensor name
    output: str  # output tensor name (the op's scope for ai-edge-quantizer)


def tflite_ops(path: Path) -> list[TfliteOp]:
    """Every weighted op of the flatbuffer's main subgraph whose filter is a constant."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(str(path))
    sg = model.subgraphs[0]
    out = []
    for k, op in enumerate(sg.operators):
        name = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
        name = getattr(name, "value", name)
        if name not in WEIGHTED_OPS or len(op.inputs) < 2:
            continue
        w = fb.get_tensor_data(sg.tensors[op.inputs[1]], model.buffers)
        if w is None:
            continue
        out.append(
            TfliteOp(
                index=k,
                op=str(name),
                weight=np.asarray(w),
                input=fb.get_tensor_name(sg.tensors[op.inputs[0]]),
                output=fb.get_tensor_name(sg.tensors[op.outputs[0]]),
            )
        )
    return out


def _tflite_layout(module: torch.nn.Module) -> list[np.ndarray]:
    """The filter of a torch layer as TFLite may store it (conv: OHWI, depthwise: 1HWO; FC: as is)."""
    w = module.weight.detach().float().cpu().numpy()
    if w.ndim == 4:
        return [w.transpose(0, 2, 3, 1), w.transpose(1, 2, 3, 0)]
    return [w]


@dataclass(frozen=True)
class Match:
    op: TfliteOp
    factor: float  # the TFLite weight is factor x the torch weight (the converter folds attention's q/k scale)


def _factor(a: np.ndarray, b: np.ndarray) -> float | None:
    """c with a == c * b (to float32 rounding), or None."""
    if a.shape != b.shape:
        return None
    if np.array_equal(a, b):
        return 1.0
    bb = float(np.dot(b.ravel().astype(np.float64), b.ravel()))
    if bb == 0.0:
        return None
    c = float(np.dot(a.ravel().astype(np.float64), b.ravel())) / bb
    if c != 0.0 and np.allclose(a, c * b, rtol=1e-5, atol=1e-7 * float(np.abs(a).max())):
        return c
    return None


def match_layers(module: torch.nn.Module, layers: list[str], ops: list[TfliteOp]) -> dict[str, Match]:
    """torch layer name -> the TFLite op carrying its weight, exactly or times a scalar that the
    converter folded in (EdgediffError if none)."""
    subs = dict(module.named_modules())
    taken: set[int] = set()
    found = {}
    for layer in layers:
        hit = None
        for cand in _tflite_layout(subs[layer]):
            for o in ops:
                c = None if o.index in taken else _factor(o.weight, cand)
                if c is not None:
                    hit = Match(o, c)
                    break
            if hit is not None:
                break
        if hit is None:
            raise EdgediffError(
                f"TFLite W8A8: layer {layer!r} has no CONV_2D/FULLY_CONNECTED op with its weights "
                "in the converted model; keep it float (keep_float) to compile"
            )
        found[layer] = hit
        taken.add(hit.op.index)
    return found


def _qsv(r: QuantRange, factor: float = 1.0) -> dict:
    lo, hi = sorted((float(r.min) * factor, float(r.max) * factor))
    return {"min": np.array([lo], np.float32), "max": np.array([hi], np.float32)}


def write_w8a8(
    fp32_path: Path, out_path: Path, chosen: dict[str, Match], ranges: dict[str, tuple[QuantRange, QuantRange]]
) -> dict:
    """Quantize the chosen ops of `fp32_path` with `ranges` (layer -> (input range, output range))
    into `out_path`; returns {tensor name: range} as written."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    rm = recipe_manager.RecipeManager()
    calib: dict[str, dict] = {}
    for layer, m in chosen.items():
        op = m.op
        rm.add_static_config(
            regex=f"^{re.escape(op.output + ';')}$",
            operation_name=qtyping.TFLOperationName(op.op),
            activation_num_bits=8,
            weight_num_bits=8,
        )
        r_in, r_out = ranges[layer]
        calib.setdefault(op.input, _qsv(r_in))
        calib[op.output] = _qsv(r_out, m.factor)  # a folded scale scales the output too
    q = quantizer.Quantizer(str(fp32_path), rm.get_quantization_recipe())
    q.quantize(calibration_result=calib, enable_progress_report=False).export_model(str(out_path), overwrite=True)
    return calib


def int8_census(path: Path) -> dict:
    """What LiteRT makes of the written flatbuffer (its interpreter, default XNNPACK delegate):
    per op type, how many read int8 and how many float (get_tensor_details dtypes), and how many
    int8 CONV_2D / FULLY_CONNECTED the XNNPACK delegate took (their int8 filter is an input of
    one of its DELEGATE nodes: XNNPACK runs them on its QS8 kernels, the rest on LiteRT's own)."""
    from ai_edge_litert.interpreter import Interpreter

    with quiet_output():
        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    nodes = it._interpreter
    delegate_inputs = {
        int(i) for k in range(nodes.NumNodes()) if nodes.NodeName(k) == "DELEGATE" for i in nodes.NodeInputs(k)
    }
    int8, flt = Counter(), Counter()
    xnn, weighted_int8 = Counter(), Counter()
    for op in it._get_ops_details():
        if op["op_name"] == "DELEGATE":
            continue
        ins = [int(i) for i in op["inputs"] if i >= 0]
        is_int8 = bool(ins) and dtypes[ins[0]] == "int8"
        (int8 if is_int8 else flt)[op["op_name"]] += 1
        if is_int8 and op["op_name"] in WEIGHTED_OPS and len(ins) > 1:
            weighted_int8[op["op_name"]] += 1
            xnn[op["op_name"]] += ins[1] in delegate_inputs
    return {
        "ops_reading_int8": dict(sorted(int8.items())),
        "ops_reading_float": dict(sorted(flt.items())),
        "int8_tensors": sum(1 for d in dtypes.values() if d == "int8"),
        "xnnpack_int8": {k: f"{xnn[k]}/{v} delegated" for k, v in sorted(weighted_int8.items())},
    }


def merge_groups(paths: list[Path], out: Path) -> dict:
    """One flatbuffer for G timestep groups, written to `out`: subgraph k, under the signature
    "group{k}", is the main subgraph of `paths[k]` (group k's W8A8 flatbuffer). Every buffer is
    stored once by content, so the int8 weights, equal in every group, exist once on disk, while
    each group keeps its own activation quantization (tensor parameters) and its int32 biases
    (which scale with the input's scale). The groups must have the same ops and tensors."""
    import flatbuffers
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fb

    models = [fb.read_model(str(p)) for p in paths]
    base = models[0]

    def shape_of(m):
        sg = m.subgraphs[0]
        return (
            [(op.opcodeIndex, list(op.inputs), list(op.outputs)) for op in sg.operators],
            [m.operatorCodes[k].builtinCode for k in range(len(m.operatorCodes))],
            len(sg.tensors),
        )

    for p, m in zip(paths, models):
        if len(m.subgraphs) != 1 or not m.signatureDefs:
            raise EdgediffError(f"{p.name}: a group flatbuffer must have one subgraph and a signature")
        if shape_of(m) != shape_of(base):
            raise EdgediffError(
                f"{p.name}: its ops or tensors differ from {paths[0].name}'s; timestep groups must share one graph"
            )
    buffers, seen = [base.buffers[0]], {}  # buffer 0: the empty buffer every flatbuffer starts with

    def intern(m, k: int) -> int:
        b = m.buffers[k]
        if getattr(b, "offset", 0) or getattr(b, "size", 0):
            raise EdgediffError("TFLite groups: buffers stored outside the flatbuffer (over 2 GB) are not supported")
        data = b"" if b.data is None else np.asarray(b.data, np.uint8).tobytes()
        if not data:
            return 0
        if data not in seen:
            seen[data] = len(buffers)
            buffers.append(b)
        return seen[data]

    separate = 0
    for k, m in enumerate(models):
        for t in m.subgraphs[0].tensors:
            t.buffer = intern(m, t.buffer)
        separate += sum(0 if b.data is None else len(b.data) for b in m.buffers)
    for md in base.metadata or []:  # the converter's metadata entries point at buffers too
        md.buffer = intern(base, md.buffer)
    if base.metadataBuffer is not None:
        base.metadataBuffer = [intern(base, i) for i in base.metadataBuffer]
    parts = [(m.subgraphs[0], m.signatureDefs[0]) for m in models]
    for k, (sg, sig) in enumerate(parts):
        sg.name = f"group{k}"
        sig.signatureKey, sig.subgraphIndex = f"group{k}", k
    base.buffers = buffers
    base.subgraphs, base.signatureDefs = [sg for sg, _ in parts], [sig for _, sig in parts]
    builder = flatbuffers.Builder(1024)
    builder.Finish(base.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(builder.Output())
    stored = sum(0 if b.data is None else len(b.data) for b in buffers)
    return {
        "groups": len(models),
        "signatures": [f"group{k}" for k in range(len(models))],
        "buffer_bytes": stored,
        "buffer_bytes_if_separate": separate,
        "file_bytes": out.stat().st_size,
    }
