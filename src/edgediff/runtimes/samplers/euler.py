"""Euler (Karras et al. 2022, Algorithm 2 without churn), as diffusers'
EulerDiscreteScheduler.

Euler works on the variance-exploding sample x = x_vp * sqrt(sigma^2 + 1), with
sigma_i = params["sigmas"][i] (n + 1 values, interpolated at possibly fractional
timesteps, ending in 0)::

    x_T      = init_sigma z
    model in = x / sqrt(sigma_i^2 + 1)
    x0       = x - sigma_i eps               (v-prediction: -sigma_i / sqrt(sigma_i^2 + 1) v + x / (sigma_i^2 + 1))
    x'       = x + (x - x0) / sigma_i (sigma_{i+1} - sigma_i)
"""

from __future__ import annotations

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.core.schedule import SPACINGS, NoiseSchedule, check_choice, check_steps
from edgediff.runtimes.samplers.base import (
    NUMBER,
    PER_STEP,
    PER_STEP_PLUS_ONE,
    Deterministic,
    Plan,
    f32,
    g,
    interp_sigmas,
)


def euler_timesteps(schedule: NoiseSchedule, n: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """EulerDiscreteScheduler.set_timesteps: float32, fractional for "linspace"."""
    T = schedule.num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        return (np.arange(n) * (T // n)).round()[::-1].astype(np.float32) + np.float32(steps_offset)
    return np.arange(T, 0, -T / n).round().astype(np.float32)[:n] - np.float32(1)  # trailing


class Euler(Deterministic):
    name = "euler"
    param_kinds = {"sigmas": PER_STEP_PLUS_ONE, "model_timesteps": PER_STEP, "init_sigma": NUMBER}

    def plan(self, schedule: NoiseSchedule, steps: int, *, spacing: str = "linspace", steps_offset: int = 0) -> Plan:
        steps = check_steps(schedule, steps)
        check_choice("timestep spacing", spacing, SPACINGS)
        t = euler_timesteps(schedule, steps, spacing, steps_offset)
        sigmas = interp_sigmas(schedule, t)
        # diffusers' init_noise_sigma: max sigma, or sqrt(max^2 + 1) for "leading"
        init = max(sigmas) if spacing != "leading" else float(np.sqrt(np.float32(max(sigmas)) ** 2 + np.float32(1)))
        return Plan(
            self.name,
            np.rint(t).astype(np.int64),
            schedule,
            {"sigmas": sigmas, "model_timesteps": t.tolist(), "init_sigma": init},
        )

    def check(self, plan: Plan) -> None:
        sig = plan.params["sigmas"]
        for i in range(len(plan)):
            if not sig[i] > 0:
                raise EdgediffError(
                    f"euler plan param 'sigmas' must be > 0 before the last; plan.params.sigmas[{i}] is {g(sig[i])}"
                )

    def init_latent(self, plan, noise):
        return f32(plan.params["init_sigma"] * np.asarray(noise, np.float64))

    def model_input(self, plan, i, x):
        s = plan.params["sigmas"][i]
        return f32(np.asarray(x, np.float64) / np.sqrt(s * s + 1))

    def step(self, plan, i, x, eps, carry, noise):
        s, s_next = plan.params["sigmas"][i], plan.params["sigmas"][i + 1]
        x, eps = np.asarray(x, np.float64), np.asarray(eps, np.float64)
        if plan.schedule.prediction_type == "epsilon":
            x0 = x - s * eps
        elif plan.schedule.prediction_type == "sample":
            x0 = eps
        else:
            x0 = eps * (-s / np.sqrt(s * s + 1)) + x / (s * s + 1)
        return f32(x + (x - x0) / s * (s_next - s)), carry
