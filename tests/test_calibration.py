"""calibration/: trajectory recording, .npz validation, selection, observers, activation
statistics per timestep group, per-layer sensitivity, and `edgediff calibrate` (tiny models only)."""

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from edgediff.cli.calibrate import add_calibrate_parser
from edgediff.compiler.capture import load_source
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import torch_denoiser
from edgediff.quantize.calibration import (
    OBSERVERS,
    SELECTORS,
    CalibrationSet,
    Observer,
    collect_activations,
    deployment_plan,
    layer_sensitivity,
    load_calibration,
    match_layers,
    observe,
    record_trajectories,
    select,
    select_indices,
    step_groups,
)
from edgediff.quantize.calibration.select import density_diversity, step_probabilities
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.runner import SamplingSetup, default_labels, generate

N, STEPS, GUIDANCE, SEED = 6, 5, 2.0, 0


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # torch's thread pool thrashes on these tiny convolutions when cores are shared (100x slower)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    return load_source("tiny_models:tiny_unet")


@pytest.fixture(scope="module")
def calib(tiny):
    return record_trajectories(
        tiny, sampler="ddim", steps=STEPS, guidance=GUIDANCE, num_samples=N, seed=SEED, batch_size=4
    )


# ---------------------------------------------------------------- recording
def test_records_every_model_call_of_the_plan_with_cfg_halves(tiny, calib):
    plan = deployment_plan(tiny, "ddim", STEPS)
    assert len(calib) == STEPS * 2 * N
    np.testing.assert_array_equal(np.unique(calib.t)[::-1], plan.model_timesteps)
    for s in range(STEPS):
        rows = np.nonzero(calib.step == s)[0]
        assert rows.size == 2 * N
        assert (calib.t[rows] == plan.model_timesteps[s]).all()
        cond_half, null_half = rows[:N], rows[N:]
        np.testing.assert_array_equal(calib.cond[cond_half], np.arange(N) % 4)  # labels cycle over classes
        assert (calib.cond[null_half] == 4).all()  # the null label of the CFG batch
        np.testing.assert_array_equal(calib.x[cond_half], calib.x[null_half])
    # step 0 sees x_T: image k is noise stream k of the seed (DDIM: unscaled)
    x_T = NoiseSource(SEED, tuple(range(N))).draw(0, (1, 8, 8))
    np.testing.assert_array_equal(calib.x[:N], x_T)
    m = calib.meta
    assert (m.sampler, m.steps, m.guidance, m.seed, m.num_samples) == ("ddim", STEPS, GUIDANCE, SEED, N)
    assert m.source == "tiny_models:tiny_unet" and len(m.source_sha256) == 64


def test_recording_equals_what_the_runner_feeds_the_model(tiny, calib):
    """An independent spy on the runner's denoiser calls sees exactly the recorded rows."""
    plan = deployment_plan(tiny, "ddim", STEPS)
    setup = SamplingSetup(
        plan=plan, guidance=GUIDANCE, conditioning=tiny.conditioning.to_dict(), sample_shape=tiny.sample_shape
    )
    seen = []
    generate(
        torch_denoiser(tiny),
        setup,
        n=N,
        seed=SEED,
        labels=default_labels(setup, N),
        batch_size=N,
        on_call=lambda x, t, c, eps: seen.append((x.copy(), t.copy(), c.copy())),
    )
    assert len(seen) == STEPS
    for s, (x, t, c) in enumerate(seen):
        rows = calib.step == s
        np.testing.assert_array_equal(calib.x[rows], x)
        np.testing.assert_array_equal(calib.t[rows], t)
        np.testing.assert_array_equal(calib.cond[rows], c)


def test_recording_is_deterministic_per_seed_and_independent_of_batch_size(tiny, calib):
    again = record_trajectories(
        tiny, sampler="ddim", steps=STEPS, guidance=GUIDANCE, num_samples=N, seed=SEED, batch_size=N
    )
    for name in ("x", "t", "cond", "step"):
        np.testing.assert_array_equal(getattr(again, name), getattr(calib, name))
    other = record_trajectories(tiny, sampler="ddim", steps=STEPS, guidance=GUIDANCE, num_samples=N, seed=SEED + 1)
    assert np.abs(other.x - calib.x).max() > 0.1


def test_unguided_euler_records_fractional_timesteps(tiny):
    c = record_trajectories(tiny, sampler="euler", steps=3, guidance=1.0, spacing="linspace", num_samples=2)
    plan = deployment_plan(tiny, "euler", 3, "linspace")
    assert len(c) == 3 * 2 and c.meta.guidance == 1.0
    np.testing.assert_array_equal(c.t, np.repeat(plan.model_timesteps, 2))
    assert not np.array_equal(plan.model_timesteps, np.round(plan.model_timesteps))  # really fractional
    assert (c.cond != 4).all()  # no null half without guidance


def test_round_trip_npz(tiny, calib, tmp_path):
    path = calib.save(tmp_path / "calib.npz")
    back = load_calibration(path, model=tiny)
    for name in ("x", "t", "cond", "step"):
        a = getattr(back, name)
        assert a.dtype == getattr(calib, name).dtype
        np.testing.assert_array_equal(a, getattr(calib, name))
    assert back.meta == calib.meta
    back.check_plan(deployment_plan(tiny, "ddim", STEPS))
    with pytest.raises(EdgediffError, match="timesteps"):
        back.check_plan(deployment_plan(tiny, "ddim", STEPS + 1))
    with pytest.raises(EdgediffError, match=r"\.npz"):
        calib.save(tmp_path / "calib.bin")
    assert not back.x.flags.writeable


def _arrays(calib):
    return {
        "x": calib.x.copy(),
        "t": calib.t.copy(),
        "step": calib.step.copy(),
        "cond": calib.cond.copy(),
        "meta": np.array(json.dumps(calib.meta.to_dict())),
    }


def _empty(a):
    for k in ("x", "t", "step", "cond"):
        a[k] = a[k][:0]


def _nan(a):
    a["x"][7, 0, 3, 3] = np.nan


def _inf_t(a):
    a["t"][2] = np.inf


def _small_x(a):
    a["x"] = a["x"][:, :, :4, :4].copy()


def _t64(a):
    a["t"] = a["t"].astype(np.float64)


def _short_step(a):
    a["step"] = a["step"][:-1]


def _no(name):
    return lambda a: a.pop(name)


def _bad_json(a):
    a["meta"] = np.array("{not json")


def _extra_field(a):
    m = json.loads(str(a["meta"]))
    m["colour"] = "red"
    a["meta"] = np.array(json.dumps(m))


def _steps_text(a):
    m = json.loads(str(a["meta"]))
    m["steps"] = "five"
    a["meta"] = np.array(json.dumps(m))


def _wrong_t(a):
    a["t"][0] = 42.0


def _extra_array(a):
    a["weights"] = np.zeros(3)


BAD = [
    (_empty, "'x' is empty"),
    (_nan, r"'x' has non-finite"),
    (_inf_t, r"'t' has non-finite"),
    (_small_x, r"'x' has samples of shape \[1, 4, 4\]"),
    (_t64, r"'t' must be float32"),
    (_short_step, r"'step' must be int32 of shape"),
    (_no("step"), r"array 'step' is missing"),
    (_no("cond"), r"array 'cond' is missing"),
    (_no("meta"), r"array 'meta' is missing"),
    (_bad_json, "not valid JSON"),
    (_extra_field, "unknown field 'colour'"),
    (_steps_text, "field 'steps' has the wrong type"),
    (_wrong_t, r"'t' disagrees with the plan at row 0"),
    (_extra_array, "unknown array 'weights'"),
]


@pytest.mark.parametrize("damage, message", BAD, ids=[m for _, m in BAD])
def test_bad_calibration_files_name_the_problem(calib, tmp_path, damage, message):
    arrays = _arrays(calib)
    damage(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(EdgediffError, match=message) as e:
        load_calibration(path)
    assert str(path) in str(e.value)


def test_files_that_are_not_calibration_sets(tmp_path):
    with pytest.raises(EdgediffError, match="missing"):
        load_calibration(tmp_path / "nope.npz")
    text = tmp_path / "text.npz"
    text.write_text("hello, not a zip")
    with pytest.raises(EdgediffError, match=r"text\.npz: not an \.npz archive"):
        load_calibration(text)
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(EdgediffError, match=r"array\.npz: a single \.npy array"):
        load_calibration(npy)


def test_load_checks_the_model_it_will_calibrate(tiny, calib, tmp_path):
    path = calib.save(tmp_path / "c.npz")
    other = dataclasses.replace(tiny, sample_shape=(1, 4, 4))
    with pytest.raises(EdgediffError, match=r"c\.npz: field 'sample_shape' is \[1, 8, 8\]"):
        load_calibration(path, model=other)


def test_construction_validates_too(calib):
    with pytest.raises(EdgediffError, match="calibration set: array 'step'"):
        CalibrationSet(calib.x, calib.t, calib.cond, calib.step.astype(np.int64), calib.meta)


# ---------------------------------------------------------------- selection
@pytest.mark.parametrize("strategy", sorted(SELECTORS))
def test_every_strategy_common_battery(calib, strategy):
    idx = select_indices(calib, strategy, 17, seed=3)
    assert idx.size == 17 and np.unique(idx).size == 17 and (np.diff(idx) > 0).all()
    assert idx.min() >= 0 and idx.max() < len(calib)
    np.testing.assert_array_equal(idx, select_indices(calib, strategy, 17, seed=3))
    np.testing.assert_array_equal(idx, select_indices(calib, strategy, 17, seed=np.random.default_rng(3)))
    sub = select(calib, strategy, 17, seed=3)
    assert len(sub) == 17 and sub.meta.selection == {"strategy": strategy, "budget": 17, "seed": 3, "options": {}}
    np.testing.assert_array_equal(sub.x, calib.x[idx])
    with pytest.raises(EdgediffError, match="exceeds"):
        select(calib, strategy, len(calib) + 1, seed=0)
    with pytest.raises(EdgediffError, match="no option 'colour'"):
        select(calib, strategy, 4, seed=0, colour=1)
    with pytest.raises(EdgediffError, match="positive integer"):
        select(calib, strategy, 0, seed=0)


def test_unknown_strategy(calib):
    with pytest.raises(EdgediffError, match="choose one of uniform, normal, eda"):
        select(calib, "kmeans", 4, seed=0)


def test_uniform_equal_count_per_step(calib):
    sub = select(calib, "uniform", 15, seed=0)
    np.testing.assert_array_equal(np.bincount(sub.step, minlength=STEPS), [3] * STEPS)
    counts = np.bincount(select(calib, "uniform", 17, seed=1).step, minlength=STEPS)
    assert counts.sum() == 17 and set(counts) == {3, 4}
    a, b = (select_indices(calib, "uniform", 15, seed=s) for s in (0, 1))
    assert not np.array_equal(a, b)


def test_normal_concentrates_where_its_parameters_say(calib):
    # the plan visits t = 80, 60, 40, 20, 0 of T = 100: positions 0.8 ... 0.0
    late = select(calib, "normal", 12, seed=0, mean=0.8, std=0.05)
    assert (late.t == 80).all()
    early = select(calib, "normal", 12, seed=0, mean=0.0, std=0.05)
    assert (early.t == 0).all()
    mid = select(calib, "normal", 30, seed=0, mean=0.4, std=0.15)
    assert abs(mid.t.mean() - 40) < 8 and (mid.t == 40).sum() > (mid.t == 80).sum()
    p = step_probabilities(calib, 0.4, 0.4)  # PTQ4DM's published setting
    assert abs(sum(p.values()) - 1) < 1e-12 and max(p, key=p.get) == 2  # step 2 is t = 40
    # a full step gives its share to the others instead of failing
    assert len(select(calib, "normal", 30, seed=0, mean=0.8, std=0.01)) == 30


def _clustered_set(calib, rng):
    """200 rows at step 0: five tight clusters of 36 (centres ~10 apart) and 20 far outliers."""
    centres = rng.normal(size=(5, 64)) * 7
    x = np.concatenate([c + 0.1 * rng.normal(size=(36, 64)) for c in centres] + [rng.normal(size=(20, 64)) * 60])
    n = x.shape[0]
    cluster = np.repeat(np.arange(6), [36] * 5 + [20])
    t0 = np.float32(calib.timesteps[0])
    s = CalibrationSet(
        x.reshape(n, 1, 8, 8).astype(np.float32),
        np.full(n, t0, np.float32),
        np.zeros(n, np.int64),
        np.zeros(n, np.int32),
        calib.meta,
    )
    return s, cluster


def _min_pairwise(x):
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    return d[np.triu_indices(len(x), 1)].min()


def test_eda_picks_representative_and_diverse_rows(calib):
    s, cluster = _clustered_set(calib, np.random.default_rng(0))
    flat = s.x.reshape(len(s), -1)
    eda = select_indices(s, "eda", 5, seed=0)
    assert sorted(cluster[eda]) == [0, 1, 2, 3, 4]  # one per cluster, no outlier
    rand = [_min_pairwise(flat[select_indices(s, "uniform", 5, seed=k)]) for k in range(20)]
    assert _min_pairwise(flat[eda]) > 5 * np.median(rand)
    # density_weight 0 is plain k-center greedy: it goes for the outliers
    kcenter = select_indices(s, "eda", 5, seed=0, density_weight=0.0)
    assert (cluster[kcenter] == 5).sum() >= 3


def test_density_diversity_first_pick_is_densest():
    rng = np.random.default_rng(1)
    feats = np.concatenate([rng.normal(size=(50, 2)) * 0.01, rng.normal(size=(5, 2)) * 10])
    picked = density_diversity(feats, 3)
    assert picked[0] < 50 and len(set(picked)) == 3


def test_eda_on_model_activations(tiny, calib):
    sub = select(calib, "eda", 10, seed=0, features="activations", model=tiny)
    np.testing.assert_array_equal(np.bincount(sub.step, minlength=STEPS), [2] * STEPS)
    assert sub.meta.selection["options"] == {"features": "activations", "model": "<ModelSpec>"}
    with pytest.raises(EdgediffError, match="no module 'model.nope'"):
        select(calib, "eda", 10, seed=0, features="activations", model=tiny, layer="model.nope")


# ---------------------------------------------------------------- observers
def test_minmax_is_exact_on_known_data():
    x = np.array([-2.0, -1.0, 0.0, 0.5, 3.0], np.float32)
    r = observe(x, "minmax")
    assert float(r.min) == -2.0 and float(r.max) == 3.0
    assert np.isclose(float(r.scale), 5.0 / 255) and int(r.zero_point) == round(-128 + 2.0 / (5.0 / 255))
    y = r.fake_quantize(x)
    assert y[2] == 0.0 and np.abs(y - x).max() <= float(r.scale) / 2 + 1e-7
    s = observe(x, "minmax", symmetric=True)
    assert np.isclose(float(s.scale), 3.0 / 127) and int(s.zero_point) == 0 and float(s.min) == -3.0
    assert (s.qmin, s.qmax, r.qmin, r.qmax) == (-127, 127, -128, 127)
    pos = observe(np.array([1.0, 2.0]), "minmax")  # asymmetric ranges always contain zero
    assert float(pos.min) == 0.0 and pos.fake_quantize(np.zeros(1))[0] == 0.0


def test_percentile_clips_outliers():
    x = np.concatenate([np.random.default_rng(0).normal(size=20000), [1000.0, -800.0]])
    assert float(observe(x, "minmax").max) == 1000.0
    p = observe(x, "percentile", percentile=99.9)
    assert 2.5 < float(p.max) < 4.5 and -4.5 < float(p.min) < -2.5
    ps = observe(x, "percentile", percentile=99.9, symmetric=True)
    assert 2.5 < float(ps.max) < 4.5 and float(ps.min) == -float(ps.max)
    with pytest.raises(EdgediffError, match="percentile must be"):
        observe(x, "percentile", percentile=20)


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_beats_minmax_on_heavy_tailed_data(symmetric):
    x = np.random.default_rng(0).standard_t(df=2, size=50000)
    err = {k: np.mean((observe(x, k, symmetric=symmetric).fake_quantize(x) - x) ** 2) for k in ("minmax", "mse")}
    assert err["mse"] < 0.9 * err["minmax"]


def test_per_channel_weights():
    w = np.random.default_rng(0).normal(size=(16, 8, 3, 3)) * np.linspace(0.1, 4, 16)[:, None, None, None]
    for kind in OBSERVERS:
        r = observe(w, kind, axis=0, symmetric=True)
        assert r.scale.shape == r.zero_point.shape == r.max.shape == (16,)
        assert (r.zero_point == 0).all()
        assert np.abs(r.fake_quantize(w) - w).max() < 5 * r.scale.max()
    r = observe(w, "minmax", axis=0, symmetric=True)
    np.testing.assert_allclose(r.max, np.abs(w).reshape(16, -1).max(1), rtol=1e-6)
    assert (np.abs(r.fake_quantize(w) - w).reshape(16, -1).max(1) <= r.scale / 2 * (1 + 1e-5)).all()
    assert observe(w, "minmax", axis=1).scale.shape == (8,)


def test_streaming_observer_equals_one_shot():
    x = np.random.default_rng(0).standard_t(df=3, size=30000)
    for kind in OBSERVERS:
        o = Observer(kind)
        for part in np.array_split(x, 7):
            o.update(part)
        assert o.count == x.size
        a, b = o.result(), observe(x, kind)
        assert float(a.scale) == float(b.scale) and int(a.zero_point) == int(b.zero_point)


def test_observer_errors():
    with pytest.raises(EdgediffError, match="unknown observer 'kl'"):
        observe(np.ones(3), "kl")
    with pytest.raises(EdgediffError, match="no option 'grid'"):
        observe(np.ones(3), "minmax", grid=4)
    with pytest.raises(EdgediffError, match="non-finite"):
        Observer().update(np.array([1.0, np.nan]))
    with pytest.raises(EdgediffError, match="no values"):
        Observer().result()


# ---------------------------------------------------------------- activations per timestep group
def test_step_groups_are_contiguous_runs():
    np.testing.assert_array_equal(step_groups(5, 2), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(step_groups(4, 4), [0, 1, 2, 3])
    with pytest.raises(EdgediffError, match="at most one group per step"):
        step_groups(3, 4)


def test_collect_activations_by_timestep_group(tiny, calib):
    stats = collect_activations(tiny, calib, groups=2)
    convs = match_layers(tiny.module)
    assert set(stats) == {f"{n}:{w}" for n in convs for w in ("input", "output")}
    assert all(set(per) == {0, 1} for per in stats.values())
    first, second = stats["model.conv_in:input"][0], stats["model.conv_in:input"][1]
    assert first.count == (calib.step <= 2).sum() * 64 and second.count == (calib.step >= 3).sum() * 64
    # min-max of the first layer's input is exactly the range of the recorded x in that group
    assert float(second.result().max) == calib.x[calib.step >= 3].max()
    assert float(first.result().min) == min(0.0, calib.x[calib.step <= 2].min())
    assert float(second.result().max) > float(first.result().max)  # ranges differ along the trajectory
    only = collect_activations(
        tiny, calib, layers=["model.conv_*"], which=("input",), kind="percentile", percentile=99.0
    )
    assert sorted(only) == ["model.conv_in:input", "model.conv_out:input"]
    with pytest.raises(EdgediffError, match="timestep group 1 .*no rows"):
        collect_activations(tiny, calib.subset(np.nonzero(calib.step <= 2)[0]), groups=2)
    with pytest.raises(EdgediffError, match="'model.nothing\\*' matches no"):
        match_layers(tiny.module, ["model.nothing*"])


# ---------------------------------------------------------------- sensitivity
class Fragile(nn.Module):
    """`fragile` sees one huge activation (1e4) in a channel it ignores; per-tensor int8 then
    wipes out every ordinary value of its input."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.head = nn.Conv2d(1, 8, 3, padding=1)
            self.fragile = nn.Conv2d(8, 8, 1)
            self.tail = nn.Conv2d(8, 1, 3, padding=1)
            self.mix = nn.Linear(64, 64)
        with torch.no_grad():
            self.fragile.weight[:, 0] = 0.0

    def forward(self, x, t, cond=None):
        h = torch.tanh(self.head(x / 10))
        h = torch.cat([torch.full_like(h[:, :1], 1e4), h[:, 1:]], dim=1)
        y = self.tail(torch.tanh(self.fragile(h)))
        return self.mix(y.reshape(y.shape[0], -1)).reshape(y.shape)


def test_sensitivity_ranks_the_fragile_layer_first(calib, tmp_path):
    table = layer_sensitivity(Fragile(), calib)
    assert [r.name for r in table.layers][0] == "fragile"
    assert {r.name for r in table.layers} == {"head", "fragile", "tail", "mix"}
    top = table.layers[0]
    assert top.rel_error > 0.3 and top.rel_error > 10 * table.layers[1].rel_error
    assert set(top.per_step) == set(range(STEPS)) and all(v > 0 for v in top.per_step.values())
    assert top.type == "Conv2d" and top.params == 8 * 8 + 8
    data = json.loads(table.save_json(tmp_path / "sens.json").read_text())
    assert data["layers"][0]["name"] == "fragile" and len(data["timesteps"]) == STEPS
    png = table.plot(tmp_path / "sens.png", top_k=3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the model is left exactly as it was
    model = Fragile()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer_sensitivity(model, calib.subset(np.arange(12)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.fragile._forward_pre_hooks and not model.fragile._forward_hooks


# ---------------------------------------------------------------- CLI
def _parser():
    p = argparse.ArgumentParser(prog="edgediff")
    add_calibrate_parser(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_calibrate(tmp_path, capsys):
    out = tmp_path / "calib.npz"
    a = _parser().parse_args(
        [
            "calibrate",
            "tiny_models:tiny_unet",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--guidance",
            "2",
            "--samples",
            "4",
            "--seed",
            "5",
            "-o",
            str(out),
            "--json",
        ]
    )
    assert a.func(a) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 3 * 4 * 2 and info["timesteps"] == [66.0, 33.0, 0.0]
    c = load_calibration(out)
    assert (c.meta.sampler, c.meta.seed, len(c)) == ("ddim", 5, 24)
    bad = _parser().parse_args(["calibrate", "tiny_models:tiny_unet", "-o", str(tmp_path / "calib.txt")])
    with pytest.raises(EdgediffError, match=r"calib\.txt: output must end in \.npz"):
        bad.func(bad)
    with pytest.raises(SystemExit):
        _parser().parse_args(["calibrate", "tiny_models:tiny_unet", "--samples", "0", "-o", str(out)])
