"""fp16 VAE decoders that overflow (lower/components.py: fp16_overflow, keep_fp32_nodes).

A tiny AutoencoderKL whose mid-block conv is scaled by 1e5: its activations pass 65504 (fp16's
largest finite value) and the GroupNorm after it brings them back, so the decoder's fp32 output
is ordinary. ONNX keeps the overflowing nodes fp32 and the record names them; OpenVINO IR and
TFLite refuse in one line naming the node. A few seconds each (one export, cached).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch

from edgediff.compiler.capture import VaeDecode
from edgediff.core.errors import EdgediffError
from edgediff.lower.components import (
    FP16_MAX,
    Component,
    _named,
    _run_all,
    export_component,
    fp16_overflow,
    lower_component,
)
from edgediff.lower.onnx import to_fp16
from edgediff.runtimes.backends import Graph

SCALE = 1e5


def _decoder(scale: float) -> Component:
    import diffusers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    ).eval()
    conv = vae.decoder.mid_block.resnets[0].conv1
    with torch.no_grad():
        conv.weight.mul_(scale)
        conv.bias.mul_(scale)
    module = VaeDecode(vae, 0.18215).eval()
    example = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    return Component("vae_decoder", module, (example,), ("latents",), ("image",))


@pytest.fixture(scope="module")
def hot():
    return _decoder(SCALE)


@pytest.fixture(scope="module")
def calib():
    return (torch.randn((8, 4, 8, 8), generator=torch.Generator().manual_seed(99)) * 4).numpy()


def _reference(c: Component, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return c.module(torch.from_numpy(x)).numpy()


def test_scaled_decoder_overflows_fp16_but_not_fp32(hot, calib, tmp_path):
    """The case is real: the fp32 graph has activations past 65504, its output is finite, and the
    plain fp16 graph (every tensor held in fp16) is not."""
    proto = _named(export_component(hot, tmp_path / "x.onnx", "test"))
    past = fp16_overflow(proto, {"latents": calib})
    assert past and min(past.values()) > FP16_MAX
    convs = [n for n in proto.graph.node if n.name in past and n.op_type == "Conv"]
    assert len(convs) == 1  # the scaled conv, not the whole decoder
    assert len(past) < len(proto.graph.node) // 4
    ref = _reference(hot, calib)
    assert np.isfinite(ref).all() and np.abs(ref).max() < 10
    plain = _run_all(to_fp16(proto), {"latents": calib}, [n.output[0] for n in proto.graph.node] + ["image"])
    assert not np.isfinite(plain["image"]).all()


def test_unscaled_decoder_has_no_overflow(calib, tmp_path):
    c = _decoder(1.0)
    low = lower_component(c, tmp_path, fmt="onnx", precision="fp16", source="test", calib=calib)
    assert low.record["fp16"]["fp32_nodes"] == []
    assert low.record["fp16"]["kept"] == "none: no activation past the fp16 range"


def test_onnx_fp16_keeps_the_overflowing_nodes_fp32(hot, calib, tmp_path):
    low = lower_component(hot, tmp_path, fmt="onnx", precision="fp16", source="test", calib=calib)
    rec = low.record["fp16"]
    assert rec["fp32_nodes"] and all(v > FP16_MAX for v in rec["max_abs"].values())
    assert "kept in fp32" in rec["kept"] and rec["max_rel_error"] <= 2e-2
    saved = onnx.load(str(low.file))
    f16 = onnx.TensorProto.FLOAT16
    assert any(i.data_type == f16 for i in saved.graph.initializer)  # the rest is fp16
    conv = next(n for n in saved.graph.node if n.name in rec["fp32_nodes"] and n.op_type == "Conv")
    # the kept conv reads fp32 weights and writes an fp32 value straight to the next kept node
    readers = [n for n in saved.graph.node if conv.output[0] in n.input]
    assert readers and all(n.name in rec["fp32_nodes"] or n.op_type == "Cast" for n in readers)
    assert not [n for n in readers if n.op_type == "Cast" and n.name not in rec["fp32_nodes"]][1:]
    # on every tensor held at its graph type, the output is finite and within the fp16 bound
    got = _run_all(saved, {"latents": calib}, [o for n in saved.graph.node for o in n.output])
    assert all(np.isfinite(v).all() for v in got.values())
    ref = _reference(hot, calib)
    out = Graph(low.file, "onnx")(calib)
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 2e-2


def test_no_bound_reachable_is_refused_with_the_reason(hot, calib, tmp_path):
    with pytest.raises(EdgediffError, match=r"no fp16 overflow left to keep in fp32 .*compile --precision fp32"):
        lower_component(hot, tmp_path, fmt="onnx", precision="fp16", source="test", calib=calib, bound=1e-9)
    assert not (tmp_path / "vae_decoder.onnx").exists()


@pytest.mark.parametrize("fmt, module", [("openvino", "openvino"), ("tflite", "litert_torch")])
def test_formats_without_per_node_precision_refuse_naming_the_node(hot, calib, tmp_path, fmt, module):
    pytest.importorskip(module)
    with pytest.raises(EdgediffError) as e:
        lower_component(hot, tmp_path, fmt=fmt, precision="fp16", source="test", calib=calib)
    msg = str(e.value)
    assert "component vae_decoder: fp16 overflows" in msg and f"format {fmt} cannot keep nodes in fp32" in msg
    assert "node_conv2d" in msg or "Conv" in msg
    assert "\n" not in msg and not list(tmp_path.glob("vae_decoder.*"))


def test_attention_mask_extremes_are_not_an_overflow():
    """CLIP's causal mask adds float32's most negative value; fp16 conversion clamps it to -65504,
    which masks as well. A value past 65504 that is not such an extreme is an overflow."""
    from onnx import TensorProto, helper, numpy_helper

    mask = numpy_helper.from_array(np.array([0.0, np.finfo(np.float32).min], np.float32), "mask")
    big = numpy_helper.from_array(np.array(10.0, np.float32), "big")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "mask"], ["masked"], name="add_mask"),
            helper.make_node("Mul", ["masked", "big"], ["y"], name="scale"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [mask, big],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert fp16_overflow(proto, {"x": np.array([1.0, 1.0], np.float32)}) == {}
    found = fp16_overflow(proto, {"x": np.array([1e4, 1.0], np.float32)})  # 1e4 * 10 > 65504
    assert found == {"scale": pytest.approx(1e5)}


@pytest.mark.slow
def test_compile_fp16_keeps_the_layers_and_the_report_names_them(text_folders, tmp_path, capsys):
    """The whole compile (slow: one text pipeline compile, ~60 s on 2 shared cores): the tiny SD 1.x
    folder with its VAE's mid-block conv scaled by 1e5; ONNX fp16 keeps those nodes fp32 and verifies,
    an OpenVINO fp16 target refuses in one line and writes nothing."""
    import shutil

    import diffusers

    from edgediff.cli.main import main
    from edgediff.compiler.pipeline import compile_model
    from edgediff.compiler.recipe import Recipe

    folder = tmp_path / "sd1"
    shutil.copytree(text_folders["sd1"], folder)
    vae = diffusers.AutoencoderKL.from_pretrained(str(folder / "vae"))
    conv = vae.decoder.mid_block.resnets[0].conv1
    with torch.no_grad():
        conv.weight.mul_(SCALE)
        conv.bias.mul_(SCALE)
    vae.save_pretrained(str(folder / "vae"))
    b = compile_model(str(folder), tmp_path / "b", recipe=Recipe(sampler="ddim", steps=4, precision="fp16"))
    rec = b.report["lower"]["components"]["vae_decoder"]["fp16"]
    assert any(n.startswith("node_conv2d") for n in rec["fp32_nodes"]) and rec["max_abs"]
    assert b.report["lower"]["components"]["text_encoder"]["fp16"]["fp32_nodes"] == []
    v = b.report["verify"]
    assert v["components"]["vae_decoder"]["max_rel_error"] <= 2e-2 and v["images"]["max_abs_error"] <= 5e-2
    if importlib.util.find_spec("openvino"):
        out = tmp_path / "npu"
        args = ["compile", str(folder), "--target", "intel-core-ultra-npu", "--sampler", "ddim", "--steps", "4"]
        assert main([*args, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "fp16 overflows" in err and "format openvino cannot keep nodes in fp32" in err
        assert len(err.splitlines()) == 1 and not out.exists()
