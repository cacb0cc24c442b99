"""Latent Consistency Model multistep sampling (Luo et al. 2023), as diffusers' LCMScheduler.

Timesteps: the distillation grid k - 1, 2k - 1, ..., with k = T // original_inference_steps,
reversed, at indices floor(linspace(0, original_inference_steps, steps, endpoint=False)).
Step i at t = timesteps[i], with s = timesteps[i + 1]::

    x0      = predicted from x and the model output
    c_skip  = 0.25 / ((10 t)^2 + 0.25),   c_out = 10 t / sqrt((10 t)^2 + 0.25)   (10 = timestep_scaling)
    D       = c_out x0 + c_skip x
    x'      = sqrt(abar_s) D + sqrt(1 - abar_s) z        every step but the last, which returns D
"""

from __future__ import annotations

import math

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.core.schedule import NoiseSchedule, check_choice, check_steps
from edgediff.runtimes.samplers.base import NUMBER, Deterministic, Plan, f32, g, to_x0_eps

SIGMA_DATA = 0.5


class LCM(Deterministic):
    name = "lcm"
    stochastic = True
    param_kinds = {"original_inference_steps": NUMBER, "timestep_scaling": NUMBER}

    def plan(
        self,
        schedule: NoiseSchedule,
        steps: int,
        *,
        spacing: str = "lcm",
        original_inference_steps: int = 50,
        timestep_scaling: float = 10.0,
    ) -> Plan:
        check_choice("timestep spacing for lcm", spacing, ("lcm",))
        original = check_steps(schedule, original_inference_steps)
        steps = check_steps(schedule, steps, limit=original)
        k = schedule.num_train_timesteps // original
        grid = (np.arange(1, original + 1) * k - 1)[::-1]
        ts = grid[np.floor(np.linspace(0, original, num=steps, endpoint=False)).astype(np.int64)]
        return Plan(
            self.name, ts, schedule, {"original_inference_steps": original, "timestep_scaling": float(timestep_scaling)}
        )

    def check(self, plan: Plan) -> None:
        original, T = plan.params["original_inference_steps"], plan.schedule.num_train_timesteps
        if not (original == math.floor(original) and 1 <= original <= T):
            raise EdgediffError(
                f"lcm plan param 'original_inference_steps' must be an integer in 1..{T}, got {g(original)}"
            )

    def uses_noise(self, plan: Plan, i: int) -> bool:
        return i < len(plan) - 1

    def step(self, plan, i, x, eps, carry, noise):
        ac, t = plan.schedule.alphas_cumprod, int(plan.timesteps[i])
        x0, _ = to_x0_eps(plan.schedule.prediction_type, x, eps, np.sqrt(ac[t]), np.sqrt(1 - ac[t]))
        scaled = t * plan.params["timestep_scaling"]
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / np.sqrt(scaled**2 + SIGMA_DATA**2)
        denoised = c_out * x0 + c_skip * np.asarray(x, np.float64)
        if not self.uses_noise(plan, i):
            return f32(denoised), carry
        abar_s = ac[plan.timesteps[i + 1]]
        return f32(np.sqrt(abar_s) * denoised + np.sqrt(1 - abar_s) * np.asarray(noise, np.float64)), carry
