"""Graphs over protobuf's 2 GB limit keep their weights in NAME.onnx.data (lower/onnx.py).

A real-size model takes minutes to export on 2 cores, so these tests lower the threshold
(EXTERNAL_DATA_BYTES) to 0: every graph of a small model then takes the large-model path
(external weights file, no export cache, no shape re-inference, fp16 without shape inference),
and its images must equal the inline graph's. The loader's box rule covers the data file:
the location an initializer names must be a file the manifest lists, and the tensor must lie
within its bytes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import onnx
import pytest

import edgediff
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.lower import onnx as lower_onnx
from edgediff.runtimes.bundle import load_bundle, sha256_path

SOURCE = "tiny_models:tiny_unet"
RECIPE = Recipe(sampler="ddim", steps=5, guidance=2.0)  # conftest's tiny_bundle


@pytest.fixture(scope="module")
def pair(tiny_bundle, tmp_path_factory):
    """The tiny UNet for host-cpu, inline (conftest) and with external data (threshold 0)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(lower_onnx, "EXTERNAL_DATA_BYTES", 0)
    try:
        large = compile_model(SOURCE, tmp_path_factory.mktemp("xdata") / "large", recipe=RECIPE)
    finally:
        mp.undo()
    return tiny_bundle, large


def test_large_graph_writes_one_listed_data_file_and_same_images(pair):
    inline, large = pair
    files = large.manifest["files"]
    assert "model/denoiser.onnx.data" in files and "model/denoiser.onnx.data" not in inline.manifest["files"]
    proto = onnx.load(str(large.root / "model/denoiser.onnx"), load_external_data=False)
    external = [i for i in proto.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(
        {e.key: e.value for e in i.external_data}["location"] == "denoiser.onnx.data" for i in external
    )
    # every tensor over 1 KiB lives in the data file, which holds exactly their bytes
    inline_big = [
        i.name
        for i in proto.graph.initializer
        if i.data_location != onnx.TensorProto.EXTERNAL and len(i.raw_data) > 1024
    ]
    assert not inline_big
    lengths = [int({e.key: e.value for e in i.external_data}["length"]) for i in external]
    assert sum(lengths) <= files["model/denoiser.onnx.data"]["bytes"] < sum(lengths) + 4096 * len(lengths)
    assert large.report["verify"]["max_rel_error"] <= 1e-4
    a = edgediff.generate(inline, n=4, seed=2)
    b = edgediff.generate(large, n=4, seed=2)
    assert np.array_equal(a, b)


def test_fp16_and_openvino_read_the_data_file(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setattr(lower_onnx, "EXTERNAL_DATA_BYTES", 0)
    half = compile_model(SOURCE, tmp_path / "half", recipe=replace(RECIPE, precision="fp16"))
    assert half.report["verify"]["max_rel_error"] <= 2e-2
    ov = compile_model(SOURCE, tmp_path / "ov", target="intel-core-ultra-npu", recipe=RECIPE)
    assert ov.manifest["model"]["file"].endswith(".xml")
    assert np.isfinite(edgediff.generate(ov, n=2, seed=0)).all()


def _rewrite(root, edit):
    """Apply `edit` to every external tensor of model/denoiser.onnx; re-hash it in the manifest."""
    path = root / "model/denoiser.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            edit(init)
    onnx.save(proto, str(path))
    m = json.loads((root / "manifest.json").read_text())
    m["files"]["model/denoiser.onnx"] = {"sha256": sha256_path(path), "bytes": path.stat().st_size}
    (root / "manifest.json").write_text(json.dumps(m))


def _set(init, key, value):
    for e in init.external_data:
        if e.key == key:
            e.value = value
            return
    e = init.external_data.add()
    e.key, e.value = key, value


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda i: _set(i, "location", "../outside.data"), "is not a file of the bundle"),
        (lambda i: _set(i, "location", "/etc/passwd"), "is not a file of the bundle"),
        (lambda i: _set(i, "location", "../scheduler.json"), "is not a file of the bundle"),
        (lambda i: _set(i, "offset", str(1 << 40)), "reads bytes up to"),
    ],
    ids=["parent", "absolute", "unlisted-relative", "past-the-end"],
)
def test_data_file_kept_inside_the_box(pair, tmp_path, edit, expect):
    root = tmp_path / "b"
    shutil.copytree(pair[1].root, root)
    (tmp_path / "outside.data").write_bytes(b"\0" * 64)
    _rewrite(root, edit)
    with pytest.raises(EdgediffError) as e:
        load_bundle(root, verify=False)
    msg = str(e.value)
    assert expect in msg and "model/denoiser.onnx" in msg and "\n" not in msg
