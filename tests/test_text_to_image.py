"""Text-to-image pipelines (model_index.json folders) from source to images.

Fast: loading the tiny SD 1.x / SD 2.x folders of tiny_pipelines.py, each refused layout (one line,
exit 2, nothing written), the scheduler fields against diffusers' own schedulers, guidance never
changed silently. Slow (one compile each, ~40 s): the bundle's images against diffusers'
StableDiffusionPipeline (fp32, max abs 1e-3 on [0, 1]), the Python and C loops, generate's CLI,
the closed box over the new files (the C runner's text pipeline: tests/test_c_text.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tiny_pipelines as tp

import edgediff
from edgediff.cli.main import main, read_prompts
from edgediff.compiler.capture import DIGITS_SD, load_source, plan_options, recipe_defaults
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.compiler.text import reference_images, reference_scheduler
from edgediff.core.errors import EdgediffError
from edgediff.runtimes.bundle import load_bundle
from edgediff.runtimes.images import to_unit
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.runner import SamplingSetup, TextPipeline, generate_text, text_pipeline
from edgediff.runtimes.samplers import get_solver

PROMPTS = ["a handwritten 7", "the digit one in thin strokes", "seven"]


@pytest.fixture
def folders(text_folders):
    return text_folders


@pytest.fixture
def sd1_copy(folders, tmp_path):
    dst = tmp_path / "sd1"
    shutil.copytree(folders["sd1"], dst)
    return dst


# ---- source --------------------------------------------------------------------------------------


def test_folders_load_as_text_pipelines(folders):
    m1, m2 = load_source(str(folders["sd1"])), load_source(str(folders["sd2"]))
    for m in (m1, m2):
        assert m.conditioning.kind == "text" and m.conditioning.shape == (77, 32)
        assert m.input_names() == ["sample", "timestep", "encoder_hidden_states"]
        assert m.text.latent_shape == (4, 8, 8) and m.text.image_shape == (3, 16, 16)
        assert m.text.scaling_factor == pytest.approx(0.18215)
        assert set(m.text.tokenizer_files) >= {"vocab.json", "merges.txt"}
    assert m1.schedule.prediction_type == "epsilon" and m2.schedule.prediction_type == "v_prediction"
    assert recipe_defaults(str(folders["sd1"])) == {"spacing": "leading", "guidance": 7.5}
    assert recipe_defaults(str(folders["sd2"])) == {"spacing": "trailing", "guidance": 7.5}


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp-2m", "euler"])
@pytest.mark.parametrize("which", ["sd1", "sd2"])
def test_plan_timesteps_equal_diffusers_scheduler_from_the_pipeline_config(folders, which, sampler):
    """steps_offset, timestep_spacing, set_alpha_to_one, prediction_type and beta_schedule of the
    folder's scheduler_config.json reach the plan as diffusers' own scheduler reads them."""
    m = load_source(str(folders[which]))
    recipe = Recipe(sampler=sampler, steps=10, **recipe_defaults(str(folders[which])))
    opts = plan_options(m, sampler)
    assert opts["steps_offset"] == 1
    plan = get_solver(sampler).plan(m.schedule, 10, spacing=recipe.spacing, **opts)
    ref = reference_scheduler(m, recipe)
    ref.set_timesteps(10)
    np.testing.assert_array_equal(np.asarray(plan.timesteps), ref.timesteps.numpy().round().astype(np.int64))
    np.testing.assert_allclose(m.schedule.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-6)
    if sampler == "ddim":
        assert plan.params["final_alpha_cumprod"] == pytest.approx(float(ref.final_alpha_cumprod))


REFUSED = {
    "sdxl text_encoder_2": (
        ("model_index.json", {"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}),
        "field text_encoder_2",
    ),
    "sdxl tokenizer_2": (("model_index.json", {"tokenizer_2": ["transformers", "CLIPTokenizer"]}), "field tokenizer_2"),
    "controlnet": (("model_index.json", {"controlnet": ["diffusers", "ControlNetModel"]}), "field controlnet"),
    "t5": (
        ("model_index.json", {"text_encoder": ["transformers", "T5EncoderModel"]}),
        "field text_encoder is 'T5EncoderModel'",
    ),
    "pipeline class": (
        ("model_index.json", {"_class_name": "PixArtAlphaPipeline"}),
        "field _class_name is 'PixArtAlphaPipeline'",
    ),
    "inpainting": (("unet/config.json", {"in_channels": 9}), "field in_channels is 9"),
    "sdxl added ids": (("unet/config.json", {"addition_embed_type": "text_time"}), "field addition_embed_type"),
    "vae class": (("vae/config.json", {"_class_name": "VQModel"}), "field _class_name is 'VQModel'"),
    "text width": (("text_encoder/config.json", {"hidden_size": 48}), "field hidden_size is 48"),
    "text encoder arch": (("text_encoder/config.json", {"architectures": ["T5EncoderModel"]}), "field architectures"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_layout_is_one_line_exit_2_nothing_written(sd1_copy, tmp_path, capsys, case):
    (file, change), expect = REFUSED[case]
    tp.edit_json(sd1_copy / file, **change)
    out = tmp_path / "b"
    assert main(["compile", str(sd1_copy), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    "remove, expect",
    [("vae", "vae: missing; model_index.json names component vae"), ("tokenizer/merges.txt", "merges.txt: missing")],
)
def test_missing_component_or_tokenizer_file(sd1_copy, tmp_path, remove, expect):
    p = sd1_copy / remove
    shutil.rmtree(p) if p.is_dir() else p.unlink()
    with pytest.raises(EdgediffError, match=expect):
        compile_model(str(sd1_copy), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_builtin_digits_sd_names_how_to_make_its_weights():
    if (DIGITS_SD / "model_index.json").is_file():
        assert load_source("builtin:digits-sd").conditioning.kind == "text"
    else:
        with pytest.raises(EdgediffError, match=r"weights missing .*edgediff zoo train digits-sd"):
            load_source("builtin:digits-sd")


@pytest.mark.parametrize(
    "recipe, target, expect",
    [
        (dict(precision="int8"), "host-cpu", "--precision int8: not yet for text-to-image"),
        (dict(weights="int8"), "host-cpu", "weight compression 'int8' is not available for format onnx"),
        (dict(quantize="w4"), "pixel-8", "target pixel-8: precision 'int4' is not supported"),
        (dict(precision="int8"), "iphone-15-pro", "--precision int8: not yet for text-to-image"),
    ],
)
def test_not_yet_done_for_text_refused_before_work(folders, tmp_path, recipe, target, expect):
    with pytest.raises(EdgediffError, match=expect):
        compile_model(str(folders["sd1"]), tmp_path / "b", target=target, recipe=Recipe(**recipe))
    assert not (tmp_path / "b").exists()


def test_guidance_is_never_changed_silently(tmp_path, capsys):
    """An unconditional model has no null condition: an asked-for scale is an error naming the flag."""
    from tiny_models import build_tiny_unet

    from edgediff.compiler.pipeline import _check_guidance
    from edgediff.core.schedule import make_schedule
    from edgediff.core.spec import DiffusersAdapter, ModelSpec

    spec = ModelSpec(
        DiffusersAdapter(build_tiny_unet(), "UNet2DModel", 1), make_schedule(100), (1, 8, 8), source="uncond"
    )
    with pytest.raises(EdgediffError, match=r"--guidance 2: uncond has conditioning 'none'"):
        compile_model(spec, tmp_path / "b", recipe=Recipe(guidance=2.0))
    assert not (tmp_path / "b").exists()
    assert _check_guidance(spec, Recipe(guidance=1.0)).guidance == 1.0


def test_unconditional_folder_guidance_flag_refused_by_the_cli(tmp_path, capsys):
    import diffusers

    folder = tmp_path / "uncond"
    cfg = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4)
    cfg |= dict(down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    diffusers.UNet2DModel(**cfg).save_config(folder)
    (folder / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    assert recipe_defaults(str(folder)) == {"guidance": 1.0}  # no --guidance: no guidance
    assert main(["compile", str(folder), "--guidance", "3", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "--guidance 3:" in err and "no null condition" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_prompts_file_not_utf8_names_file_and_offset(tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"a handwritten 7\n\xff bad\n")
    with pytest.raises(EdgediffError, match=r"p.txt: not UTF-8 text: invalid byte at offset 16"):
        read_prompts(str(f))
    f.write_text("one\n\n  seven  \n")
    assert read_prompts(str(f)) == ["one", "seven"]


def _torch_pipeline(m):
    """The runtime's TextPipeline over the source's PyTorch modules (no lowering: fast)."""
    import torch

    from edgediff.core.spec import torch_denoiser
    from edgediff.runtimes.backends import load_tokenizer

    def run(module):
        def f(x):
            with torch.inference_mode():
                return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

        return f

    t = m.text
    return TextPipeline(
        load_tokenizer(t.tokenizer_dir), t.max_length, run(t.text_encoder), torch_denoiser(m), run(t.vae_decoder)
    )


@pytest.mark.parametrize(
    "which, sampler, guidance",
    [("sd1", "ddim", 7.5), ("sd2", "dpmpp-2m", 5.0), ("sd2", "euler", 1.0), ("sd1-tiny-vae", "ddim", 3.0)],
)
def test_runtime_loop_over_pytorch_modules_equals_diffusers_pipeline(folders, tmp_path, which, sampler, guidance):
    """The runtime's text path (tokenizer, one text-encoder call, label -> embedding table, the C loop,
    decoder) against StableDiffusionPipeline on the same PyTorch modules; AutoencoderTiny too."""
    folder = tp.sd1_folder(tmp_path / "tiny", tiny_vae=True) if which == "sd1-tiny-vae" else folders[which]
    m = load_source(str(folder))
    recipe = Recipe(sampler=sampler, steps=5, **(recipe_defaults(str(folder)) | {"guidance": guidance}))
    plan = get_solver(sampler).plan(m.schedule, 5, spacing=recipe.spacing, **plan_options(m, sampler))
    setup = SamplingSetup(plan, guidance, m.conditioning.to_dict(), m.text.latent_shape)
    ours = to_unit(generate_text(_torch_pipeline(m), setup, prompts=PROMPTS[:2], seed=3))
    latents = NoiseSource(seed=3, streams=(0, 1)).draw(0, m.text.latent_shape)
    ref = reference_images(m, recipe, PROMPTS[:2], latents, guidance=guidance)
    assert ours.shape == ref.shape == (2, 16, 16, 3)
    assert np.abs(ours - ref).max() <= 1e-4


# ---- compiled bundles (slow) ------------------------------------------------------------------------


@pytest.fixture
def sd1_bundle(sd1_text_bundle):
    return sd1_text_bundle


@pytest.mark.slow
def test_sd1_bundle_matches_diffusers_pipeline(sd1_bundle):
    b = sd1_bundle
    files = b.manifest["files"]
    comps = b.manifest["components"]
    assert b.manifest["model"]["file"] == "model/denoiser.onnx"
    assert comps["text_encoder"]["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 77]}]
    assert comps["vae_decoder"]["outputs"][0]["shape"] == ["batch", 3, 16, 16]
    assert all(f in files for f in comps["tokenizer"]["files"]) and "tokenizer/vocab.json" in files
    assert b.scheduler["conditioning"] == "text"
    assert b.scheduler["latent"] == {
        "shape": [4, 8, 8],
        "scaling_factor": pytest.approx(0.18215),
        "image_shape": [3, 16, 16],
    }
    v = b.report["verify"]
    assert v["images"]["run"] and v["images"]["max_abs_error"] <= 1e-3
    assert all(c["max_rel_error"] <= 1e-4 for c in v["components"].values())
    assert b.report["plan"]["scheduler_options"] == {"steps_offset": 1, "set_alpha_to_one": False}
    assert b.report["model"]["forward_passes_per_step"] == 2


@pytest.mark.slow
def test_generate_loops_agree_and_latents_equal_diffusers(sd1_bundle, folders):
    b = sd1_bundle
    c = edgediff.generate(b, prompt=PROMPTS, seed=5)
    p = edgediff.generate(b, prompt=PROMPTS, seed=5, loop="python")
    assert c.shape == (3, 3, 16, 16) and np.abs(c - p).max() <= 1e-5
    assert c.std() > 0.05  # not a constant image: the comparison below means something
    g1 = edgediff.generate(b, prompt=PROMPTS, seed=5, guidance=1.0)
    assert np.abs(g1 - c).max() > 1e-2  # the override reaches the loop
    assert np.array_equal(edgediff.generate(b, prompt=PROMPTS, seed=5, guidance=7.5), c)
    latents = np.random.default_rng(0).standard_normal((3, 4, 8, 8)).astype(np.float32)
    ours = to_unit(edgediff.generate(b, prompt=PROMPTS, latents=latents, loop="python"))
    m = load_source(str(folders["sd1"]))
    ref = reference_images(m, Recipe(**b.manifest["recipe"] | {"precision": None}), PROMPTS, latents, guidance=7.5)
    assert np.abs(ours - ref).max() <= 1e-3
    with pytest.raises(EdgediffError, match="C loop draws itself"):
        edgediff.generate(b, prompt=PROMPTS, latents=latents)


@pytest.mark.slow
def test_negative_embedding_made_once_per_call_not_per_step(sd1_bundle):
    pipe = text_pipeline(sd1_bundle)
    rows = []
    inner = pipe.encode

    def encode(ids):
        rows.append(ids.shape[0])
        return inner(ids)

    setup = SamplingSetup.from_bundle(sd1_bundle)
    counted = type(pipe)(pipe.tokenizer, pipe.max_length, encode, pipe.denoise, pipe.decode)
    generate_text(counted, setup, prompts=PROMPTS, negative_prompt="thick", seed=0)
    assert rows == [len(PROMPTS) + 1]


@pytest.mark.slow
def test_generate_cli_npy_and_errors(sd1_bundle, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    npy, png = tmp_path / "x.npy", tmp_path / "g.png"
    args = ["generate", str(sd1_bundle.root), "--prompts", str(prompts), "--npy", str(npy), "-o", str(png)]
    assert main(args + ["--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_images"] == 3 and info["guidance"] == 7.5 and info["loop"] == "c"
    a = np.load(npy)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    np.testing.assert_allclose(a, to_unit(edgediff.generate(sd1_bundle, prompt=PROMPTS)), atol=1e-6)
    long = " ".join(["digit"] * 90)
    assert main(["generate", str(sd1_bundle.root), "--prompt", long, "-n", "1", "-o", str(tmp_path / "l.png")]) == 0
    assert "is 92 tokens; truncated to 77 as CLIP does" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xfe")
    assert main(["generate", str(sd1_bundle.root), "--prompts", str(bad), "-o", str(tmp_path / "n.png")]) == 2
    assert "offset 0" in capsys.readouterr().err and not (tmp_path / "n.png").exists()
    assert main(["generate", str(sd1_bundle.root), "-o", str(tmp_path / "n.png")]) == 2
    assert "exactly one of --prompt" in capsys.readouterr().err


@pytest.mark.slow
def test_closed_box_covers_components_and_tokenizer(sd1_bundle, tmp_path):
    def copy(name):
        dst = tmp_path / name
        shutil.copytree(sd1_bundle.root, dst)
        return dst

    d = copy("tok")
    (d / "tokenizer" / "vocab.json").write_text("{}")
    with pytest.raises(EdgediffError, match=r"vocab.json: sha256 .* does not match"):
        load_bundle(d)
    d = copy("unlisted")
    m = json.loads((d / "manifest.json").read_text())
    del m["files"]["tokenizer/merges.txt"]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(EdgediffError, match=r"components.tokenizer.files entry 'tokenizer/merges.txt'"):
        load_bundle(d, verify=False)
    d = copy("latent")
    s = json.loads((d / "scheduler.json").read_text())
    s["latent"]["shape"] = [4, 4, 4]
    (d / "scheduler.json").write_text(json.dumps(s))
    with pytest.raises(EdgediffError, match=r"scheduler.json: latent.shape is \[4, 4, 4\]"):
        load_bundle(d, verify=False)
    d = copy("outside")
    (d / "tokenizer" / "vocab.json").unlink()
    (d / "tokenizer" / "vocab.json").symlink_to(sd1_bundle.root / "tokenizer" / "vocab.json")
    with pytest.raises(EdgediffError, match="resolves outside the bundle"):
        load_bundle(d)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["host-cpu", "intel-core-ultra-npu", "pixel-8"])
def test_sd2_compiles_and_matches_diffusers(folders, tmp_path, target):
    """SD 2.x: v_prediction, trailing spacing (the folder's, through recipe_defaults), per-block heads;
    the default sampler (dpmpp-2m). OpenVINO IR with static shapes (fp16 on the NPU profile); TFLite
    fp16 with static shapes (pixel-8; litert-torch converts each graph: minutes on 2 cores)."""
    extra = {"intel-core-ultra-npu": "openvino", "pixel-8": "litert_torch"}.get(target)
    if extra:
        pytest.importorskip(extra)
    recipe = Recipe(steps=6, **recipe_defaults(str(folders["sd2"])))
    b = compile_model(str(folders["sd2"]), tmp_path / "b", target=target, recipe=recipe)
    im = b.report["verify"]["images"]
    assert im["run"] and im["scheduler"] == "DPMSolverMultistepScheduler"
    assert im["max_abs_error"] <= (1e-3 if b.manifest["recipe"]["precision"] == "fp32" else 5e-2)
    assert b.scheduler["plan"]["schedule"]["prediction_type"] == "v_prediction"
    x = edgediff.generate(b, prompt="seven", n=2, seed=1)
    assert x.shape == (2, 3, 16, 16) and np.isfinite(x).all()


# ---- W8A8 of the text-conditioned denoiser ----------------------------------------------------------


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"a handwritten 7\nseven\n\xff bad\n", r"line 3: not UTF-8 \(invalid byte at offset 22\)"),
        (b"\n  \n", r"no prompts \(one a line\)"),
        (b"one\nthe digit\x07 two\n", r"line 2: control character '\\x07'"),
        (None, r"cannot read the prompts file"),
    ],
)
def test_bad_calib_prompts_file_refused_in_one_line(folders, tmp_path, capsys, content, expect):
    f = tmp_path / "calib.txt"
    if content is not None:
        f.write_bytes(content)
    out = tmp_path / "b"
    args = ["compile", str(folders["sd1"]), "--quantize", "w8a8", "--calib-prompts", str(f), "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--calib-prompts {f}: " in err, err
    assert __import__("re").search(expect, err), err
    assert not out.exists()


def test_calib_prompts_need_w8a8_and_a_text_pipeline(tmp_path):
    with pytest.raises(EdgediffError, match=r"calib_prompts \(--calib-prompts\) is given but quantize"):
        Recipe(calib_prompts="p.txt")
    with pytest.raises(EdgediffError, match=r"calib \(--calib\) and calib_prompts \(--calib-prompts\) are both"):
        Recipe(quantize="w8a8", calib="c.npz", calib_prompts="p.txt")
    with pytest.raises(EdgediffError, match=r"--calib-prompts p.txt: tiny_models:tiny_unet is not a text-to-image"):
        compile_model("tiny_models:tiny_unet", tmp_path / "b", recipe=Recipe(quantize="w8a8", calib_prompts="p.txt"))
    assert not (tmp_path / "b").exists()


def test_text_calibration_is_the_runtime_trajectory_with_prompt_embeddings(folders, tmp_path):
    """Rows are what the runtime's text loop (generate_text) feeds the denoiser: image k with prompt
    k mod P, the CFG half the negative prompt's embedding, at the plan's timesteps (steps_offset
    included); the embeddings are the pipeline's text encoder's; save/load keeps them and checks them."""
    import torch

    from edgediff.quantize.calibration.record import CalibrationSet, record_trajectories
    from edgediff.runtimes.backends import load_tokenizer, tokenize

    m = load_source(str(folders["sd1"]))
    opts = plan_options(m, "ddim")
    prompts = PROMPTS[:2]
    calib = record_trajectories(
        m, sampler="ddim", steps=4, guidance=7.5, num_samples=3, seed=5, prompts=prompts, plan_options=opts
    )
    assert len(calib) == 4 * 3 * 2 and calib.emb.shape == (3, 77, 32)
    assert calib.meta.prompts == prompts and calib.meta.negative_prompt == ""
    ids = tokenize(load_tokenizer(m.text.tokenizer_dir), [*prompts, ""], 77)
    with torch.inference_mode():
        np.testing.assert_array_equal(calib.emb, m.text.text_encoder(torch.from_numpy(ids)).numpy())
    np.testing.assert_array_equal(calib.cond[:6], [0, 1, 0, 2, 2, 2])  # step 0: conditional half, then negative

    seen = []
    pipe = _torch_pipeline(m)

    def denoise(x, t, cond):
        seen.append((x.copy(), t.copy(), cond.copy()))
        return pipe.denoise(x, t, cond)

    plan = get_solver("ddim").plan(m.schedule, 4, spacing="leading", **opts)
    setup = SamplingSetup(plan, 7.5, m.conditioning.to_dict(), m.text.latent_shape)
    generate_text(
        type(pipe)(pipe.tokenizer, 77, pipe.encode, denoise, pipe.decode),
        setup,
        prompts=[*prompts, prompts[0]],
        seed=5,
        loop="python",
    )
    assert len(seen) == 4
    for i, (x, t, cond) in enumerate(seen):
        rows = np.nonzero(calib.step == i)[0]
        np.testing.assert_allclose(calib.x[rows], x, atol=1e-5)
        np.testing.assert_array_equal(calib.t[rows], t)
        np.testing.assert_allclose(calib.conditions(rows), cond, atol=1e-6)

    path = calib.save(tmp_path / "c.npz")
    back = CalibrationSet.load(path, model=m)
    np.testing.assert_array_equal(back.emb, calib.emb)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "emb"}
    np.savez(tmp_path / "no_emb.npz", **arrays)
    with pytest.raises(EdgediffError, match=r"no_emb.npz: array 'emb' is missing"):
        CalibrationSet.load(tmp_path / "no_emb.npz", model=m)


def test_calibrate_a_text_pipeline_from_the_cli(folders, tmp_path, capsys):
    """`edgediff calibrate PIPELINE --prompts FILE` records what record_trajectories does with those
    prompts and the scheduler's plan options (steps_offset); a class model refuses --prompts."""
    from edgediff.quantize.calibration.record import CalibrationSet, record_trajectories

    f = tmp_path / "p.txt"
    f.write_text("\n".join(PROMPTS[:2]) + "\n\n")
    out = tmp_path / "c.npz"
    args = ["calibrate", str(folders["sd1"]), "--steps", "4", "--guidance", "7.5", "--samples", "3"]
    assert main([*args, "--prompts", str(f), "--seed", "5", "-o", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 4 * 3 * 2 and info["prompts"] == 2 and info["truncated"] == 0
    m = load_source(str(folders["sd1"]))
    want = record_trajectories(
        m,
        sampler=Recipe().sampler,
        steps=4,
        guidance=7.5,
        num_samples=3,
        seed=5,
        prompts=PROMPTS[:2],
        plan_options=plan_options(m, Recipe().sampler),
    )
    got = CalibrationSet.load(out, model=m)
    assert got.meta.prompts == PROMPTS[:2] and got.timesteps.tolist() == want.timesteps.tolist()
    np.testing.assert_array_equal(got.x, want.x)
    np.testing.assert_array_equal(got.emb, want.emb)

    assert main(["calibrate", "tiny_models:tiny_unet", "--prompts", str(f), "-o", str(tmp_path / "d.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--prompts: tiny_models:tiny_unet is not a text-to-image pipeline" in err
    assert not (tmp_path / "d.npz").exists()


W8A8_TARGETS = {"host-cpu": None, "intel-core-ultra-npu": "openvino"}
# Images of the W8A8 bundle vs the FP32 bundle's (same prompts, seed and loop), PSNR on [0, 1]. On this
# host (AVX-512 VNNI, full 8-bit weights) the tiny SD 1.x pipeline reads ~30 dB on ONNX Runtime and
# OpenVINO; an AVX2-only CPU gets 7-bit weights (weight_range auto: no VNNI) and other int8 kernels, so
# the bound leaves ~10 dB (3x the RMS error) of room. Images of another seed read far below it.
W8A8_PSNR = 20.0


@pytest.mark.slow
@pytest.mark.parametrize("target", list(W8A8_TARGETS))
def test_w8a8_text_bundle_generates_close_to_fp32(sd1_bundle, folders, tmp_path, capsys, target):
    """W8A8 of the text-conditioned UNet (ONNX QDQ; OpenVINO IR from it), calibrated on the default
    prompts, verified (denoiser bound, components, PSNR against diffusers), run by `generate --prompt`."""
    if W8A8_TARGETS[target]:
        pytest.importorskip(W8A8_TARGETS[target])
    prompts = tmp_path / "calib.txt"
    prompts.write_text("\ufeffa handwritten 7\n\nthe digit one in thin strokes\r\nseven\n", encoding="utf-8")
    recipe = Recipe(sampler="ddim", steps=8, guidance=7.5, quantize="w8a8", calib_samples=6, calib_prompts=str(prompts))
    b = compile_model(str(folders["sd1"]), tmp_path / "q", target=target, recipe=recipe)
    m, r = b.manifest, b.report
    assert m["model"]["precision"] == "int8" and m["quantization"]["num_int8"] > 0
    assert {m["components"][c]["precision"] for c in ("text_encoder", "vae_decoder")} <= {"fp32", "fp16"}
    cal = r["calibrate"]
    assert cal["num_prompts"] == 3 and cal["prompts"] == str(prompts) and cal["rows"] == 8 * 6 * 2
    im = r["verify"]["images"]
    assert im["run"] and im["denoiser"] == "w8a8" and im["psnr_db"] >= im["psnr_floor_db"]
    assert r["verify"]["precision"] == "w8a8" and r["verify"]["max_rel_error"] <= r["verify"]["bound"]

    npy = tmp_path / "q.npy"
    args = ["generate", str(b.root), "--prompt", "a handwritten 7", "-n", "3", "--seed", "4", "--npy", str(npy)]
    assert main([*args, "-o", str(tmp_path / "q.png")]) == 0
    capsys.readouterr()
    ours = np.load(npy)
    fp32 = to_unit(edgediff.generate(sd1_bundle, prompt="a handwritten 7", n=3, seed=4))
    other = to_unit(edgediff.generate(sd1_bundle, prompt="a handwritten 7", n=3, seed=5))

    def psnr(a, b):
        return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))

    assert psnr(ours, fp32) >= W8A8_PSNR, psnr(ours, fp32)
    assert psnr(other, fp32) < W8A8_PSNR - 5  # the bound tells apart the trajectory from another one
