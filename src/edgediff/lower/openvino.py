"""Lower to OpenVINO IR (denoiser.xml + denoiser.bin), fp32 or fp16, from the fp32 ONNX export.

    ir (ONNX fp32, dynamic batch) --ov.convert_model--> ov.Model --[reshape: static batch]-->
        save_model(compress_to_fp16 = precision == "fp16") --> model/denoiser.xml + .bin

fp16 stores the weights in half precision (the IR's Convert nodes decompress them at load);
inputs and outputs stay float32. What precision the device computes in is a runtime choice,
the INFERENCE_PRECISION_HINT: the manifest records the hint the target should use (f16 for an
fp16 bundle, f32 for fp32), and verification on this host always runs the CPU plugin with
f32 so that the weights' rounding alone is measured (the CPU plugin would otherwise pick bf16
on a CPU with AVX-512 BF16).
"""

from __future__ import annotations

from pathlib import Path

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec
from edgediff.lower.registry import Lowered, require

PRECISIONS = ("fp32", "fp16")
HINTS = {"fp32": "f32", "fp16": "f16"}  # INFERENCE_PRECISION_HINT the target device should run with


def lower_openvino(
    model: ModelSpec,
    out_dir: Path,
    *,
    precision: str,
    ir: Path,
    static_batch: int | None = None,
    weights: str | None = None,
) -> Lowered:
    ov = require("openvino", "openvino", "openvino")
    if precision not in PRECISIONS:
        raise EdgediffError(
            f"OpenVINO lowering: precision {precision!r} is not supported (supported: {', '.join(PRECISIONS)})"
        )
    try:
        m = ov.convert_model(str(ir))
    except Exception as e:  # the converter raises its own exception types; name the op it names
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgediffError(f"OpenVINO conversion of {model.source} failed: {first}") from None
    if static_batch is not None:
        m.reshape({p.get_any_name(): [static_batch, *list(p.get_partial_shape())[1:]] for p in m.inputs})
        dynamic = [p.get_any_name() for p in m.inputs if p.get_partial_shape().is_dynamic]
        if dynamic:
            raise EdgediffError(
                f"OpenVINO lowering: inputs {', '.join(dynamic)} still have dynamic shapes after fixing the batch"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "denoiser.xml"
    ov.save_model(m, str(path), compress_to_fp16=precision == "fp16")
    ops = sorted({op.get_type_name() for op in m.get_ops()})
    return Lowered(
        file=path,
        record={
            "openvino": ov.__version__,
            "compress_to_fp16": precision == "fp16",
            "static_batch": static_batch,
            "ir_ops": ops,
        },
        runtime={"static_batch": static_batch, "inference_precision_hint": HINTS[precision]},
    )


def convert_onnx(onnx_file: Path, what: str, *, static_batch: int | None = None):
    """ov.convert_model of an ONNX file (the batch fixed when asked); a converter failure is one
    line naming `what` and the converter's first line."""
    ov = require("openvino", "openvino", "openvino")
    try:
        m = ov.convert_model(str(onnx_file))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgediffError(f"OpenVINO conversion of {what} failed: {first}") from None
    if static_batch is not None:
        m.reshape({p.get_any_name(): [static_batch, *list(p.get_partial_shape())[1:]] for p in m.inputs})
    return m


def lower_openvino_int8(onnx_file: Path, out_dir: Path, *, static_batch: int | None = None) -> Lowered:
    """The quantize pass's QDQ ONNX graph as OpenVINO IR: the converter turns each
    QuantizeLinear/DequantizeLinear pair into a FakeQuantize node, which the CPU plugin runs on
    its int8 kernels with our scales (no NNCF re-calibration). Replaces `onnx_file`.
    """
    ov = require("openvino", "openvino", "openvino")
    m = convert_onnx(onnx_file, f"the quantized graph {onnx_file.name}", static_batch=static_batch)
    path = out_dir / "denoiser.xml"
    ov.save_model(m, str(path), compress_to_fp16=False)
    onnx_file.unlink()
    for extra in out_dir.glob("*.onnx.data"):
        extra.unlink()
    counts: dict[str, int] = {}
    for op in m.get_ops():
        counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
    return Lowered(
        file=path,
        record={
            "openvino": ov.__version__,
            "from": "quantize pass QDQ ONNX (QDQ -> FakeQuantize)",
            "fake_quantize": counts.get("FakeQuantize", 0),
            "static_batch": static_batch,
            "ir_ops": sorted(counts),
        },
        runtime={"static_batch": static_batch, "inference_precision_hint": "f32"},
    )
