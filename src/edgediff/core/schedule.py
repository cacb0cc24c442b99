"""The training noise schedule and the timestep grids a sampler visits.

A schedule is its cumulative product of alphas, ``alphas_cumprod[t]`` for t = 0..T-1,
plus what the denoiser predicts.  Everything else (sigmas, lambdas, per-step
coefficients) is derived from it by the samplers, so a bundle's scheduler.json carries
just these numbers.

Betas are built the way diffusers builds them (float32 betas, float32 ``1 - beta``,
cumulative product accumulated in float64 and rounded to float32, as torch's CPU cumprod
does).  For "squaredcos_cap_v2" and trained betas the result equals diffusers' bit for
bit; for "linear" and "scaled_linear" it agrees to a few float32 ulps (torch.linspace
rounds differently depending on the CPU's vector width, so bit equality is not possible
and not needed: bundles carry the numbers, not the recipe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgediff.core.errors import EdgediffError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # "sample": the model predicts x0
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")


def check_choice(what: str, value, choices) -> None:
    """Raise EdgediffError naming ``value`` and the valid ``choices``."""
    if value not in choices:
        raise EdgediffError(f"unknown {what} {value!r}; choose one of {', '.join(map(str, choices))}")


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    alphas_cumprod: np.ndarray  # float64, shape (T,), read-only
    prediction_type: str = "epsilon"

    def __post_init__(self):
        ac = np.array(self.alphas_cumprod, dtype=np.float64)
        if ac.ndim != 1 or ac.size < 2:
            raise EdgediffError(f"alphas_cumprod must be a 1-D list of at least 2 values, got shape {ac.shape}")
        if not (np.all(np.isfinite(ac)) and np.all(ac > 0) and np.all(ac <= 1)):
            raise EdgediffError("alphas_cumprod values must lie in (0, 1]")
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        ac.flags.writeable = False
        object.__setattr__(self, "alphas_cumprod", ac)

    def __eq__(self, other):
        return (
            isinstance(other, NoiseSchedule)
            and self.prediction_type == other.prediction_type
            and np.array_equal(self.alphas_cumprod, other.alphas_cumprod)
        )

    __hash__ = None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.size)

    def to_dict(self) -> dict:
        return {"alphas_cumprod": self.alphas_cumprod.tolist(), "prediction_type": self.prediction_type}

    @classmethod
    def from_dict(cls, d) -> NoiseSchedule:
        if not isinstance(d, dict):
            raise EdgediffError(f"schedule must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {"alphas_cumprod", "prediction_type"})
        if unknown:
            raise EdgediffError(f"schedule has unknown key {unknown[0]!r}; valid keys: alphas_cumprod, prediction_type")
        if "alphas_cumprod" not in d:
            raise EdgediffError("schedule is missing the key 'alphas_cumprod'")
        try:
            ac = np.asarray(d["alphas_cumprod"], dtype=np.float64)
        except (TypeError, ValueError):
            raise EdgediffError("schedule field 'alphas_cumprod' must be a list of numbers") from None
        return cls(ac, d.get("prediction_type", "epsilon"))


def _alphas_cumprod(betas32: np.ndarray) -> np.ndarray:
    alphas = np.float32(1.0) - betas32.astype(np.float32)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32).astype(np.float64)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)])


def make_schedule(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: str = "epsilon",
) -> NoiseSchedule:
    """The schedule diffusers builds from the same settings."""
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if not isinstance(num_train_timesteps, (int, np.integer)) or num_train_timesteps < 2:
        raise EdgediffError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
    n = int(num_train_timesteps)
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, n).astype(np.float32)
    elif beta_schedule == "scaled_linear":
        root = np.linspace(beta_start**0.5, beta_end**0.5, n).astype(np.float32)
        betas = root * root
    else:
        betas = _cosine_betas(n).astype(np.float32)
    return NoiseSchedule(_alphas_cumprod(betas), prediction_type)


def schedule_from_diffusers_config(cfg: dict) -> NoiseSchedule:
    """The schedule of a diffusers scheduler_config.json; keys it does not need are ignored."""
    if cfg.get("rescale_betas_zero_snr"):
        raise EdgediffError("scheduler config option rescale_betas_zero_snr=true is not supported")
    prediction_type = cfg.get("prediction_type", "epsilon")
    if cfg.get("trained_betas") is not None:
        betas = np.asarray(cfg["trained_betas"], dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2:
            raise EdgediffError(f"scheduler config field trained_betas must be a list of numbers, shape {betas.shape}")
        return NoiseSchedule(_alphas_cumprod(betas.astype(np.float32)), prediction_type)
    return make_schedule(
        cfg.get("num_train_timesteps", 1000),
        cfg.get("beta_schedule", "linear"),
        cfg.get("beta_start", 1e-4),
        cfg.get("beta_end", 0.02),
        prediction_type,
    )


def check_steps(schedule: NoiseSchedule, n, limit: int | None = None) -> int:
    limit = schedule.num_train_timesteps if limit is None else limit
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= limit:
        raise EdgediffError(f"steps must be an integer in 1..{limit}, got {n!r}")
    return int(n)


def timesteps(schedule: NoiseSchedule, n: int, spacing: str = "leading", steps_offset: int = 0) -> np.ndarray:
    """The n descending int64 timesteps of diffusers' DDIM/DDPM ``set_timesteps``.

    One deliberate difference: for "trailing" diffusers' float ``arange`` sometimes yields
    n + 1 values, the last being -1 (e.g. n = 61 of 1000); we keep the first n.
    """
    T = schedule.num_train_timesteps
    n = check_steps(schedule, n)
    check_choice("timestep spacing", spacing, SPACINGS)
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(n) * (T // n)).round()[::-1].astype(np.int64) + int(steps_offset)
    else:
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64)[:n] - 1
    if ts.max() >= T:
        raise EdgediffError(f"steps_offset={steps_offset} moves timestep {ts.max()} past the schedule's last ({T - 1})")
    return np.ascontiguousarray(ts)
