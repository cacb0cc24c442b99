"""Lower to a Core ML ML program (denoiser.mlpackage) through torch.export and coremltools.

    ModelSpec --torch.export (static shapes)--> ExportedProgram --ct.convert(mlprogram, iOS17)-->
        fp16 compute (fp32 I/O)  [+ weights: int8 linear (symmetric, per channel) | 4- / 6-bit k-means
        palettization, coremltools.optimize.coreml] --> model/denoiser.mlpackage

Core ML runs models only on macOS and iOS, so this host checks the package structurally: the
spec loads, inputs and outputs are as expected, op counts, and the compression ops
(constexpr_affine_dequantize, constexpr_lut_to_dense) are present when asked for. report.json
says "numerics not run: needs macOS". `precision = "int8"` means int8 weights here (W8, fp16
activations): activation quantization (W8A8 on the A17 Pro's Neural Engine) needs calibration
on macOS and is not done by this lowering.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec
from edgediff.lower.registry import Lowered, converter_output, require
from edgediff.lower.rewrites import rewritten

PRECISIONS = ("fp16", "fp32", "int8")
WEIGHTS = ("int8", "palette4", "palette6")
# The MIL op that carries each compression in the saved program.
COMPRESSION_OPS = {
    "int8": "constexpr_affine_dequantize",
    "palette4": "constexpr_lut_to_dense",
    "palette6": "constexpr_lut_to_dense",
}
NUMERICS = "not run: needs macOS (Core ML prediction is unavailable on this host)"


def _drop_alias_output(ep: torch.export.ExportedProgram) -> None:
    """coremltools has no converter for aten.alias, which torch.export emits when the model's output
    is a no-op view (the adapter's channel slice); the alias is replaced by its source."""
    for node in list(ep.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.alias.default:
            src = node.args[0]
            for spec in ep.graph_signature.output_specs:
                if getattr(spec.arg, "name", None) == node.name:
                    spec.arg.name = src.name
            node.replace_all_uses_with(src)
            ep.graph.erase_node(node)
    ep.graph_module.recompile()


def _compress(ct, mlmodel, weights: str):
    import coremltools.optimize.coreml as cto

    if weights == "int8":
        op = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0
        )
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    op = cto.OpPalettizerConfig(nbits=int(weights[-1]), mode="kmeans", weight_threshold=0)
    return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))


def op_counts(spec) -> dict[str, int]:
    counts: Counter = Counter()
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                counts[op.type] += 1
    return dict(sorted(counts.items()))


def structural_check(
    path: Path, *, expect_inputs: list[str], weights: str | None, expect_outputs: tuple[str, ...] = ("eps",)
) -> dict:
    """What this host can check of a Core ML package without running it."""
    ct = require("coremltools", "coreml", "coreml")
    spec = ct.utils.load_spec(str(path))
    if spec.WhichOneof("Type") != "mlProgram":
        raise EdgediffError(f"{path}: not an ML program (model type {spec.WhichOneof('Type')})")
    inputs = [f.name for f in spec.description.input]
    outputs = [f.name for f in spec.description.output]
    if inputs != list(expect_inputs) or outputs != list(expect_outputs):
        raise EdgediffError(
            f"{path}: inputs {inputs} / outputs {outputs}; expected {list(expect_inputs)} / {list(expect_outputs)}"
        )
    counts = op_counts(spec)
    compression = {k: v for k, v in counts.items() if k.startswith("constexpr_")}
    if weights and not counts.get(COMPRESSION_OPS[weights]):
        raise EdgediffError(
            f"{path}: weight compression {weights} was asked for but the program has no {COMPRESSION_OPS[weights]} op"
        )
    return {
        "numerics": NUMERICS,
        "runtime": "coremltools spec check (structure only)",
        "spec_version": spec.specificationVersion,
        "inputs": inputs,
        "outputs": outputs,
        "ops": sum(counts.values()),
        "op_counts": counts,
        "compression_ops": compression,
    }


def lower_coreml(
    model: ModelSpec,
    out_dir: Path,
    *,
    precision: str,
    ir: Path | None = None,
    static_batch: int | None = None,
    weights: str | None = None,
) -> Lowered:
    ct = require("coremltools", "coreml", "coreml")
    if precision not in PRECISIONS:
        raise EdgediffError(
            f"Core ML lowering: precision {precision!r} is not supported (supported: {', '.join(PRECISIONS)})"
        )
    if weights is None and precision == "int8":
        weights = "int8"
    if weights is not None and weights not in WEIGHTS:
        raise EdgediffError(f"Core ML lowering: weights {weights!r} not one of {', '.join(WEIGHTS)}")
    batch = static_batch or 1
    args = model.example_inputs(batch=batch)
    names = model.input_names()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "denoiser.mlpackage"
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    with converter_output(f"Core ML conversion of {model.source}"), torch.no_grad(), rewritten("coreml") as rewrites:
        ep = torch.export.export(model.module, args).run_decompositions()
        _drop_alias_output(ep)
        inputs = [
            ct.TensorType(name=n, shape=tuple(a.shape), dtype=np.float32 if a.is_floating_point() else np.int32)
            for n, a in zip(names, args)
        ]
        mlmodel = ct.convert(
            ep,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS17,
            compute_precision=compute,
            inputs=inputs,
            outputs=[ct.TensorType(name="eps", dtype=np.float32)],
        )
        if weights:
            mlmodel = _compress(ct, mlmodel, weights)
        mlmodel.save(str(path))
    record = {
        "converter": f"coremltools {ct.__version__}",
        "minimum_deployment_target": "iOS17",
        "compute_precision": "fp32" if precision == "fp32" else "fp16",
        "weights": weights,
        "static_batch": batch,
        "rewrites": rewrites,
        "structural": structural_check(path, expect_inputs=names, weights=weights),
    }
    if precision == "int8":
        record["note"] = (
            "int8 = int8 weights with fp16 activations; W8A8 needs activation calibration on macOS (not done here)"
        )
    return Lowered(file=path, record=record, runtime={"static_batch": batch, "compute_units": "ALL"})


def lower_coreml_graph(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    precision: str,
    what: str,
) -> dict:
    """One more graph of a pipeline (a text encoder, a VAE decoder) as an ML program at `path`, with
    the example's static shapes; integer inputs become int32 (Core ML has no int64 inputs). Returns
    the record with its structural check."""
    ct = require("coremltools", "coreml", "coreml")
    if precision not in ("fp32", "fp16"):
        raise EdgediffError(f"{what}: Core ML precision {precision!r} is not supported (supported: fp32, fp16)")
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    with converter_output(f"Core ML conversion of {what}"), torch.no_grad(), rewritten("coreml") as rewrites:
        ep = torch.export.export(module, example).run_decompositions()
        _drop_alias_output(ep)
        mlmodel = ct.convert(
            ep,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS17,
            compute_precision=compute,
            inputs=[
                ct.TensorType(name=n, shape=tuple(a.shape), dtype=np.float32 if a.is_floating_point() else np.int32)
                for n, a in zip(inputs, example)
            ],
            outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs],
        )
        mlmodel.save(str(path))
    return {
        "converter": f"coremltools {ct.__version__}",
        "minimum_deployment_target": "iOS17",
        "compute_precision": precision,
        "static_batch": int(example[0].shape[0]),
        "rewrites": rewrites,
        "structural": structural_check(path, expect_inputs=list(inputs), weights=None, expect_outputs=outputs),
    }
