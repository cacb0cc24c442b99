"""Lower a text-to-image pipeline's other components: one graph each beside the denoiser.

    model/text_encoder.{onnx,xml}   input_ids int64 [B, max_length] -> last_hidden_state [B, max_length, hidden]
    model/vae_decoder.{onnx,xml}    latents float32 [B, *latent_shape] -> image [B, 3, H, W] in [-1, 1]

Each is exported from PyTorch with the batch axis dynamic (opset 18, as the denoiser), then
written as ONNX (fp32 or fp16, float32 inputs/outputs) or converted to OpenVINO IR. The formats
done for text-to-image bundles are FORMATS; the compiler refuses the others before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec, sha256_state
from edgediff.lower.onnx import OPSET, cached_export, fix_batch, remove_onnx, save_onnx, to_fp16, torch_export
from edgediff.lower.registry import Lowered

FORMATS = ("onnx", "openvino", "tflite")  # the formats a text-to-image bundle's components are lowered to
NAMES = ("text_encoder", "vae_decoder")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}


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
    c: Component, out_dir: Path, *, fmt: str, precision: str, source: str, static_batch: int | None = None
) -> Lowered:
    """Write out_dir/NAME.onnx or out_dir/NAME.xml (+ .bin) at `precision`."""
    if fmt not in FORMATS:
        raise EdgediffError(f"format {fmt}: not yet for text-to-image pipelines; compile for {' or '.join(FORMATS)}")
    if precision not in ("fp32", "fp16"):
        raise EdgediffError(f"{c.name}: precision {precision!r} is not supported (supported: fp32, fp16)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "tflite":
        return _lower_tflite(c, out_dir, precision=precision, source=source, static_batch=static_batch)
    tmp = out_dir / f".{c.name}.export.onnx"
    try:
        proto = export_component(c, tmp, source)
        if fmt == "onnx":
            if static_batch is not None:
                proto = fix_batch(proto, static_batch)
            if precision == "fp16":
                proto = to_fp16(proto)
            proto.producer_name = "edgediff"
            path = out_dir / f"{c.name}.onnx"
            save_onnx(proto, path)
            return Lowered(path, {"opset": OPSET, "static_batch": static_batch}, {"static_batch": static_batch})
        from edgediff.lower.openvino import HINTS, convert_onnx
        from edgediff.lower.registry import require

        ov = require("openvino", "openvino", "openvino")
        m = convert_onnx(tmp, f"{source} component {c.name}", static_batch=static_batch)
        path = out_dir / f"{c.name}.xml"
        ov.save_model(m, str(path), compress_to_fp16=precision == "fp16")
        return Lowered(
            path,
            {"openvino": ov.__version__, "compress_to_fp16": precision == "fp16", "static_batch": static_batch},
            {"static_batch": static_batch, "inference_precision_hint": HINTS[precision]},
        )
    finally:
        remove_onnx(tmp)
