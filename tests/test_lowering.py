"""Lowering to every format a target can ask for, on tiny models built here.

One battery (`FormatBattery`) runs for every format: the bundle loads, its signature matches
the file, the coverage record is there, and either the numbers match PyTorch (formats this
host runs) or the structure is checked (Core ML). Formats whose optional package is missing
are skipped with the pip extra that installs it.
"""

import importlib.util
import json
import textwrap

import numpy as np
import pytest

from edgediff.compiler.capture import load_source
from edgediff.compiler.coverage import coverage, unit_coverage
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import torch_denoiser
from edgediff.lower.registry import LOWERINGS
from edgediff.runtimes.backends import BACKENDS, model_signature, open_denoiser
from edgediff.runtimes.bundle import load_bundle
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, generate
from edgediff.targets import load_target

EXTRA_MODULES = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert_torch", "coreml": "coremltools"}
FILES = {
    "onnx": "denoiser.onnx",
    "openvino": "denoiser.xml",
    "tflite": "denoiser.tflite",
    "coreml": "denoiser.mlpackage",
}
# One device profile per format (the profile decides the format).
TARGETS = {
    "onnx": "snapdragon-8-gen-3",
    "openvino": "intel-core-ultra-npu",
    "tflite": "pixel-8",
    "coreml": "iphone-15-pro",
}


def needs(fmt):
    mod = EXTRA_MODULES[fmt]
    return pytest.mark.skipif(
        importlib.util.find_spec(mod) is None,
        reason=f"{mod} not installed: pip install 'edgediff[{LOWERINGS[fmt].extra}]'",
    )


# What the battery compiles per format: fp32 where the format runs here and the target allows
# it (so the 1e-4 bound applies), else the target's default; Core ML adds 6-bit palettization,
# so one (slow) conversion covers the compression path too.
RECIPES = {
    "onnx": dict(precision="fp32"),
    "openvino": {},
    "tflite": dict(precision="fp32"),
    "coreml": dict(weights="palette6"),
}
_BUNDLES: dict = {}


def battery_bundle(fmt, tmp_path_factory):
    """Compiled once per session: the conversions (litert-torch, coremltools) take tens of seconds."""
    if fmt not in _BUNDLES:
        out = tmp_path_factory.mktemp(f"lower-{fmt}") / "b"
        _BUNDLES[fmt] = compile_model(
            "tiny_models:tiny_unet",
            out,
            target=TARGETS[fmt],
            recipe=Recipe(sampler="ddim", steps=4, guidance=2.0, **RECIPES[fmt]),
        )
    return _BUNDLES[fmt]


@pytest.fixture(scope="module", params=[pytest.param(f, marks=needs(f)) for f in FILES])
def fmt_bundle(request, tmp_path_factory):
    """(format, bundle): the tiny class-conditional UNet compiled for that format's target."""
    return request.param, battery_bundle(request.param, tmp_path_factory)


class TestFormatBattery:
    """Every format runs these."""

    def test_format_and_files(self, fmt_bundle):
        fmt, b = fmt_bundle
        assert b.model_format == fmt == b.report["lower"]["format"]
        assert b.model_path.name == FILES[fmt] and b.model_path.exists()
        assert b.report["model"]["size_bytes"] >= b.report["lower"]["bytes"] > 0
        # no conversion scratch (the ONNX export used for coverage) inside the bundle
        assert not (b.root / "ir").exists() and not [f for f in b.manifest["files"] if f.startswith("ir/")]

    def test_signature_matches_file_and_is_static_where_required(self, fmt_bundle):
        fmt, b = fmt_bundle
        sig = model_signature(b.model_path, fmt)
        assert sig["inputs"] == b.manifest["model"]["inputs"]
        assert [i["name"] for i in sig["inputs"]] == ["sample", "timestep", "class_labels"]
        assert [o["name"] for o in sig["outputs"]] == ["eps"]
        assert sig["inputs"][0]["dtype"] == "float32" and sig["outputs"][0]["dtype"] == "float32"
        static = b.manifest["model"]["runtime"]["static_batch"]
        assert static == 2  # guidance: the conditional and unconditional image in one call
        assert sig["inputs"][0]["shape"] == [2, 1, 8, 8]

    def test_coverage_recorded(self, fmt_bundle):
        fmt, b = fmt_bundle
        cov = b.report["coverage"]
        target = load_target(b.manifest["target"])
        assert cov["unit"] == target.unit_for(b.manifest["model"]["precision"])
        assert set(cov["units"]) == set(target.compute_units)
        assert {"Conv", "Add"} <= set(cov["op_counts"])
        for u in cov["units"].values():  # every op is placed in exactly one group
            groups = [*u["supported"], *u["rewritten"], *u["unsupported"], *u["not_documented"]]
            assert sorted(groups) == sorted(cov["op_counts"])

    def test_verification(self, fmt_bundle):
        fmt, b = fmt_bundle
        v = b.report["verify"]
        if fmt in BACKENDS:
            assert v["num_timesteps"] >= 8
            assert v["max_rel_error"] <= v["bound"]
            if b.manifest["model"]["precision"] == "fp32":
                assert v["max_rel_error"] <= 1e-4
            assert "this host's CPU" in v["note"]  # a device profile, verified here
        else:
            assert v["numerics"].startswith("not run: needs macOS")
            assert v["inputs"] == ["sample", "timestep", "class_labels"] and v["ops"] > 10
            assert v["compression_ops"]["constexpr_lut_to_dense"] > 0  # palette6 asked for
            assert b.report["lower"]["weights"] == "palette6"

    def test_runs_like_pytorch_on_any_batch(self, fmt_bundle):
        fmt, b = fmt_bundle
        if fmt not in BACKENDS:
            with pytest.raises(EdgediffError, match="cannot run on this host.*macOS"):
                bundle_denoiser(b)
            return
        denoise = bundle_denoiser(b)
        ref = torch_denoiser(load_source("tiny_models:tiny_unet"))
        rng = np.random.default_rng(0)
        for n in (1, 3, 5):  # smaller than, not a multiple of, and larger than the static batch
            x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
            t = np.full(n, 40, np.float32)
            c = np.arange(n, dtype=np.int64) % 5
            out, want = denoise(x, t, c), ref(x, t, c)
            assert out.shape == want.shape
            assert np.abs(out - want).max() / np.abs(want).max() < 2e-2
        setup = SamplingSetup.from_bundle(b)
        images = generate(denoise, setup, n=3, seed=1, labels=np.array([0, 1, 2]))
        refs = generate(ref, setup, n=3, seed=1, labels=np.array([0, 1, 2]))
        assert np.abs(images - refs).max() < 5e-2

    def test_bundle_reloads_and_detects_tampering(self, fmt_bundle, tmp_path):
        import shutil

        fmt, b = fmt_bundle
        dst = tmp_path / "copy"
        shutil.copytree(b.root, dst)
        assert load_bundle(dst).manifest == b.manifest
        man = json.loads((dst / "manifest.json").read_text())
        man["model"]["inputs"][0]["shape"] = [2, 1, 16, 16]
        (dst / "manifest.json").write_text(json.dumps(man))
        with pytest.raises(EdgediffError, match="do not match manifest.json model.inputs"):
            load_bundle(dst)


# ---------------------------------------------------------------- precision choice
def test_precision_the_target_lacks_is_refused(tmp_path):
    with pytest.raises(EdgediffError, match=r"target intel-core-ultra-npu: precision 'fp32' is not supported"):
        compile_model(
            "tiny_models:tiny_unet", tmp_path / "b", target="intel-core-ultra-npu", recipe=Recipe(precision="fp32")
        )
    with pytest.raises(EdgediffError, match=r"target host-cpu: precision 'int8'.*onnx lowering writes only"):
        compile_model("tiny_models:tiny_unet", tmp_path / "b", target="host-cpu", recipe=Recipe(precision="int8"))
    with pytest.raises(EdgediffError, match=r"weight compression 'palette4' is not available for format onnx"):
        compile_model("tiny_models:tiny_unet", tmp_path / "b", recipe=Recipe(weights="palette4"))
    assert list(tmp_path.iterdir()) == []


def test_host_cpu_bundle_stays_dynamic(tiny_bundle):
    assert tiny_bundle.manifest["model"]["inputs"][0]["shape"][0] == "batch"
    assert tiny_bundle.manifest["model"]["runtime"]["static_batch"] is None
    assert "note" not in tiny_bundle.report["verify"]  # host-cpu is this machine


# ---------------------------------------------------------------- coverage
def _profile(tmp_path, ops_table: str):
    text = textwrap.dedent("""
        name = "dev"
        format = "tflite"
        runtime = "litert"
        static_shapes = true
        [memory]
        total_mb = 1024
        budget_mb = 512
        bandwidth_gbps = 10
        source = "estimate: test"
        [units.npu]
        delegate = "test delegate"
        precisions = ["fp32"]
        peak_source = "estimate: test"
        [units.npu.peak_tops]
        fp32 = 1.0
        [units.npu.ops]
        source = "not documented: test"
        """) + textwrap.dedent(ops_table)
    path = tmp_path / "dev.toml"
    path.write_text(text)
    return load_target(path)


def test_unsupported_op_stops_compile_naming_op_and_target(tmp_path):
    prof = _profile(tmp_path, 'default = "supported"\nunsupported = ["Conv"]\n')
    with pytest.raises(EdgediffError, match=r"target dev: op Conv is documented unsupported on unit npu"):
        coverage(prof, {"Conv": 3, "Add": 1}, precision="fp32", fmt="tflite", decomposes={})
    with pytest.raises(EdgediffError, match=r"target dev: op Conv is documented unsupported"):
        compile_model("tiny_models:tiny_unet", tmp_path / "b", target=str(tmp_path / "dev.toml"))
    assert not (tmp_path / "b").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]


def test_rewrite_replaces_an_unsupported_op(tmp_path):
    prof = _profile(tmp_path, 'default = "supported"\nunsupported = ["InstanceNormalization"]\n')
    dec = LOWERINGS["tflite"].decomposes
    rec = coverage(prof, {"InstanceNormalization": 2, "Conv": 1}, precision="fp32", fmt="tflite", decomposes=dec)
    assert rec["units"]["npu"]["rewritten"] == {"InstanceNormalization": list(dec["InstanceNormalization"])}
    assert rec["units"]["npu"]["unsupported"] == []
    # a rewrite whose own ops are not all supported does not count
    prof2 = _profile(tmp_path, 'default = "supported"\nunsupported = ["InstanceNormalization", "Sqrt"]\n')
    with pytest.raises(EdgediffError, match="op InstanceNormalization is documented unsupported"):
        coverage(prof2, {"InstanceNormalization": 2}, precision="fp32", fmt="tflite", decomposes=dec)


def test_pixel8_cpu_gets_instance_norm_rewritten():
    """XNNPACK's list has no InstanceNormalization but has every op of its decomposition."""
    u = unit_coverage(load_target("pixel-8"), "cpu", ["InstanceNormalization", "Conv"], LOWERINGS["tflite"].decomposes)
    assert "InstanceNormalization" in u["rewritten"] and "Conv" in u["supported"]
    u = unit_coverage(load_target("pixel-8"), "cpu", ["InstanceNormalization"], {})
    assert u["not_documented"] == ["InstanceNormalization"]


# ---------------------------------------------------------------- generality: diffusers folders
def _unet_folder(root):
    from diffusers import DDPMScheduler
    from tiny_models import build_tiny_unet

    build_tiny_unet(seed=2).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=50).save_pretrained(root / "scheduler")
    return root


def _dit_folder(root):
    import torch
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=2,
        out_channels=4,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=1,
    ).save_pretrained(root / "transformer")
    DDIMScheduler(num_train_timesteps=100).save_pretrained(root / "scheduler")
    return root


# The battery already compiles a UNet2DModel for every format; the folder loader is shared.
# Here: a DiT folder for every format, and a UNet2DModel folder for the fast ones.
GENERALITY = [("dit", t) for t in ("snapdragon-8-gen-3", "intel-core-ultra-npu", "pixel-8", "iphone-15-pro")] + [
    ("unet", t) for t in ("raspberry-pi-5", "snapdragon-8-gen-3")
]


@pytest.mark.parametrize(
    "kind, target", [pytest.param(k, t, marks=needs(load_target(t).format), id=f"{k}-{t}") for k, t in GENERALITY]
)
def test_diffusers_folder_compiles_for_target(kind, target, tmp_path):
    src = (_unet_folder if kind == "unet" else _dit_folder)(tmp_path / kind)
    b = compile_model(str(src), tmp_path / "b", target=target, recipe=Recipe(sampler="ddim", steps=2))
    fmt = load_target(target).format
    assert b.model_format == fmt and b.manifest["target"] == target
    v = b.report["verify"]
    if fmt in BACKENDS:
        assert v["num_timesteps"] >= 8 and v["max_rel_error"] <= v["bound"]
    else:
        assert v["numerics"].startswith("not run")
    if target == "snapdragon-8-gen-3":
        # int8 comes first in the profile; the ONNX lowering writes fp32/fp16, so fp16 is the default
        assert b.manifest["model"]["precision"] == "fp16" and b.report["coverage"]["unit"] == "htp"
        assert b.manifest["model"]["inputs"][0]["shape"][0] == 2  # static batch for the QNN EP


# ---------------------------------------------------------------- format-specific
@needs("openvino")
def test_openvino_fp16_compresses_weights_and_records_hints(tmp_path_factory):
    b = battery_bundle("openvino", tmp_path_factory)  # intel-core-ultra-npu's default: fp16
    assert b.manifest["model"]["precision"] == "fp16"
    assert b.manifest["model"]["runtime"]["inference_precision_hint"] == "f16"
    assert b.report["lower"]["compress_to_fp16"] is True
    assert "INFERENCE_PRECISION_HINT f32" in b.report["verify"]["runtime"]
    assert open_denoiser(b.model_path, "openvino").inner.hint == "f32"
    assert 1e-7 < b.report["verify"]["max_rel_error"] <= 2e-2  # weights really are rounded
    xml = b.model_path.read_text()
    assert 'element_type="f16"' in xml


@needs("tflite")
def test_tflite_fp16_and_int8_shrink_the_file_and_stay_close(tmp_path_factory, tmp_path):
    """The quantizer step of lower_tflite, on a copy of the battery's fp32 conversion."""
    import shutil

    from edgediff.compiler.verify import BOUNDS, verify
    from edgediff.lower.tflite import _quantize

    b = battery_bundle("tflite", tmp_path_factory)
    spec = load_source("tiny_models:tiny_unet")
    sizes, errors = {"fp32": b.model_path.stat().st_size}, {}
    for p in ("fp16", "int8"):
        path = tmp_path / f"{p}.tflite"
        shutil.copy(b.model_path, path)
        _quantize(path, p)
        sizes[p] = path.stat().st_size
        errors[p] = verify(spec, open_denoiser(path, "tflite"), precision=p)["max_rel_error"]
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    # BOUNDS["int8"] (0.1) bounds dynamic-range int8 weight rounding, fixed at conversion; XNNPACK's
    # AVX2 and VNNI kernels differ by rounding of exact int32 sums, far below it
    assert 0 < errors["fp16"] < errors["int8"] <= BOUNDS["int8"]


class _TinyNet:
    """A three-input program small enough to convert in a second (compression unit test)."""

    @staticmethod
    def mlmodel(ct):
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(1, 64, 3, padding=1)
                self.emb = torch.nn.Embedding(5, 64)
                self.out = torch.nn.Conv2d(64, 1, 3, padding=1)

            def forward(self, sample, timestep, class_labels):
                h = self.conv(sample) * timestep[:, None, None, None] + self.emb(class_labels)[:, :, None, None]
                return self.out(h)

        args = (torch.randn(2, 1, 8, 8), torch.ones(2), torch.zeros(2, dtype=torch.int64))
        ep = torch.export.export(Net().eval(), args).run_decompositions()
        return ct.convert(
            ep,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS17,
            inputs=[
                ct.TensorType(name="sample", shape=(2, 1, 8, 8), dtype=np.float32),
                ct.TensorType(name="timestep", shape=(2,), dtype=np.float32),
                ct.TensorType(name="class_labels", shape=(2,), dtype=np.int32),
            ],
            outputs=[ct.TensorType(name="eps", dtype=np.float32)],
        )


@pytest.mark.parametrize(
    "weights, op", [("int8", "constexpr_affine_dequantize"), ("palette4", "constexpr_lut_to_dense")]
)
@needs("coreml")
def test_coreml_weight_compression_present(weights, op, tmp_path):
    import coremltools as ct

    from edgediff.lower.coreml import _compress, structural_check
    from edgediff.runtimes.backends import quiet_output

    out = tmp_path / "c.mlpackage"
    with quiet_output():
        plain = _TinyNet.mlmodel(ct)
        _compress(ct, plain, weights).save(str(out))
    rec = structural_check(out, expect_inputs=["sample", "timestep", "class_labels"], weights=weights)
    assert rec["compression_ops"].get(op, 0) > 0
    assert rec["numerics"].startswith("not run: needs macOS")
    with pytest.raises(EdgediffError, match=f"weight compression {weights} was asked for but"):
        plain.save(str(tmp_path / "p.mlpackage"))
        structural_check(
            tmp_path / "p.mlpackage", expect_inputs=["sample", "timestep", "class_labels"], weights=weights
        )


def test_missing_extra_is_named(monkeypatch):
    from edgediff.runtimes import backends

    with pytest.raises(
        EdgediffError, match=r"optional package 'no_such_converter_xyz'.*pip install 'edgediff\[tflite\]'"
    ):
        backends.require("no_such_converter_xyz", "tflite", "tflite")
