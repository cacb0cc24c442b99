"""Capture, ONNX lowering, verification and the bundle, on a tiny UNet built here."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from edgediff.compiler.capture import load_source
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.compiler.verify import verify
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import torch_denoiser
from edgediff.lower.onnx import OPSET
from edgediff.runtimes.bundle import FORMAT_VERSION, load_bundle
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, generate


def test_bundle_layout_and_manifest(tiny_bundle):
    root = tiny_bundle.root
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "model", "report.json", "scheduler.json"]
    m = tiny_bundle.manifest
    assert m["format_version"] == FORMAT_VERSION
    assert set(m["files"]) == {"model/denoiser.onnx", "scheduler.json", "report.json"}
    assert [i["name"] for i in m["model"]["inputs"]] == ["sample", "timestep", "class_labels"]
    assert m["model"]["inputs"][0]["shape"] == ["batch", 1, 8, 8]
    assert m["conditioning"] == {"kind": "class", "num_classes": 4, "null_label": 4, "shape": None}
    assert len(m["source"]["sha256"]) == 64
    # no staging folders left beside the bundle
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]


def test_onnx_opset_and_dynamic_batch(tiny_bundle):
    model = onnx.load(str(tiny_bundle.model_path))
    assert any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in model.opset_import)
    assert OPSET >= 17
    denoise = bundle_denoiser(tiny_bundle)
    for batch in (1, 3, 7):
        eps = denoise(np.zeros((batch, 1, 8, 8), np.float32), np.full(batch, 10, np.float32), np.zeros(batch, np.int64))
        assert eps.shape == (batch, 1, 8, 8)


def test_report_records_verification(tiny_bundle):
    v = tiny_bundle.report["verify"]
    assert v["num_timesteps"] >= 8
    ts = [r["timestep"] for r in v["per_timestep"]]
    assert min(ts) == 0 and max(ts) == 99  # spans the whole schedule
    assert v["max_rel_error"] <= 1e-4
    assert tiny_bundle.report["model"]["params"] > 0 and tiny_bundle.report["model"]["macs_per_step"] > 0


def test_scheduler_json_round_trip(tiny_bundle):
    s = tiny_bundle.scheduler
    assert s["solver"] == "ddim" and s["guidance_scale"] == 2.0
    setup = SamplingSetup.from_bundle(tiny_bundle)
    assert len(setup.plan.timesteps) == 5
    np.testing.assert_allclose(
        setup.plan.schedule.alphas_cumprod, load_source("tiny_models:tiny_unet").schedule.alphas_cumprod
    )


def test_bundle_runs_like_pytorch(tiny_bundle):
    setup = SamplingSetup.from_bundle(tiny_bundle)
    ref = torch_denoiser(load_source("tiny_models:tiny_unet"))
    labels = np.array([0, 1, 2, 3], np.int64)
    a = generate(bundle_denoiser(tiny_bundle), setup, n=4, seed=3, labels=labels)
    b = generate(ref, setup, n=4, seed=3, labels=labels)
    assert np.abs(a - b).max() < 1e-4
    # same seed -> same images, independent of the batch size
    c = generate(bundle_denoiser(tiny_bundle), setup, n=4, seed=3, labels=labels, batch_size=3)
    np.testing.assert_array_equal(a, c)
    d = generate(bundle_denoiser(tiny_bundle), setup, n=4, seed=4, labels=labels)
    assert np.abs(a - d).max() > 1e-2


def test_fp16_bundle(tmp_path):
    b = compile_model("tiny_models:tiny_unet", tmp_path / "h", recipe=Recipe(sampler="ddim", steps=4, precision="fp16"))
    assert b.manifest["model"]["precision"] == "fp16"
    assert b.manifest["model"]["inputs"][0]["dtype"] == "float32"  # fp32 I/O
    model = onnx.load(str(b.model_path))
    dtypes = {init.data_type for init in model.graph.initializer if len(init.dims) >= 2}
    assert onnx.TensorProto.FLOAT16 in dtypes and onnx.TensorProto.FLOAT not in dtypes
    assert 1e-7 < b.report["verify"]["max_rel_error"] <= 2e-2


def test_verification_failure_names_timestep():
    spec = load_source("tiny_models:tiny_unet")
    ref = torch_denoiser(spec)

    def broken(x, t, c):
        out = ref(x, t, c)
        return out + (t[:, None, None, None] > 50) * 0.1  # wrong only at late timesteps

    with pytest.raises(EdgediffError, match=r"timestep (5[1-9]|[6-9]\d).*normalised max error"):
        verify(spec, broken, precision="fp32")


def test_verification_failure_writes_nothing(tmp_path, monkeypatch):
    import edgediff.compiler.pipeline as pipeline

    real = pipeline.open_denoiser

    def skewed(path, fmt, **kw):
        d = real(path, fmt, **kw)
        return lambda x, t, c: d(x, t, c) * 1.01

    monkeypatch.setattr(pipeline, "open_denoiser", skewed)
    with pytest.raises(EdgediffError, match="differs from PyTorch at timestep"):
        compile_model("tiny_models:tiny_unet", tmp_path / "b", recipe=Recipe(sampler="ddim", steps=3))
    assert list(tmp_path.iterdir()) == []


def test_recompile_replaces_bundle(tmp_path):
    out = tmp_path / "b"
    compile_model("tiny_models:tiny_unet", out, recipe=Recipe(sampler="ddim", steps=3))
    b = compile_model("tiny_models:tiny_unet", out, recipe=Recipe(sampler="euler", steps=4))
    assert b.scheduler["solver"] == "euler"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_refuses_to_replace_non_bundle(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("keep me")
    with pytest.raises(EdgediffError, match="not an edgediff bundle"):
        compile_model("tiny_models:tiny_unet", out)
    assert (out / "thesis.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "damage, match",
    [
        ("byte", r"denoiser.onnx: sha256 .* does not match manifest.json files\['model/denoiser.onnx'\]"),
        ("version", r"format_version is 99"),
        ("scheduler", r"scheduler.json: sha256"),
        ("missing", r"denoiser.onnx: listed in manifest.json files but missing"),
        ("signature", r"inputs .* do not match manifest.json model.inputs"),
    ],
)
def test_load_refuses_damaged_bundle(bundle_copy, damage, match):
    man_path = bundle_copy / "manifest.json"
    man = json.loads(man_path.read_text())
    model = bundle_copy / "model" / "denoiser.onnx"
    if damage == "byte":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0x01
        model.write_bytes(bytes(data))
    elif damage == "version":
        man["format_version"] = 99
    elif damage == "scheduler":
        p = bundle_copy / "scheduler.json"
        p.write_text(p.read_text().replace('"guidance_scale": 2.0', '"guidance_scale": 7.0'))
    elif damage == "missing":
        model.unlink()
    elif damage == "signature":
        man["model"]["inputs"][0]["shape"] = ["batch", 1, 16, 16]
    man_path.write_text(json.dumps(man))
    with pytest.raises(EdgediffError, match=match):
        load_bundle(bundle_copy)


def test_diffusers_folder_source(tmp_path):
    """A local diffusers pipeline folder (unet/ + scheduler/) compiles and verifies."""
    from diffusers import DDPMScheduler
    from tiny_models import build_tiny_unet

    root = tmp_path / "pipe"
    build_tiny_unet(seed=1).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=50).save_pretrained(root / "scheduler")
    spec = load_source(str(root))
    assert spec.sample_shape == (1, 8, 8) and spec.conditioning.num_classes == 4
    assert spec.schedule.num_train_timesteps == 50
    b = compile_model(str(root), tmp_path / "b", recipe=Recipe(sampler="ddim", steps=4))
    assert b.manifest["source"]["sha256"] == spec.source_sha256
    assert b.report["verify"]["max_rel_error"] < 1e-4


def test_dit_folder_source(tmp_path):
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    root = tmp_path / "dit"
    torch.manual_seed(0)
    DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=2,
        out_channels=4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=1,
    ).save_pretrained(root / "transformer")
    DDIMScheduler(num_train_timesteps=100).save_pretrained(root / "scheduler")
    spec = load_source(str(root))
    assert spec.sample_shape == (2, 8, 8) and spec.conditioning.null_label == 10
    b = compile_model(str(root), tmp_path / "b", recipe=Recipe(sampler="ddim", steps=3))
    assert b.manifest["model"]["outputs"][0]["shape"][1:] == [2, 8, 8]  # learned-sigma half dropped
    assert b.report["verify"]["max_rel_error"] < 1e-4


def test_factory_must_return_model_spec():
    with pytest.raises(EdgediffError, match="must return edgediff.compiler.capture.ModelSpec"):
        load_source("tiny_models:not_a_spec")
    with pytest.raises(EdgediffError, match="cannot import module"):
        load_source("no_such_module_xyz:f")


def test_recipe_rejects_unknown_keys():
    with pytest.raises(EdgediffError, match="unknown key"):
        Recipe.from_dict({"sampler": "ddim", "stepz": 4})
    assert Recipe.from_dict({"sampler": "ddim", "steps": 4}).steps == 4


def test_compile_copy_keeps_hashes(tiny_bundle, tmp_path):
    """A bundle is relocatable: hashes cover contents, not paths."""
    dst = tmp_path / "moved"
    shutil.copytree(tiny_bundle.root, dst)
    assert load_bundle(dst).manifest == tiny_bundle.manifest
