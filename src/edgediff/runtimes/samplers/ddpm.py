"""DDPM ancestral sampling (Ho et al. 2020), as diffusers' DDPMScheduler with
variance_type="fixed_small".

Step i goes from t = timesteps[i] to s = timesteps[i + 1] (or to "before 0", where
abar_s = 1)::

    x0   = predicted from x and the model output       (optionally clipped to +-clip_sample)
    a    = abar_t / abar_s,   b = 1 - a
    mean = sqrt(abar_s) b / (1 - abar_t) x0 + sqrt(a) (1 - abar_s) / (1 - abar_t) x
    x'   = mean + sqrt(max((1 - abar_s) / (1 - abar_t) b, 1e-20)) z      (z only if t > 0)
"""

from __future__ import annotations

import numpy as np

from edgediff.core.schedule import NoiseSchedule, timesteps
from edgediff.runtimes.samplers.base import (
    OPTIONAL_NUMBER,
    Deterministic,
    Plan,
    check_positive_or_null,
    f32,
    to_x0_eps,
)


class DDPM(Deterministic):
    name = "ddpm"
    stochastic = True
    param_kinds = {"clip_sample": OPTIONAL_NUMBER}

    def plan(
        self,
        schedule: NoiseSchedule,
        steps: int,
        *,
        spacing: str = "leading",
        steps_offset: int = 0,
        clip_sample: float | None = None,
    ) -> Plan:
        ts = timesteps(schedule, steps, spacing, steps_offset)
        return Plan(self.name, ts, schedule, {"clip_sample": clip_sample})

    def check(self, plan: Plan) -> None:
        check_positive_or_null(plan, "clip_sample")  # np.clip and C's clip differ on a negative range

    def uses_noise(self, plan: Plan, i: int) -> bool:
        return bool(plan.timesteps[i] > 0)

    def step(self, plan, i, x, eps, carry, noise):
        ac = plan.schedule.alphas_cumprod
        abar_t = ac[plan.timesteps[i]]
        abar_s = ac[plan.timesteps[i + 1]] if i + 1 < len(plan) else 1.0
        x0, _ = to_x0_eps(plan.schedule.prediction_type, x, eps, np.sqrt(abar_t), np.sqrt(1 - abar_t))
        if plan.params["clip_sample"] is not None:
            x0 = np.clip(x0, -plan.params["clip_sample"], plan.params["clip_sample"])
        alpha, beta = abar_t / abar_s, 1 - abar_t / abar_s
        x_next = (np.sqrt(abar_s) * beta / (1 - abar_t)) * x0 + (np.sqrt(alpha) * (1 - abar_s) / (1 - abar_t)) * x
        if self.uses_noise(plan, i):
            variance = max((1 - abar_s) / (1 - abar_t) * beta, 1e-20)
            x_next = x_next + np.sqrt(variance) * np.asarray(noise, np.float64)
        return f32(x_next), carry
