"""Check a lowered model against the PyTorch reference before a bundle is written.

    for t in 8+ timesteps spanning [0, T):   err(t) = max|ours - torch| / max|torch|
    over a batch of inputs with several labels (and the null label) per timestep.

A timestep whose error exceeds the precision's bound stops the compile with an error
naming the timestep and the error. Where PyTorch itself outputs inf or nan (a UNet2DModel with
time_embedding_type "fourier" divides by the timestep, so t = 0 gives inf; the compile refuses
plans that visit such a timestep), a float lowering must output the same non-finite values there
(an int8 graph cannot: its activations saturate); the error is measured over the finite rest and
the count is recorded.
"""

from __future__ import annotations

import numpy as np
import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import EMBEDDED, ModelSpec, torch_denoiser

# Normalised max error allowed per precision (max abs error over max abs reference).
# int8: TFLite dynamic-range int8 weights (lower_tflite.py). w4: weight-only 4-bit (weight_only.py); the
# trained digits model reads ~1e-2, a tiny random UNet up to 0.12 (4-bit blocks of random weights).
# w8a8 (the quantize pass) is loose: its error on these off-trajectory inputs (which its activation
# scales were not calibrated for) is recorded, the bound only catches a broken graph. The quantize
# pass records the error along the deployment trajectory (report.json quantization.trajectory).
BOUNDS = {"fp32": 1e-4, "fp16": 2e-2, "int8": 1e-1, "w8a8": 1.0, "w4": 0.25}


def verification_inputs(model: ModelSpec, *, num_timesteps: int = 8, batch: int = 4, seed: int = 1234):
    """Deterministic test inputs: (t, x, cond) per timestep, timesteps spanning the schedule."""
    T = model.schedule.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    ts = np.unique(np.linspace(0, T - 1, num_timesteps).round().astype(np.int64))
    abar = model.schedule.alphas_cumprod
    c = model.conditioning
    for k, t in enumerate(ts):
        x0 = torch.rand((batch, *model.sample_shape), generator=g).numpy() * 2 - 1
        noise = torch.randn((batch, *model.sample_shape), generator=g).numpy()
        x = (np.sqrt(abar[t]) * x0 + np.sqrt(1 - abar[t]) * noise).astype(np.float32)
        if c.kind == "class":
            cond = (np.arange(batch, dtype=np.int64) + k) % (c.num_classes + 1)
            cond[-1] = c.null_label
        elif c.kind in EMBEDDED:
            cond = torch.randn((batch, *c.shape), generator=g).numpy()
        else:
            cond = None
        yield int(t), x, cond


def verify(model: ModelSpec, denoise, *, precision: str, label: str = "ONNX Runtime", num_timesteps: int = 8) -> dict:
    """Compare `denoise` with the PyTorch model; returns the per-timestep record for report.json."""
    reference = torch_denoiser(model)
    bound = BOUNDS[precision]
    per_t = []
    for t, x, cond in verification_inputs(model, num_timesteps=num_timesteps):
        tt = np.full((x.shape[0],), t, np.float32)
        ref = reference(x, tt, cond)
        out = denoise(x, tt, cond)
        if out.shape != ref.shape:
            raise EdgediffError(f"{label}: output shape {out.shape} differs from PyTorch {ref.shape} at t={t}")
        finite = np.isfinite(ref)
        if (
            not finite.all()
            and precision in ("fp32", "fp16")
            and not np.array_equal(out[~finite], ref[~finite], equal_nan=True)
        ):
            raise EdgediffError(
                f"{label}: PyTorch outputs {int((~finite).sum())} inf/nan values at timestep {t} "
                "and the lowered model differs there; nothing written"
            )
        r, o = ref[finite], out[finite]
        err = float(np.abs(o - r).max() / max(float(np.abs(r).max()), 1e-12)) if r.size else 0.0
        if not np.isfinite(err) or err > bound:
            raise EdgediffError(
                f"{label} output differs from PyTorch at timestep {t}: normalised max error "
                f"{err:.3g} > bound {bound:g} ({precision}); nothing written"
            )
        per_t.append({"timestep": t, "max_rel_error": err})
        if not finite.all():
            per_t[-1]["nonfinite_in_pytorch"] = int((~finite).sum())
    return {
        "against": "pytorch-fp32",
        "runtime": label,
        "precision": precision,
        "bound": bound,
        "num_timesteps": len(per_t),
        "max_rel_error": max(r["max_rel_error"] for r in per_t),
        "per_timestep": per_t,
    }
