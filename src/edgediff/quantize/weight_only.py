"""Weight-only 4-bit (`--quantize w4`): 4-bit linear weights, int8 convolution weights, float activations.

No calibration data: the weights alone are rounded, the activations stay fp32, so the error
does not depend on the timestep and the pass needs no trajectory. What it buys is size on
disk (and weight memory where the kernel reads the packed weights), not int8 arithmetic.

    fp32 ONNX (lowered from the ModelSpec)
        ONNX Runtime target:
            Gemm with a constant weight      -> MatMul (+ Add bias), so it is a linear layer like the others
            MatMul with a constant weight    -> com.microsoft MatMulNBits (4-bit, blocks of 32 along
                                                the input dimension, symmetric; ONNX Runtime's
                                                MatMulNBitsQuantizer), which unpacks in its GEMM kernel
            Conv                             -> int8 weight per output channel + DequantizeLinear
                                                (neither runtime has a 4-bit convolution kernel)
        OpenVINO target:
            ov.convert_model, then nncf.compress_weights(INT4_SYM, group_size 32, ratio 1,
            all_layers): MatMul weights 4-bit, convolutions int8 (NNCF's backup precision), the
            same split as the ONNX graph

A UNet keeps most of its parameters in convolutions, so it shrinks about 4x (int8), not 8x;
a DiT's weights are almost all linear, so more of them go to 4 bits. Layers matching `keep_float` globs
(torch layer names, as for w8a8) keep fp32 weights.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgediff.core.errors import EdgediffError
from edgediff.lower.openvino import convert_onnx
from edgediff.quantize.qdq_onnx import (
    WeightedNode,
    keep_float_reasons,
    node_attr,
    quantize_weight,
    set_nodes,
    trim_metadata,
    weighted_nodes,
)
from edgediff.quantize.w8a8 import QuantizedModel

BLOCK = 32  # weights per 4-bit scale (along the input dimension)
SCHEME_TEXT = (
    "weight-only: linear layers 4-bit symmetric in blocks of 32 input channels, convolutions int8 "
    "per output channel; activations fp32"
)


def _gemm_to_matmul(proto: onnx.ModelProto, skip: set[str]) -> int:
    """Gemm(A, W, b) with constant W (the 2-D linear layers, e.g. the timestep embedding) as
    MatMul(A, W^T) + Add(b), which MatMulNBits can replace. Returns how many were rewritten."""
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes, n_done = [], 0
    for n in g.node:
        if (
            n.op_type != "Gemm"
            or n.name in skip
            or len(n.input) < 2
            or n.input[1] not in inits
            or node_attr(n, "transA", 0)
            or node_attr(n, "alpha", 1.0) != 1.0
            or node_attr(n, "beta", 1.0) != 1.0
        ):
            new_nodes.append(n)
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if node_attr(n, "transB", 0):
            w = w.T
        wname = f"{n.input[1]}_kn"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), wname))
        has_bias = len(n.input) > 2 and n.input[2]
        mm_out = f"{n.output[0]}_mm" if has_bias else n.output[0]
        new_nodes.append(helper.make_node("MatMul", [n.input[0], wname], [mm_out], name=n.name))
        if has_bias:
            new_nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=f"{n.name}_bias"))
        n_done += 1
    set_nodes(g, new_nodes)
    return n_done


def _conv_int8(proto: onnx.ModelProto, nodes: list[WeightedNode], skip: set[str]) -> list[str]:
    """Conv weights as int8 per output channel behind a DequantizeLinear."""
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    done, dq_nodes, replaced = [], [], {}
    for wn in nodes:
        if wn.op != "Conv" or wn.node in skip:
            continue
        if wn.weight not in replaced:
            qw = quantize_weight(numpy_helper.to_array(inits[wn.weight]).astype(np.float32), wn.axis, 8)
            qn, sn, out = f"{wn.weight}_q8", f"{wn.weight}_scale", f"{wn.weight}_dq"
            g.initializer.extend([numpy_helper.from_array(qw.q, qn), numpy_helper.from_array(qw.scale, sn)])
            dq_nodes.append(helper.make_node("DequantizeLinear", [qn, sn], [out], name=f"{wn.weight}_DQ", axis=wn.axis))
            replaced[wn.weight] = out
        done.append(wn.node)
    for n in g.node:
        if n.name in done:
            n.input[1] = replaced[n.input[1]]
    set_nodes(g, dq_nodes + list(g.node))  # constants first keeps the graph topologically sorted
    return done


def quantize_w4_onnx(onnx_path: Path, *, keep_float=()) -> dict:
    """Rewrite the fp32 ONNX graph at `onnx_path` in place; returns the record for report.json."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    before = onnx_path.stat().st_size
    proto = onnx.load(str(onnx_path))
    nodes = weighted_nodes(proto)
    if not nodes:
        raise EdgediffError(f"{onnx_path}: no Conv/Gemm/MatMul with a constant weight to quantize")
    reasons = keep_float_reasons(nodes, keep_float)
    skip = set(reasons)
    n_gemm = _gemm_to_matmul(proto, skip)
    convs = _conv_int8(proto, nodes, skip)
    linear = [
        n.name
        for n in proto.graph.node
        if n.op_type == "MatMul" and n.name not in skip and n.input[1] in {i.name for i in proto.graph.initializer}
    ]
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        q = MatMulNBitsQuantizer(
            proto,
            bits=4,
            block_size=BLOCK,
            is_symmetric=True,
            nodes_to_include=linear,
            op_types_to_quantize=("MatMul",),
        )
        q.process()
    finally:
        quiet.setLevel(level)
    out = q.model.model
    trim_metadata(out.graph)
    packed = [n.name for n in out.graph.node if n.op_type == "MatMulNBits"]
    onnx.save(out, str(onnx_path))
    layers = []
    for wn in nodes:
        if wn.node in reasons:
            prec, why = "fp32", reasons[wn.node]
        elif wn.op == "Conv":
            prec, why = "int8 weights", "no 4-bit convolution kernel in ONNX Runtime"
        elif wn.node in packed or f"{wn.node}_Q4" in packed:
            prec, why = "int4 weights", f"MatMulNBits, block {BLOCK}"
        else:
            prec, why = "fp32", "not packed by MatMulNBitsQuantizer (weight not 2-D or K too small)"
        layers.append({"layer": wn.layer, "node": wn.node, "op": wn.op, "precision": prec, "why": why})
    return {
        "runtime": "onnxruntime",
        "matmulnbits": len(packed),
        "gemm_rewritten": n_gemm,
        "conv_int8": len(convs),
        "layers": layers,
        "bytes_fp32": before,
        "bytes": onnx_path.stat().st_size,
    }


def quantize_w4_openvino(
    onnx_path: Path, out_dir: Path, *, static_batch: int | None = None, keep_float=()
) -> tuple[Path, dict]:
    """The fp32 ONNX graph as OpenVINO IR with NNCF's 4-bit weight compression; removes `onnx_path`."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    before = onnx_path.stat().st_size
    proto = onnx.load(str(onnx_path), load_external_data=False)
    nodes = weighted_nodes(proto)
    reasons = keep_float_reasons(nodes, keep_float)
    m = convert_onnx(onnx_path, onnx_path.name, static_batch=static_batch)
    ignored = None
    if reasons:  # ONNX node names survive conversion as the friendly names of the OpenVINO ops
        names = {op.get_friendly_name() for op in m.get_ops()}
        keep = [n for n in reasons if n in names]
        ignored = nncf.IgnoredScope(names=keep, validate=False) if keep else None
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        m = nncf.compress_weights(
            m,
            mode=nncf.CompressWeightsMode.INT4_SYM,
            group_size=BLOCK,
            ratio=1.0,
            all_layers=True,
            ignored_scope=ignored,
            advanced_parameters=AdvancedCompressionParameters(
                group_size_fallback_mode=GroupSizeFallbackMode.ADJUST, min_adjusted_group_size=8
            ),
        )
    except Exception as e:  # name the cause in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgediffError(f"OpenVINO 4-bit weight compression (NNCF) of {onnx_path.name} failed: {first}") from None
    finally:
        nncf_log.setLevel(level)
    path = out_dir / "denoiser.xml"
    ov.save_model(m, str(path), compress_to_fp16=False)
    onnx_path.unlink()
    for extra in out_dir.glob("*.onnx.data"):
        extra.unlink()
    consts = {}
    for op in m.get_ops():
        if op.get_type_name() == "Constant":
            t = str(op.get_output_element_type(0).get_type_name())
            consts[t] = consts.get(t, 0) + 1
    record = {
        "runtime": "openvino",
        "compressor": f"nncf {nncf.__version__} compress_weights INT4_SYM",
        "int4_constants": consts.get("u4", 0) + consts.get("i4", 0),
        "int8_constants": consts.get("u8", 0) + consts.get("i8", 0),
        "float_layers": [{"node": n, "why": w} for n, w in reasons.items()],
        "bytes_fp32": before,
        "bytes": path.stat().st_size + path.with_suffix(".bin").stat().st_size,
    }
    return path, record


def weight_only_model(path: Path, rec: dict, *, steps: int) -> QuantizedModel:
    """The w4 pass's result as the compile pipeline holds every quantized model: one graph for
    every step (no timestep groups), no calibration; `rec` from quantize_w4_onnx / _openvino."""
    record = {
        "scheme": "w4",
        "precision": "int4",
        "weights": SCHEME_TEXT,
        "weight_bits": 4,
        "activations": "fp32 (weight-only)",
        "groups": 1,
        "step_group": [0] * steps,
        "files": [path.name],
        "shared_weights": None,
        "calibration": None,
        **rec,
    }
    return QuantizedModel(files=[path], shared=None, step_group=record["step_group"], record=record)
