"""builtin:digits-sd: a small latent text-to-image model (a StableDiffusionPipeline folder).

    digits_splits(size=32)["diffusion"] (987 images, gray -> 3 channels, [-1, 1])
      -> train AutoencoderKL (32x32x3 <-> 8x8x4), scaling_factor = 1 / std(latents)
      -> captions (seeded templates; "thick"/"thin" from the image's ink mass)
      -> CLIP-format BPE learned with `tokenizers` on the captions
      -> CLIPTextModel + UNet2DConditionModel trained jointly on the epsilon loss,
         captions dropped to "" with probability CAPTION_DROPOUT (classifier-free guidance)
      -> write_folder: model_index.json, tokenizer/, text_encoder/, unet/, vae/, scheduler/

Every config below is written out in full so the folder does not depend on a library's
defaults. All randomness comes from one torch.Generator (`seed`); the thread count is fixed
while training. `quality()` is the measured bar: diffusers' own StableDiffusionPipeline on
the folder, decoded images -> gray -> 16x16 -> the committed digits classifier.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from edgediff.core.errors import EdgediffError
from edgediff.core.files import staging, swap_into_place
from edgediff.training.data import digits_splits
from edgediff.training.trainer import Ema
from edgediff.zoo.models import init_

WEIGHTS_DIR = Path(__file__).parent / "weights"
FOLDER = WEIGHTS_DIR / "digits_sd"
RECORD = "record.json"
THREADS = 1  # 2 threads on the shared 2-core machine ran 6x slower (OpenMP oversubscription)

# --- defaults (the committed folder) ---
SEED = 0
VAE_STEPS = 250
VAE_BATCH = 32
VAE_LR = 2e-3
VAE_KL_WEIGHT = 1e-4
SD_STEPS = 5000
SD_BATCH = 64
SD_LR = 1e-3
SD_WARMUP = 100
EMA_DECAY = 0.999
CAPTION_DROPOUT = 0.1
CAPTIONS_PER_IMAGE = 8
BPE_VOCAB = 1000
# the text encoder's width (= the UNet's cross_attention_dim): at 32 (2 heads) the committed model named
# the digit asked for in 0.49 of 200 images after 1500 steps; at 64 (4 heads) 1.00 after 1500 steps
TEXT_WIDTH = 64
GUIDANCE = 5.0  # what quality() uses unless told (chosen by measurement, see the record)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = [
    "a handwritten {n}",
    "the digit {w}",
    "number {n} written by hand",
    "a {n}",
    "{n}",
    "{w}",
    "the number {w}",
    "a handwritten digit {w}",
    "an image of the digit {n}",
    "a drawing of a {w}",
]
STYLED = ["a {n} in {s} strokes", "the digit {w} in {s} strokes", "a {s} handwritten {n}", "a {s} {w}"]


def vae_config() -> dict:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [16, 32, 32],
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 32,
        "scaling_factor": 1.0,  # replaced by 1 / std of the training latents
        "shift_factor": None,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": False,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": True,
    }


def text_config(vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> dict:
    return {
        "vocab_size": vocab_size,
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 4 * TEXT_WIDTH,
        "projection_dim": TEXT_WIDTH,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_LENGTH,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }


def unet_config(cross_dim: int = TEXT_WIDTH) -> dict:
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "only_cross_attention": False,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 8,
        "norm_eps": 1e-5,
        "cross_attention_dim": cross_dim,
        "transformer_layers_per_block": 1,
        "attention_head_dim": 2,  # number of heads, as SD 1.x's config names it
        "use_linear_projection": False,
        "class_embed_type": None,
        "num_class_embeds": None,
        "upcast_attention": False,
        "resnet_time_scale_shift": "default",
        "time_embedding_type": "positional",
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
    }


SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "thresholding": False,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}


# --- captions -----------------------------------------------------------------------------


def ink_styles(images: np.ndarray, labels: np.ndarray) -> list[str | None]:
    """'thick' / 'thin' for the top / bottom third of ink mass within each digit's class, else None."""
    mass = (np.asarray(images).reshape(len(images), -1) + 1).sum(1)
    out: list[str | None] = [None] * len(labels)
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        lo, hi = np.quantile(mass[idx], [1 / 3, 2 / 3])
        for i in idx:
            out[i] = "thin" if mass[i] <= lo else "thick" if mass[i] >= hi else None
    return out


def captions(labels, styles, per_image: int, g: torch.Generator) -> list[list[str]]:
    """`per_image` captions for each image, templates drawn from `g`; styled ones only when the image has a style."""
    out = []
    for y, s in zip(np.asarray(labels).tolist(), styles):
        pool = TEMPLATES + (STYLED if s else [])
        picks = torch.randint(0, len(pool), (per_image,), generator=g).tolist()
        out.append([pool[k].format(n=y, w=WORDS[y], s=s) for k in picks])
    return out


def all_caption_forms() -> list[str]:
    """Every caption the generator can produce (the tokenizer's training text)."""
    forms = []
    for y in range(10):
        for t in TEMPLATES:
            forms.append(t.format(n=y, w=WORDS[y]))
        for s in ("thick", "thin"):
            for t in STYLED:
                forms.append(t.format(n=y, w=WORDS[y], s=s))
    return forms


# --- tokenizer ----------------------------------------------------------------------------

CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tokenizer(folder: Path, texts: list[str], vocab_size: int = BPE_VOCAB) -> None:
    """Learn a byte-level BPE on `texts` with `tokenizers` and write it in CLIP format to `folder`.

    vocab.json: the 256 byte symbols, the same with '</w>', the merge results in merge
    order, then <|startoftext|>, <|endoftext|> (CLIP's layout). merges.txt: '#version: 0.2'
    then one merge a line. The slow CLIPTokenizer writes its config files; the fast one,
    converted from it, writes tokenizer.json.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    alphabet = list(_bytes_to_unicode().values())
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    vocab_list = alphabet + [a + "</w>" for a in alphabet]
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            vocab_list.append(a + b)
    vocab_list += [BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw:
        raw = Path(raw)
        (raw / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_list)}, ensure_ascii=False))
        (raw / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        slow = CLIPTokenizer(
            str(raw / "vocab.json"),
            str(raw / "merges.txt"),
            unk_token=EOS,
            bos_token=BOS,
            eos_token=EOS,
            pad_token=EOS,
            model_max_length=MAX_LENGTH,
        )
        slow.save_pretrained(str(folder))
    fast = CLIPTokenizerFast.from_pretrained(str(folder), from_slow=True)
    fast.save_pretrained(str(folder))
    # save_pretrained of the fast tokenizer rewrites the config; keep the slow class as the one named
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "CLIPTokenizer"
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Ids as StableDiffusionPipeline makes them: padded to 77, truncated."""
    return tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


# --- training -----------------------------------------------------------------------------


@dataclass
class SdResult:
    path: Path | None
    seconds: float
    vae_losses: list[float] = field(repr=False)
    sd_losses: list[float] = field(repr=False)
    scaling_factor: float = 1.0
    record: dict = field(default_factory=dict, repr=False)


def _images(split: str = "diffusion"):
    x, y = digits_splits(size=32)[split]
    return torch.from_numpy(x).repeat(1, 3, 1, 1), y


def _batches(n: int, batch: int, g: torch.Generator):
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def _lr(opt, warmup: int, steps: int):
    def f(k):
        if k < warmup:
            return (k + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (k - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def alphas_cumprod() -> torch.Tensor:
    c = SCHEDULER_CONFIG
    betas = torch.linspace(c["beta_start"] ** 0.5, c["beta_end"] ** 0.5, c["num_train_timesteps"], dtype=torch.float64)
    return torch.cumprod(1 - betas**2, 0).float()


def train_vae(steps: int, batch: int, lr: float, kl_weight: float, g: torch.Generator, progress: bool):
    from diffusers import AutoencoderKL

    x_all, _ = _images()
    vae = AutoencoderKL(**vae_config())
    with torch.no_grad():
        init_(vae, g)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = _lr(opt, 100, steps)
    it = _batches(len(x_all), batch, g)
    losses = []
    bar = tqdm(range(steps), desc="digits-sd vae", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        x = x_all[next(it)]
        # augmentation: random shift up to 2 px (background -1), keeps the VAE from memorising
        sx, sy = torch.randint(-2, 3, (2,), generator=g).tolist()
        x = torch.roll(F.pad(x, (2, 2, 2, 2), value=-1.0), (sy, sx), (2, 3))[:, :, 2:-2, 2:-2]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean**2 + post.var - 1.0 - post.logvar).mean()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    vae.eval()
    with torch.no_grad():
        post = vae.encode(x_all).latent_dist
        mean, std = post.mean, post.std
        z = mean + std * torch.randn(mean.shape, generator=g)
        scaling = float(1.0 / z.std())
        rec_mse = float(F.mse_loss(vae.decode(mean).sample, x_all))
    vae.register_to_config(scaling_factor=scaling)
    return vae, losses, mean, std, scaling, rec_mse


def train(
    steps: int = SD_STEPS,
    vae_steps: int = VAE_STEPS,
    seed: int = SEED,
    out: str | Path | None = FOLDER,
    progress: bool = True,
    *,
    batch: int = SD_BATCH,
    lr: float = SD_LR,
    evaluate: int = 200,
    curve: tuple[int, ...] = (),
) -> SdResult:
    """Train the VAE, then the text encoder and UNet jointly; write the pipeline folder to `out`.

    `evaluate` images (prompts naming each digit) are generated with the folder afterwards and
    classified (see quality()); 0 skips that. `out=None` writes nothing. At each step count in
    `curve` the EMA weights so far are evaluated the same way (100 images) and the accuracy is
    printed and kept in the record ("curve"), to see whether more steps would pay.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    with torch_threads(THREADS):
        vae, vae_losses, lat_mean, lat_std, scaling, rec_mse = train_vae(
            vae_steps, VAE_BATCH, VAE_LR, VAE_KL_WEIGHT, g, progress
        )
        x32, y = _images()
        styles = ink_styles(x32[:, :1].numpy(), y)
        caps = captions(y, styles, CAPTIONS_PER_IMAGE, g)
        with tempfile.TemporaryDirectory() as tdir:
            build_tokenizer(Path(tdir), all_caption_forms())
            tokenizer = CLIPTokenizer.from_pretrained(tdir)
            tok_dir_files = {p.name: p.read_bytes() for p in Path(tdir).iterdir()}
        flat = [c for cs in caps for c in cs]
        ids = tokenize(tokenizer, flat).view(len(caps), CAPTIONS_PER_IMAGE, -1)
        empty_ids = tokenize(tokenizer, [""])[0]
        vocab = tokenizer.get_vocab()
        tcfg = text_config(len(vocab), vocab[BOS], vocab[EOS], vocab[EOS])
        text = CLIPTextModel(CLIPTextConfig(**tcfg))
        unet = UNet2DConditionModel(**unet_config(tcfg["hidden_size"]))
        with torch.no_grad():
            init_(text, g)
            init_(unet, g)
        text.train()
        unet.train()
        params = list(text.parameters()) + list(unet.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = _lr(opt, SD_WARMUP, steps)
        ema_t, ema_u = Ema(text, EMA_DECAY), Ema(unet, EMA_DECAY)
        ac = alphas_cumprod()
        it = _batches(len(y), batch, g)
        losses: list[float] = []
        points: list[dict] = []
        t_sd = time.perf_counter()
        bar = tqdm(range(steps), desc="digits-sd unet+text", disable=not progress, dynamic_ncols=True)
        for _ in bar:
            idx = next(it)
            pick = torch.randint(0, CAPTIONS_PER_IMAGE, (len(idx),), generator=g)
            tid = ids[idx, pick].clone()
            tid[torch.rand(len(idx), generator=g) < CAPTION_DROPOUT] = empty_ids
            z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)) * scaling
            t = torch.randint(0, len(ac), (len(idx),), generator=g)
            eps = torch.randn(z0.shape, generator=g)
            a = ac[t].view(-1, 1, 1, 1)
            zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
            emb = text(tid)[0]
            loss = F.mse_loss(unet(zt, t, encoder_hidden_states=emb).sample, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            ema_t.update(text)
            ema_u.update(unet)
            losses.append(loss.item())
            if len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
            if len(losses) in curve:
                points.append(_curve_point(len(losses), tok_dir_files, text, unet, vae, ema_t, ema_u))
                bar.write(f"digits-sd: step {points[-1]['step']}: accuracy {points[-1]['accuracy']:.3f}")
                text.train()
                unet.train()
        sd_seconds = time.perf_counter() - t_sd
        ema_t.copy_to(text)
        ema_u.copy_to(unet)
        text.eval()
        unet.eval()
    train_seconds = time.perf_counter() - t_start
    record = {
        "model": "digits-sd",
        "reproduce": "edgediff zoo train digits-sd",
        "seed": seed,
        "data": f"digits_splits(size=32, seed=0)['diffusion'] ({len(y)} images, gray repeated to RGB, [-1, 1])",
        "vae": {
            "steps": vae_steps,
            "batch_size": VAE_BATCH,
            "lr": VAE_LR,
            "loss": f"MSE + 0.5 L1 + {VAE_KL_WEIGHT} KL (per element); shift augmentation <= 2 px",
            "final_loss": float(np.mean(vae_losses[-max(1, len(vae_losses) // 10) :])),
            "reconstruction_mse_train": rec_mse,
            "scaling_factor": scaling,
            "scaling_factor_definition": "1 / std of sampled latents of the training images",
        },
        "text_unet": {
            "steps": steps,
            "batch_size": batch,
            "lr": lr,
            "warmup": SD_WARMUP,
            "lr_schedule": "linear warmup + cosine to 0",
            "optimizer": "AdamW(weight_decay=0), grad norm clip 1.0",
            "ema_decay": EMA_DECAY,
            "saved": "EMA weights of the text encoder and the UNet",
            "caption_dropout": CAPTION_DROPOUT,
            "captions_per_image": CAPTIONS_PER_IMAGE,
            "loss": "MSE(eps_pred, eps), t ~ U{0..999}, scaled_linear betas",
            "final_loss": float(np.mean(losses[-max(1, len(losses) // 10) :])),
            "seconds": round(sd_seconds, 1),
            **({"curve": points} if points else {}),
        },
        "tokenizer": {"vocab_size": len(vocab), "trained_on": f"{len(all_caption_forms())} caption forms"},
        "train_seconds": round(train_seconds, 1),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu": cpu_name(),
            "threads": THREADS,
        },
    }
    result = SdResult(None, train_seconds, vae_losses, losses, scaling, record)
    if out is not None:
        out = Path(out)
        with staging(out) as tmp:
            write_folder(tmp, tok_dir_files, text, unet, vae)
            if evaluate:
                q = quality(tmp, n=evaluate, guidance=GUIDANCE, steps=20, progress=progress)
                record["quality"] = q
            record["weights_bytes"] = folder_bytes(tmp)
            (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
            swap_into_place(tmp, out)
        result.path = out
    return result


def _curve_point(step: int, tokenizer_files: dict, text, unet, vae, ema_t: Ema, ema_u: Ema) -> dict:
    """Accuracy (100 images, GUIDANCE) of the EMA weights after `step` steps; the live weights are untouched."""
    import copy

    t, u = copy.deepcopy(text), copy.deepcopy(unet)
    ema_t.copy_to(t)
    ema_u.copy_to(u)
    t.eval()
    u.eval()
    with tempfile.TemporaryDirectory() as tdir:
        write_folder(Path(tdir), tokenizer_files, t, u, vae)
        q = quality(tdir, n=100, guidance=GUIDANCE, steps=20)
    return {"step": step, "accuracy": q["accuracy"], "guidance": GUIDANCE, "images": 100}


def write_folder(folder: Path, tokenizer_files: dict[str, bytes], text, unet, vae) -> None:
    """Save the components as a StableDiffusionPipeline folder (safetensors, fp32)."""
    import diffusers
    import transformers
    from diffusers import DDIMScheduler

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer").mkdir(exist_ok=True)
    for name, data in tokenizer_files.items():
        (folder / "tokenizer" / name).write_bytes(data)
    text.save_pretrained(str(folder / "text_encoder"), safe_serialization=True)
    unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
    vae.save_pretrained(str(folder / "vae"), safe_serialization=True)
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(str(folder / "scheduler"))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    del transformers


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and p.name != RECORD)


def load_pipeline(folder: str | Path = FOLDER):
    """diffusers' StableDiffusionPipeline on the folder, offline."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise EdgediffError(f"{folder}: model_index.json missing; create it with `edgediff zoo train digits-sd`")
    return StableDiffusionPipeline.from_pretrained(
        str(folder), safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True
    )


QUALITY_TEMPLATES = ["a handwritten {n}", "the digit {w}", "number {n} written by hand"]


def quality_prompts(n: int) -> tuple[list[str], np.ndarray]:
    """`n` prompts cycling through the digits and QUALITY_TEMPLATES, with their digits."""
    labels = np.arange(n) % 10
    tmpl = [QUALITY_TEMPLATES[(i // 10) % len(QUALITY_TEMPLATES)] for i in range(n)]
    return [t.format(n=d, w=WORDS[d]) for t, d in zip(tmpl, labels)], labels


_DIGIT_WORDS = {**{str(d): d for d in range(10)}, **{w: d for d, w in enumerate(WORDS)}}


def digit_named(prompt: str) -> int | None:
    """The digit a prompt names ("a handwritten 7", "the digit seven"), or None when it names
    none or several different ones."""
    found = {_DIGIT_WORDS[w] for w in re.findall(r"[a-z]+|[0-9]+", prompt.lower()) if w in _DIGIT_WORDS}
    return found.pop() if len(found) == 1 else None


def classifier_input(images: np.ndarray) -> np.ndarray:
    """Decoded images (N, H, W, 3) in [0, 1] as the digits classifier takes them: gray, [-1, 1],
    bilinear to 16x16; float32 (N, 1, 16, 16)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).mean(-1, keepdim=True).permute(0, 3, 1, 2)
    return F.interpolate(x * 2 - 1, size=(16, 16), mode="bilinear", align_corners=False).numpy()


def classify_images(images: np.ndarray) -> np.ndarray:
    """Digits classifier on decoded images (N, H, W, 3) in [0, 1] (classifier_input)."""
    from edgediff.zoo.builtin import load_classifier

    with torch.no_grad():
        return load_classifier()(torch.from_numpy(classifier_input(images))).argmax(1).numpy()


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` inside the block, the caller's restored after."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def quality(
    folder: str | Path = FOLDER,
    n: int = 200,
    guidance: float = GUIDANCE,
    steps: int = 20,
    scheduler: str = "dpm",
    seed: int = 0,
    batch: int = 50,
    progress: bool = False,
) -> dict:
    """Class accuracy of `n` images generated by StableDiffusionPipeline from prompts naming each digit."""
    from diffusers import DPMSolverMultistepScheduler

    with torch_threads(THREADS):
        pipe = load_pipeline(folder)
        if scheduler == "dpm":
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        elif scheduler != "folder":
            raise EdgediffError(f"scheduler {scheduler!r}: expected 'dpm' or 'folder'")
        pipe.set_progress_bar_config(disable=True)
        prompts, labels = quality_prompts(n)
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        imgs = []
        for i in tqdm(range(0, n, batch), desc="digits-sd quality", disable=not progress):
            out = pipe(
                prompts[i : i + batch],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=g,
                output_type="np",
            )
            imgs.append(out.images)
        images = np.concatenate(imgs)
    preds = classify_images(images)
    per_digit = [float((preds[labels == d] == d).mean()) for d in range(10)]
    return {
        "images": n,
        "accuracy": float((preds == labels).mean()),
        "per_digit": per_digit,
        "guidance": guidance,
        "steps": steps,
        "scheduler": "DPMSolverMultistepScheduler" if scheduler == "dpm" else "folder (DDIMScheduler)",
        "negative_prompt": "",
        "seed": seed,
        "prompts": QUALITY_TEMPLATES,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in have]
    except OSError:
        pass
    return []


__all__ = [
    "train",
    "quality",
    "quality_prompts",
    "classify_images",
    "classifier_input",
    "digit_named",
    "torch_threads",
    "load_pipeline",
    "build_tokenizer",
    "captions",
    "ink_styles",
    "all_caption_forms",
    "tokenize",
    "vae_config",
    "text_config",
    "unet_config",
    "SCHEDULER_CONFIG",
    "FOLDER",
    "SdResult",
]
