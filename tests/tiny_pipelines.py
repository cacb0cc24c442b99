"""Tiny text-to-image pipeline folders for the tests, built from configs with seeded random weights.

    sd1_folder(root)  SD 1.x layout: epsilon, steps_offset 1, leading spacing, set_alpha_to_one false
    sd2_folder(root)  SD 2.x layout: v_prediction, use_linear_projection, per-block attention_head_dim,
                      trailing spacing

Each writes model_index.json, tokenizer/ (a CLIP-format BPE vocabulary made here), text_encoder/
(CLIPTextModel), unet/ (UNet2DConditionModel), vae/ (AutoencoderKL, or AutoencoderTiny) and scheduler/.
Latents are 4x8x8, images 3x16x16; a compile of one takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("digit", "seven", "one", "thick", "thin", "handwritten", "the", "in", "strokes")


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable character table (the BPE's base alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(folder: Path, *, max_length: int = 77) -> int:
    """A CLIP-format BPE tokenizer whose merges spell out WORDS; returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for w in WORDS:
        cur = w[0]
        for k, ch in enumerate(w[1:], 1):
            last = k == len(w) - 1
            merges.append(f"{cur} {ch}{'</w>' if last else ''}")
            cur = cur + ch
            tok = cur + ("</w>" if last else "")
            if tok not in vocab:
                vocab.append(tok)
    merges = list(dict.fromkeys(merges))
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_length,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )
    return len(vocab)


def _scheduler(v2: bool) -> dict:
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "v_prediction" if v2 else "epsilon",
        "timestep_spacing": "trailing" if v2 else "leading",
    }


def build(root: Path, *, v2: bool = False, seed: int = 0, hidden: int = 32, tiny_vae: bool = False) -> Path:
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    root = Path(root)
    vocab_size = write_tokenizer(root / "tokenizer")
    torch.manual_seed(seed)
    eos = vocab_size - 1
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=eos - 1,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    ).eval()
    te.save_pretrained(root / "text_encoder")
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4) if v2 else 8,
        use_linear_projection=v2,
        norm_num_groups=8,
    )
    unet.save_pretrained(root / "unet")
    if tiny_vae:
        vae = diffusers.AutoencoderTiny(
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
            upsampling_scaling_factor=2,
            latent_channels=4,
        )
    else:
        vae = diffusers.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
        )
    vae.save_pretrained(root / "vae")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(_scheduler(v2)))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderTiny" if tiny_vae else "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


def sd1_folder(root: Path, **kw) -> Path:
    return build(root, v2=False, **kw)


def sd2_folder(root: Path, **kw) -> Path:
    return build(root, v2=True, **kw)


def edit_json(path: Path, **changes) -> None:
    """Change fields of a JSON file in place (None removes a field)."""
    d = json.loads(Path(path).read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    Path(path).write_text(json.dumps(d))
