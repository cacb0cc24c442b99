"""The zoo's network definitions (no weights here; see builtin.py and train.py).

    digits UNet      UNet2DModel, 1x16x16, 10 classes + null label 10, 1.11 M params
    cifar arch       google/ddpm-cifar10-32's UNet2DModel, 3x32x32, 35.7 M params,
                     seeded random weights: speed and size figures only, never images
    DigitsClassifier small CNN, 1x16x16 -> 10 logits; .features() feeds FD-digits

Every random initialisation takes an explicit torch.Generator (`init_`); nothing here
touches the global RNG.
"""

from __future__ import annotations

import math

import torch
from diffusers import UNet2DModel
from torch import nn

NUM_DIGIT_CLASSES = 10
NULL_LABEL = NUM_DIGIT_CLASSES  # the unconditional label for classifier-free guidance

# diffusers scheduler_config.json form, written out in full so that nothing depends on a
# library's defaults changing. The DDPMScheduler defaults except clip_sample: clipping the
# predicted x0 to [-1, 1] at every step, together with guidance 3, drives these digits to
# saturated blobs (class accuracy 0.61 with clipping, 1.00 without; README.md).
DIGITS_SCHEDULER_CONFIG: dict = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "timestep_spacing": "leading",
    "steps_offset": 0,
}


def digits_unet_config() -> dict:
    """UNet2DModel keyword arguments of the builtin digits model."""
    return {
        "sample_size": 16,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "num_class_embeds": NUM_DIGIT_CLASSES + 1,
        "norm_num_groups": 8,
    }


def build_digits_unet(generator: torch.Generator | None = None) -> UNet2DModel:
    """The digits UNet; weights drawn from `generator` (default: seed 0)."""
    return init_(_on_meta(UNet2DModel, **digits_unet_config()), generator or torch.Generator().manual_seed(0))


def cifar_arch_config() -> dict:
    """google/ddpm-cifar10-32's config.json (diffusers UNet2DModel), as published."""
    return {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "downsample_padding": 0,
        "act_fn": "silu",
        "attention_head_dim": None,
        "norm_num_groups": 32,
        "norm_eps": 1e-6,
    }


# google/ddpm-cifar10-32's scheduler_config.json.
CIFAR_SCHEDULER_CONFIG: dict = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
}


def build_cifar_arch(seed: int = 0) -> UNet2DModel:
    """The DDPM CIFAR-10 architecture with seeded random weights (35.7 M params).

    Untrained: its outputs are noise. It exists so that speed, size and MAC figures can be
    measured on a well-known model without downloading it.
    """
    return init_(_on_meta(UNet2DModel, **cifar_arch_config()), torch.Generator().manual_seed(seed)).eval()


class DigitsClassifier(nn.Module):
    """CNN for (B, 1, 16, 16) digits in [-1, 1]; 10 logits.

        16x16 conv32 conv32 pool -> 8x8 conv64 conv64 pool -> 4x4 conv128 -> global mean
        -> linear 128->FEATURE_DIM, SiLU (= .features) -> linear FEATURE_DIM->10

    No batch norm and no dropout: the same function in train and eval mode, and no
    randomness inside forward.
    """

    FEATURE_DIM = 64

    def __init__(self, width: int = 32):
        super().__init__()
        w = width

        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]

        self.body = nn.Sequential(
            *conv(1, w),
            *conv(w, w),
            nn.AvgPool2d(2),
            *conv(w, 2 * w),
            *conv(2 * w, 2 * w),
            nn.AvgPool2d(2),
            *conv(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * w, self.FEATURE_DIM),
            nn.SiLU(),
        )
        self.head = nn.Linear(self.FEATURE_DIM, NUM_DIGIT_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, FEATURE_DIM), the space FD-digits is measured in."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_classifier(generator: torch.Generator | None = None) -> DigitsClassifier:
    return init_(_on_meta(DigitsClassifier), generator or torch.Generator().manual_seed(0))


def _on_meta(cls, **kwargs) -> nn.Module:
    """Construct without running the default initialisers (they draw from the global RNG);
    the parameters are allocated but hold garbage until `init_` fills them."""
    with torch.device("meta"):
        module = cls(**kwargs)
    module = module.to_empty(device="cpu")
    if any(True for _ in module.buffers()):
        raise TypeError(f"{cls.__name__}: has buffers, which init_ does not fill")
    return module


# Module types whose parameters `init_` knows how to draw. To support another, add a branch.
_INIT_TYPES = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm, nn.Embedding)


@torch.no_grad()
def init_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every parameter from `generator` with PyTorch's default init laws.

    Conv/Linear: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (what kaiming_uniform
    with a=sqrt(5) gives); Embedding: N(0, 1); norms: weight 1, bias 0. Modules are visited
    in named_modules() order, so the result depends only on the architecture and the seed.
    A parameter owned by any other module type is an error, not left as it was.
    """
    covered = set()
    for _, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight.shape[1] * math.prod(m.weight.shape[2:])
            bound = 1.0 / math.sqrt(fan_in)
            m.weight.copy_(torch.empty_like(m.weight).uniform_(-bound, bound, generator=generator))
            if m.bias is not None:
                m.bias.copy_(torch.empty_like(m.bias).uniform_(-bound, bound, generator=generator))
        elif isinstance(m, nn.Embedding):
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator))
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
        else:
            continue
        covered.update(id(p) for p in m.parameters(recurse=False))
    missed = [n for n, p in module.named_parameters() if id(p) not in covered]
    if missed:
        raise TypeError(f"init_: no init law for parameters {missed[:5]} (owners not in {_INIT_TYPES})")
    return module


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
