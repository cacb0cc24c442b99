"""QDQ insertion into an exported fp32 ONNX graph, with scales that the quantize pass chose.

    fp32 ONNX ──weighted_nodes──► [Conv | Gemm | MatMul with a constant weight, and the torch layer it came from]
        │
        │  for each chosen node:
        │    weight  W ──► int8 per output channel, symmetric ──► DequantizeLinear(axis) ──► node
        │    input   X ──► QuantizeLinear(uint8, per tensor) ──► DequantizeLinear ──► node
        │    bias    b ──► int32 at scale s_x * s_w ──► DequantizeLinear ──► node      (Conv, Gemm)
        │    output  Y ──► QuantizeLinear ──► DequantizeLinear ──► consumers         (Conv only)
        ▼
    QDQ ONNX: ONNX Runtime fuses each DQ -> Conv -> Q group into QLinearConv, DQ -> MatMul into
    MatMulIntegerToFloat and DQ -> Gemm into QGemm (u8 activations x s8 weights, the pairing the
    x86 VNNI kernels take).

The torch layer of a node comes from the exporter's metadata (pkg.torch.onnx.name_scopes), so
the calibration and sensitivity tables, which are keyed by torch module names, apply here.

Which op types are quantized, and where their output is quantized too, is the table QUANT_OPS.
To quantize another op type with a constant weight, add it there with its weight axis rule.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgediff.core.errors import EdgediffError
from edgediff.quantize.calibration.observers import QuantRange, observe

# op type -> (output-channel axis of the weight given the node, quantize the output?)
# Conv's output must be quantized for ONNX Runtime to fuse a QLinearConv; Gemm and MatMul fuse
# with a float output (QGemm, MatMulIntegerToFloat), which saves a requantization.
QUANT_OPS = {
    "Conv": (lambda node: 0, True),
    "Gemm": (lambda node: 0 if node_attr(node, "transB", 0) else 1, False),
    "MatMul": (lambda node: 1, False),
}


def node_attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass(frozen=True)
class WeightedNode:
    """A node with a constant weight, and the torch layer it was exported from."""

    node: str  # ONNX node name
    op: str
    layer: str  # torch module name ("model.down_blocks.0.resnets.0.conv1"), "" if unknown
    weight: str  # initializer name
    axis: int  # output-channel axis of the weight
    bias: str | None  # bias initializer (Conv input 2, Gemm input 2), or None
    input: str  # activation tensor the node reads
    output: str  # tensor equal to the torch layer's output (after the bias Add for MatMul)


def keep_float_reasons(nodes: list[WeightedNode], patterns) -> dict[str, str]:
    """node name -> why it stays float, for every node whose torch layer matches a glob in `patterns`;
    a pattern that matches nothing is an error naming it."""
    reasons: dict[str, str] = {}
    for pattern in patterns:
        hits = [wn for wn in nodes if fnmatch.fnmatchcase(wn.layer, pattern)]
        if not hits:
            raise EdgediffError(
                f"quantize: keep_float pattern {pattern!r} matches no quantizable layer "
                f"(e.g. {', '.join(wn.layer for wn in nodes[:3])})"
            )
        for wn in hits:
            reasons.setdefault(wn.node, f"kept float by pattern {pattern!r}")
    return reasons


def trim_metadata(graph: onnx.GraphProto) -> None:
    """Drop the exporter's per-node stack traces (on a small model they outweigh the int8
    weights); keep the torch name scopes, which map nodes back to layers."""
    for n in graph.node:
        keep_md = [(p.key, p.value) for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
        del n.metadata_props[:]
        for k, v in keep_md:
            n.metadata_props.add(key=k, value=v)


def _layer_name(node) -> str:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            scopes = [s.strip().strip("'\"") for s in p.value.strip("[]").split(",")]
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def weighted_nodes(proto: onnx.ModelProto) -> list[WeightedNode]:
    """Every Conv/Gemm/MatMul whose weight is an initializer, in graph order."""
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = []
    for n in g.node:
        if n.op_type not in QUANT_OPS or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if n.input[0] in inits:
            continue
        axis_of, _ = QUANT_OPS[n.op_type]
        bias = n.input[2] if len(n.input) > 2 and n.input[2] in inits else None
        output = n.output[0]
        if n.op_type == "MatMul":  # torch.nn.Linear on 3-D input exports as MatMul + Add(bias)
            nxt = consumers.get(output, [])
            if len(nxt) == 1 and nxt[0].op_type == "Add" and any(i in inits for i in nxt[0].input):
                output = nxt[0].output[0]
        if n.op_type == "Gemm" and (
            node_attr(n, "transA", 0) or node_attr(n, "alpha", 1.0) != 1.0 or node_attr(n, "beta", 1.0) != 1.0
        ):
            continue
        out.append(
            WeightedNode(
                node=n.name,
                op=n.op_type,
                layer=_layer_name(n),
                weight=n.input[1],
                axis=axis_of(n),
                bias=bias,
                input=n.input[0],
                output=output,
            )
        )
    return out


@dataclass(frozen=True)
class QuantWeight:
    """An int8 weight, symmetric per output channel."""

    q: np.ndarray  # int8, the weight's shape
    scale: np.ndarray  # float32 (C,)
    axis: int


def quantize_weight(w: np.ndarray, axis: int, bits: int = 8) -> QuantWeight:
    """Symmetric per output channel on [-(2^(bits-1)-1), 2^(bits-1)-1], stored as int8.

    bits=7 (|q| <= 63) is for x86 CPUs without VNNI: their u8 x s8 kernels (vpmaddubsw) add
    two products in a saturating int16, which full-range weights and activations overflow.
    """
    if not 2 <= bits <= 8:
        raise EdgediffError(f"weight bits must be in 2..8, got {bits}")
    r = observe(w, "minmax", axis=axis, bits=bits, symmetric=True)
    shape = [1] * w.ndim
    shape[axis] = -1
    lim = 2 ** (bits - 1) - 1
    q = np.clip(np.round(w / r.scale.reshape(shape)), -lim, lim).astype(np.int8)
    return QuantWeight(q=q, scale=r.scale.astype(np.float32), axis=axis)


def activation_qparams(r: QuantRange) -> tuple[np.float32, np.uint8]:
    """A signed 8-bit per-tensor QuantRange as ONNX uint8 (scale, zero point)."""
    if r.bits != 8 or r.axis is not None:
        raise EdgediffError(f"activation range must be 8-bit per tensor (got bits={r.bits}, axis={r.axis})")
    zp = int(r.zero_point) + 128  # the signed grid [-128, 127] shifted onto [0, 255]
    return np.float32(r.scale), np.uint8(min(max(zp, 0), 255))


def insert_qdq(
    proto: onnx.ModelProto, nodes: list[WeightedNode], act: dict[str, QuantRange], weights: dict[str, QuantWeight]
) -> onnx.ModelProto:
    """A copy of `proto` with the chosen `nodes` in QDQ form.

    act: activation tensor name -> per-tensor range for every chosen node's input (and output
    for ops whose output is quantized). weights: initializer name -> QuantWeight.
    Float initializers that only the quantized nodes used are dropped.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    by_name = {n.name: n for n in g.node}
    new_inits: list[TensorProto] = []
    dq_of: dict[str, str] = {}  # tensor -> its dequantized copy
    inserted_before: dict[str, list] = {}  # node name -> Q/DQ nodes to place before it
    inserted_after: dict[str, list] = {}

    def const(name, array):
        new_inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def qparams(tensor):
        if tensor not in act:
            raise EdgediffError(f"quantize: no activation range for tensor {tensor!r}")
        return activation_qparams(act[tensor])

    def quantize_input(tensor, before):
        if tensor in dq_of:
            return dq_of[tensor]
        s, zp = qparams(tensor)
        sn, zn = const(f"{tensor}_scale", s), const(f"{tensor}_zp", zp)
        q, dq = f"{tensor}_q", f"{tensor}_dq"
        inserted_before.setdefault(before, []).extend(
            [
                helper.make_node("QuantizeLinear", [tensor, sn, zn], [q], name=f"{tensor}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [q, sn, zn], [dq], name=f"{tensor}_DequantizeLinear"),
            ]
        )
        dq_of[tensor] = dq
        return dq

    for wn in nodes:
        node = by_name[wn.node]
        _, quantize_out = QUANT_OPS[wn.op]
        x_dq = quantize_input(wn.input, wn.node)
        s_x, _ = qparams(wn.input)
        qw = weights[wn.weight]
        wq = const(f"{wn.weight}_quantized", qw.q)
        ws = const(f"{wn.weight}_scale", qw.scale)
        wz = const(f"{wn.weight}_zp", np.zeros(qw.scale.shape, np.int8))
        w_dq = f"{wn.weight}_dq"
        deq = [
            helper.make_node(
                "DequantizeLinear", [wq, ws, wz], [w_dq], name=f"{wn.weight}_DequantizeLinear", axis=qw.axis
            )
        ]
        node.input[0] = x_dq
        node.input[1] = w_dq
        if wn.bias is not None:
            b = numpy_helper.to_array(inits[wn.bias]).astype(np.float64)
            bscale = (np.float64(s_x) * qw.scale.astype(np.float64)).astype(np.float32)
            bq = np.clip(np.round(b / bscale), -(2**31), 2**31 - 1).astype(np.int32)
            bn = const(f"{wn.bias}_quantized_{wn.node}", bq)
            bs = const(f"{wn.bias}_scale_{wn.node}", bscale)
            bz = const(f"{wn.bias}_zp_{wn.node}", np.zeros(bscale.shape, np.int32))
            deq.append(
                helper.make_node(
                    "DequantizeLinear",
                    [bn, bs, bz],
                    [f"{wn.bias}_dq_{wn.node}"],
                    name=f"{wn.bias}_DequantizeLinear_{wn.node}",
                    axis=0,
                )
            )
            node.input[2] = f"{wn.bias}_dq_{wn.node}"
        inserted_before.setdefault(wn.node, []).extend(deq)
        if quantize_out:
            y = node.output[0]
            s, zp = qparams(y)
            sn, zn = const(f"{y}_scale", s), const(f"{y}_zp", zp)
            node.output[0] = f"{y}_float"
            inserted_after[wn.node] = [
                helper.make_node("QuantizeLinear", [f"{y}_float", sn, zn], [f"{y}_q"], name=f"{y}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{y}_q", sn, zn], [y], name=f"{y}_DequantizeLinear"),
            ]
            dq_of[y] = y  # a later quantized consumer of y reads the dequantized value as it is

    trim_metadata(g)
    ordered = []
    for n in g.node:
        ordered += inserted_before.get(n.name, [])
        ordered.append(n)
        ordered += inserted_after.get(n.name, [])
    set_nodes(g, ordered)
    g.initializer.extend(new_inits)
    return model


def set_nodes(graph: onnx.GraphProto, nodes: list) -> None:
    """Replace the graph's nodes (in order) and drop the initializers no node reads any more."""
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def share_weights(protos: list[onnx.ModelProto], names: list[str], location: str, align: int = 64) -> bytes:
    """Move initializers `names` of every proto into ONE external data blob (returned) at `location`.

    The protos must hold identical data for each name (the int8 weights of timestep groups);
    each then references the blob by offset and length, so the weights exist once on disk.
    """
    blob = bytearray()
    offsets: dict[str, tuple[int, int]] = {}
    first = {i.name: i for i in protos[0].graph.initializer}
    for name in names:
        raw = numpy_helper.to_array(first[name]).tobytes()
        pad = (-len(blob)) % align
        blob += b"\0" * pad
        offsets[name] = (len(blob), len(raw))
        blob += raw
    for p in protos:
        for init in p.graph.initializer:
            if init.name not in offsets:
                continue
            data = numpy_helper.to_array(init).tobytes()
            off, length = offsets[init.name]
            if data != bytes(blob[off : off + length]):
                raise EdgediffError(f"shared weight {init.name!r} differs between timestep groups")
            init.ClearField("raw_data")
            for f in ("int32_data", "float_data", "int64_data"):
                init.ClearField(f)
            init.data_location = TensorProto.EXTERNAL
            del init.external_data[:]
            for k, v in (("location", location), ("offset", str(off)), ("length", str(length))):
                e = init.external_data.add()
                e.key, e.value = k, v
    return bytes(blob)
