"""What every solver shares: the Plan (its whole configuration, as data) and the protocol.

A solver is a stateless object whose methods are pure functions of their arguments.
Anything that must survive from one step to the next (DPM-Solver++'s previous x0
prediction) is the explicit ``carry`` value that ``step`` returns and takes back.
"""

from __future__ import annotations

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
    """

    solver: str
    timesteps: np.ndarray
    schedule: NoiseSchedule
    params: dict

    def __post_init__(self):
        from edgediff.runtimes.samplers import get_solver  # the registry imports this module

        kinds = get_solver(self.solver).param_kinds
        ts = np.array(self.timesteps)
        if ts.ndim != 1 or ts.size == 0 or not np.issubdtype(ts.dtype, np.integer):
            raise EdgediffError(f"plan field 'timesteps' must be a non-empty list of integers, got dtype {ts.dtype}")
        T = self.schedule.num_train_timesteps
        if ts.min() < 0 or ts.max() >= T or np.any(np.diff(ts) > 0):
            raise EdgediffError(f"plan field 'timesteps' must descend within 0..{T - 1}, got {ts.tolist()[:8]}...")
        ts = ts.astype(np.int64)
        ts.flags.writeable = False
        object.__setattr__(self, "timesteps", ts)
        if not isinstance(self.params, dict):
            raise EdgediffError(f"plan field 'params' must be a JSON object, got {type(self.params).__name__}")
        object.__setattr__(self, "params", dict(self.params))
        check_params(self, kinds)

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
    def from_dict(cls, d) -> Plan:
        if not isinstance(d, dict):
            raise EdgediffError(f"plan must be a JSON object, got {type(d).__name__}")
        keys = ("solver", "timesteps", "schedule", "params")
        unknown = sorted(set(d) - set(keys))
        if unknown:
            raise EdgediffError(f"plan has unknown key {unknown[0]!r}; valid keys: {', '.join(keys)}")
        for key in keys:
            if key not in d:
                raise EdgediffError(f"plan is missing the key {key!r}")
        try:
            ts = np.asarray(d["timesteps"])
        except (TypeError, ValueError):
            raise EdgediffError("plan field 'timesteps' must be a list of integers") from None
        return cls(d["solver"], ts, NoiseSchedule.from_dict(d["schedule"]), d["params"])


def check_params(plan: Plan, kinds: dict) -> None:
    """Check that plan.params has exactly the keys in ``kinds``, each of the right kind."""
    params, n = plan.params, len(plan)
    unknown = sorted(set(params) - set(kinds))
    if unknown:
        raise EdgediffError(f"{plan.solver} plan has unknown param {unknown[0]!r}; valid: {', '.join(sorted(kinds))}")
    for key, kind in kinds.items():
        if key not in params:
            raise EdgediffError(f"{plan.solver} plan is missing param {key!r}")
        value = params[key]
        if kind in (NUMBER, OPTIONAL_NUMBER):
            ok = (value is None and kind == OPTIONAL_NUMBER) or (
                isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
            )
        else:
            size = n if kind == PER_STEP else n + 1
            ok = (
                isinstance(value, list)
                and len(value) == size
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            )
        if not ok:
            raise EdgediffError(f"{plan.solver} plan param {key!r} must be {kind} (n={n}), got {value!r}")


class Solver(Protocol):
    name: str
    stochastic: bool  # may use fresh noise at some steps; uses_noise() says which
    param_kinds: dict  # plan.params key -> NUMBER | OPTIONAL_NUMBER | PER_STEP | PER_STEP_PLUS_ONE

    def plan(self, schedule: NoiseSchedule, steps: int, *, spacing: str = ..., **opts) -> Plan: ...

    def init_latent(self, plan: Plan, noise: np.ndarray) -> np.ndarray: ...

    def model_input(self, plan: Plan, i: int, x: np.ndarray) -> np.ndarray: ...

    def uses_noise(self, plan: Plan, i: int) -> bool: ...

    def step(
        self, plan: Plan, i: int, x: np.ndarray, eps: np.ndarray, carry: Any, noise: np.ndarray | None
    ) -> tuple[np.ndarray, Any]: ...


class Deterministic:
    """Defaults shared by the solvers: unit-variance x_T, unscaled model input, no noise."""

    stochastic = False

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
