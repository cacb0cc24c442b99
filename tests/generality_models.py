"""The generality matrix: tiny, structurally varied diffusers folders written with save_pretrained.

    VARIANTS[name] = Variant(write(root) -> folder, expect)   expect None: must compile for every target;
                                                              else a substring of the one-line EdgediffError

Two layouts, as diffusers writes them: a pipeline folder (model_index.json + unet/ or transformer/ +
scheduler/) and a bare model folder (config.json + weights + scheduler_config.json side by side).
Used by tests/test_generality.py and benchmarks/generality.py (which puts this folder on sys.path).
To add a variant: add one entry to VARIANTS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# Small enough that a compile for a fast format takes about a second.
BASE_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    attention_head_dim=8,
)
BASE_DIT = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=2,
    num_layers=1,
    sample_size=8,
    patch_size=2,
    num_embeds_ada_norm=10,
    norm_num_groups=1,
)


def _seeded(build):
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        return build().eval()
    finally:
        torch.random.set_rng_state(state)


def _scheduler(name: str, **cfg):
    import diffusers

    return getattr(diffusers, name)(**cfg)


def _write(root: Path, model, sched, *, layout: str, sub: str, pipeline: str) -> Path:
    if layout == "pipeline":
        model.save_pretrained(root / sub)
        sched.save_pretrained(root / "scheduler")
        index = {
            "_class_name": pipeline,
            "_diffusers_version": "0.42.1",
            sub: ["diffusers", type(model).__name__],
            "scheduler": ["diffusers", type(sched).__name__],
        }
        (root / "model_index.json").write_text(json.dumps(index, indent=2))
    else:  # bare: the model folder with scheduler_config.json next to config.json
        model.save_pretrained(root)
        sched.save_pretrained(root)
    return root


def unet(layout="pipeline", sched=("DDPMScheduler", {}), **overrides):
    """A writer for a tiny UNet2DModel folder (BASE_UNET with `overrides`)."""

    def write(root: Path) -> Path:
        from diffusers import UNet2DModel

        model = _seeded(lambda: UNet2DModel(**{**BASE_UNET, **overrides}))
        return _write(
            root,
            model,
            _scheduler(sched[0], num_train_timesteps=100, **sched[1]),
            layout=layout,
            sub="unet",
            pipeline="DDPMPipeline",
        )

    return write


def dit(layout="pipeline", sched=("DDIMScheduler", {}), legacy=False, **overrides):
    """A writer for a tiny DiTTransformer2DModel folder; `legacy` rewrites its config as the
    Transformer2DModel that DiT folders written before diffusers 0.28 carry."""

    def write(root: Path) -> Path:
        from diffusers import DiTTransformer2DModel

        model = _seeded(lambda: DiTTransformer2DModel(**{**BASE_DIT, **overrides}))
        out = _write(
            root,
            model,
            _scheduler(sched[0], num_train_timesteps=100, **sched[1]),
            layout=layout,
            sub="transformer",
            pipeline="DiTPipeline",
        )
        if legacy:
            cfg_file = (out / "transformer" if layout == "pipeline" else out) / "config.json"
            cfg = json.loads(cfg_file.read_text())
            cfg.update(
                _class_name="Transformer2DModel",
                _diffusers_version="0.12.0.dev0",
                cross_attention_dim=None,
                num_vector_embeds=None,
                only_cross_attention=False,
                use_linear_projection=False,
            )
            cfg_file.write_text(json.dumps(cfg, indent=2))
        return out

    return write


def edit_config(write, sub: str, **fields):
    """A writer that writes with `write`, then sets `fields` in sub/config.json (a config diffusers
    itself refuses to build, or one only older versions wrote)."""

    def wrapped(root: Path) -> Path:
        out = write(root)
        f = out / sub / "config.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), **fields}, indent=2))
        return out

    return wrapped


@dataclass(frozen=True)
class Variant:
    write: Callable[[Path], Path]
    expect: str | None = None  # None: compiles everywhere; else: part of the expected EdgediffError
    recipe: dict | None = None  # Recipe fields this variant needs (the benchmark and tests apply them)


BLOCKS = {
    "plain": (("DownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "UpBlock2D")),
    "resnet-sampling": (
        ("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
        ("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
    ),
    "attn": (("AttnDownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "AttnUpBlock2D")),
    "skip": (("SkipDownBlock2D", "AttnSkipDownBlock2D"), ("AttnSkipUpBlock2D", "SkipUpBlock2D")),
}

VARIANTS: dict[str, Variant] = {
    # ---- UNet2DModel: block types
    "unet-plain": Variant(unet()),
    "unet-resnet-sampling": Variant(
        unet(
            "bare",
            ("DDIMScheduler", {"beta_schedule": "scaled_linear"}),
            down_block_types=BLOCKS["resnet-sampling"][0],
            up_block_types=BLOCKS["resnet-sampling"][1],
        )
    ),
    "unet-attn-resnet-updown": Variant(
        unet(
            down_block_types=BLOCKS["attn"][0],
            up_block_types=BLOCKS["attn"][1],
            downsample_type="resnet",
            upsample_type="resnet",
        )
    ),
    # Skip*Block2D: the skip path is hard-wired to 3 image channels and AttnSkip*Block2D to 32 norm groups
    "unet-skip": Variant(
        unet(
            "bare",
            down_block_types=BLOCKS["skip"][0],
            up_block_types=BLOCKS["skip"][1],
            block_out_channels=(32, 32),
            in_channels=3,
            out_channels=3,
        )
    ),
    # ---- time embeddings
    # fourier embeds log(t) and divides by t: undefined at t = 0, so a plan must not visit it
    "unet-fourier": Variant(
        unet(sched=("PNDMScheduler", {"steps_offset": 1}), time_embedding_type="fourier", flip_sin_to_cos=False),
        recipe={"spacing": "trailing"},
    ),
    "unet-learned-time": Variant(unet("bare", time_embedding_type="learned", num_train_timesteps=100)),
    "unet-positional-shift": Variant(unet(flip_sin_to_cos=False, freq_shift=1, center_input_sample=True)),
    # ---- class conditioning
    "unet-classes": Variant(unet(num_class_embeds=11)),
    "unet-class-timestep": Variant(unet(class_embed_type="timestep", num_class_embeds=5)),
    "unet-class-identity": Variant(unet("bare", class_embed_type="identity")),
    # ---- resnets, activations, mid block
    "unet-scale-shift-mish": Variant(unet(resnet_time_scale_shift="scale_shift", act_fn="mish")),
    "unet-no-attention-gelu": Variant(unet(add_attention=False, act_fn="gelu")),
    "unet-no-mid-relu": Variant(unet("bare", mid_block_type=None, act_fn="relu")),
    # ---- channels, shapes, groups
    "unet-learned-variance": Variant(
        unet(in_channels=3, out_channels=6, sched=("DDPMScheduler", {"variance_type": "learned_range"}))
    ),
    "unet-nonsquare": Variant(unet("bare", sample_size=(8, 16))),
    "unet-list-size": Variant(unet(sample_size=[8, 8])),
    "unet-groups": Variant(unet(norm_num_groups=2, attn_norm_num_groups=8)),
    # ---- scheduler configs
    "unet-euler-v": Variant(unet(sched=("EulerDiscreteScheduler", {"prediction_type": "v_prediction"}))),
    "unet-dpm-cosine-v": Variant(
        unet(
            "bare",
            sched=(
                "DPMSolverMultistepScheduler",
                {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
            ),
        )
    ),
    "unet-ddpm-sample": Variant(unet(sched=("DDPMScheduler", {"prediction_type": "sample"}))),
    # ---- DiT
    "dit-classes-sigma": Variant(dit(out_channels=4, sched=("DDIMScheduler", {"beta_schedule": "squaredcos_cap_v2"}))),
    "dit-bare-dpm-v": Variant(dit("bare", sched=("DPMSolverMultistepScheduler", {"prediction_type": "v_prediction"}))),
    "dit-legacy-transformer2d": Variant(dit(legacy=True, out_channels=4)),
    "dit-legacy-bare": Variant(dit("bare", legacy=True, sched=("EulerDiscreteScheduler", {}))),
    # ---- what cannot be compiled: one line naming the field
    "unet-no-sample-size": Variant(edit_config(unet(), "unet", sample_size=None), expect="sample_size"),
    "dit-no-classes": Variant(
        edit_config(dit(), "transformer", num_embeds_ada_norm=None), expect="num_embeds_ada_norm"
    ),
}
