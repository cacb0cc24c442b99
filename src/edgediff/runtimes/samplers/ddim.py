"""DDIM (Song et al. 2021), as diffusers' DDIMScheduler.

Step i goes from t = timesteps[i] to s = prev_timesteps[i], where, as in diffusers,
s = t - T // steps whatever the spacing (for "trailing" and "linspace" that is not always
the next visited timestep); s < 0 means abar_s = final_alpha_cumprod::

    x0, e = predicted from x and the model output      (x0 optionally clipped)
    std   = eta sqrt((1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s))
    x'    = sqrt(abar_s) x0 + sqrt(1 - abar_s - std^2) e + std z        (z only if eta > 0)
"""

from __future__ import annotations

import math

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.core.schedule import NoiseSchedule, timesteps
from edgediff.runtimes.samplers.base import (
    NUMBER,
    OPTIONAL_NUMBER,
    PER_STEP,
    Deterministic,
    Plan,
    check_positive_or_null,
    f32,
    g,
    to_x0_eps,
)


class DDIM(Deterministic):
    name = "ddim"
    stochastic = True  # when eta > 0
    param_kinds = {
        "eta": NUMBER,
        "prev_timesteps": PER_STEP,
        "final_alpha_cumprod": NUMBER,
        "clip_sample": OPTIONAL_NUMBER,
    }

    def plan(
        self,
        schedule: NoiseSchedule,
        steps: int,
        *,
        spacing: str = "leading",
        steps_offset: int = 0,
        eta: float = 0.0,
        set_alpha_to_one: bool = True,
        clip_sample: float | None = None,
    ) -> Plan:
        if not eta >= 0:
            raise EdgediffError(f"ddim eta must be >= 0, got {eta!r}")
        ts = timesteps(schedule, steps, spacing, steps_offset)
        prev = ts - schedule.num_train_timesteps // steps
        final = 1.0 if set_alpha_to_one else float(schedule.alphas_cumprod[0])
        return Plan(
            self.name,
            ts,
            schedule,
            {
                "eta": float(eta),
                "prev_timesteps": prev.tolist(),
                "final_alpha_cumprod": final,
                "clip_sample": clip_sample,
            },
        )

    def check(self, plan: Plan) -> None:
        p, T = plan.params, plan.schedule.num_train_timesteps
        if not p["eta"] >= 0:
            raise EdgediffError(f"ddim plan param 'eta' must be >= 0, got {g(p['eta'])}")
        for i, s in enumerate(p["prev_timesteps"]):
            if s != math.floor(s) or s >= T:
                raise EdgediffError(
                    f"ddim plan param 'prev_timesteps' must be integers below {T}; plan.params.prev_timesteps[{i}] is {g(s)}"
                )
        if not 0 < p["final_alpha_cumprod"] <= 1:
            raise EdgediffError(
                f"ddim plan param 'final_alpha_cumprod' must lie in (0, 1], got {g(p['final_alpha_cumprod'])}"
            )
        check_positive_or_null(plan, "clip_sample")

    def uses_noise(self, plan: Plan, i: int) -> bool:
        return plan.params["eta"] > 0

    def step(self, plan, i, x, eps, carry, noise):
        p, ac = plan.params, plan.schedule.alphas_cumprod
        abar_t = ac[plan.timesteps[i]]
        s = int(p["prev_timesteps"][i])  # an integral float from JSON indexes too, as in C
        abar_s = ac[s] if s >= 0 else p["final_alpha_cumprod"]
        x0, e = to_x0_eps(plan.schedule.prediction_type, x, eps, np.sqrt(abar_t), np.sqrt(1 - abar_t))
        if p["clip_sample"] is not None:
            x0 = np.clip(x0, -p["clip_sample"], p["clip_sample"])
        std = p["eta"] * np.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
        x_next = np.sqrt(abar_s) * x0 + np.sqrt(1 - abar_s - std**2) * e
        if self.uses_noise(plan, i):
            x_next = x_next + std * np.asarray(noise, np.float64)
        return f32(x_next), carry
