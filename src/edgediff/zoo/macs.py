"""Count multiply-accumulates of one forward pass with forward hooks.

    model + example inputs -> hooks on Conv2d / Linear / diffusers Attention -> MacCount

Counted: Conv2d (out elements x in_channels/groups x kernel area), Linear (out elements x
in_features), and the two matmuls of every diffusers Attention (QK^T and AV:
2 x B x Lq x Lk x inner_dim). Not counted: norms, activations, softmax, additions,
up/down-sampling without weights (all elementwise, a few percent at most).

Published MAC figures for DDPM CIFAR-10 (6.1 G; Diff-Pruning, Fang et al. 2023) count
modules only, so `MacCount.layers` is the number to compare with them; `total` adds the
attention matmuls (another 0.17 G there).

To count another layer type, add a hook to `_HOOKS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MacCount:
    conv: int
    linear: int
    attention: int

    @property
    def layers(self) -> int:
        """Conv2d + Linear: what module-based counters (thop, torch-pruning) report."""
        return self.conv + self.linear

    @property
    def total(self) -> int:
        return self.conv + self.linear + self.attention


def _conv(m: nn.Conv2d, inputs, out) -> int:
    k = 1
    for s in m.kernel_size:
        k *= s
    return out.numel() * (m.in_channels // m.groups) * k


def _linear(m: nn.Linear, inputs, out) -> int:
    return out.numel() * m.in_features


def _attention(m, args, kwargs) -> int:
    h = args[0] if args else kwargs["hidden_states"]
    b = h.shape[0]
    lq = h.shape[2] * h.shape[3] if h.ndim == 4 else h.shape[1]
    enc = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
    lk = enc.shape[1] if enc is not None else lq
    return 2 * b * lq * lk * m.inner_dim


def _hooks():
    from diffusers.models.attention_processor import Attention

    # kind -> (module type, counter, is_pre_hook)
    return {
        "conv": (nn.Conv2d, _conv, False),
        "linear": (nn.Linear, _linear, False),
        "attention": (Attention, _attention, True),
    }


@torch.no_grad()
def count_macs(model: nn.Module, *inputs, **kwargs) -> MacCount:
    """MACs of `model(*inputs, **kwargs)` (one call, at the batch size of the inputs)."""
    totals = {"conv": 0, "linear": 0, "attention": 0}
    handles = []
    for kind, (typ, fn, pre) in _hooks().items():
        for m in model.modules():
            if not isinstance(m, typ):
                continue
            if pre:

                def hook(mod, args, kw, kind=kind, fn=fn):
                    totals[kind] += fn(mod, args, kw)

                handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
            else:

                def hook(mod, args, out, kind=kind, fn=fn):
                    totals[kind] += fn(mod, args, out)

                handles.append(m.register_forward_hook(hook))
    try:
        model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return MacCount(**totals)


def unet_macs(unet: nn.Module, batch: int = 1) -> MacCount:
    """MACs of one denoiser step of a diffusers UNet2DModel at `batch`."""
    cfg = unet.config
    x = torch.zeros(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    t = torch.full((batch,), 500, dtype=torch.long)
    kw = {}
    if cfg.num_class_embeds:
        kw["class_labels"] = torch.zeros(batch, dtype=torch.long)
    return count_macs(unet, x, t, **kw)
