"""Per-step tables through the C runtime: timestep groups, the cache schedule, the model signature.

- scheduler.json "cache_schedule" / "timestep_groups" are read with the same checks by the C
  loader (edgediff-run) and the Python one (steps.StepTable), and a step-aware denoiser sees
  the same (step, group, cached) sequence from the C loop and the Python loop;
- a real quantized bundle with two timestep groups (--quantize w8a8 --groups 2) runs through
  `edgediff generate`'s C loop with the right group per step and equals the Python loop; the
  C runner's OpenVINO backend compiles one graph per group and equals a Python loop over
  OpenVINO that picks the group per step;
- the OpenVINO backend refuses a model whose inputs / outputs differ from manifest.json,
  naming the tensor, before the first step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.runtimes.bundle import load_bundle
from edgediff.runtimes.groups import GroupedDenoiser
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels, generate
from edgediff.runtimes.steps import StepCall, StepTable, cache_flags

C_DIR = Path(__file__).resolve().parents[1] / "csrc"
try:
    import openvino  # noqa: F401

    HAVE_OV = True
except ImportError:
    HAVE_OV = False
needs_ov = pytest.mark.skipif(not HAVE_OV, reason="openvino is not installed")


@pytest.fixture(scope="module")
def build(c_runner_build):
    return c_runner_build  # conftest.py: built once per session


@pytest.fixture(scope="module")
def grouped(tiny_bundle, tmp_path_factory):
    """The tiny UNet quantized W8A8 with two timestep groups (as tests/test_quantize.py compiles it).

    Full-range weights: with the 7-bit range (this host's default) the C runner's static-batch
    OpenVINO graphs and the Python oracle's dynamic-batch ones were measured 5e-2 apart after 4
    steps (with full range: 0.0), presumably different int8 kernels rounding before a requantize;
    that would hide what this module checks, that each step runs its group's graph."""
    out = tmp_path_factory.mktemp("q") / "g2"
    return compile_model(
        "tiny_models:tiny_unet",
        out,
        recipe=Recipe(
            sampler="ddim",
            steps=4,
            guidance=2.0,
            quantize="w8a8",
            groups=2,
            calib_samples=6,
            quant_options={"weight_range": "full"},
        ),
    )


def run(exe, *args, check=True):
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def rewrite(root: Path, name: str, doc: dict):
    """Write root/name and record its new sha256 in the manifest (a bundle the loaders accept)."""
    text = json.dumps(doc, indent=1)
    (root / name).write_text(text)
    m = json.loads((root / "manifest.json").read_text())
    if name in m["files"]:
        m["files"][name]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
        (root / "manifest.json").write_text(json.dumps(m, indent=1))


class Recorder:
    """A step-aware denoiser around another: records every StepCall it is given."""

    takes_step = True

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, x, t, cond=None, *, step):
        assert isinstance(step, StepCall)
        self.calls.append(tuple(step))
        if getattr(self.inner, "takes_step", False):
            return self.inner(x, t, cond, step=step)
        return self.inner(x, t, cond)


# ---- the cache schedule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, flags",
    [
        ({"interval": 2}, [False, True, False, True, False]),
        ({"interval": 1}, [False] * 5),
        ({"interval": 7}, [False, True, True, True, True]),
        ({"steps": ["full", "cached", "cached", "full", "cached"]}, [False, True, True, False, True]),
    ],
)
def test_cache_flags_reach_the_denoiser_identically_from_both_loops(tiny_bundle, schedule, flags):
    """The table as both loops hand it on (a bundle that carries it has a shallow graph: tests/test_cache.py)."""
    table = StepTable.from_scheduler(dict(tiny_bundle.scheduler, cache_schedule=schedule), 5)
    assert table == StepTable(num_steps=5, cached=tuple(flags))
    setup = dataclasses.replace(SamplingSetup.from_bundle(tiny_bundle), steps=table)
    labels = default_labels(setup, 3)
    seen, images = {}, {}
    for loop in ("c", "python"):
        rec = Recorder(bundle_denoiser(tiny_bundle))
        images[loop] = generate(rec, setup, n=3, seed=2, labels=labels, loop=loop)
        seen[loop] = rec.calls
    assert seen["c"] == seen["python"] == [(i, 0, f) for i, f in enumerate(flags)]
    # the recorder's inner denoiser takes no step: the full model at every step, the plain images
    plain = generate(bundle_denoiser(tiny_bundle), SamplingSetup.from_bundle(tiny_bundle), n=3, seed=2, labels=labels)
    assert np.abs(images["c"] - images["python"]).max() <= 1e-5
    assert np.array_equal(images["c"], plain)


def test_a_cache_schedule_without_a_shallow_graph_is_refused_by_both_loaders(build, bundle_copy, tmp_path):
    sched = json.loads((bundle_copy / "scheduler.json").read_text())
    rewrite(bundle_copy, "scheduler.json", dict(sched, cache_schedule={"interval": 2}))
    message = "scheduler.json: cache_schedule is set but"
    with pytest.raises(EdgediffError, match=message):
        load_bundle(bundle_copy)
    r = run(build / "edgediff-run-core", bundle_copy, "--raw", tmp_path / "a.f32", check=False)
    assert r.returncode == 1 and message in r.stderr and "has no cache" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


def test_cache_flags_helper():
    assert cache_flags(3, 7) == (False, True, True, False, True, True, False)
    with pytest.raises(EdgediffError, match="nothing cached"):
        StepTable(num_steps=2, cached=(True, False))
    with pytest.raises(EdgediffError, match="not a group index in 0..1"):
        StepTable(num_steps=2, groups=(0, 2), num_groups=2)


# Each bad table: what both loaders must say (the C runner prints the same field as Python raises).
BAD_TABLES = [
    ({"cache_schedule": {"interval": 0}}, "cache_schedule.interval must be a positive integer"),
    (
        {"cache_schedule": {"interval": 2, "steps": []}},
        "cache_schedule must have exactly one of 'interval' and 'steps'",
    ),
    ({"cache_schedule": {"every": 2}}, "cache_schedule has unknown key 'every'"),
    ({"cache_schedule": {"steps": ["full", "cached"]}}, "cache_schedule.steps has 2 entries but the plan has 5 steps"),
    ({"cache_schedule": {"steps": ["cached"] * 5}}, 'cache_schedule.steps[0] must be "full"'),
    (
        {"cache_schedule": {"steps": ["full", "half", "full", "full", "full"]}},
        'cache_schedule.steps[1] must be "full" or "cached"',
    ),
    ({"cache_schedule": [2]}, "cache_schedule must be an object or null"),
    (
        {"timestep_groups": {"files": ["model/denoiser.onnx"], "step_group": [0, 0, 0, 0]}},
        "timestep_groups.step_group has 4 entries but the plan has 5 steps",
    ),
    (
        {"timestep_groups": {"files": ["model/denoiser.onnx"], "step_group": [0, 0, 1, 0, 0]}},
        "timestep_groups.step_group[2] is 1; it must be a group index in 0..0",
    ),
    (
        {"timestep_groups": {"files": ["model/denoiser.onnx"], "step_group": [0, 0, "0", 0, 0]}},
        "timestep_groups.step_group[2] must be an integer",
    ),
    ({"timestep_groups": {"files": ["model/denoiser.onnx"]}}, "timestep_groups is missing the field 'step_group'"),
    ({"timestep_groups": {"files": [], "step_group": [0] * 5}}, "timestep_groups.files must list 1..64 files"),
    (
        {"timestep_groups": {"files": ["../x.onnx"], "step_group": [0] * 5}},
        "timestep_groups.files[0] must be a relative path inside the bundle",
    ),
    (
        {"timestep_groups": {"files": ["model/denoiser.onnx"], "step_group": [0] * 5, "scales": 1}},
        "timestep_groups has unknown key 'scales'",
    ),
]


@pytest.mark.parametrize("change, message", BAD_TABLES)
def test_bad_tables_are_refused_alike_by_c_and_python(build, bundle_copy, tmp_path, change, message):
    sched = json.loads((bundle_copy / "scheduler.json").read_text())
    rewrite(bundle_copy, "scheduler.json", dict(sched, **change))
    r = run(build / "edgediff-run-core", bundle_copy, "--raw", tmp_path / "x.f32", check=False)
    assert r.returncode == 1 and f"{bundle_copy}/scheduler.json: {message}" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    with pytest.raises(EdgediffError) as e:
        SamplingSetup.from_bundle(load_bundle(bundle_copy))
    assert "scheduler.json" in str(e.value) and message in str(e.value)


def test_extension_checks_the_tables(tiny_bundle):
    from edgediff.runtimes import _cruntime as C

    setup = SamplingSetup.from_bundle(tiny_bundle)
    plan = C.Plan(setup.plan)

    def denoise(x, t, labels, step):
        return np.zeros_like(x)

    kw = dict(sample_shape=setup.sample_shape)
    with pytest.raises(EdgediffError, match=r"step_group\[1\] is 3; the denoiser serves 2 group"):
        C.sample(plan, denoise, 0, [0], step_group=[0, 3, 0, 0, 0], num_groups=2, **kw)
    with pytest.raises(EdgediffError, match="params.table_steps is 4 but the plan has 5 steps"):
        C.sample(plan, denoise, 0, [0], step_group=[0, 0, 0, 0], num_groups=1, **kw)
    with pytest.raises(EdgediffError, match=r"params.cache_flags\[0\] must be 0"):
        C.sample(plan, denoise, 0, [0], cache_flags=[1, 0, 0, 0, 0], **kw)
    with pytest.raises(EdgediffError, match="cache_flags has 4 entries, step_group 5"):
        C.sample(plan, denoise, 0, [0], step_group=[0] * 5, num_groups=1, cache_flags=[0] * 4, **kw)
    seen = []
    C.sample(
        plan,
        lambda x, t, labels, step: seen.append(step) or np.zeros_like(x),
        0,
        [0],
        step_group=[1, 1, 0, 0, 1],
        num_groups=2,
        cache_flags=[0, 1, 0, 1, 1],
        **kw,
    )
    assert seen == [(0, 1, False), (1, 1, True), (2, 0, False), (3, 0, True), (4, 1, True)]


# ---- timestep groups: a real quantized bundle ----------------------------------------------------


def test_grouped_bundle_c_loop_picks_the_group_per_step(grouped, monkeypatch):
    groups = grouped.scheduler["timestep_groups"]
    assert groups["step_group"] == [0, 0, 1, 1] and len(groups["files"]) == 2
    setup = SamplingSetup.from_bundle(grouped)
    assert setup.steps.groups == (0, 0, 1, 1) and setup.steps.num_groups == 2
    labels = default_labels(setup, 3)
    images, served = {}, {}
    for loop in ("c", "python"):
        denoise = bundle_denoiser(grouped)
        assert isinstance(denoise, GroupedDenoiser)
        log = []
        for g, model in enumerate(denoise.models):  # which group's session ran, call by call
            denoise.models[g] = (lambda m, g: lambda x, t, c: log.append(g) or m(x, t, c))(model, g)
        # group_of (the nearest-timestep fallback) must not be what picks the group in the loops
        monkeypatch.setattr(denoise, "group_of", lambda t: (_ for _ in ()).throw(AssertionError("group_of used")))
        images[loop] = generate(denoise, setup, n=3, seed=5, labels=labels, loop=loop)
        served[loop] = log
    assert served["c"] == served["python"] == [0, 0, 1, 1]
    err = float(np.abs(images["c"].astype(np.float64) - images["python"]).max())
    # 1e-5 holds on AVX2 and VNNI alike: both loops call the same ONNX Runtime int8 sessions at the same
    # batch, so the same kernels run on either side of the comparison (like against like)
    assert err <= 1e-5, f"C loop vs Python loop on the grouped int8 bundle: max abs {err:.2e}"
    # and the groups matter: group 0 at every step gives other images
    only0 = generate(bundle_denoiser(grouped).models[0], setup, n=3, seed=5, labels=labels)
    assert np.abs(only0 - images["c"]).max() > 1e-3


def test_generate_cli_runs_the_grouped_bundle_through_the_c_loop(grouped, tmp_path):
    from PIL import Image

    from edgediff.cli.main import main as cli

    for loop in ("c", "python"):
        assert (
            cli(
                [
                    "generate",
                    str(grouped.root),
                    "-n",
                    "4",
                    "--seed",
                    "3",
                    "--loop",
                    loop,
                    "-o",
                    str(tmp_path / f"{loop}.png"),
                ]
            )
            == 0
        )
    a, b = (np.asarray(Image.open(tmp_path / f"{loop}.png")) for loop in ("c", "python"))
    assert a.shape == b.shape and np.array_equal(a, b)


class OpenVINOGroups:
    """The Python oracle of the C OpenVINO backend: one OpenVINO graph per group, picked by step,
    compiled for the same static batch as the C backend (`rows`), so both sides run one graph."""

    takes_step = True

    def __init__(self, root: Path, files, rows: int):
        from edgediff.runtimes.backends import OpenVINODenoiser

        self.rows = rows
        self.models = [OpenVINODenoiser(root / f, static_batch=rows) for f in files]

    def __call__(self, x, t, cond=None, *, step):
        assert x.shape[0] == self.rows, "the Python loop must call with the batch the graphs were compiled for"
        return self.models[step.group](x, t, cond)


@needs_ov
def test_openvino_backend_runs_one_graph_per_group(build, grouped, tmp_path):
    exe = build / "edgediff-run"
    n, seed = 3, 4
    run(exe, grouped.root, "-n", n, "--seed", seed, "--raw", tmp_path / "ov.f32")
    setup = SamplingSetup.from_bundle(grouped)
    labels = default_labels(setup, n)
    got = np.fromfile(tmp_path / "ov.f32", np.float32).reshape(n, *setup.sample_shape)
    files = grouped.scheduler["timestep_groups"]["files"]
    rows = 2 * n if setup.guidance != 1.0 else n  # what edgediff-run fixes the batch to (edgediff_run.c)
    want = generate(OpenVINOGroups(grouped.root, files, rows), setup, n=n, seed=seed, labels=labels, loop="python")
    err = float(np.abs(np.clip(got, -1, 1) - want).max())
    # Both sides compile the same int8 graphs for the same static batch with the f32 hint, so OpenVINO
    # picks the same kernels for both on any CPU. Compared with a dynamic batch instead, the plugin may
    # choose other int8 kernels for the other shape: on an AVX-512 VNNI CPU that differed by 7.8e-4,
    # on AVX2 by ~1e-6. What remains here is the loops' own float32 arithmetic (1e-5 between the C
    # and Python loops on one backend, test_grouped_bundle_c_loop_picks_the_group_per_step).
    assert err <= 1e-4, f"C OpenVINO backend vs Python loop over OpenVINO groups: max abs {err:.2e}"
    only0 = OpenVINOGroups(grouped.root, [files[0], files[0]], rows)
    wrong = generate(only0, setup, n=n, seed=seed, labels=labels, loop="python")
    assert np.abs(wrong - want).max() > 100 * max(err, 1e-6)  # so the check above can tell the groups apart
    bench = run(exe, grouped.root, "-n", 1, "--bench", "--runs", 1).stdout
    assert "2 timestep groups (model/denoiser.g0.onnx ... model/denoiser.g1.onnx, onnx)" in bench
    r = run(exe, grouped.root, "-n", 1, "--steps", 3, "-o", tmp_path / "x.png", check=False)
    assert r.returncode == 2 and "timestep_groups is made for its own 4 steps" in r.stderr


# ---- the model signature against manifest.json ---------------------------------------------------

SIGNATURE_EDITS = [
    (
        lambda m: m["inputs"][0].update(name="latent"),
        "model input 0 is named 'sample', manifest.json model.inputs[0] says 'latent'",
    ),
    (
        lambda m: m["inputs"][2].update(dtype="int32"),
        "input 'class_labels' has element type int64 in the model, manifest.json model.inputs[2].dtype says int32",
    ),
    (
        lambda m: m["inputs"][0].update(shape=["batch", 1, 8, 9]),
        "input 'sample' has shape [?,1,8,8] in the model, manifest.json model.inputs[0].shape says [?,1,8,9]",
    ),
    (
        lambda m: m["inputs"][1].update(shape=["batch", 1]),
        "input 'timestep' has shape [?] in the model, manifest.json model.inputs[1].shape says [?,1]",
    ),
    (
        lambda m: m["outputs"][0].update(name="noise"),
        "model output 0 is named 'eps', manifest.json model.outputs[0] says 'noise'",
    ),
    (
        lambda m: m["outputs"].append(dict(m["outputs"][0], name="extra")),
        "the model has 1 outputs, manifest.json model.outputs lists 2",
    ),
]


@needs_ov
@pytest.mark.parametrize("edit, message", SIGNATURE_EDITS)
def test_openvino_backend_checks_the_signature(build, tiny_bundle, bundle_copy, tmp_path, edit, message):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    assert m["model"]["inputs"][0]["shape"] == ["batch", 1, 8, 8]  # what the edits assume
    edit(m["model"])
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    r = run(build / "edgediff-run", bundle_copy, "-n", 2, "--raw", tmp_path / "x.f32", check=False)
    assert r.returncode == 1, r.stderr
    assert r.stderr == f"edgediff-run: {bundle_copy}/model/denoiser.onnx: {message}\n", r.stderr
    assert not (tmp_path / "x.f32").exists()


@needs_ov
def test_openvino_signature_check_covers_every_group(build, grouped, tmp_path):
    copy = tmp_path / "g"
    shutil.copytree(grouped.root, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["model"]["inputs"][1]["dtype"] = "float16"
    (copy / "manifest.json").write_text(json.dumps(m))
    r = run(build / "edgediff-run", copy, "-n", 1, "--raw", tmp_path / "x.f32", check=False)
    assert r.returncode == 1
    assert (
        f"{copy}/model/denoiser.g0.onnx: input 'timestep' has element type float32 in the model, "
        "manifest.json model.inputs[1].dtype says float16" in r.stderr
    )
