"""Tiny denoisers built inside the tests (nothing downloaded), reachable as factory sources
(`tiny_models:tiny_unet`) because pytest puts this folder on sys.path."""

import torch
from diffusers import UNet2DModel

from edgediff.core.schedule import make_schedule
from edgediff.core.spec import Conditioning, DiffusersAdapter, ModelSpec

TINY_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    num_class_embeds=5,
)


def build_tiny_unet(seed: int = 0) -> UNet2DModel:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = UNet2DModel(**TINY_UNET)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def tiny_unet() -> ModelSpec:
    """Class-conditional: 4 classes + null label 4; 100 training timesteps."""
    return ModelSpec(
        module=DiffusersAdapter(build_tiny_unet(), "UNet2DModel", 1).eval(),
        schedule=make_schedule(num_train_timesteps=100, beta_start=1e-3, beta_end=0.2),
        sample_shape=(1, 8, 8),
        conditioning=Conditioning("class", num_classes=4, null_label=4),
        description="tiny test UNet",
    )


def not_a_spec():
    return torch.nn.Linear(2, 2)
