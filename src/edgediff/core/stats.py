"""Model statistics for reports: parameters and multiply-accumulates per denoiser call.

MACs come from PyTorch's own FLOP counter (convolutions, matmuls, attention), halved:
one multiply-accumulate is two floating-point operations.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(module: torch.nn.Module, inputs: tuple) -> int:
    """MACs of one forward call on `inputs` (use batch 1 for per-image figures)."""
    counter = FlopCounterMode(display=False)
    with counter:
        module(*inputs)
    return counter.get_total_flops() // 2
