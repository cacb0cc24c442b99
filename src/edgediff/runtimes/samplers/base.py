"""What every solver shares: the Plan (its whole configuration, as data) and the protocol.

A solver is a stateless object whose methods are pure functions of their arguments.
Anything that must survive from one step to the next (DPM-Solver++'s previous x0
prediction) is the explicit ``carry`` value that ``step`` returns and takes back.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.core.schedule import NoiseSchedule

# Kinds of plan parameter, for validation of scheduler.json (Solver.param_kinds).
NUMBER, OPTIONAL_NUMBER, PER_STEP, PER_STEP_PLUS_ONE = "number", "number or null", "per step", "per step + 1"


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything a solver needs to run: solver name, timesteps, schedule, parameters.

    ``timesteps`` (int64, descending) are the training-grid steps the model is called at,
    one per step.  The exact t fed to the denoiser is ``model_timesteps`` (float32): the
    same values, except for Euler with "linspace" spacing where diffusers calls the model
    at fractional t; those are kept in ``params["model_timesteps"]`` and ``timesteps``
    holds them rounded to the nearest integer.

    Construction validates the plan as the C runtime's ``edd_plan_create`` does, refusal for
    refusal and message for message: the generic part here (timesteps, then ``check_params``)
    and then the solver's own ``check``.
    """

    solver: str
    timesteps: np.ndarray
    schedule: NoiseSchedule
    params: dict

    def __post_init__(self):
        from edgediff.runtimes.samplers import get_solver  # the registry imports this module

        if not isinstance(self.solver, str):
            raise EdgediffError(f"plan field 'solver' must be a string, got {describe(self.solver)}")
        solver = get_solver(self.solver)
        object.__setattr__(self, "timesteps", check_timesteps(self.timesteps, self.schedule.num_train_timesteps))
        if not isinstance(self.params, dict):
            raise EdgediffError(f"plan field 'params' must be a JSON object, got {type(self.params).__name__}")
        object.__setattr__(self, "params", dict(self.params))
        check_params(self, solver.param_kinds)
        solver.check(self)

    def __len__(self) -> int:
        return int(self.timesteps.size)

    @property
    def model_timesteps(self) -> np.ndarray:
        return np.asarray(self.params.get("model_timesteps", self.timesteps), dtype=np.float32)

    def to_dict(self) -> dict:
        return {
            "solver": self.solver,
            "timesteps": self.timesteps.tolist(),
            "schedule": self.schedule.to_dict(),
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, d, *, where: str | None = None) -> Plan:
        """A plan from its JSON dict; errors start with `where` (the file it came from) when given."""
        try:
            return cls._from_dict(d)
        except EdgediffError as e:
            if where is None:
                raise
            raise EdgediffError(f"{where}: {e}") from None

    @classmethod
    def _from_dict(cls, d) -> Plan:
        if not isinstance(d, dict):
            raise EdgediffError(f"plan must be a JSON object, got {type(d).__name__}")
        keys = ("solver", "timesteps", "schedule", "params")
        unknown = sorted(set(d) - set(keys))
        if unknown:
            raise EdgediffError(f"plan has unknown key {unknown[0]!r}; valid keys: {', '.join(keys)}")
        for key in keys:
            if key not in d:
                raise EdgediffError(f"plan is missing the key {key!r}")
        schedule = d["schedule"]
        if isinstance(schedule, dict) and isinstance(schedule.get("alphas_cumprod"), list):
            for i, v in enumerate(schedule["alphas_cumprod"]):  # numpy would take "0.5" and True
                if not is_number(v):
                    raise EdgediffError(f"plan.schedule.alphas_cumprod[{i}] must be a number, got {describe(v)}")
        return cls(d["solver"], d["timesteps"], NoiseSchedule.from_dict(schedule), d["params"])


def is_number(v) -> bool:
    """A JSON number (or a numpy scalar): not a bool, not a string."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def is_finite(v) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float range
        return False


def g(v) -> str:
    """A number as C's printf("%g") writes it, so that Python and C messages read alike."""
    try:
        return f"{float(v):g}"
    except OverflowError:
        return "inf" if v > 0 else "-inf"


def describe(v) -> str:
    """What a message says it got: short, never a whole array."""
    if v is None:
        return "null"
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):
        return str(int(v)) if abs(v) < 10**15 else g(v)
    if is_number(v):
        return repr(float(v))  # 30.0, not 30: where a float is the fault, it shows
    if isinstance(v, (list, tuple, np.ndarray)):
        return f"a list of {len(v)} values" if len(v) else "an empty list"
    if isinstance(v, str):
        return repr(v if len(v) <= 32 else v[:32] + "...")
    return f"a {type(v).__name__}"


def check_timesteps(value, T: int) -> np.ndarray:
    """plan.timesteps as a read-only int64 array: a non-empty list of integers, descending within 0..T-1."""
    what = "plan field 'timesteps' must be a non-empty list of integers"
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
                raise EdgediffError(f"{what}; plan.timesteps[{i}] is {describe(v)}")
    try:
        ts = np.array(value)
    except (TypeError, ValueError):
        raise EdgediffError(what) from None
    if ts.ndim != 1 or ts.size == 0 or not np.issubdtype(ts.dtype, np.integer):
        raise EdgediffError(f"{what}, got {describe(value)}")
    bad = (ts < 0) | (ts >= T)
    bad[1:] |= np.diff(ts) > 0
    if bad.any():
        i = int(np.argmax(bad))
        raise EdgediffError(f"plan field 'timesteps' must descend within 0..{T - 1}; plan.timesteps[{i}] is {ts[i]}")
    ts = ts.astype(np.int64)
    ts.flags.writeable = False
    return ts


def check_params(plan: Plan, kinds: dict) -> None:
    """Check that plan.params has exactly the keys in ``kinds``, each of the right kind, with
    finite numbers; in the C runtime's order (params as given, then missing ones)."""
    params, n, name = plan.params, len(plan), plan.solver
    for key, value in params.items():
        if key not in kinds:
            raise EdgediffError(f"{name} plan has unknown param '{key}'; valid: {', '.join(kinds)}")
        kind = kinds[key]
        wrong = f"{name} plan param '{key}' must be {kind} (n={n}), got"
        if kind in (NUMBER, OPTIONAL_NUMBER):
            if value is None and kind == OPTIONAL_NUMBER:
                continue
            if isinstance(value, (list, tuple)):
                raise EdgediffError(f"{wrong} {len(value)} values")
            if not is_number(value):
                raise EdgediffError(f"{wrong} {describe(value)}")
            if not is_finite(value):
                raise EdgediffError(f"{wrong} a non-finite number")
            continue
        size = n if kind == PER_STEP else n + 1
        if not isinstance(value, list):
            raise EdgediffError(f"{wrong} {'a number' if is_number(value) else describe(value)}")
        if len(value) != size:
            raise EdgediffError(f"{wrong} {len(value)} values")
        for i, v in enumerate(value):
            if not is_number(v):
                raise EdgediffError(
                    f"{name} plan param '{key}' must be numbers; plan.params.{key}[{i}] is {describe(v)}"
                )
            if not is_finite(v):
                raise EdgediffError(
                    f"{name} plan param '{key}' must be finite numbers; plan.params.{key}[{i}] is {g(v)}"
                )
    for key in kinds:
        if key not in params:
            raise EdgediffError(f"{name} plan is missing param '{key}'")


def check_positive_or_null(plan: Plan, key: str) -> None:
    """A number-or-null option that must be > 0 when given (clip_sample)."""
    v = plan.params[key]
    if v is not None and not v > 0:
        raise EdgediffError(f"{plan.solver} plan param '{key}' must be > 0 or null, got {g(v)}")


class Solver(Protocol):
    name: str
    stochastic: bool  # may use fresh noise at some steps; uses_noise() says which
    param_kinds: dict  # plan.params key -> NUMBER | OPTIONAL_NUMBER | PER_STEP | PER_STEP_PLUS_ONE

    def plan(self, schedule: NoiseSchedule, steps: int, *, spacing: str = ..., **opts) -> Plan: ...

    def check(self, plan: Plan) -> None:
        """Refuse (EdgediffError) what the C solver's check refuses, in its words; Plan runs it
        once check_params has passed, so every param is there with its kind and finite."""

    def init_latent(self, plan: Plan, noise: np.ndarray) -> np.ndarray: ...

    def model_input(self, plan: Plan, i: int, x: np.ndarray) -> np.ndarray: ...

    def uses_noise(self, plan: Plan, i: int) -> bool: ...

    def step(
        self, plan: Plan, i: int, x: np.ndarray, eps: np.ndarray, carry: Any, noise: np.ndarray | None
    ) -> tuple[np.ndarray, Any]: ...


class Deterministic:
    """Defaults shared by the solvers: unit-variance x_T, unscaled model input, no noise."""

    stochastic = False

    def check(self, plan: Plan) -> None:
        return None

    def init_latent(self, plan: Plan, noise: np.ndarray) -> np.ndarray:
        return np.asarray(noise, dtype=np.float32)

    def model_input(self, plan: Plan, i: int, x: np.ndarray) -> np.ndarray:
        return x

    def uses_noise(self, plan: Plan, i: int) -> bool:
        return False


def to_x0_eps(prediction_type: str, x, out, alpha: float, sigma: float):
    """(x0, eps) from the model output, with x = alpha * x0 + sigma * eps (float64)."""
    x, out = np.asarray(x, np.float64), np.asarray(out, np.float64)
    if prediction_type == "epsilon":
        return (x - sigma * out) / alpha, out
    if prediction_type == "sample":  # the model predicts x0
        return out, (x - alpha * out) / sigma
    return alpha * x - sigma * out, alpha * out + sigma * x  # v_prediction


def sigma_table(schedule: NoiseSchedule) -> np.ndarray:
    """sqrt((1 - abar) / abar) per training step, in float32 as diffusers computes it
    (up to an ulp where torch's vectorised float32 sqrt is not correctly rounded)."""
    ac = schedule.alphas_cumprod.astype(np.float32)
    return np.sqrt((np.float32(1.0) - ac) / ac)


def interp_sigmas(schedule: NoiseSchedule, t: np.ndarray) -> list[float]:
    """Sigmas at (possibly fractional) timesteps t, then a final 0; float32 values."""
    table = sigma_table(schedule)
    sigmas = np.interp(t, np.arange(table.size), table)
    return np.concatenate([sigmas, [0.0]]).astype(np.float32).tolist()


def f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)
