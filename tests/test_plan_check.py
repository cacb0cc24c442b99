"""One battery of bad plans, fed to the Python Plan.from_dict and to the C runtime's plan parser.

Each row is (solver, edit to that solver's valid plan dict, expected message fragment, exact):
both sides must refuse the edited plan with an EdgediffError whose message contains the
fragment. EXACT rows must get the same message word for word (the refusal comes from
edd_plan_create or a solver's check, which Python mirrors); for FRAGMENT rows the C side
refuses elsewhere (the extension's type conversion of a bool, a string or a null inside a
list; core.schedule's own wording) and only the fragment is shared. A second table holds edits at the edge of what is allowed, which both
must accept and then run to the same samples.

Rows for the generic checks (every plan key, every param of every kind) are made from each
solver's ``param_kinds``, so a new sampler gets them without an edit; its own refusals (the
solver's ``check``) go in SOLVER_ROWS.
"""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from edgediff.core.errors import EdgediffError
from edgediff.core.schedule import make_schedule
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.samplers import SOLVERS, Plan, get_solver
from edgediff.runtimes.samplers.base import NUMBER, OPTIONAL_NUMBER, PER_STEP, Deterministic
from edgediff.runtimes.sampling import sample

try:
    from edgediff.runtimes import _cruntime as C
except ImportError as e:
    raise ImportError(f"the C runtime extension is not built ({e}); run `pip install -e .`") from e

T, N = 100, 4  # a 100-step training schedule, 4-step plans
SHAPE = (2, 3, 3)
NOISE = NoiseSource(seed=7, streams=(1, 2))


class _Delete:
    """The value that removes a field; a fixed repr keeps the test ids the same in every process."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()
EXACT, FRAGMENT = True, False


def valid_plan(name: str) -> dict:
    """The solver's own plan for N steps, as scheduler.json carries it."""
    plan = get_solver(name).plan(make_schedule(T), N)
    return json.loads(json.dumps(plan.to_dict()))


def edited(plan: dict, path: str, value) -> dict:
    """A deep copy of plan with the field at path ("params.sigmas[2]") set to value (or deleted)."""
    d = copy.deepcopy(plan)
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    target = d
    for key in keys[:-1]:
        target = target[key]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return d


def generic_rows(name: str):
    """What edd_plan_create's generic part refuses, for one solver."""
    kinds = get_solver(name).param_kinds
    valid = ", ".join(kinds)
    yield "extra", 1, "plan has unknown key 'extra'", FRAGMENT
    for key in ("solver", "timesteps", "schedule", "params"):
        yield key, DELETE, f"plan is missing the key '{key}'", EXACT
    yield "solver", "heun", f"unknown solver 'heun'; choose one of {', '.join(SOLVERS)}", EXACT  # same registry
    yield "solver", 3, "plan field 'solver' must be a string", EXACT
    yield "timesteps[0]", T, f"plan field 'timesteps' must descend within 0..{T - 1}; plan.timesteps[0] is {T}", EXACT
    yield (
        "timesteps[2]",
        T - 1,
        f"plan field 'timesteps' must descend within 0..{T - 1}; plan.timesteps[2] is 99",
        EXACT,
    )
    yield "timesteps[3]", -1, f"plan field 'timesteps' must descend within 0..{T - 1}; plan.timesteps[3] is -1", EXACT
    yield "timesteps", [], "plan field 'timesteps' must be a non-empty list of integers", FRAGMENT
    yield "timesteps[1]", 30.5, "plan field 'timesteps' must be", FRAGMENT
    yield "timesteps[1]", 30.0, "plan field 'timesteps' must be", FRAGMENT
    yield "timesteps[1]", True, "plan field 'timesteps' must be", FRAGMENT
    yield "timesteps", 5, "plan field 'timesteps' must be", FRAGMENT
    yield "schedule", [0.5], "schedule", FRAGMENT
    yield "schedule.betas", [0.1], "schedule has unknown key 'betas'", FRAGMENT
    yield "schedule.alphas_cumprod[5]", 1.5, "alphas_cumprod values must lie in (0, 1]", FRAGMENT
    yield "schedule.alphas_cumprod[5]", 0.0, "alphas_cumprod values must lie in (0, 1]", FRAGMENT
    yield "schedule.alphas_cumprod[5]", "0.5", "alphas_cumprod", FRAGMENT
    yield "schedule.alphas_cumprod[5]", True, "alphas_cumprod", FRAGMENT
    yield "schedule.alphas_cumprod", [0.5], "alphas_cumprod", FRAGMENT
    yield "schedule.prediction_type", "x0", "unknown prediction_type 'x0'; choose one of epsilon, v_prediction", EXACT
    yield "schedule.prediction_type", None, "prediction_type", FRAGMENT
    yield "params", [1], "plan field 'params' must be a JSON object", FRAGMENT
    yield "params.churn", 0.1, f"{name} plan has unknown param 'churn'; valid: {valid}", EXACT
    for key, kind in kinds.items():
        bad = f"{name} plan param '{key}' must be {kind} (n={N}), got"
        yield f"params.{key}", DELETE, f"{name} plan is missing param '{key}'", EXACT
        yield f"params.{key}", True, f"param '{key}' must be", FRAGMENT
        yield f"params.{key}", "abc", f"param '{key}' must be", FRAGMENT
        if kind in (NUMBER, OPTIONAL_NUMBER):
            yield f"params.{key}", [1.0, 2.0], f"{bad} 2 values", EXACT
            yield f"params.{key}", float("inf"), f"{bad} a non-finite number", EXACT
            yield f"params.{key}", float("nan"), f"{bad} a non-finite number", EXACT
            yield f"params.{key}", 10**400, f"param '{key}' must be", FRAGMENT
            if kind == NUMBER:
                yield f"params.{key}", None, f"{bad} null", EXACT
        else:
            size = N if kind == PER_STEP else N + 1
            yield f"params.{key}", None, f"{bad} null", EXACT
            yield f"params.{key}", 3.0, f"{bad} a number", EXACT
            yield f"params.{key}", [1.0] * (size - 1), f"{bad} {size - 1} values", EXACT
            yield f"params.{key}", [1.0] * (size + 1), f"{bad} {size + 1} values", EXACT
            fin = f"{name} plan param '{key}' must be finite numbers; plan.params.{key}[1] is"
            yield f"params.{key}[1]", float("inf"), f"{fin} inf", EXACT
            yield f"params.{key}[1]", float("-inf"), f"{fin} -inf", EXACT
            yield f"params.{key}[1]", float("nan"), f"{fin} nan", EXACT
            yield f"params.{key}[1]", None, f"param '{key}' must be", FRAGMENT
            yield f"params.{key}[1]", "1", f"param '{key}' must be", FRAGMENT


# the solvers' own checks (csrc/src/solvers/<name>.c check, samplers/<name>.py check)
SOLVER_ROWS = [
    ("ddpm", "params.clip_sample", -1.0, "ddpm plan param 'clip_sample' must be > 0 or null, got -1"),
    ("ddpm", "params.clip_sample", 0, "ddpm plan param 'clip_sample' must be > 0 or null, got 0"),
    ("ddim", "params.eta", -1.0, "ddim plan param 'eta' must be >= 0, got -1"),
    ("ddim", "params.eta", -1e-300, "ddim plan param 'eta' must be >= 0, got -1e-300"),
    ("ddim", "params.prev_timesteps[2]", 2.5, "'prev_timesteps' must be integers below 100; plan.params.prev_timesteps[2] is 2.5"),
    ("ddim", "params.prev_timesteps[0]", T, "'prev_timesteps' must be integers below 100; plan.params.prev_timesteps[0] is 100"),
    ("ddim", "params.final_alpha_cumprod", 0.0, "ddim plan param 'final_alpha_cumprod' must lie in (0, 1], got 0"),
    ("ddim", "params.final_alpha_cumprod", 1.5, "ddim plan param 'final_alpha_cumprod' must lie in (0, 1], got 1.5"),
    ("ddim", "params.clip_sample", -0.5, "ddim plan param 'clip_sample' must be > 0 or null, got -0.5"),
    ("dpmpp-2m", "params.sigmas[2]", 0.0, "dpmpp-2m plan param 'sigmas' must be > 0 before the last; plan.params.sigmas[2] is 0"),
    ("dpmpp-2m", "params.sigmas[0]", -1.0, "must be > 0 before the last; plan.params.sigmas[0] is -1"),
    ("dpmpp-2m", "params.sigmas[3]", -1e-3, "must be > 0 before the last; plan.params.sigmas[3] is -0.001"),
    ("dpmpp-2m", "params.sigmas[4]", -0.1, "dpmpp-2m plan param 'sigmas' must end in a value >= 0; plan.params.sigmas[4] is -0.1"),
    ("euler", "params.sigmas[3]", 0.0, "euler plan param 'sigmas' must be > 0 before the last; plan.params.sigmas[3] is 0"),
    ("euler", "params.sigmas[1]", -2.0, "euler plan param 'sigmas' must be > 0 before the last; plan.params.sigmas[1] is -2"),
    ("lcm", "params.original_inference_steps", 2.5, "lcm plan param 'original_inference_steps' must be an integer in 1..100, got 2.5"),
    ("lcm", "params.original_inference_steps", 0, "lcm plan param 'original_inference_steps' must be an integer in 1..100, got 0"),
    ("lcm", "params.original_inference_steps", T + 1, "'original_inference_steps' must be an integer in 1..100, got 101"),
]  # fmt: skip

# edits at the edge of what is allowed: both accept, and both run them to the same samples
ACCEPTED = [
    ("ddpm", "params.clip_sample", 1e-6),
    ("ddpm", "timesteps[1]", 75),  # a repeated timestep (timesteps descend, not strictly)
    ("ddim", "params.eta", 0.0),
    ("ddim", "params.eta", 1.0),
    ("ddim", "params.prev_timesteps[3]", -500),  # any s < 0 means "before 0"
    ("ddim", "params.prev_timesteps[1]", 30.0),  # an integral float is an integer
    ("ddim", "params.prev_timesteps[2]", 10),
    ("ddim", "params.final_alpha_cumprod", 0.99995),  # below abar of the last t the std formula is NaN in both
    ("ddim", "params.clip_sample", 0.25),
    ("dpmpp-2m", "params.sigmas[4]", 0.5),  # only the last may be 0, and it need not be
    ("dpmpp-2m", "schedule.alphas_cumprod[0]", 1.0),
    ("euler", "params.sigmas[4]", -1.0),  # Euler checks no final sigma
    ("euler", "params.init_sigma", -3.0),
    ("euler", "params.model_timesteps[0]", 1e6),
    ("lcm", "params.original_inference_steps", T),
    ("lcm", "params.original_inference_steps", 1.0),
    ("lcm", "params.timestep_scaling", -10.0),
    ("lcm", "schedule.prediction_type", "v_prediction"),
]


def all_rows():
    for name in SOLVERS:
        for path, value, fragment, exact in generic_rows(name):
            yield pytest.param(name, path, value, fragment, exact, id=f"{name}-{path}={value!r}"[:80])
    for name, path, value, fragment in SOLVER_ROWS:
        yield pytest.param(name, path, value, fragment, EXACT, id=f"{name}-{path}={value!r}")


def refusal(parse, plan) -> str:
    with pytest.raises(EdgediffError) as info:
        parse(plan)
    return str(info.value)


def c_refusal(plan) -> str:
    message = refusal(C.Plan, plan)
    assert refusal(lambda p: C.sample(p, lambda x, t, labels: x, 0, (0,), sample_shape=SHAPE), plan) == message
    return message


@pytest.mark.parametrize("name,path,value,fragment,exact", list(all_rows()))
def test_both_refuse(name, path, value, fragment, exact):
    plan = edited(valid_plan(name), path, value)
    py, c = refusal(Plan.from_dict, plan), c_refusal(plan)
    assert fragment in py, f"Python: {py}"
    assert fragment in c, f"C: {c}"
    if exact:
        assert py == c
    assert "\n" not in py and len(py) <= 160, py  # one line, no array dumped


def test_every_solver_check_has_rows():
    """A solver with a check of its own has rows in SOLVER_ROWS (the generic rows cover the rest)."""
    checked = [name for name in SOLVERS if type(get_solver(name)).check is not Deterministic.check]
    assert {"ddim", "dpmpp-2m", "euler"} <= set(checked)
    for name in checked:
        assert any(row[0] == name for row in SOLVER_ROWS), f"{name} has a check but no rows in SOLVER_ROWS"


@pytest.mark.parametrize("name", list(SOLVERS))
def test_both_accept_the_valid_plan(name):
    d = valid_plan(name)
    py, c = Plan.from_dict(d), C.Plan(d)
    assert py.to_dict() == d
    assert c.solver == name and len(c) == len(py) == N
    assert list(c.timesteps) == py.timesteps.tolist()
    np.testing.assert_array_equal(np.float32(c.model_timesteps), py.model_timesteps)


def fake_model(x, t, labels):
    t = np.asarray(t, np.float32).reshape(-1, 1, 1, 1)
    return (np.float32(0.5) * np.tanh(x) + np.float32(0.01) * t / np.float32(T)).astype(np.float32)


@pytest.mark.parametrize("name,path,value", ACCEPTED, ids=[f"{n}-{p}={v!r}" for n, p, v in ACCEPTED])
def test_both_accept_edge_cases_and_agree(name, path, value):
    d = edited(valid_plan(name), path, value)
    py = Plan.from_dict(d)
    ours = sample(fake_model, py, NOISE, sample_shape=SHAPE)
    theirs = C.sample(d, fake_model, NOISE.seed, NOISE.streams, sample_shape=SHAPE)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)


def test_planner_refuses_what_the_plan_check_refuses():
    """The planners build Plans, so an option that makes a bad plan is refused there too."""
    with pytest.raises(EdgediffError, match="'clip_sample' must be > 0 or null, got -1"):
        get_solver("ddpm").plan(make_schedule(T), 4, clip_sample=-1.0)
    with pytest.raises(EdgediffError, match="eta"):
        get_solver("ddim").plan(make_schedule(T), 4, eta=-1.0)
