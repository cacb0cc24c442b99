"""Generality: any diffusers UNet2DModel or DiT folder in the usual layouts compiles for every target.

The matrix is tests/generality_models.py (block types, time and class embeddings, learned variance,
non-square sizes, legacy DiT configs, scheduler configs; pipeline and bare layouts). Here, within
the suite's time budget (an ONNX export of even a tiny UNet costs seconds):
  - every variant: the folder loads into the signature and schedule its config says and runs in
    PyTorch, or is refused in one line naming the field;
  - the variants whose exported graphs differ in kind (FIR resampling, integer timesteps, an
    embedding input, a legacy DiT, inf at t = 0), each through one of
    the fast formats: host-cpu (ONNX fp32), snapdragon-8-gen-3 (ONNX fp16, static batch),
    intel-core-ultra-npu (OpenVINO fp16);
  - the FIR rewrite through Core ML (iphone-15-pro), which converts slowly.
benchmarks/generality.py runs the full matrix (every variant x every target, + W8A8).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
from generality_models import VARIANTS
from test_lowering import needs

from edgediff.compiler.capture import load_source
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.runtimes.backends import BACKENDS
from edgediff.targets import load_target

COMPILING = [n for n, v in VARIANTS.items() if v.expect is None]
REFUSED = [n for n, v in VARIANTS.items() if v.expect is not None]
# (non-square static shapes and TFLite's FIR path run in benchmarks/generality.py: the suite's budget)
COMPILED = [
    ("unet-skip", "intel-core-ultra-npu"),
    ("unet-learned-time", "snapdragon-8-gen-3"),
    ("unet-class-identity", "host-cpu"),
    ("dit-legacy-transformer2d", "intel-core-ultra-npu"),
    ("unet-skip", "iphone-15-pro"),
]
RECIPE = Recipe(sampler="ddim", steps=2, guidance=2.0)


def recipe_for(spec):
    """RECIPE, without guidance for a model with no null condition (compile refuses a scale there)."""
    return RECIPE if spec.conditioning.kind == "class" else replace(RECIPE, guidance=1.0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("generality")
    return {name: v.write(root / name) for name, v in VARIANTS.items()}


_SPECS: dict = {}


def spec_of(folders, name):
    """One ModelSpec per variant for the module, so the ONNX export is made once (lower_onnx._EXPORTS)."""
    if name not in _SPECS:
        _SPECS[name] = load_source(str(folders[name]))
    return _SPECS[name]


@pytest.mark.parametrize("name", COMPILING)
def test_folder_loads_with_the_signature_its_config_says(folders, name):
    import json

    spec = spec_of(folders, name)
    sub = next((d for d in ("unet", "transformer") if (folders[name] / d).is_dir()), ".")
    cfg = json.loads((folders[name] / sub / "config.json").read_text())
    size = cfg["sample_size"]
    hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    assert spec.sample_shape == (cfg["in_channels"], *hw)
    if cfg.get("class_embed_type") == "identity":
        assert spec.conditioning.kind == "embedding" and spec.conditioning.shape == (8 * 4,)
    elif cfg.get("num_class_embeds") or cfg.get("num_embeds_ada_norm"):
        assert spec.conditioning.kind == "class" and spec.conditioning.null_label is not None
    else:
        assert spec.conditioning.kind == "none"
    sched = folders[name] / ("scheduler/scheduler_config.json" if sub != "." else "scheduler_config.json")
    assert spec.schedule.prediction_type == json.loads(sched.read_text()).get("prediction_type", "epsilon")
    with torch.no_grad():
        out = spec.module(*spec.example_inputs(batch=2))
    assert out.shape == (2, *spec.sample_shape)  # a learned-variance head is cut to the prediction


@pytest.mark.parametrize("name", REFUSED)
def test_unsupported_folder_is_one_line_naming_the_field(folders, name, tmp_path):
    with pytest.raises(EdgediffError) as e:
        compile_model(str(folders[name]), tmp_path / "b", target="host-cpu", recipe=RECIPE)
    msg = str(e.value)
    assert VARIANTS[name].expect in msg and "\n" not in msg and str(folders[name]) in msg
    assert not (tmp_path / "b").exists()


def _check(bundle, target):
    fmt = load_target(target).format
    assert bundle.model_format == fmt and bundle.manifest["target"] == target
    v = bundle.report["verify"]
    if fmt in BACKENDS:
        assert v["num_timesteps"] >= 8 and 0 <= v["max_rel_error"] <= v["bound"]
    else:
        assert v["numerics"].startswith("not run") and v["outputs"] == ["eps"]


@pytest.mark.parametrize(
    "name, target", [pytest.param(n, t, marks=needs(load_target(t).format), id=f"{n}-{t}") for n, t in COMPILED]
)
def test_variant_compiles(folders, name, target, tmp_path):
    spec = spec_of(folders, name)
    b = compile_model(spec, tmp_path / "b", target=target, recipe=recipe_for(spec))
    _check(b, target)
    if load_target(target).static_shapes:
        assert b.manifest["model"]["inputs"][0]["shape"] == [
            b.report["model"]["forward_passes_per_step"],
            *spec.sample_shape,
        ]
    if name == "unet-skip" and target in ("iphone-15-pro", "pixel-8"):
        assert b.report["lower"]["rewrites"] == ["diffusers upfirdn2d_native (6-D tensors)"]


def test_fourier_model_is_undefined_at_t0(folders, tmp_path):
    """time_embedding_type "fourier" takes log(t) and divides by t: a plan that visits t = 0 is refused in
    one line; with trailing spacing it compiles, and verification matches PyTorch's inf/nan at t = 0."""
    spec = spec_of(folders, "unet-fourier")
    with pytest.raises(EdgediffError, match=r"inf/nan at timestep 0, .*--spacing trailing"):
        compile_model(spec, tmp_path / "leading", target="host-cpu", recipe=recipe_for(spec))
    b = compile_model(
        spec, tmp_path / "b", target="host-cpu", recipe=Recipe(sampler="ddim", steps=2, spacing="trailing")
    )
    per_t = b.report["verify"]["per_timestep"]
    assert per_t[0]["timestep"] == 0 and per_t[0]["nonfinite_in_pytorch"] > 0
    assert all(np.isfinite(r["max_rel_error"]) for r in per_t)


def test_fir_rewrite_equals_diffusers_upfirdn2d():
    """The 4-D FIR resampling that TFLite and Core ML convert computes diffusers' numbers exactly."""
    from diffusers.models.upsampling import upfirdn2d_native

    from edgediff.lower.rewrites import upfirdn2d_4d

    k = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1]))
    x = torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    for up, down, pad in [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (0, 0)), (2, 1, (-1, 2)), (3, 1, (1, 1))]:
        torch.testing.assert_close(
            upfirdn2d_4d(x, k / k.sum(), up, down, pad),
            upfirdn2d_native(x, k / k.sum(), up, down, pad),
            rtol=0,
            atol=1e-6,
        )
