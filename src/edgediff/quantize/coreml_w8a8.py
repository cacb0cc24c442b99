"""Core ML W8A8, prepared here and finished on macOS.

    int8-weight .mlpackage (lower_coreml) + the quantize pass's plan (float layers) + its calibration set
        │ mil_float_ops: the pass's float layers -> MIL op names of the package
        │     conv:   by the weight's parameter name (torch.export's p_<layer>_weight)
        │     others: linear/matmul ops with a constant weight, in program order, against the torch
        │             layers in graph order (weight sizes must agree, else listed as unmapped)
        ▼
    w8a8/calibration.npz   the recipe's calibration rows in the model's input names, whole static batches
    w8a8/recipe.json       coremltools.optimize.coreml.OptimizationConfig.from_dict config for
                           linear_quantize_activations: int8 linear_symmetric, the float layers' ops
                           set to None (skipped); plus the layer -> op map and what could not be mapped
    w8a8/finish_w8a8.py    run on macOS with coremltools >= 8: calibrates activations by Core ML prediction
                           on calibration.npz, writes model/denoiser.w8a8.mlpackage

Activation calibration needs Core ML prediction, which runs only on macOS, so it is not done
here: the shipped model has int8 weights and fp16 activations until the script is run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgediff.core.errors import EdgediffError

KIT = "w8a8"
FINISH = "finish on macOS with: python w8a8/finish_w8a8.py BUNDLE (coremltools >= 8, Core ML prediction)"

_SCRIPT = '''"""Finish W8A8 of this bundle's Core ML model on macOS (Core ML prediction calibrates activations).

    python finish_w8a8.py BUNDLE        (coremltools >= 8, macOS)

Reads BUNDLE/model/denoiser.mlpackage (int8 weights), BUNDLE/w8a8/recipe.json and
BUNDLE/w8a8/calibration.npz (the compile's calibration trajectory, in the model's input
names), quantizes activations to int8 except the ops the recipe skips, and writes
BUNDLE/model/denoiser.w8a8.mlpackage. Point manifest.json model.file at it to ship it
(the manifest's hashes then need `edgediff` to re-publish the bundle, or ship the file alone).
"""

import json
import sys
from pathlib import Path

import numpy as np


def main(bundle: str) -> int:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    root = Path(bundle)
    recipe = json.loads((root / "w8a8" / "recipe.json").read_text())
    data = np.load(root / "w8a8" / "calibration.npz")
    batch = int(recipe["static_batch"])
    names = recipe["inputs"]
    rows = data[names[0]].shape[0]
    samples = [{n: data[n][s:s + batch] for n in names} for s in range(0, rows, batch)]
    model = ct.models.MLModel(str(root / recipe["model"]))
    config = cto.OptimizationConfig.from_dict(recipe["coremltools_config"])
    w8a8 = cto.linear_quantize_activations(model, config, samples)
    out = root / recipe["output"]
    w8a8.save(str(out))
    print(f"wrote {out}: int8 activations calibrated on {rows} rows, "
          f"{len(recipe['coremltools_config']['op_name_configs'])} ops kept float")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
'''


def _program_ops(spec):
    fn = spec.mlProgram.functions["main"]
    return list(fn.block_specializations[fn.opset].operations)


def _weight_input(op) -> str | None:
    for key in ("weight", "y"):
        if key in op.inputs and op.inputs[key].arguments:
            return op.inputs[key].arguments[0].name
    return None


def mil_float_ops(package: Path, layers_in_order: list[str], float_layers: list[str], module) -> tuple[dict, list]:
    """{float layer: MIL op name} and the float layers that could not be mapped."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    ops = _program_ops(spec)
    producer = {o.name: op for op in ops for o in op.outputs}
    const_types = {"const", "constexpr_affine_dequantize", "constexpr_lut_to_dense", "constexpr_blockwise_shift_scale"}
    subs = dict(module.named_modules())
    found: dict[str, str] = {}
    conv_names = {}
    others = []
    for op in ops:
        w = _weight_input(op)
        if w is None or w not in producer or producer[w].type not in const_types:
            continue
        if op.type == "conv":
            conv_names[w] = op.outputs[0].name
        elif op.type in ("linear", "matmul"):
            dims = [int(d.constant.size) for d in producer[w].outputs[0].type.tensorType.dimensions]
            others.append((op.outputs[0].name, int(np.prod(dims))))
    torch_others = []
    for layer in layers_in_order:
        key = f"p_{layer.replace('.', '_')}_weight"
        conv = next((op for w, op in conv_names.items() if w.startswith(key + "_") or w == key), None)
        if conv is not None:
            found[layer] = conv
        elif layer in subs and subs[layer].weight.dim() == 2:
            torch_others.append((layer, int(subs[layer].weight.numel())))
    if len(torch_others) == len(others) and all(n % m == 0 for (_, n), (_, m) in zip(others, torch_others)):
        for (layer, _), (op, _) in zip(torch_others, others):
            found[layer] = op
    return ({k: found[k] for k in float_layers if k in found}, [k for k in float_layers if k not in found])


def write_kit(
    root: Path,
    package: Path,
    calib,
    *,
    input_names: list[str],
    input_dtypes: list,
    static_batch: int,
    layers_in_order: list[str],
    float_layers: list[dict],
    module,
) -> dict:
    """Write w8a8/{calibration.npz, recipe.json, finish_w8a8.py} into the bundle folder `root`."""
    kit = root / KIT
    kit.mkdir()
    n = (len(calib) // static_batch) * static_batch
    if n == 0:
        raise EdgediffError(f"Core ML W8A8: {len(calib)} calibration rows, fewer than the static batch {static_batch}")
    args = calib.model_args(np.arange(n))
    arrays = {name: a.numpy().astype(dt) for name, a, dt in zip(input_names, args, input_dtypes)}
    np.savez_compressed(kit / "calibration.npz", **arrays)
    mapped, unmapped = mil_float_ops(package, layers_in_order, [f["layer"] for f in float_layers], module)
    recipe = {
        "model": package.relative_to(root).as_posix(),
        "output": package.with_name(package.stem + ".w8a8.mlpackage").relative_to(root).as_posix(),
        "inputs": input_names,
        "static_batch": static_batch,
        "rows": n,
        "coremltools_config": {
            "config_type": "OpLinearQuantizerConfig",
            "global_config": {"mode": "linear_symmetric", "dtype": "int8"},
            "op_name_configs": {op: None for op in sorted(set(mapped.values()))},
        },
        "float_layers": [
            {"layer": f["layer"], "mil_op": mapped.get(f["layer"]), "why": f["why"]} for f in float_layers
        ],
        "unmapped_float_layers": unmapped,
        "api": "coremltools.optimize.coreml.linear_quantize_activations(model, OptimizationConfig, sample_data)",
    }
    (kit / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    (kit / "finish_w8a8.py").write_text(_SCRIPT)
    return {
        "activation_quantization": FINISH,
        "numerics": "not run: needs macOS",
        "calibration_rows": n,
        "skipped_ops": len(recipe["coremltools_config"]["op_name_configs"]),
        "unmapped_float_layers": unmapped,
        "files": [f"{KIT}/calibration.npz", f"{KIT}/recipe.json", f"{KIT}/finish_w8a8.py"],
    }
