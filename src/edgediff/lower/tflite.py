"""Lower to TFLite (LiteRT flatbuffer) with litert-torch (no TensorFlow), fp32, fp16 or int8.

    ModelSpec --litert_torch.convert (torch.export, static shapes)--> denoiser.tflite (fp32)
       fp16: ai-edge-quantizer weight-only float casting (weights stored in half, computed in float)
       int8: ai-edge-quantizer dynamic range (int8 weights; activations quantized to int8 at run
             time per tensor, so the int8 kernels of XNNPACK run without calibration data)

Inputs keep the model's names (sample, timestep, class_labels); int64 labels become int32,
which LiteRT prefers (the backend casts). Every shape is fixed: the batch is `static_batch`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec
from edgediff.lower.registry import Lowered, converter_output, require
from edgediff.lower.rewrites import rewritten

PRECISIONS = ("fp32", "fp16", "int8")
SCHEMES = {
    "fp32": "float32 weights and compute",
    "fp16": "float16 weights (ai-edge-quantizer FLOAT_CASTING), float32 compute",
    "int8": "int8 weights, activations quantized at run time (ai-edge-quantizer dynamic_wi8_afp32)",
}


class _Named2(torch.nn.Module):
    """Gives the converter the input and output names of the other formats."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, sample, timestep):
        return {"eps": self.module(sample, timestep)}


class _NamedClass(_Named2):
    def forward(self, sample, timestep, class_labels):
        return {"eps": self.module(sample, timestep, class_labels)}


class _NamedEmbedding(_Named2):
    def forward(self, sample, timestep, encoder_hidden_states):
        return {"eps": self.module(sample, timestep, encoder_hidden_states)}


_WRAPPERS = {"none": _Named2, "class": _NamedClass, "embedding": _NamedEmbedding, "text": _NamedEmbedding}


def _quantize(path: Path, precision: str) -> None:
    from ai_edge_quantizer import qtyping, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    if precision == "fp16":
        rm = recipe_manager.RecipeManager()
        rm.add_weight_only_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=AlgorithmName.FLOAT_CASTING,
        )
        rcp = rm.get_quantization_recipe()
    else:
        rcp = recipe.dynamic_wi8_afp32()
    q = quantizer.Quantizer(str(path), rcp)
    q.quantize(enable_progress_report=False).export_model(str(path), overwrite=True)


def lower_tflite(
    model: ModelSpec,
    out_dir: Path,
    *,
    precision: str,
    ir: Path | None = None,
    static_batch: int | None = None,
    weights: str | None = None,
) -> Lowered:
    lt = require("litert_torch", "tflite", "tflite")
    require("ai_edge_quantizer", "tflite", "tflite")
    if precision not in PRECISIONS:
        raise EdgediffError(
            f"TFLite lowering: precision {precision!r} is not supported (supported: {', '.join(PRECISIONS)})"
        )
    batch = static_batch or 1
    wrapper = _WRAPPERS[model.conditioning.kind](model.module).eval()
    kwargs = dict(zip(model.input_names(), model.example_inputs(batch=batch)))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "denoiser.tflite"
    with (
        converter_output(f"TFLite conversion (litert-torch) of {model.source}"),
        torch.no_grad(),
        rewritten("tflite") as rewrites,
    ):
        lt.convert(wrapper, sample_kwargs=kwargs).export(str(path))
        if precision != "fp32":
            _quantize(path, precision)
    from importlib.metadata import version

    return Lowered(
        file=path,
        record={
            "converter": f"litert-torch {version('litert-torch')}",
            "static_batch": batch,
            "scheme": SCHEMES[precision],
            "rewrites": rewrites,
        },
        runtime={"static_batch": batch},
    )
