"""The sampling loop: a plan, a denoiser and a noise source in, a batch of samples out.

The loop the C runtime mirrors, one model call per step (two images' worth when
classifier-free guidance is on)::

    x = solver.init_latent(plan, noise.draw(0))
    for i, t in enumerate(plan.model_timesteps):
        x_in = solver.model_input(plan, i, x)
        eps  = denoise(x_in, t, labels)                        # or the guided mix below
        x, carry = solver.step(plan, i, x, eps, carry, noise.draw(i + 1) if needed)

With a StepTable (src/edgediff/runtimes/steps.py: the bundle's timestep groups and cache schedule) the
denoiser is called as ``denoise(x_in, t, labels, step=StepCall(i, group, cached))``, as the C
loop calls a table-aware Python denoiser.

Guidance: the conditional and unconditional halves go through the denoiser as one batch
of 2B, conditional first: ``eps = eps_u + guidance * (eps_c - eps_u)`` (float32).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.samplers import Plan, get_solver
from edgediff.runtimes.steps import StepTable

Denoiser = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


def sample(
    denoise: Denoiser,
    plan: Plan,
    noise: NoiseSource,
    *,
    labels: np.ndarray | None = None,
    guidance: float = 1.0,
    null_label: int | None = None,
    sample_shape: tuple,
    callback: Callable | None = None,
    steps: StepTable | None = None,
) -> np.ndarray:
    """Run ``plan`` for a batch of len(noise.streams) images of ``sample_shape`` (C, H, W).

    denoise(x float32 (B, C, H, W), t float32 (B,), labels int64 (B,) or None) -> float32
    like x.  callback(i, t, x_in, eps), if given, sees every step's model input and
    (guided) output. steps, if given, is passed to denoise per call as step=steps.call(i).
    """
    solver = get_solver(plan.solver)
    batch = len(noise.streams)
    guided = guidance != 1.0
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.size != batch:
            raise EdgediffError(f"got {labels.size} labels for a batch of {batch} noise streams")
    if guided and (labels is None or null_label is None):
        raise EdgediffError(f"guidance={guidance} needs labels and a null_label (classifier-free guidance)")
    if guided:
        labels2 = np.concatenate([labels, np.full(batch, null_label, dtype=np.int64)])
    g = np.float32(guidance)
    if steps is not None and steps.num_steps != len(plan.model_timesteps):
        raise EdgediffError(
            f"the step table has {steps.num_steps} entries but the plan has {len(plan.model_timesteps)} steps"
        )

    x = solver.init_latent(plan, noise.draw(0, tuple(sample_shape)))
    carry = None
    for i, t in enumerate(plan.model_timesteps):
        x_in = solver.model_input(plan, i, x)
        kw = {} if steps is None else {"step": steps.call(i)}
        if guided:
            out = np.asarray(
                denoise(np.concatenate([x_in, x_in]), np.full(2 * batch, t, np.float32), labels2, **kw),
                dtype=np.float32,
            )
            eps_c, eps_u = out[:batch], out[batch:]
            eps = eps_u + g * (eps_c - eps_u)
        else:
            eps = np.asarray(denoise(x_in, np.full(batch, t, np.float32), labels, **kw), dtype=np.float32)
        if callback is not None:
            callback(i, t, x_in, eps)
        z = noise.draw(i + 1, tuple(sample_shape)) if solver.uses_noise(plan, i) else None
        x, carry = solver.step(plan, i, x, eps, carry, z)
    return x
