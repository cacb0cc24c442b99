"""Text-to-image pipelines for Core ML targets, checked structurally (Core ML prediction needs macOS).

Fast part: each component of the tiny SD 1.x folder (conftest.text_folders) as an ML program
(lower/components.py -> lower/coreml.py): its inputs, outputs, dtypes and static shapes as read
from the package's spec, and the denoiser with encoder_hidden_states (lower_coreml). The whole
compile for iphone-15-pro (slow: three Core ML conversions) writes a bundle the loader accepts.
"""

from __future__ import annotations

import pytest

pytest.importorskip("coremltools")

from edgediff.compiler.capture import load_source  # noqa: E402
from edgediff.lower.components import components, lower_component  # noqa: E402
from edgediff.lower.coreml import lower_coreml  # noqa: E402
from edgediff.runtimes.backends import model_signature  # noqa: E402


@pytest.fixture(scope="module")
def sd1(text_folders):
    return load_source(str(text_folders["sd1"]))


@pytest.mark.parametrize(
    "name, precision, batch, inputs, outputs",
    [
        ("text_encoder", "fp16", 1, [("input_ids", "int32", [1, 77])], [("last_hidden_state", "float32", [1, 77, 32])]),
        ("vae_decoder", "fp32", 2, [("latents", "float32", [2, 4, 8, 8])], [("image", "float32", [2, 3, 16, 16])]),
    ],
)
def test_component_as_ml_program(sd1, tmp_path, name, precision, batch, inputs, outputs):
    c = next(c for c in components(sd1) if c.name == name)
    low = lower_component(c, tmp_path, fmt="coreml", precision=precision, source="sd1", static_batch=batch)
    assert low.file == tmp_path / f"{name}.mlpackage" and low.file.is_dir()
    sig = model_signature(low.file, "coreml")
    assert [(f["name"], f["dtype"], f["shape"]) for f in sig["inputs"]] == [(n, d, s) for n, d, s in inputs]
    assert [(f["name"], f["dtype"], f["shape"]) for f in sig["outputs"]] == [(n, d, s) for n, d, s in outputs]
    s = low.record["structural"]
    assert s["outputs"] == [o[0] for o in outputs] and s["ops"] > 10
    assert low.record["compute_precision"] == precision and "needs macOS" in low.record["numerics"]
    assert low.runtime["static_batch"] == batch


def test_text_denoiser_as_ml_program(sd1, tmp_path):
    """The cross-attention UNet takes encoder_hidden_states as its third input."""
    low = lower_coreml(sd1, tmp_path, precision="fp16", static_batch=2)
    sig = model_signature(low.file, "coreml")
    assert [(f["name"], f["shape"]) for f in sig["inputs"]] == [
        ("sample", [2, 4, 8, 8]),
        ("timestep", [2]),
        ("encoder_hidden_states", [2, 77, 32]),
    ]
    assert sig["outputs"] == [{"name": "eps", "dtype": "float32", "shape": [2, 4, 8, 8]}]
    ops = low.record["structural"]["op_counts"]
    assert ops.get("matmul", 0) + ops.get("linear", 0) + ops.get("scaled_dot_product_attention", 0) > 0


@pytest.mark.slow
def test_iphone_target_compiles_a_text_bundle(text_folders, tmp_path):
    from edgediff.compiler.pipeline import compile_model
    from edgediff.compiler.recipe import Recipe
    from edgediff.runtimes.bundle import load_bundle

    b = compile_model(
        str(text_folders["sd1"]), tmp_path / "b", target="iphone-15-pro", recipe=Recipe(sampler="ddim", steps=4)
    )
    comps = b.manifest["components"]
    assert b.manifest["model"]["file"] == "model/denoiser.mlpackage"
    assert comps["text_encoder"]["file"] == "model/text_encoder.mlpackage"
    assert comps["vae_decoder"]["outputs"][0]["shape"] == [1, 3, 16, 16]
    assert comps["text_encoder"]["format"] == comps["vae_decoder"]["format"] == "coreml"
    low = b.report["lower"]["components"]
    assert low["vae_decoder"]["fp16"]["fp32_nodes"] == []  # the overflow check ran (and found none)
    assert "needs macOS" in low["text_encoder"]["numerics"]
    assert load_bundle(b.root).manifest == b.manifest
