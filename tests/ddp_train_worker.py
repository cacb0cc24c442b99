"""Run by test_trainer.py, alone or under torchrun: train the tiny UNet a few steps and save
every rank's final weights (not a test module itself)."""

import sys

import torch
from tiny_models import tiny_unet

from edgediff.training import DistContext, TrainConfig, Trainer
from edgediff.training.diffusion import diffusion_loss


def tiny_data(n: int = 32) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"x0": torch.rand((n, 1, 8, 8), generator=g) * 2 - 1, "label": torch.randint(0, 4, (n,), generator=g)}


def main(out_prefix: str, steps: int) -> None:
    dist = DistContext.from_env()
    spec = tiny_unet()
    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-3, warmup=2, ema_decay=0.9, seed=3, progress=False, threads=1)
    Trainer(spec.module, diffusion_loss(spec), tiny_data(), cfg, dist=dist).run()
    torch.save(spec.module.state_dict(), f"{out_prefix}.rank{dist.rank}.pt")
    dist.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
