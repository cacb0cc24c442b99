"""The lowering registry: one entry per model format a target profile can ask for.

    profile.format ──LOWERINGS[format]──> Lowering.lower(model, out_dir, precision=, ir=, static_batch=, weights=)
                                             │
                                             ▼
                                        Lowered(file, record for report.json, runtime hints for the manifest)

Every lowering receives the fp32 ONNX export of the model (`ir`, dynamic batch), which the
coverage stage already made to read the op types; ONNX and OpenVINO start from it, TFLite and
Core ML convert from PyTorch themselves. `static_batch` is None (dynamic batch) or the batch
the model is fixed to; formats whose converters always fix shapes (TFLite, Core ML) get it set.

To add a format: write src/edgediff/lower/NAME.py with `lower_NAME(...) -> Lowered`, add an entry
to LOWERINGS below, and a backend + signature reader in src/edgediff/runtimes/backends.py.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.backends import BACKENDS, quiet_output, require  # noqa: F401 - require is re-exported


@dataclass(frozen=True)
class Lowered:
    """What a lowering wrote."""

    file: Path  # the model file (or .mlpackage folder) inside the bundle's model/ folder
    record: dict  # format-specific facts for report.json["lower"]
    runtime: dict = field(default_factory=dict)  # hints the runtime needs, copied into manifest.json model.runtime


@dataclass(frozen=True)
class Lowering:
    module: str  # edgediff.lower.<module>, imported only when the format is used
    function: str
    precisions: tuple[str, ...]  # what this lowering can write
    always_static: bool  # the converter fixes every input shape
    extra: str | None  # pip extra holding the converter (None: core dependency)
    # ONNX op type -> the op types the converter decomposes it into (used by the coverage check).
    decomposes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    weights: tuple[str, ...] = ()  # weight compressions besides the precision (Core ML)

    def __call__(self, *args, **kwargs) -> Lowered:
        return getattr(importlib.import_module(f"edgediff.lower.{self.module}"), self.function)(*args, **kwargs)


# Normalisations as the converters emit them (coremltools: reduce_mean, sub, square, sqrt,
# real_div; litert-torch: MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, ADD).
_NORM = ("ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Div")
_FROM_TORCH = {
    "GroupNormalization": ("Reshape", *_NORM),
    "InstanceNormalization": _NORM,
    "LayerNormalization": _NORM,
    "Gelu": ("Mul", "Add", "Erf", "Div"),
    "Gemm": ("MatMul", "Add"),
    "Expand": ("Tile",),
}

LOWERINGS: dict[str, Lowering] = {
    "onnx": Lowering("onnx", "lower_onnx_bundle", ("fp32", "fp16"), False, None),
    "openvino": Lowering(
        "openvino",
        "lower_openvino",
        ("fp32", "fp16"),
        False,
        "openvino",
        decomposes={"InstanceNormalization": ("MVN", "Mul", "Add")},
    ),
    "tflite": Lowering("tflite", "lower_tflite", ("fp32", "fp16", "int8"), True, "tflite", decomposes=_FROM_TORCH),
    "coreml": Lowering(
        "coreml",
        "lower_coreml",
        ("fp16", "fp32", "int8"),
        True,
        "coreml",
        decomposes=_FROM_TORCH,
        weights=("int8", "palette4", "palette6"),
    ),
}


def get_lowering(fmt: str, target: str) -> Lowering:
    """The lowering for a profile's format; `target` is what the error names (the profile's file)."""
    if fmt not in LOWERINGS:
        raise EdgediffError(
            f"{target}: field format is {fmt!r}; one of {', '.join(LOWERINGS)} (the formats with a lowering)"
        )
    return LOWERINGS[fmt]


def static_batch_for(guided: bool) -> int:
    """The batch a static-shape model is fixed to: one image, twice when guidance doubles the batch."""
    return 2 if guided else 1


def runnable_here(fmt: str) -> bool:

    return fmt in BACKENDS


def check_precision(fmt: str, precision: str, target: str) -> None:
    low = get_lowering(fmt, target)
    if precision not in low.precisions:
        raise EdgediffError(
            f"target {target}: precision {precision!r} is supported by the device but the "
            f"{fmt} lowering writes only {', '.join(low.precisions)}"
        )


def check_weights(fmt: str, weights: str | None, target: str) -> None:
    if weights is None:
        return
    low = get_lowering(fmt, target)
    if weights not in low.weights:
        raise EdgediffError(
            f"target {target}: weight compression {weights!r} is not available for format "
            f"{fmt} (available: {', '.join(low.weights) or 'none'})"
        )


@contextlib.contextmanager
def converter_output(what: str):
    """Silence a converter's progress output (Python and native); if the converter raises, the
    EdgediffError names `what` and the converter's first line of error."""
    try:
        with quiet_output():
            yield
    except EdgediffError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgediffError(f"{what} failed: {type(e).__name__}: {first}") from e
