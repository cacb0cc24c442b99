"""Recovery fine-tune of a pruned denoiser with the shared trainer (training/).

    loss = MSE(student(x_t, t, y), eps)                    the diffusion loss (src/edgediff/training/diffusion.py's draws)
         + distill_weight * MSE(student(x_t, t, y), teacher(x_t, t, y))   output distillation from the
                                                           unpruned model, on the same x_t, t and labels

The labels are dropped to the null label with probability `label_dropout` for both models, so
the unconditional branch that classifier-free guidance needs is distilled too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgediff.core.spec import ModelSpec
from edgediff.training import DistContext, TrainConfig, Trainer, TrainResult
from edgediff.training.diffusion import alphas_cumprod, call, noised_batch


def recovery_loss(student: ModelSpec, teacher: ModelSpec, *, distill_weight: float = 1.0, label_dropout: float = 0.1):
    """loss_fn(module, batch, rng) for Trainer: diffusion loss + output distillation (see above)."""
    abar = alphas_cumprod(student)
    teacher_module = teacher.module.eval()  # run under no_grad below; its flags are left alone

    def loss_fn(module, batch, rng):
        xt, t, label, target = noised_batch(student, abar, batch, rng, label_dropout)
        out = call(module, student, xt, t, label)
        with torch.no_grad():
            teach = call(teacher_module, teacher, xt, t, label)
        diff, kd = F.mse_loss(out, target), F.mse_loss(out, teach)
        return diff + distill_weight * kd, {"diff": diff.detach(), "kd": kd.detach()}

    return loss_fn


def finetune(
    student: ModelSpec,
    teacher: ModelSpec,
    data: dict[str, torch.Tensor],
    config: TrainConfig,
    *,
    distill_weight: float = 1.0,
    dist: DistContext | None = None,
) -> TrainResult:
    """Train `student.module` in place (EMA weights left in it) against `teacher`."""
    loss_fn = recovery_loss(student, teacher, distill_weight=distill_weight)
    return Trainer(student.module, loss_fn, data, config, dist=dist).run()
