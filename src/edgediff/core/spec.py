"""What the compiler knows about a model: its denoiser, schedule, input shape and conditioning.

    ModelSpec(module, schedule, sample_shape, conditioning)   -- one calling convention for all:
        eps = module(sample[B,C,H,W] f32, timestep[B] f32, cond[B,...])

Every package may import this module; it imports nothing of edgediff but core.
`edgediff.compiler.capture` builds a ModelSpec from what the user names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from edgediff.core.schedule import NoiseSchedule

CondKind = Literal["none", "class", "embedding", "text"]
EMBEDDED = ("embedding", "text")  # kinds whose third input is a float tensor of `shape` per image


@dataclass(frozen=True)
class Conditioning:
    """What the third model input carries.

    kind "class": an int64 label per image, `num_classes` real classes plus the null
    label `null_label` used for classifier-free guidance.
    kind "embedding": a float tensor per image (for example text-encoder states),
    shape `shape` without the batch axis; the null condition is all zeros.
    kind "text": the text encoder's last_hidden_state per image, shape `shape` = (max_length,
    hidden); the null condition is the embedding of the negative prompt ("" by default), made
    by the pipeline's own text encoder (ModelSpec.text).
    """

    kind: CondKind = "none"
    num_classes: int | None = None
    null_label: int | None = None
    shape: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "num_classes": self.num_classes,
            "null_label": self.null_label,
            "shape": list(self.shape) if self.shape else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Conditioning:
        shape = d.get("shape")
        return cls(
            kind=d["kind"],
            num_classes=d.get("num_classes"),
            null_label=d.get("null_label"),
            shape=tuple(shape) if shape else None,
        )


@dataclass(frozen=True)
class TextToImage:
    """The parts of a latent text-to-image pipeline around its denoiser (ModelSpec.module).

    prompt --tokenizer--> input_ids int64 [B, max_length]
           --text_encoder--> last_hidden_state float32 [B, max_length, hidden]
    latents [B, *latent_shape] --vae_decoder (1 / scaling_factor inside)--> image [B, 3, H, W] in [-1, 1]
    """

    text_encoder: nn.Module  # input_ids -> last_hidden_state
    vae_decoder: nn.Module  # latents -> image (the scaling factor applied inside)
    tokenizer_dir: Path  # the folder the tokenizer's files are read from (copied into the bundle)
    tokenizer_files: tuple[str, ...]  # their names inside tokenizer_dir
    max_length: int  # tokens per prompt (CLIP: 77)
    hidden: int  # the text encoder's width (= the denoiser's cross_attention_dim)
    latent_shape: tuple[int, int, int]
    image_shape: tuple[int, int, int]  # (3, H, W) the decoder outputs
    scaling_factor: float
    vae_class: str  # AutoencoderKL | AutoencoderTiny
    scheduler_config: dict  # the pipeline's scheduler_config.json (timestep fields: plan_options)


@dataclass(frozen=True)
class ModelSpec:
    """A denoiser with everything the compiler needs to know about it.

    `module(sample, timestep, cond)` must return the model output (epsilon for
    prediction_type "epsilon") with the shape of `sample`; `cond` is omitted when
    `conditioning.kind == "none"`.
    """

    module: nn.Module
    schedule: NoiseSchedule
    sample_shape: tuple[int, int, int]
    conditioning: Conditioning = field(default_factory=Conditioning)
    source: str = "python"
    source_sha256: str = ""
    description: str = ""
    student: dict | None = None  # a step-distilled student's record (src/edgediff/distill/distill.py), else None
    pruning: dict | None = None  # a pruned model's record (pruned_shapes.json, src/edgediff/prune/store.py), else None
    text: TextToImage | None = None  # a text-to-image pipeline's other components (conditioning kind "text")

    def example_inputs(self, batch: int = 2, *, generator: torch.Generator | None = None) -> tuple:
        g = generator or torch.Generator().manual_seed(0)
        x = torch.randn((batch, *self.sample_shape), generator=g)
        t = torch.linspace(1.0, float(self.schedule.num_train_timesteps - 1), batch)
        c = self.conditioning
        if c.kind == "class":
            return (x, t, torch.arange(batch, dtype=torch.int64) % (c.num_classes or 1))
        if c.kind in EMBEDDED:
            return (x, t, torch.randn((batch, *c.shape), generator=g))
        return (x, t)

    def input_names(self) -> list[str]:
        names = ["sample", "timestep"]
        if self.conditioning.kind == "class":
            names.append("class_labels")
        elif self.conditioning.kind in EMBEDDED:
            names.append("encoder_hidden_states")
        return names


class DiffusersAdapter(nn.Module):
    """Adapts a diffusers model to the one calling convention, returning a plain tensor."""

    def __init__(self, model: nn.Module, kind: str, out_channels: int, *, integer_timesteps: bool = False):
        super().__init__()
        self.model, self.kind, self.out_channels = model, kind, out_channels
        # A learned time embedding (UNet2DModel time_embedding_type "learned") is a table indexed by
        # the integer timestep; a fractional timestep (Euler's interpolated ones) is rounded first.
        self.integer_timesteps = integer_timesteps

    def forward(self, sample, timestep, cond=None):
        if self.integer_timesteps:
            timestep = timestep.round().long()
        if self.kind == "UNet2DModel":
            out = self.model(sample, timestep, class_labels=cond).sample
        elif self.kind == "UNet2DConditionModel":
            out = self.model(sample, timestep, encoder_hidden_states=cond).sample
        else:  # DiT: class-conditional transformer; a learned-sigma head doubles the channels
            out = self.model(sample, timestep=timestep, class_labels=cond).sample
        # Sliced only when there is a learned-variance half to drop: a no-op slice exports as an
        # aten.alias, which litert-torch's decompositions cannot take.
        return out[:, : self.out_channels] if out.shape[1] != self.out_channels else out


def sha256_file(path: Path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def sha256_state(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def torch_denoiser(model: ModelSpec):
    """The ModelSpec as a numpy callable `denoise(x, t, cond) -> eps` (the FP32 reference)."""

    @torch.inference_mode()
    def denoise(x: np.ndarray, t: np.ndarray, cond=None) -> np.ndarray:
        args = [
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32)),
        ]
        if model.conditioning.kind != "none":
            args.append(torch.from_numpy(np.ascontiguousarray(cond)))
        return model.module(*args).numpy()

    return denoise
