"""DPM-Solver++(2M) (Lu et al. 2022), as diffusers' DPMSolverMultistepScheduler with
algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
final_sigmas_type="zero".

With sigma_i = sqrt((1 - abar) / abar) at step i (params["sigmas"], n + 1 values ending
in 0), alpha_i = 1 / sqrt(sigma_i^2 + 1), and lambda_i = -log sigma_i::

    x0_i = predicted from x and the model output           (carried to the next step)
    h    = lambda_{i+1} - lambda_i,   r = (lambda_i - lambda_{i-1}) / h
    D    = x0_i                                   first step and last step (first order)
    D    = x0_i + (x0_i - x0_{i-1}) / (2 r)       otherwise (second order)
    x'   = (sigma_{i+1} alpha_{i+1}) / (sigma_i alpha_i) x + alpha_{i+1} (1 - exp(-h)) D

exp(-h) = sigma_{i+1} / sigma_i, so the last step, to sigma = 0, returns x0 exactly.
"""

from __future__ import annotations

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.core.schedule import SPACINGS, NoiseSchedule, check_choice, check_steps
from edgediff.runtimes.samplers.base import PER_STEP_PLUS_ONE, Deterministic, Plan, f32, g, interp_sigmas, to_x0_eps


def dpm_timesteps(schedule: NoiseSchedule, n: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """DPMSolverMultistepScheduler.set_timesteps: n + 1 points, the last dropped."""
    T = schedule.num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1].astype(np.int64) + int(steps_offset)
    return np.arange(T, 0, -T / n).round().astype(np.int64)[:n] - 1  # trailing


class DPMSolverPP2M(Deterministic):
    name = "dpmpp-2m"
    param_kinds = {"sigmas": PER_STEP_PLUS_ONE}

    def plan(self, schedule: NoiseSchedule, steps: int, *, spacing: str = "linspace", steps_offset: int = 0) -> Plan:
        steps = check_steps(schedule, steps)
        check_choice("timestep spacing", spacing, SPACINGS)
        ts = dpm_timesteps(schedule, steps, spacing, steps_offset)
        return Plan(self.name, ts, schedule, {"sigmas": interp_sigmas(schedule, ts)})

    def check(self, plan: Plan) -> None:
        sig, n = plan.params["sigmas"], len(plan)
        for i in range(n):
            if not sig[i] > 0:
                raise EdgediffError(
                    f"dpmpp-2m plan param 'sigmas' must be > 0 before the last; plan.params.sigmas[{i}] is {g(sig[i])}"
                )
        if not sig[n] >= 0:
            raise EdgediffError(
                f"dpmpp-2m plan param 'sigmas' must end in a value >= 0; plan.params.sigmas[{n}] is {g(sig[n])}"
            )

    def step(self, plan, i, x, eps, carry, noise):
        sig = plan.params["sigmas"]
        s, s_next = sig[i], sig[i + 1]
        alpha, alpha_next = 1 / np.sqrt(s * s + 1), 1 / np.sqrt(s_next * s_next + 1)
        x0, _ = to_x0_eps(plan.schedule.prediction_type, x, eps, alpha, s * alpha)
        d = x0
        if carry is not None and i < len(plan) - 1:
            r = np.log(sig[i - 1] / s) / np.log(s / s_next)
            d = x0 + (x0 - np.asarray(carry, np.float64)) / (2 * r)
        x_next = (s_next * alpha_next) / (s * alpha) * np.asarray(x, np.float64) + alpha_next * (1 - s_next / s) * d
        return f32(x_next), f32(x0)
