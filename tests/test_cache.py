"""Feature caching across steps (compiler/cache.py, runtimes/cache.py).

- the split: the full graph's eps is the unsplit UNet's, and the shallow graph fed the full graph's
  feature gives it again, at every depth, with and without a class label;
- the options: --cache / --cache-schedule / --cache-depth, each error one line naming its option;
- a cached ONNX bundle of the tiny UNet (CFG on): the manifest's pair, one weights.bin read by both
  graphs, the schedule; its images from the C loop and the Python loop equal each other and the
  PyTorch pair on the same schedule (1e-4); they differ from the uncached ones (the shallow graph ran);
- a damaged bundle (schedule without a shallow graph, a shallow graph without schedule) is refused
  by both loaders in one line, and the C runner refuses a cached bundle in one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from diffusers import UNet2DModel
from tiny_models import TINY_UNET, tiny_unet

from edgediff.cli.main import main
from edgediff.compiler import cache as cache_stage
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import Conditioning, DiffusersAdapter, ModelSpec
from edgediff.runtimes.bundle import load_bundle
from edgediff.runtimes.cache import CachedDenoiser, cached_denoiser
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels, generate
from edgediff.runtimes.steps import StepCall

try:
    import openvino  # noqa: F401

    HAVE_OV = True
except ImportError:
    HAVE_OV = False

RECIPE = dict(sampler="ddim", steps=5, guidance=2.0)  # as conftest's tiny_bundle, which is the uncached twin


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c2"
    return compile_model("tiny_models:tiny_unet", out, recipe=Recipe(**RECIPE, cache=2))


def _unconditional() -> ModelSpec:
    torch.manual_seed(3)
    unet = UNet2DModel(**{**TINY_UNET, "num_class_embeds": None}).eval()
    base = tiny_unet()
    return dataclasses.replace(
        base, module=DiffusersAdapter(unet, "UNet2DModel", 1).eval(), conditioning=Conditioning()
    )


def _cross_attention() -> ModelSpec:
    """A UNet2DConditionModel as tests/tiny_pipelines.py builds it, on a 4-token condition."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(4)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    return dataclasses.replace(
        tiny_unet(),
        module=DiffusersAdapter(unet, "UNet2DConditionModel", 4).eval(),
        sample_shape=(4, 8, 8),
        conditioning=Conditioning("embedding", shape=(4, 32)),
    )


# ---- the split ----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("make", [tiny_unet, _unconditional, _cross_attention], ids=["class", "none", "cross"])
def test_the_split_is_exact(make, depth):
    model = make()
    sp = cache_stage.split(model, depth)
    args = list(model.example_inputs(batch=3))
    with torch.no_grad():
        ref = model.module(*args)
        eps, feature = sp.full(*args)
        again = sp.shallow(*args, feature)
        other = sp.shallow(*args, torch.zeros_like(feature))
    assert torch.equal(eps, ref)
    assert torch.allclose(again, eps, rtol=0, atol=1e-6)
    assert not torch.allclose(other, eps, atol=1e-3)  # the shallow graph does read the feature
    assert tuple(feature.shape[1:]) == sp.feature_shape
    record = cache_stage.verify_split(model, sp)
    assert record["full_vs_model"] <= 1e-6 and record["shallow_vs_full"] <= 1e-6
    macs = cache_stage.macs_per_image(model, sp)
    assert 0 < macs["shallow"] < macs["full"]


def test_the_split_refuses_a_depth_and_a_model_it_cannot_split():
    with pytest.raises(EdgediffError, match=r"--cache-depth 3: .* has 2 down blocks \(choose 1..2\)"):
        cache_stage.split(tiny_unet(), 3)
    not_unet = dataclasses.replace(tiny_unet(), module=torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(EdgediffError, match="--cache: .* is a Conv2d; the split is written for diffusers' UNet2DModel"):
        cache_stage.split(not_unet, 1)


# ---- the options ----------------------------------------------------------------------------------

BAD_OPTIONS = [
    (dict(cache=2, cache_schedule="full,cached,full,cached,full"), "--cache and --cache-schedule: give one"),
    (dict(cache_schedule="full,cached"), "--cache-schedule: 2 entries, but --steps is 5"),
    (dict(cache_schedule="cached,full,full,full,full"), "--cache-schedule: the first entry must be full"),
    (dict(cache_schedule="full,half,full,full,full"), "--cache-schedule: entry 'half' is not full or cached"),
    (dict(cache_depth=2), "--cache-depth: needs --cache N or --cache-schedule"),
    (dict(cache=0), "--cache: must be a positive integer"),
    (dict(cache=2, quantize="w8a8"), "--cache with --quantize w8a8"),
    (dict(cache_schedule="auto"), "--cache-schedule 'auto': auto takes the number of full steps, auto:K with K from 1"),
    (dict(cache_schedule="auto:6"), "auto takes the number of full steps, auto:K with K from 1 to --steps .5."),
    (dict(cache_schedule="auto:0"), "auto:K with K from 1 to --steps"),
    (dict(cache_schedule="auto:two"), "auto:K with K from 1 to --steps"),
]


@pytest.mark.parametrize("change, message", BAD_OPTIONS)
def test_bad_cache_options_are_one_error_naming_the_option(change, message):
    with pytest.raises(EdgediffError, match=message.replace("(", r"\(")):
        Recipe(**{**RECIPE, **change})


def test_the_schedules_as_flags():
    assert Recipe(**RECIPE, cache=3).cached_steps() == (False, True, True, False, True)
    assert Recipe(**RECIPE, cache_schedule="full, full,cached,full,cached").cached_steps() == (
        False,
        False,
        True,
        False,
        True,
    )
    assert Recipe(**RECIPE).cached_steps() is None


def test_the_best_schedule_is_exact_and_beats_even_spacing_where_the_feature_moves():
    """best_schedule against every schedule with the same number of full steps (brute force), on a
    trajectory whose feature holds still early and moves late: the full steps go late."""
    import itertools

    rng = np.random.default_rng(0)
    walk = np.cumsum(np.r_[np.full(5, 0.01), np.full(5, 1.0)])  # small steps, then large ones
    feats = (walk[:, None, None] * np.ones((10, 2, 3)) + rng.normal(0, 1e-3, (10, 2, 3))) + 1.0
    s = cache_stage.staleness(feats)
    for full in (1, 2, 4, 10):
        flags = cache_stage.best_schedule(s, full)
        assert not flags[0] and flags.count(False) == full
        every = [
            tuple(i not in on for i in range(10))
            for rest in itertools.combinations(range(1, 10), full - 1)
            for on in [{0, *rest}]
        ]
        assert cache_stage.schedule_cost(s, flags) == pytest.approx(min(cache_stage.schedule_cost(s, f) for f in every))
        gap = cache_stage.max_gap(10, full)
        within = [f for f in every if max(np.diff([i for i, c in enumerate(f) if not c] + [10])) <= gap]
        flags = cache_stage.best_schedule(s, full, gap=gap)
        assert max(np.diff([i for i, c in enumerate(flags) if not c] + [10])) <= gap
        assert cache_stage.schedule_cost(s, flags) == pytest.approx(
            min(cache_stage.schedule_cost(s, f) for f in within)
        )
    flags = cache_stage.best_schedule(s, 4)
    assert [i for i, c in enumerate(flags) if not c][1:] == [i for i in range(5, 10) if not flags[i]]  # all late
    assert cache_stage.schedule_cost(s, flags) < cache_stage.schedule_cost(s, cache_stage.even_schedule(10, 4))


def test_an_auto_schedule_is_chosen_on_the_trajectory_and_written_explicitly(tmp_path):
    b = compile_model(
        "tiny_models:tiny_unet", tmp_path / "a", recipe=Recipe(**{**RECIPE, "steps": 6}, cache_schedule="auto:3")
    )
    steps = b.scheduler["cache_schedule"]["steps"]
    assert len(steps) == 6 and steps[0] == "full" and steps.count("full") == 3
    auto = b.report["plan"]["cache"]["auto"]
    assert auto["full_steps"] == 3 and len(auto["feature_change"]) == 5 and auto["images"] == cache_stage.AUTO_IMAGES
    assert auto["staleness"] <= auto["even"]["staleness"]  # the optimum is never worse than even spacing
    assert b.report["verify"]["cache"]["images"]["calls"] == {"full": 3 * 1, "cached": 3 * 1}
    assert b.report["verify"]["cache"]["images"]["max_abs_error"] <= 1e-4


def test_an_auto_schedule_of_a_text_unet_reads_the_prompts_trajectory(tmp_path):
    """choose_schedule on a text-to-image pipeline: the trajectory runs CFG on the prompts' embeddings."""
    import tiny_pipelines as tp

    from edgediff.compiler.capture import load_source, plan_options

    model = load_source(str(tp.sd1_folder(tmp_path / "sd1")))
    sp = cache_stage.split(model, 1)
    kw = dict(sampler="ddim", steps=5, guidance=7.5, spacing="leading", plan_options=plan_options(model, "ddim"))
    flags, rec = cache_stage.choose_schedule(model, sp, full=2, prompts=["a 7", "a 1"], images=2, **kw)
    assert len(flags) == 5 and not flags[0] and flags.count(False) == 2
    assert rec["prompts"] == 2 and len(rec["feature_change"]) == 4 and all(c > 0 for c in rec["feature_change"])
    assert rec["staleness"] <= rec["even"]["staleness"]


def test_cli_refuses_a_schedule_of_the_wrong_length_in_one_line(tmp_path, capsys):
    out = tmp_path / "b"
    code = main(["compile", "tiny_models:tiny_unet", "--steps", "4", "--cache-schedule", "full,cached", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--cache-schedule: 2 entries, but --steps is 4" in err[0]
    assert not out.exists()


def test_a_format_without_the_pair_is_refused_by_name(tmp_path):
    with pytest.raises(EdgediffError, match="--cache: target .* has format tflite; .* onnx, openvino only"):
        compile_model("tiny_models:tiny_unet", tmp_path / "t", target="pixel-8", recipe=Recipe(**RECIPE, cache=2))
    assert not (tmp_path / "t").exists()


# ---- a cached bundle ------------------------------------------------------------------------------


def test_the_bundle_lists_the_pair_and_its_schedule(cached):
    m, sched = cached.manifest, cached.scheduler
    assert sched["cache_schedule"] == {"steps": ["full", "cached", "full", "cached", "full"]}
    assert [o["name"] for o in m["model"]["outputs"]] == ["eps", "cached_feature"]
    assert m["cache"]["shallow"]["file"] == "model/shallow.onnx"
    assert [i["name"] for i in m["cache"]["shallow"]["inputs"]] == [
        "sample",
        "timestep",
        "class_labels",
        "cached_feature",
    ]
    assert m["cache"]["feature"]["shape"] == [16, 8, 8] and m["cache"]["depth"] == 1
    rec = cached.report["verify"]["cache"]
    assert rec["images"]["max_abs_error"] <= 1e-4 and rec["images"]["calls"] == {"full": 3, "cached": 2}
    assert rec["split"]["full_vs_model"] <= 1e-4


def test_one_copy_of_the_weights_on_disk(cached):
    """Every weight of either graph lies in model/weights.bin, and the shallow graph's are the full graph's."""
    root = cached.root / "model"
    spans = {}
    for name in ("denoiser.onnx", "shallow.onnx"):
        proto = onnx.load(str(root / name), load_external_data=False)
        inline = [i.name for i in proto.graph.initializer if i.data_location != onnx.TensorProto.EXTERNAL]
        big = [i for i in inline if len(next(x for x in proto.graph.initializer if x.name == i).raw_data) >= 1024]
        assert not big, f"{name} keeps weights inline: {big[:3]}"
        spans[name] = {
            (e["offset"], e["length"])
            for i in proto.graph.initializer
            if i.data_location == onnx.TensorProto.EXTERNAL
            for e in [{x.key: x.value for x in i.external_data}]
            if e["location"] == "weights.bin"
        }
    assert spans["shallow.onnx"] and spans["shallow.onnx"] <= spans["denoiser.onnx"]
    size = (root / "weights.bin").stat().st_size
    assert size >= max(int(o) + int(n) for o, n in spans["denoiser.onnx"])


def test_images_equal_the_pytorch_pair_from_both_loops(cached, tiny_bundle):
    setup = SamplingSetup.from_bundle(cached)
    assert setup.steps.cached == (False, True, False, True, False)
    labels = default_labels(setup, 3)
    images = {}
    for loop in ("c", "python"):
        denoise = bundle_denoiser(cached)
        images[loop] = generate(denoise, setup, n=3, seed=5, labels=labels, loop=loop)
        assert denoise.calls == {"full": 3, "cached": 2}
    reference = generate(
        cache_stage.torch_pair(cache_stage.split(tiny_unet(), 1)), setup, n=3, seed=5, labels=labels, loop="python"
    )
    assert np.abs(images["c"] - images["python"]).max() <= 1e-5
    assert np.abs(images["python"] - reference).max() <= 1e-4
    plain = generate(bundle_denoiser(tiny_bundle), SamplingSetup.from_bundle(tiny_bundle), n=3, seed=5, labels=labels)
    assert np.abs(images["python"] - plain).max() > 1e-3  # the cached steps ran the shallow graph


def test_the_kept_feature_is_checked():
    d = CachedDenoiser(lambda x, t, c: (x, x * 2), lambda x, t, c, f: f)
    x = np.ones((2, 1, 2, 2), np.float32)
    t = np.zeros(2, np.float32)
    with pytest.raises(EdgediffError, match="step 1: the cache schedule reuses a feature, but no full step"):
        d(x, t, None, step=StepCall(1, 0, True))
    assert np.array_equal(d(x, t, None, step=StepCall(0, 0, False)), x)
    assert np.array_equal(d(x, t, None, step=StepCall(1, 0, True)), x * 2)
    with pytest.raises(EdgediffError, match="step 2: the cached feature has 2 rows, this call 1"):
        d(x[:1], t[:1], None, step=StepCall(2, 0, True))


# ---- damaged bundles --------------------------------------------------------------------------------


def _rewrite(root, name: str, doc: dict):
    text = json.dumps(doc, indent=1)
    (root / name).write_text(text)
    if name != "manifest.json":
        m = json.loads((root / "manifest.json").read_text())
        m["files"][name]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
        (root / "manifest.json").write_text(json.dumps(m, indent=1))


@pytest.fixture
def cached_copy(cached, tmp_path):
    import shutil

    dst = tmp_path / "cc"
    shutil.copytree(cached.root, dst)
    return dst


def test_a_schedule_and_its_graphs_must_agree(cached_copy):
    m = json.loads((cached_copy / "manifest.json").read_text())
    s = json.loads((cached_copy / "scheduler.json").read_text())
    _rewrite(cached_copy, "scheduler.json", dict(s, cache_schedule=None))
    with pytest.raises(EdgediffError, match="manifest.json: cache is set but .*scheduler.json has no cache_schedule"):
        load_bundle(cached_copy)
    _rewrite(cached_copy, "scheduler.json", dict(s, cache_schedule={"steps": ["full", "cached"]}))
    with pytest.raises(EdgediffError, match="cache_schedule.steps has 2 entries but the plan has 5 steps"):
        load_bundle(cached_copy)
    _rewrite(cached_copy, "scheduler.json", s)
    _rewrite(cached_copy, "manifest.json", {k: v for k, v in m.items() if k != "cache"})
    with pytest.raises(EdgediffError, match="cache_schedule is set but .* has no cache"):
        load_bundle(cached_copy)
    _rewrite(
        cached_copy, "manifest.json", dict(m, cache=dict(m["cache"], shallow=dict(m["cache"]["shallow"], file="x")))
    )
    with pytest.raises(EdgediffError, match="cache.shallow.file 'x' is not listed under files"):
        load_bundle(cached_copy)


def test_the_c_runner_refuses_a_cached_bundle_in_one_line(cached, c_runner_build, tmp_path):
    r = subprocess.run(
        [str(c_runner_build / "edgediff-run-core"), str(cached.root), "--raw", str(tmp_path / "x.f32")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "this C runtime does not run cached bundles yet" in r.stderr
    assert not (tmp_path / "x.f32").exists()


@pytest.mark.slow  # two ONNX exports and two OpenVINO conversions: ~40 s on the shared 2 cores
@pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed")
def test_the_openvino_pair_runs_the_schedule_as_pytorch_does(tmp_path):
    """The pair as OpenVINO IR (fp32, dynamic batch), run per step by the runtime's CachedDenoiser."""
    model = tiny_unet()
    sp = cache_stage.split(model, 1)
    lowered, shallow, record = cache_stage.lower_pair(
        model, sp, tmp_path / "model", fmt="openvino", precision="fp32", static_batch=None
    )
    assert lowered.file.name == "denoiser.xml" and shallow.name == "shallow.xml" and record["shared_weights"] is None
    manifest = {
        "model": {"format": "openvino", "file": "model/denoiser.xml"},
        "cache": {"shallow": {"file": "model/shallow.xml"}},
    }
    flags = (False, True, True, False, True)
    setup = SamplingSetup(
        plan=_plan(model),
        guidance=2.0,
        conditioning=model.conditioning.to_dict(),
        sample_shape=model.sample_shape,
        steps=cache_stage.step_table(flags),
    )
    labels = default_labels(setup, 2)
    ours = generate(cached_denoiser(tmp_path, manifest), setup, n=2, seed=1, labels=labels, loop="python")
    theirs = generate(cache_stage.torch_pair(sp), setup, n=2, seed=1, labels=labels, loop="python")
    assert np.abs(ours - theirs).max() <= 1e-4


_SIGNAL_AFTER_TWO_GRAPHS = r"""
import os, signal, sys, time
import onnx
from onnx import TensorProto, helper
from edgediff.runtimes.cache import open_graph

path = sys.argv[1]
io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 4]) for n in ("x", "y")]
onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", io[:1], io[1:])), path)
a, b = open_graph(path, "openvino"), open_graph(path, "openvino")
del a, b  # freed in the order they were made, as a cached bundle's full and shallow graphs are


class Stop(BaseException):
    pass


def handler(signum, frame):
    raise Stop


signal.signal(signal.SIGTERM, handler)
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except Stop:
    print("handled")
"""


@pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed")
def test_a_signal_after_two_openvino_graphs_are_freed_is_handled(tmp_path):
    """Two graphs opened and freed first-in first-out, then a Python signal handler runs: it must run.
    One ov.Core per graph crashed here with SIGSEGV (each Core's CPU plugin restores the signal stack
    it found, so the second restore left the thread on the first plugin's freed buffer); the suite
    died at the SIGTERM test of `compile` right after the OpenVINO pair test."""
    script = tmp_path / "signal_after_graphs.py"
    script.write_text(_SIGNAL_AFTER_TWO_GRAPHS)
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "relu.onnx")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.strip() == "handled", (r.returncode, r.stderr[-2000:])


def _plan(model):
    from edgediff.runtimes.samplers import get_solver

    return get_solver("ddim").plan(model.schedule, 5)


@pytest.mark.slow  # a text-to-image compile (three graphs exported, diffusers' pipeline run): ~1-2 min here
def test_a_text_to_image_bundle_caches_its_unet(tmp_path):
    import tiny_pipelines as tp

    from edgediff.runtimes.runner import generate_text, text_pipeline

    folder = tp.sd1_folder(tmp_path / "sd1")
    b = compile_model(str(folder), tmp_path / "c", recipe=Recipe(sampler="ddim", steps=6, guidance=7.5, cache=3))
    v = b.report["verify"]
    assert v["cache"]["images"]["max_abs_error"] <= 1e-4
    assert v["cache"]["images"]["calls"] == {"full": 2, "cached": 4}
    assert v["images"]["run"] and v["images"]["max_abs_error"] <= 1e-3  # the full graph against diffusers
    assert [i["name"] for i in b.manifest["cache"]["shallow"]["inputs"]] == [
        "sample",
        "timestep",
        "encoder_hidden_states",
        "cached_feature",
    ]
    setup = SamplingSetup.from_bundle(b)
    pipe = text_pipeline(b)
    images = {loop: generate_text(pipe, setup, prompts=["a 7"], seed=1, loop=loop) for loop in ("c", "python")}
    assert np.abs(images["c"] - images["python"]).max() <= 1e-5
    assert pipe.denoise.calls == {"full": 4, "cached": 8}  # two runs of 2 full + 4 cached steps
