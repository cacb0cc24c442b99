"""Every solver against its diffusers twin, plus the plan, schedule and sampling loop.

Conformance: both sides get the same x_T and step noise (diffusers' ``randn_tensor`` is
patched to return our NoiseSource draws) and the same fake model (a nonlinear function of
x and t, so the trajectory is a real one); every step's model input and the final
sample are compared.  Two references:

- diffusers with its tables (alphas_cumprod, sigmas, ...) upcast to float64 and float64
  samples: the same formulas with our precision; bound 1e-5 per step.
- stock diffusers in float32: bound 1e-4.  The gap is diffusers' own float32 rounding
  (e.g. 1 - abar_t / abar_s for adjacent steps in 1000-step DDPM, or x - x0 at
  sigma = 157 in one-step Euler), which the float64 reference shows is not ours.
"""

from __future__ import annotations

import importlib
import json

import diffusers
import numpy as np
import pytest
import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.schedule import NoiseSchedule, make_schedule, schedule_from_diffusers_config, timesteps
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.samplers import SOLVERS, Plan, get_solver
from edgediff.runtimes.sampling import sample

# diffusers' own np.array(torch tensor) call under numpy 2; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

# solver -> (diffusers class, its module, config overrides, spacings to test)
REFERENCES = {
    "ddpm": ("DDPMScheduler", "scheduling_ddpm", {"clip_sample": False}, ("leading", "trailing", "linspace")),
    "ddim": ("DDIMScheduler", "scheduling_ddim", {"clip_sample": False}, ("leading", "trailing", "linspace")),
    "dpmpp-2m": (
        "DPMSolverMultistepScheduler",
        "scheduling_dpmsolver_multistep",
        {},
        ("leading", "trailing", "linspace"),
    ),
    "euler": ("EulerDiscreteScheduler", "scheduling_euler_discrete", {}, ("leading", "trailing", "linspace")),
    "lcm": ("LCMScheduler", "scheduling_lcm", {}, ("lcm",)),
}
STEPS = {
    "ddpm": (1, 4, 10, 50, 1000),
    "ddim": (1, 4, 10, 50),
    "dpmpp-2m": (1, 2, 4, 10, 50),
    "euler": (1, 4, 10, 50),
    "lcm": (1, 2, 4, 8, 50),
}
SHAPE = (3, 5, 5)  # 75 values per image: not a multiple of 4, so the rng's truncation is exercised
NOISE = NoiseSource(seed=20240611, streams=(3, 11))


def fake_model(x, t):
    """A smooth nonlinear eps(x, t), identical on both sides (numpy, float32)."""
    t = np.asarray(t, np.float32).reshape(-1, 1, 1, 1)
    return (np.float32(0.5) * np.tanh(x) + np.float32(0.01) * t / np.float32(1000)).astype(np.float32)


def diffusers_scheduler(name, spacing, prediction_type="epsilon", **cfg):
    cls, _, overrides, _ = REFERENCES[name]
    kwargs = dict(overrides, prediction_type=prediction_type, **cfg)
    if name != "lcm":
        kwargs["timestep_spacing"] = spacing
    return getattr(diffusers, cls)(**kwargs)


def diffusers_trajectory(monkeypatch, name, steps, spacing, *, eta=0.0, prediction_type="epsilon", f64=True, **cfg):
    """Model inputs at every step and the final sample, from diffusers' own scheduler."""
    sched = diffusers_scheduler(name, spacing, prediction_type, **cfg)
    sched.set_timesteps(steps)
    dtype = torch.float64 if f64 else torch.float32
    if f64:
        for attr in ("alphas_cumprod", "one", "final_alpha_cumprod", "sigmas"):
            if isinstance(getattr(sched, attr, None), torch.Tensor):
                setattr(sched, attr, getattr(sched, attr).to(torch.float64))
    state = {}

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(NOISE.draw(state["i"] + 1, tuple(shape[1:]))).to(dtype or torch.float32)

    monkeypatch.setattr(
        importlib.import_module("diffusers.schedulers." + REFERENCES[name][1]), "randn_tensor", randn_tensor
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # LCM's c_skip / c_out follow the default dtype
    try:
        x = torch.from_numpy(NOISE.draw(0, SHAPE)).to(dtype) * sched.init_noise_sigma
        inputs, ts = [], []
        for i, t in enumerate(sched.timesteps):
            x_in = sched.scale_model_input(x, t)
            inputs.append(x_in.numpy().astype(np.float32))
            ts.append(float(t))
            eps = torch.from_numpy(fake_model(inputs[-1], np.full(len(NOISE.streams), float(t)))).to(dtype)
            state["i"] = i
            x = sched.step(eps, t, x, **({"eta": eta} if name == "ddim" else {})).prev_sample
    finally:
        torch.set_default_dtype(default)
    return inputs + [x.numpy()], np.array(ts, np.float32), sched


def our_trajectory(name, steps, spacing, schedule, **opts):
    plan = get_solver(name).plan(schedule, steps, **({} if name == "lcm" else {"spacing": spacing}), **opts)
    inputs, ts = [], []

    def record(i, t, x_in, eps):
        inputs.append(x_in.copy())
        ts.append(t)

    out = sample(lambda x, t, labels: fake_model(x, t), plan, NOISE, sample_shape=SHAPE, callback=record)
    return inputs + [out], np.array(ts, np.float32), plan


def max_rel_error(ours, theirs):
    assert len(ours) == len(theirs)
    return max(np.abs(a - b).max() / max(np.abs(b).max(), 1e-8) for a, b in zip(ours, theirs))


ERRORS: dict[str, list[float]] = {}


@pytest.fixture(scope="module", autouse=True)
def report_errors(request):
    """Print the worst error per solver after the module's tests (visible without -s)."""
    yield
    if not ERRORS:
        return
    lines = ["", "max relative error per step vs diffusers (float64 tables | stock float32):"]
    lines += [f"  {name:9s} {e64:.2e} | {e32:.2e}" for name, (e64, e32) in sorted(ERRORS.items())]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n".join(lines))


def conformance_cases():
    for name in SOLVERS:
        spacings = REFERENCES[name][3]
        for spacing in spacings:
            for steps in STEPS[name]:
                if steps == 1000 and spacing != "leading":
                    continue
                yield pytest.param(name, steps, spacing, {}, "epsilon", id=f"{name}-{spacing}-{steps}")
        yield pytest.param(name, 10, spacings[-1], {}, "v_prediction", id=f"{name}-{spacings[-1]}-10-v")
        yield pytest.param(name, 10, spacings[-1], {}, "sample", id=f"{name}-{spacings[-1]}-10-x0")
    for spacing in REFERENCES["ddim"][3]:
        for steps in (1, 4, 10, 50):
            yield pytest.param("ddim", steps, spacing, {"eta": 0.5}, "epsilon", id=f"ddim-eta0.5-{spacing}-{steps}")
    for steps in (2, 4):  # at timestep_scaling 10 the boundary scalings are ~1e-6 away from (1, 0)
        yield pytest.param("lcm", steps, "lcm", {"timestep_scaling": 0.1}, "epsilon", id=f"lcm-scaling0.1-{steps}")


class TestSolverConformance:
    """The battery every registered solver runs."""

    def test_every_solver_has_a_reference(self):
        assert set(REFERENCES) == set(SOLVERS)

    @pytest.mark.parametrize("name,steps,spacing,opts,prediction_type", list(conformance_cases()))
    def test_trajectory_matches_diffusers(self, monkeypatch, name, steps, spacing, opts, prediction_type):
        theirs64, their_t, sched = diffusers_trajectory(
            monkeypatch, name, steps, spacing, prediction_type=prediction_type, **opts
        )
        theirs32, _, _ = diffusers_trajectory(
            monkeypatch, name, steps, spacing, prediction_type=prediction_type, f64=False, **opts
        )
        schedule = NoiseSchedule(sched.alphas_cumprod.numpy().astype(np.float64), prediction_type)
        ours, our_t, plan = our_trajectory(name, steps, spacing, schedule, **opts)
        np.testing.assert_array_equal(our_t, their_t)
        e64, e32 = max_rel_error(ours, theirs64), max_rel_error(ours, theirs32)
        worst = ERRORS.setdefault(name, [0.0, 0.0])
        worst[:] = [max(worst[0], e64), max(worst[1], e32)]
        assert e64 <= 1e-5, f"{name} {spacing} {steps}: {e64:.2e} vs diffusers (float64)"
        assert e32 <= 1e-4, f"{name} {spacing} {steps}: {e32:.2e} vs diffusers (float32)"

    @pytest.mark.parametrize("name", list(SOLVERS))
    def test_plan_round_trips_through_json(self, name):
        plan = get_solver(name).plan(make_schedule(), 7)
        again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
        assert again.to_dict() == plan.to_dict()
        np.testing.assert_array_equal(again.model_timesteps, plan.model_timesteps)
        run = [sample(lambda x, t, _: fake_model(x, t), p, NOISE, sample_shape=SHAPE) for p in (plan, again)]
        np.testing.assert_array_equal(*run)

    @pytest.mark.parametrize("name", list(SOLVERS))
    def test_step_is_pure(self, name):
        solver, plan = get_solver(name), get_solver(name).plan(make_schedule(), 5)
        x = NOISE.draw(0, SHAPE)
        eps, z = fake_model(x, np.full(2, 500.0)), NOISE.draw(9, SHAPE)
        x_copy = x.copy()
        first = solver.step(plan, 2, x, eps, x * 0.5, z)
        second = solver.step(plan, 2, x, eps, x * 0.5, z)
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(x, x_copy)
        assert first[0].dtype == np.float32 and first[0].shape == x.shape

    @pytest.mark.parametrize("name", list(SOLVERS))
    def test_bad_steps_and_spacing_raise(self, name):
        solver = get_solver(name)
        for steps in (0, -3, 1001, 2.5):
            with pytest.raises(EdgediffError, match="steps"):
                solver.plan(make_schedule(), steps)
        with pytest.raises(EdgediffError, match="'bogus'.*choose one of"):
            solver.plan(make_schedule(), 4, spacing="bogus")


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 3, 4, 7, 10, 50, 100, 999, 1000])
def test_timesteps_match_diffusers(spacing, n):
    ref = diffusers.DDIMScheduler(timestep_spacing=spacing)
    ref.set_timesteps(n)
    ours = timesteps(make_schedule(), n, spacing)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, ref.timesteps.numpy())


def test_timesteps_with_steps_offset_and_diffusers_trailing_quirk():
    ref = diffusers.DDIMScheduler(steps_offset=1)
    ref.set_timesteps(50)
    np.testing.assert_array_equal(timesteps(make_schedule(), 50, "leading", steps_offset=1), ref.timesteps.numpy())
    # diffusers' float arange yields 62 trailing timesteps for 61 steps, the last being -1; we keep 61
    ref = diffusers.DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(61)
    ours = timesteps(make_schedule(), 61, "trailing")
    assert len(ref.timesteps) == 62 and ref.timesteps[-1] == -1
    np.testing.assert_array_equal(ours, ref.timesteps.numpy()[:61])
    with pytest.raises(EdgediffError, match="steps_offset"):
        timesteps(make_schedule(), 1000, "leading", steps_offset=1)


@pytest.mark.parametrize("name", ["dpmpp-2m", "euler"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 3, 10, 25, 50])
def test_sigma_tables_match_diffusers(name, spacing, n):
    """Timesteps bit for bit; sigmas to float32 ulps (torch's vectorised float32 sqrt is not
    always correctly rounded, numpy's is)."""
    ref = diffusers_scheduler(name, spacing)
    ref.set_timesteps(n)
    plan = get_solver(name).plan(NoiseSchedule(ref.alphas_cumprod.numpy().astype(np.float64)), n, spacing=spacing)
    np.testing.assert_allclose(plan.params["sigmas"], ref.sigmas.numpy(), rtol=3e-7, atol=0)
    np.testing.assert_array_equal(plan.model_timesteps, ref.timesteps.numpy().astype(np.float32))
    if name == "euler":
        np.testing.assert_allclose(plan.params["init_sigma"], float(ref.init_noise_sigma), rtol=3e-7)


def test_lcm_timesteps_match_diffusers():
    for n in (1, 2, 3, 4, 8, 13, 50):
        ref = diffusers.LCMScheduler()
        ref.set_timesteps(n)
        plan = get_solver("lcm").plan(NoiseSchedule(ref.alphas_cumprod.numpy().astype(np.float64)), n)
        np.testing.assert_array_equal(plan.timesteps, ref.timesteps.numpy())
    with pytest.raises(EdgediffError, match="1..50"):
        get_solver("lcm").plan(make_schedule(), 51)


@pytest.mark.parametrize(
    "beta_schedule,start,end",
    [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012), ("squaredcos_cap_v2", 1e-4, 0.02)],
)
def test_make_schedule_matches_diffusers(beta_schedule, start, end):
    ref = diffusers.DDPMScheduler(beta_schedule=beta_schedule, beta_start=start, beta_end=end)
    want = ref.alphas_cumprod.numpy().astype(np.float64)
    got = make_schedule(1000, beta_schedule, start, end).alphas_cumprod
    assert got.dtype == np.float64 and got.shape == (1000,)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    if beta_schedule == "squaredcos_cap_v2":  # no torch.linspace involved: bit for bit
        np.testing.assert_array_equal(got, want)


def test_schedule_from_diffusers_config():
    cfg = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"
    ).config
    s = schedule_from_diffusers_config(dict(cfg))
    assert s.prediction_type == "v_prediction" and s.num_train_timesteps == 1000
    np.testing.assert_allclose(s.alphas_cumprod, make_schedule(1000, "scaled_linear", 0.00085, 0.012).alphas_cumprod)
    betas = np.linspace(1e-3, 0.05, 20)
    ref = diffusers.DDPMScheduler(num_train_timesteps=20, trained_betas=betas)
    s = schedule_from_diffusers_config({"_class_name": "DDPMScheduler", "trained_betas": betas.tolist()})
    np.testing.assert_array_equal(s.alphas_cumprod, ref.alphas_cumprod.numpy().astype(np.float64))
    with pytest.raises(EdgediffError, match="rescale_betas_zero_snr"):
        schedule_from_diffusers_config({"rescale_betas_zero_snr": True})


def test_schedule_dict_round_trip_and_validation():
    s = make_schedule(50, prediction_type="v_prediction")
    assert NoiseSchedule.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(EdgediffError, match="'betas'"):
        NoiseSchedule.from_dict({"alphas_cumprod": [0.9, 0.5], "betas": [0.1]})
    with pytest.raises(EdgediffError, match="alphas_cumprod"):
        NoiseSchedule.from_dict({"alphas_cumprod": [[0.9, 0.5]]})
    with pytest.raises(EdgediffError, match="alphas_cumprod"):
        NoiseSchedule.from_dict({"alphas_cumprod": [0.9, 1.5]})
    with pytest.raises(EdgediffError, match="'x0'.*epsilon, v_prediction, sample"):
        NoiseSchedule.from_dict({"alphas_cumprod": [0.9, 0.5], "prediction_type": "x0"})
    with pytest.raises(EdgediffError, match="'cosine'.*linear"):
        make_schedule(beta_schedule="cosine")


def test_bad_solver_and_plan_dicts_raise():
    with pytest.raises(EdgediffError, match="'heun'.*ddpm, ddim, dpmpp-2m, euler, lcm"):
        get_solver("heun")
    good = get_solver("euler").plan(make_schedule(), 4).to_dict()
    for broken, match in [
        ({**good, "extra": 1}, "'extra'"),
        ({k: v for k, v in good.items() if k != "params"}, "'params'"),
        ({**good, "solver": "heun"}, "'heun'"),
        ({**good, "timesteps": [999, 1000, 3, 1]}, "timesteps"),
        ({**good, "timesteps": [3, 999, 500, 1]}, "timesteps"),
        ({**good, "timesteps": [999.5, 700, 300, 1]}, "timesteps"),
        ({**good, "params": {**good["params"], "churn": 0.1}}, "'churn'"),
        ({**good, "params": {**good["params"], "sigmas": good["params"]["sigmas"][:-1]}}, "'sigmas'"),
        ({**good, "params": {k: v for k, v in good["params"].items() if k != "init_sigma"}}, "'init_sigma'"),
    ]:
        with pytest.raises(EdgediffError, match=match):
            Plan.from_dict(broken)
    with pytest.raises(EdgediffError, match="eta"):
        get_solver("ddim").plan(make_schedule(), 4, eta=-1.0)


def labelled_model(calls):
    def denoise(x, t, labels):
        calls.append((x.shape[0], None if labels is None else labels.copy()))
        shift = 0.0 if labels is None else labels.astype(np.float32).reshape(-1, 1, 1, 1) * np.float32(0.1)
        return (fake_model(x, t) + shift).astype(np.float32)

    return denoise


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "euler"])
def test_sample_with_guidance_equals_manual_loop(name):
    plan = get_solver(name).plan(make_schedule(), 6)
    labels, null, guidance = np.array([2, 7]), 10, 3.5
    calls = []
    got = sample(
        labelled_model(calls), plan, NOISE, labels=labels, guidance=guidance, null_label=null, sample_shape=SHAPE
    )
    assert len(calls) == len(plan)
    assert all(b == 4 and list(lab) == [2, 7, 10, 10] for b, lab in calls)

    solver, model = get_solver(name), labelled_model([])
    x, carry = solver.init_latent(plan, NOISE.draw(0, SHAPE)), None
    for i, t in enumerate(plan.model_timesteps):
        x_in = solver.model_input(plan, i, x)
        tb = np.full(2, t, np.float32)
        eps_c, eps_u = model(x_in, tb, labels), model(x_in, tb, np.full(2, null))
        eps = eps_u + np.float32(guidance) * (eps_c - eps_u)
        z = NOISE.draw(i + 1, SHAPE) if solver.uses_noise(plan, i) else None
        x, carry = solver.step(plan, i, x, eps, carry, z)
    np.testing.assert_array_equal(got, x)
    unguided = sample(labelled_model([]), plan, NOISE, labels=labels, sample_shape=SHAPE)
    assert np.abs(unguided - got).max() > 1e-3


def test_sample_argument_errors():
    plan = get_solver("ddim").plan(make_schedule(), 2)
    model = labelled_model([])
    with pytest.raises(EdgediffError, match="null_label"):
        sample(model, plan, NOISE, labels=np.array([1, 2]), guidance=2.0, sample_shape=SHAPE)
    with pytest.raises(EdgediffError, match="3 labels"):
        sample(model, plan, NOISE, labels=np.array([1, 2, 3]), sample_shape=SHAPE)
