"""The C text-to-image pipeline (csrc/src/pipeline.c, edgediff-run --prompt) against the Python one.

One tiny SD 1.x bundle (tests/tiny_pipelines.py, DDIM 8 steps, guidance 7.5) compiled per module:
- edgediff-run (OpenVINO f32: text encoder, denoiser, VAE decoder) gives the images of
  edgediff.generate (ONNX Runtime; the C and the Python loop) for the same prompt, negative prompt,
  guidance and seed, within 1e-4 on [0, 1]; the PNG grid equals `edgediff generate`'s to one grey level;
- --low-memory gives the same bits, and --bench reports peak RSS in both modes;
- --tokenize equals transformers' CLIPTokenizer on the bundle's tokenizer;
- bad input is one line naming the file / field / option, and no output file.
The compile takes ~40-70 s on the shared 2-core host, hence the slow mark on the bundle tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import tiny_pipelines as tp

import edgediff
from edgediff.cli.main import main
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.runtimes.backends import load_tokenizer
from edgediff.runtimes.bundle import load_bundle
from edgediff.runtimes.images import to_unit

pytest.importorskip("openvino")
pytestmark = pytest.mark.slow  # one compile of a text pipeline per module (~40-70 s on 2 shared cores)

TOL = 1e-4  # on [0, 1]: OpenVINO and ONNX Runtime kernels differ by ~1e-7..1e-6 per call (test_c_runner.py)
PROMPT = "a handwritten 7"


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    root = tmp_path_factory.mktemp("c_text")
    folder = tp.sd1_folder(root / "sd1")
    return compile_model(str(folder), root / "bundle", recipe=Recipe(sampler="ddim", steps=8, guidance=7.5))


@pytest.fixture(scope="module")
def exe(c_runner_build):
    return c_runner_build / "edgediff-run"


def run(exe, *args):
    return subprocess.run(
        [str(exe), *[a if isinstance(a, bytes) else str(a) for a in args]], capture_output=True, timeout=180
    )


def c_images(exe, bundle, out, *args) -> np.ndarray:
    r = run(exe, bundle.root, "--raw", out, *args)
    assert r.returncode == 0, r.stderr.decode()
    return np.fromfile(out, np.float32).reshape(-1, 3, 16, 16)


@pytest.mark.parametrize(
    "n, extra, kw",
    [
        (2, (), {}),
        (1, ("--negative-prompt", "thick", "--guidance", "3"), {"negative_prompt": "thick", "guidance": 3.0}),
        (1, ("--guidance", "1"), {"guidance": 1.0}),
    ],
)
def test_c_pipeline_images_equal_python(sd1, exe, tmp_path, n, extra, kw):
    c = c_images(exe, sd1, tmp_path / "c.f32", "--prompt", PROMPT, "-n", n, "--seed", 5, *extra)
    py_c = edgediff.generate(sd1, prompt=PROMPT, n=n, seed=5, **kw)
    py_p = edgediff.generate(sd1, prompt=PROMPT, n=n, seed=5, loop="python", **kw)
    assert c.shape == py_c.shape == (n, 3, 16, 16)
    assert c.std() > 0.05  # real images, so the bound below means something
    assert np.abs(to_unit(c) - to_unit(py_c)).max() <= TOL
    assert np.abs(to_unit(c) - to_unit(py_p)).max() <= TOL


def test_png_equals_edgediff_generate(sd1, exe, tmp_path, capsys):
    from PIL import Image

    r = run(exe, sd1.root, "--prompt", PROMPT, "-n", 4, "--seed", 2, "-o", tmp_path / "c.png")
    assert r.returncode == 0, r.stderr.decode()
    assert (
        main(["generate", str(sd1.root), "--prompt", PROMPT, "-n", "4", "--seed", "2", "-o", str(tmp_path / "p.png")])
        == 0
    )
    a = np.asarray(Image.open(tmp_path / "c.png"), np.int16)
    b = np.asarray(Image.open(tmp_path / "p.png"), np.int16)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_low_memory_gives_the_same_bits_and_bench_reports_peak_rss(sd1, exe, tmp_path):
    normal = c_images(exe, sd1, tmp_path / "n.f32", "--prompt", PROMPT, "-n", 2, "--seed", 9)
    low = c_images(exe, sd1, tmp_path / "l.f32", "--prompt", PROMPT, "-n", 2, "--seed", 9, "--low-memory")
    assert np.array_equal(normal, low)
    for mode in ((), ("--low-memory",)):
        js = tmp_path / f"b{len(mode)}.json"
        r = run(exe, sd1.root, "--prompt", PROMPT, "--bench", "--runs", 2, "--json", js, *mode)
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode()
        for line in ("tokenize", "text enc", "per step", "decode", "first run", "warm runs", "load"):
            assert f"  {line}" in out, out
        assert re.search(r"peak RSS +\d+\.\d MB", out)
        info = json.loads(js.read_text())
        assert info["low_memory"] == bool(mode) and info["peak_rss_mb"] > 0 and len(info["step_ms"]) == 2 * 8
        # low memory loads the three graphs in every run; the normal mode loaded them at init
        assert (min(info["load_ms"]) > 0) == bool(mode)


def test_tokenize_equals_clip_tokenizer(sd1, exe):
    tok = load_tokenizer(sd1.root / "tokenizer")
    for text in [
        "a handwritten 7",
        "",
        "  The DIGIT  one, in thin strokes!!",
        "sevenseven 12345 é ü 日本",
        "one " * 60,
    ]:
        r = run(exe, sd1.root, "--tokenize", text)
        assert r.returncode == 0, r.stderr.decode()
        want = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert json.loads(r.stdout) == want


def _copy(sd1, tmp_path, name="b"):
    dst = tmp_path / name
    shutil.copytree(sd1.root, dst)
    return dst


def _edit(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _width(d):
    d["components"]["text_encoder"]["outputs"][0]["shape"][-1] = 48


def test_bad_input_is_one_line_and_writes_nothing(sd1, exe, tmp_path, tiny_bundle):
    out = tmp_path / "g.png"
    cases = [
        (
            (sd1.root, b"--prompt", b"\xffbad", "-o", out),
            2,
            "prompt 0: the text is not valid UTF-8: the sequence at byte 0",
        ),
        (
            (sd1.root, "--prompt", PROMPT, "--negative-prompt", b"ok\xc3", "-o", out),
            2,
            "the negative prompt: the text is not valid UTF-8",
        ),
        ((sd1.root, "-o", out), 2, "a text-to-image bundle needs --prompt TEXT"),
        ((sd1.root, "--prompt", PROMPT, "--label", 1, "-o", out), 2, "--label given, but this bundle takes prompts"),
        ((sd1.root, "--prompt", PROMPT, "--guidance", "-1", "-o", out), 2, "--guidance must be a finite number >= 0"),
        ((tiny_bundle.root, "--prompt", PROMPT, "-o", out), 2, "are for text-to-image bundles"),
    ]
    for args, code, message in cases:
        r = run(exe, *args)
        err = r.stderr.decode()
        first, *rest = err.splitlines()
        # one line; an option's refusal is followed by the usage text, as for every runner option
        assert r.returncode == code and message in first and (not rest or rest[0].startswith("usage:")), (args, err)
        assert not out.exists()


def test_damaged_text_bundles_refused_alike_by_both_loaders(sd1, exe, tmp_path, tiny_bundle):
    """Each damage is refused by the C loader (one line, exit 1, no image) and, for the fields, by
    load_bundle with the same message."""
    b = _copy(sd1, tmp_path, "width")
    _edit(b / "manifest.json", _width)
    msg = "components.text_encoder.outputs[0].shape ends in 48; conditioning.shape says width 32"
    b2 = _copy(sd1, tmp_path, "extra")
    (b2 / "tokenizer" / "special_tokens_map.json").write_text("{}")
    b3 = _copy(sd1, tmp_path, "latent")
    _edit(b3 / "scheduler.json", lambda d: d["latent"].update(scaling_factor=0))
    b4 = _copy(sd1, tmp_path, "vocab")  # a vocabulary without the special tokens (checked by the tokenizer)
    v = json.loads((b4 / "tokenizer" / "vocab.json").read_text())
    del v["<|startoftext|>"]
    (b4 / "tokenizer" / "vocab.json").write_text(json.dumps(v))
    more = [  # (file, edit, message): field damages both loaders refuse with the same words
        ("manifest.json", lambda d: d["components"].update(extra={}), "components has unknown key 'extra'"),
        (
            "manifest.json",
            lambda d: d["components"]["vae_decoder"].update(format="openvino"),
            "components.vae_decoder.format is 'openvino'; the denoiser's is 'onnx'",
        ),
        (
            "manifest.json",
            lambda d: d["components"]["tokenizer"].update(max_length=76),
            "components.tokenizer.max_length is 76; conditioning.shape says 77",
        ),
        (
            "manifest.json",
            lambda d: d["model"]["inputs"][2]["shape"].__setitem__(2, 16),
            "model.inputs[2].shape ends in 16; conditioning.shape says width 32",
        ),
        (
            "manifest.json",
            lambda d: d["components"]["text_encoder"].pop("inputs"),
            "components.text_encoder is missing the field 'inputs'",
        ),
        ("scheduler.json", lambda d: d.pop("conditioning"), "field conditioning must be 'text' for a text bundle"),
        (
            "scheduler.json",
            lambda d: d["latent"].update(image_shape=[3, 32, 32]),
            "components.vae_decoder.outputs[0].shape is [?, 3, 16, 16]; scheduler.json latent.image_shape is [3, 32, 32]",
        ),
        ("scheduler.json", lambda d: d["latent"].update(shape=[4, 8]), "latent.shape must be 3 positive integers"),
    ]
    cases = []
    for k, (name, fn, message) in enumerate(more):
        d = _copy(sd1, tmp_path, f"more{k}")
        _edit(d / name, fn)
        cases.append((d, message, True))
    cls = tmp_path / "class"
    shutil.copytree(tiny_bundle.root, cls)
    _edit(cls / "manifest.json", lambda d: d.update(components={}))
    cases += [
        (cls, "field components is set but conditioning.kind is 'class', not 'text'", True),
        (b, msg, True),
        (
            b2,
            "special_tokens_map.json: in the tokenizer folder but not listed in manifest.json components.tokenizer.files",
            True,
        ),
        (b3, "scheduler.json: latent.scaling_factor must be a finite number > 0", True),
        (b4, 'tokenizer/vocab.json: bos_token "<|startoftext|>" is not in the vocabulary', False),
    ]
    for root, message, python_too in cases:
        out = tmp_path / "g.png"
        r = run(exe, root, "--prompt", PROMPT, "-o", out, "--no-verify")
        err = r.stderr.decode()
        assert r.returncode == 1 and message in err and err.count("\n") == 1, err
        assert not out.exists()
        if python_too:
            with pytest.raises(EdgediffError, match=re.escape(message)):
                load_bundle(root, verify=False)
    r = run(exe, b4, "--prompt", PROMPT, "-o", tmp_path / "g.png")  # verified: the hash catches it first
    assert r.returncode == 1 and "vocab.json: sha256" in r.stderr.decode()


def test_embedding_example_writes_the_python_image(sd1, c_runner_build, tmp_path):
    """csrc/examples/text2img.c (a complete program over the library and the OpenVINO backend)."""
    import sys
    from pathlib import Path

    from PIL import Image

    c_dir = Path(__file__).resolve().parents[1] / "csrc"
    r = subprocess.run(
        ["make", "-s", "-C", str(c_dir), "example-text", f"BUILD={c_runner_build}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for extra in ((), ("--low-memory",)):
        out = tmp_path / f"x{len(extra)}.ppm"
        r = run(c_runner_build / "text2img", sd1.root, PROMPT, 3, out, *extra)
        assert r.returncode == 0, r.stderr.decode()
        got = np.asarray(Image.open(out), np.int16)
        want = (to_unit(edgediff.generate(sd1, prompt=PROMPT, n=1, seed=3))[0] * 255 + 0.5).astype(np.int16)
        assert got.shape == (16, 16, 3) and np.abs(got - want).max() <= 1


def test_a_signal_after_the_pipeline_is_freed_is_handled(sd1, c_runner_build):
    """csrc/tests/ov_signal_after_free.c: run the pipeline on OpenVINO, free it, then handle SIGTERM
    on the alternate signal stack. With one ov_core_t per backend this crashed (SIGSEGV): the cores,
    freed in the order they were made, left the thread on a signal stack OpenVINO had freed."""
    import sys
    from pathlib import Path

    c_dir = Path(__file__).resolve().parents[1] / "csrc"
    r = subprocess.run(
        ["make", "-s", "-C", str(c_dir), "ov-signal", f"BUILD={c_runner_build}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(c_runner_build / "ov_signal_after_free", sd1.root)
    assert r.returncode == 0 and r.stdout.decode().strip() == "handled", (r.returncode, r.stderr.decode())


def test_c_pipeline_from_python_equals_generate_text_bit_for_bit(sd1, tiny_bundle):
    """_cruntime.generate_text (edd_pipeline_generate: the C tokenizer, embedding rows, guided loop and
    decode) over the same ONNX Runtime graphs as runner.generate_text: the same bits, so the same PNG."""
    from edgediff.runtimes import _cruntime
    from edgediff.runtimes.runner import SamplingSetup, generate_text, text_pipeline

    pipe, setup = text_pipeline(sd1), SamplingSetup.from_bundle(sd1)
    prompts = [PROMPT, "seven", "the digit one in thin strokes"]
    for kw in ({}, {"negative_prompt": "thick", "guidance": 3.0}):
        ref = generate_text(pipe, setup, prompts=prompts, seed=5, **kw)
        for low in (False, True):
            got = _cruntime.generate_text(
                str(sd1.root), prompts, pipe.encode, pipe.denoise, pipe.decode, seed=5, low_memory=low, **kw
            )
            assert got.dtype == np.float32 and np.array_equal(got, ref)

    def broken(x, t, cond):
        raise ZeroDivisionError("from the denoiser")

    with pytest.raises(ZeroDivisionError, match="from the denoiser"):  # a callback's error propagates unchanged
        _cruntime.generate_text(str(sd1.root), prompts, pipe.encode, broken, pipe.decode)
    with pytest.raises(EdgediffError, match="not a text-to-image bundle"):
        _cruntime.generate_text(str(tiny_bundle.root), prompts, pipe.encode, broken, pipe.decode)
