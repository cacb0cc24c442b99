"""Model sources: turn what the user names into a captured denoiser.

    "builtin:digits"              -> edgediff.zoo (weights in the package)
    "path/to/diffusers_dir"       -> UNet2DModel | UNet2DConditionModel | DiTTransformer2DModel
                                     + scheduler/scheduler_config.json
    "path/to/pruned_dir"          -> the same, plus pruned_shapes.json (`edgediff prune`, src/edgediff/prune/store.py)
    "package.module:factory"      -> factory() returns a ModelSpec
         |
         v
    ModelSpec(module, schedule, sample_shape, cond)   -- one calling convention for all:
        eps = module(sample[B,C,H,W] f32, timestep[B] f32, cond[B,...])

To add a kind of source, add a loader to LOADERS (and a branch in `_kind`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.readers import read_json
from edgediff.core.schedule import NoiseSchedule, schedule_from_diffusers_config
from edgediff.core.spec import Conditioning, DiffusersAdapter, ModelSpec, TextToImage, sha256_file, sha256_state
from edgediff.distill.distill import (
    attach_student,  # a distilled student's record and w-embedding
    read_student_record,
)
from edgediff.prune.store import load_pruned, read_shapes
from edgediff.zoo.builtin import builtin_student_folder, load_builtin


def _load_builtin(spec: str) -> ModelSpec:
    if spec == "builtin:digits-sd":  # a text-to-image pipeline folder committed under zoo/weights
        if not is_pipeline_dir(DIGITS_SD):
            raise EdgediffError(
                f"{spec}: weights missing ({DIGITS_SD / 'model_index.json'}); "
                "create them with `edgediff zoo train digits-sd`"
            )
        return _load_pipeline_dir(str(DIGITS_SD), source=spec)

    student = builtin_student_folder(spec.split(":", 1)[1])
    if student is not None:  # a committed distilled student: a diffusers folder under zoo/weights/students
        loaded = _load_diffusers_dir(str(student))
        return ModelSpec(**{**loaded.__dict__, "source": spec})
    b = load_builtin(spec.split(":", 1)[1])
    if b.num_classes:
        cond = Conditioning("class", num_classes=b.num_classes, null_label=b.num_classes)
    else:
        cond = Conditioning()
    return ModelSpec(
        module=DiffusersAdapter(b.unet, "UNet2DModel", b.sample_shape[0]).eval(),
        schedule=schedule_from_diffusers_config(b.scheduler_config),
        sample_shape=tuple(b.sample_shape),
        conditioning=cond,
        source=spec,
        source_sha256=b.weights_sha256 or sha256_state(b.unet),
        description=b.description,
        pruning=b.pruning,
    )


_DIFFUSERS_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel", "Transformer2DModel")


def _find_model_dir(root: Path) -> tuple[Path, Path]:
    """Return (model folder, scheduler config file) for a pipeline or a bare model folder."""
    for sub in ("unet", "transformer"):
        if (root / sub / "config.json").exists():
            return root / sub, root / "scheduler" / "scheduler_config.json"
    if (root / "config.json").exists():
        for cand in (
            root / "scheduler_config.json",
            root.parent / "scheduler" / "scheduler_config.json",
            root / "scheduler" / "scheduler_config.json",
        ):
            if cand.exists():
                return root, cand
        return root, root / "scheduler_config.json"
    raise EdgediffError(
        f"{root}: not a diffusers model folder (no config.json, unet/config.json or transformer/config.json)"
    )


def _load_diffusers_dir(spec: str, *, build=None, allow_extra_tensors: bool = False) -> ModelSpec:
    import diffusers

    root = Path(spec)
    model_dir, sched_path = _find_model_dir(root)
    config = read_json(model_dir / "config.json", "model config", nonfinite=True)
    cls_name = config.get("_class_name")
    if cls_name not in _DIFFUSERS_CLASSES:
        raise EdgediffError(
            f"{model_dir / 'config.json'}: field _class_name is {cls_name!r}; "
            f"supported: {', '.join(_DIFFUSERS_CLASSES)}"
        )
    sched_cfg = read_json(sched_path, "scheduler config", nonfinite=True)
    try:
        schedule = schedule_from_diffusers_config(sched_cfg)
    except EdgediffError as e:
        raise EdgediffError(f"{sched_path}: {e}") from None
    if cls_name == "Transformer2DModel":
        _check_legacy_dit(config, model_dir / "config.json")
        cls_name = "DiTTransformer2DModel"  # what diffusers itself remaps such a folder to
    cls = getattr(diffusers, cls_name)
    io = _model_io(config, cls_name, model_dir / "config.json", schedule)
    pruning = None
    if (model_dir / "pruned_shapes.json").is_file():  # a pruned folder, or a distilled student of one
        pruning = read_shapes(model_dir).get("record")
        build = build or (lambda d: load_pruned(d)[0])
    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    try:
        if build is not None:  # a pruned folder: every layer its own width (src/edgediff/prune/store.py)
            model = build(model_dir)
        elif weights:
            model, info = cls.from_pretrained(
                model_dir, local_files_only=True, low_cpu_mem_usage=False, output_loading_info=True
            )
            _check_complete(info, weights[0] if len(weights) == 1 else model_dir, cls_name, allow_extra_tensors)
        else:  # a config without weights: seeded random init (useful for architecture-only speed work)
            torch_state = torch.random.get_rng_state()
            torch.manual_seed(0)
            model = cls.from_config(config)
            torch.random.set_rng_state(torch_state)
    except EdgediffError:
        raise
    except Exception as e:  # diffusers raises many kinds; name the folder and the cause in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgediffError(f"{model_dir}: diffusers could not build {cls_name}: {first}") from None
    model.eval()
    h = hashlib.sha256()
    student_files = [
        root / n for n in ("edgediff_student.json", "guidance_embedding.safetensors") if (root / n).is_file()
    ]  # a distilled student's record and w-embedding
    extra = [model_dir / "pruned_shapes.json"] if build is not None else []
    for f in [model_dir / "config.json", sched_path, *weights, *student_files, *extra]:
        h.update(f.name.encode())
        sha256_file(f, h)
    spec = ModelSpec(
        module=DiffusersAdapter(model, io.kind, io.out_channels, integer_timesteps=io.integer_timesteps).eval(),
        schedule=schedule,
        sample_shape=io.sample_shape,
        conditioning=io.conditioning,
        source=str(root.resolve()),
        source_sha256=h.hexdigest(),
        description=f"diffusers {io.kind} from {root}",
        pruning=pruning,
    )

    return attach_student(spec, root)


def _names(keys: list[str], k: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:k]) + (f" and {len(keys) - k} more" if len(keys) > k else "")


def _check_complete(info: dict, where: Path, cls_name: str, allow_extra: bool) -> None:
    """Every tensor the config's model has must come from the weights: diffusers only warns and leaves
    a missing one randomly initialised, and verification against that same model would pass."""
    missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
    if missing:
        raise EdgediffError(
            f"{where}: {len(missing)} tensor(s) of the {cls_name} config are missing from the weights: "
            f"{_names(missing)}; the model would run with random values there"
        )
    if unexpected and not allow_extra:
        raise EdgediffError(
            f"{where}: {len(unexpected)} tensor(s) in the weights are not part of the {cls_name} config: "
            f"{_names(unexpected)}; pass allow_extra_tensors=True (--allow-extra-tensors) to ignore them"
        )


@dataclass(frozen=True)
class _ModelIO:
    """How the compiler calls a diffusers model: what the config says about inputs and outputs."""

    kind: str  # the adapter's calling convention: UNet2DModel | UNet2DConditionModel | DiTTransformer2DModel
    sample_shape: tuple[int, int, int]
    out_channels: int  # model output channels that are the prediction (the rest: a learned variance)
    conditioning: Conditioning
    integer_timesteps: bool = False


def _check_legacy_dit(config: dict, cfg_file: Path) -> None:
    """Transformer2DModel covers several architectures; the DiT one (patched, ada_norm_zero) is supported."""
    norm, patch = config.get("norm_type", "layer_norm"), config.get("patch_size")
    if norm != "ada_norm_zero" or patch is None:
        raise EdgediffError(
            f"{cfg_file}: Transformer2DModel with norm_type {norm!r} and patch_size {patch!r} is "
            "not a DiT; supported: norm_type 'ada_norm_zero' with a patch_size (class-conditional DiT)"
        )


def _sample_hw(config: dict, cfg_file: Path, default: int) -> tuple[int, int]:
    size = config.get("sample_size", default)
    if isinstance(size, int) and size > 0:
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    raise EdgediffError(
        f"{cfg_file}: field sample_size is {size!r}; the compiler needs the sample's size "
        "(an integer, or [height, width])"
    )


def _prediction_channels(config: dict, cfg_file: Path, in_ch: int, default) -> int:
    """The channels of the model output that are the prediction: all of them, or the first half
    for a learned-variance model (out_channels = 2 x in_channels: prediction, then variance)."""
    out_ch = config.get("out_channels", default)
    out_ch = in_ch if out_ch is None else out_ch
    if out_ch not in (in_ch, 2 * in_ch):
        raise EdgediffError(
            f"{cfg_file}: field out_channels is {out_ch}; a denoiser outputs in_channels ({in_ch}) "
            f"channels, or {2 * in_ch} with a learned variance"
        )
    return in_ch


def _model_io(config: dict, cls_name: str, cfg_file: Path, schedule: NoiseSchedule) -> _ModelIO:
    if cls_name == "UNet2DModel":
        in_ch = config.get("in_channels", 3)
        hw = _sample_hw(config, cfg_file, 32)
        out = _prediction_channels(config, cfg_file, in_ch, 3)
        n, embed_type = config.get("num_class_embeds"), config.get("class_embed_type")
        if embed_type == "identity":  # the class embedding is given as a vector, added to the time embedding
            dim = config.get("time_embedding_dim") or config.get("block_out_channels", (224,))[0] * 4
            cond = Conditioning("embedding", shape=(int(dim),))
        elif embed_type == "timestep" and not n:
            raise EdgediffError(
                f"{cfg_file}: class_embed_type 'timestep' without num_class_embeds: the number of "
                "labels (and so the null label for guidance) is unknown; set num_class_embeds"
            )
        elif n and embed_type in (None, "timestep"):  # labels 0..n-2, the last one the null label
            cond = Conditioning("class", num_classes=n - 1, null_label=n - 1)
        else:
            cond = Conditioning()
        learned = config.get("time_embedding_type", "positional") == "learned"
        if learned and (config.get("num_train_timesteps") or 0) < schedule.num_train_timesteps:
            raise EdgediffError(
                f"{cfg_file}: time_embedding_type 'learned' with num_train_timesteps "
                f"{config.get('num_train_timesteps')}, but the scheduler has "
                f"{schedule.num_train_timesteps} training timesteps"
            )
        return _ModelIO("UNet2DModel", (int(in_ch), *hw), out, cond, integer_timesteps=learned)
    if cls_name == "UNet2DConditionModel":
        in_ch = config.get("in_channels", 4)
        dim = config.get("cross_attention_dim", 1280)
        dim = dim[0] if isinstance(dim, (list, tuple)) else dim
        return _ModelIO(
            "UNet2DConditionModel",
            (int(in_ch), *_sample_hw(config, cfg_file, 64)),
            _prediction_channels(config, cfg_file, in_ch, 4),
            Conditioning("embedding", shape=(77, int(dim))),
        )
    in_ch = config.get("in_channels", 4)  # DiT: class-conditional (diffusers refuses one without classes)
    n = config.get("num_embeds_ada_norm")
    cond = Conditioning("class", num_classes=n, null_label=n) if n else Conditioning()
    return _ModelIO(
        "DiTTransformer2DModel",
        (int(in_ch), *_sample_hw(config, cfg_file, 32)),
        _prediction_channels(config, cfg_file, in_ch, None),
        cond,
    )


# ---- text-to-image pipelines: a folder with model_index.json --------------------------------------
#
#   model_index.json  tokenizer/ text_encoder/ unet/ vae/ scheduler/
#        |
#        v
#   ModelSpec(module = the UNet (sample, timestep, encoder_hidden_states), conditioning "text",
#             text = TextToImage(text encoder, VAE decoder, tokenizer files, latent block))

PIPELINES = ("StableDiffusionPipeline",)
TEXT_GUIDANCE = 7.5  # a text-to-image pipeline's default guidance scale (as diffusers' pipeline call)
VAE_CLASSES = ("AutoencoderKL", "AutoencoderTiny")
_NEEDED = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
DIGITS_SD = Path(__file__).resolve().parents[1] / "zoo" / "weights" / "digits_sd"


_TEXT_KEYS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "controlnet")


def is_pipeline_dir(path: Path) -> bool:
    """A folder whose model_index.json names a text-to-image pipeline's parts (a text encoder, a
    tokenizer, a ControlNet): loaded (or refused) as one. A DDPMPipeline or DiTPipeline folder also
    has a model_index.json; it is a denoiser folder (unet/ or transformer/) as before."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        d = read_json(index, "pipeline index", nonfinite=True)
    except EdgediffError:
        return False  # not readable as an index: the denoiser loader decides, as before
    return isinstance(d, dict) and any(k in d for k in _TEXT_KEYS)


class TextEncoderOutput(torch.nn.Module):
    """CLIPTextModel as the pipeline calls it: input_ids -> last_hidden_state (no attention mask)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids, return_dict=False)[0]


class VaeDecode(torch.nn.Module):
    """The VAE decoder as the pipeline calls it: image = decode(latents / scaling_factor), in [-1, 1]."""

    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.vae, self.scaling_factor = vae, float(scaling_factor)

    def forward(self, latents):
        return self.vae.decode(latents / self.scaling_factor, return_dict=False)[0]


def _refuse_layout(index: dict, where: Path) -> None:
    """Layouts not supported yet, refused in one line naming the component and the field."""
    for key, what in (
        ("text_encoder_2", "a second text encoder (SDXL)"),
        ("tokenizer_2", "a second tokenizer (SDXL)"),
        ("controlnet", "a ControlNet"),
    ):
        if key in index:
            raise EdgediffError(
                f"{where}: field {key} names {what}; not supported yet (supported: {', '.join(PIPELINES)})"
            )
    cls = index.get("_class_name")
    if cls not in PIPELINES:
        raise EdgediffError(f"{where}: field _class_name is {cls!r}; supported: {', '.join(PIPELINES)}")
    for key in _NEEDED:
        entry = index.get(key)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            raise EdgediffError(f"{where}: field {key} must name its [library, class], got {entry!r}")
    if index["text_encoder"][1] != "CLIPTextModel":
        raise EdgediffError(
            f"{where}: field text_encoder is {index['text_encoder'][1]!r}; supported: CLIPTextModel "
            "(T5 and other text encoders are not supported yet)"
        )
    if index["vae"][1] not in VAE_CLASSES:
        raise EdgediffError(f"{where}: field vae is {index['vae'][1]!r}; supported: {', '.join(VAE_CLASSES)}")
    if index["unet"][1] != "UNet2DConditionModel":
        raise EdgediffError(f"{where}: field unet is {index['unet'][1]!r}; supported: UNet2DConditionModel")


def _component(root: Path, name: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise EdgediffError(f"{folder}: missing; model_index.json names component {name}")
    return folder


def _tokenizer_files(folder: Path) -> tuple[str, ...]:
    """CLIPTokenizer's files: vocab.json + merges.txt (the BPE), and/or tokenizer.json; with its config."""
    present = {p.name for p in folder.iterdir() if p.is_file()}
    bpe = {"vocab.json", "merges.txt"} <= present
    if not bpe and "tokenizer.json" not in present:
        missing = "merges.txt" if "vocab.json" in present else "vocab.json"
        raise EdgediffError(
            f"{folder / missing}: missing; the tokenizer needs vocab.json and merges.txt (or tokenizer.json)"
        )
    keep = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    return tuple(n for n in keep if n in present)


def _max_length(folder: Path, files: tuple[str, ...], positions: int) -> int:
    n = positions
    if "tokenizer_config.json" in files:
        cfg = read_json(folder / "tokenizer_config.json", "tokenizer config", nonfinite=True)
        n = cfg.get("model_max_length", positions)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= positions:
            raise EdgediffError(
                f"{folder / 'tokenizer_config.json'}: field model_max_length is {n!r}; the text encoder has "
                f"{positions} positions"
            )
    return n


def _from_pretrained(cls, folder: Path, name: str, allow_extra: bool):
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not weights:
        raise EdgediffError(f"{folder}: no weights (*.safetensors or *.bin) for component {name}")
    try:
        with _quiet_loading():
            kw = {"low_cpu_mem_usage": False} if cls.__module__.startswith("diffusers") else {}
            model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **kw)
    except EdgediffError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgediffError(f"{folder}: could not build {cls.__name__}: {first}") from None
    _check_complete(info, weights[0] if len(weights) == 1 else folder, cls.__name__, allow_extra)
    return model.eval(), weights


@contextlib.contextmanager
def _quiet_loading():
    """from_pretrained warns about its own defaults; what matters is checked after (_check_complete)."""
    from edgediff.runtimes.backends import quiet_output  # progress bars and notes on fd 1 and 2

    with warnings.catch_warnings(), quiet_output():
        warnings.simplefilter("ignore")
        yield


def _load_pipeline_dir(spec: str, *, allow_extra_tensors: bool = False, source: str | None = None) -> ModelSpec:
    import diffusers
    import transformers

    root = Path(spec)
    index_file = root / "model_index.json"
    index = read_json(index_file, "pipeline index", nonfinite=True)
    _refuse_layout(index, index_file)
    folders = {name: _component(root, name) for name in _NEEDED}
    unet_cfg_file = folders["unet"] / "config.json"
    unet_cfg = read_json(unet_cfg_file, "unet config", nonfinite=True)
    if unet_cfg.get("_class_name") != "UNet2DConditionModel":
        raise EdgediffError(
            f"{unet_cfg_file}: field _class_name is {unet_cfg.get('_class_name')!r}; supported: UNet2DConditionModel"
        )
    if unet_cfg.get("in_channels", 4) == 9:
        raise EdgediffError(
            f"{unet_cfg_file}: field in_channels is 9 (an inpainting UNet: latents, mask and masked image); "
            "not supported yet"
        )
    if unet_cfg.get("addition_embed_type") is not None:
        raise EdgediffError(
            f"{unet_cfg_file}: field addition_embed_type is {unet_cfg['addition_embed_type']!r} (SDXL's added "
            "time ids); not supported yet"
        )
    te_cfg_file = folders["text_encoder"] / "config.json"
    te_cfg = read_json(te_cfg_file, "text encoder config", nonfinite=True)
    arch = te_cfg.get("architectures") or ["CLIPTextModel"]
    if arch[0] != "CLIPTextModel" or te_cfg.get("model_type", "clip_text_model") != "clip_text_model":
        raise EdgediffError(
            f"{te_cfg_file}: field architectures is {arch!r}; supported: CLIPTextModel (model_type clip_text_model)"
        )
    vae_cfg_file = folders["vae"] / "config.json"
    vae_cfg = read_json(vae_cfg_file, "vae config", nonfinite=True)
    vae_cls = vae_cfg.get("_class_name")
    if vae_cls not in VAE_CLASSES:
        raise EdgediffError(f"{vae_cfg_file}: field _class_name is {vae_cls!r}; supported: {', '.join(VAE_CLASSES)}")
    if vae_cls != index["vae"][1]:
        raise EdgediffError(
            f"{vae_cfg_file}: field _class_name is {vae_cls!r} but model_index.json names {index['vae'][1]!r}"
        )
    if vae_cfg.get("shift_factor") not in (None, 0, 0.0):
        raise EdgediffError(f"{vae_cfg_file}: field shift_factor is {vae_cfg['shift_factor']!r}; supported: null or 0")
    hidden = te_cfg.get("hidden_size", 512)
    cross = unet_cfg.get("cross_attention_dim", 1280)
    cross = cross[0] if isinstance(cross, (list, tuple)) else cross
    if hidden != cross:
        raise EdgediffError(
            f"{te_cfg_file}: field hidden_size is {hidden} but {unet_cfg_file} field cross_attention_dim is {cross}; "
            "the UNet cannot read this text encoder's states"
        )
    latent_ch = vae_cfg.get("latent_channels", 4)
    if latent_ch != unet_cfg.get("in_channels", 4):
        raise EdgediffError(
            f"{vae_cfg_file}: field latent_channels is {latent_ch} but {unet_cfg_file} field in_channels is "
            f"{unet_cfg.get('in_channels', 4)}"
        )
    tok_files = _tokenizer_files(folders["tokenizer"])
    positions = te_cfg.get("max_position_embeddings", 77)
    max_length = _max_length(folders["tokenizer"], tok_files, positions)
    sched_cfg = read_json(folders["scheduler"] / "scheduler_config.json", "scheduler config", nonfinite=True)
    if sched_cfg.get("thresholding"):
        raise EdgediffError(
            f"{folders['scheduler'] / 'scheduler_config.json'}: field thresholding is true; not supported"
        )

    denoiser = _load_diffusers_dir(str(root), allow_extra_tensors=allow_extra_tensors)
    text_encoder, te_weights = _from_pretrained(
        transformers.CLIPTextModel, folders["text_encoder"], "text_encoder", allow_extra_tensors
    )
    vae, vae_weights = _from_pretrained(getattr(diffusers, vae_cls), folders["vae"], "vae", allow_extra_tensors)
    scaling = float(vae_cfg.get("scaling_factor", 0.18215 if vae_cls == "AutoencoderKL" else 1.0))
    if not scaling > 0:
        raise EdgediffError(f"{vae_cfg_file}: field scaling_factor is {scaling!r}; it must be > 0")
    decoder = VaeDecode(vae, scaling).eval()
    latent_shape = tuple(denoiser.sample_shape)
    with torch.no_grad():
        image = decoder(torch.zeros((1, *latent_shape)))
    if image.ndim != 4 or image.shape[1] != 3:
        raise EdgediffError(f"{vae_cfg_file}: the decoder outputs shape {list(image.shape)}; expected [1, 3, H, W]")
    h = hashlib.sha256(denoiser.source_sha256.encode())
    tok = folders["tokenizer"]
    extra = [index_file, te_cfg_file, *te_weights, vae_cfg_file, *vae_weights, *(tok / n for n in tok_files)]
    for f in extra:
        h.update(f.relative_to(root).as_posix().encode())
        sha256_file(f, h)
    text = TextToImage(
        text_encoder=TextEncoderOutput(text_encoder).eval(),
        vae_decoder=decoder,
        tokenizer_dir=tok,
        tokenizer_files=tok_files,
        max_length=int(max_length),
        hidden=int(hidden),
        latent_shape=latent_shape,
        image_shape=tuple(int(v) for v in image.shape[1:]),
        scaling_factor=scaling,
        vae_class=vae_cls,
        scheduler_config=sched_cfg,
    )
    return replace(
        denoiser,
        conditioning=Conditioning("text", shape=(int(max_length), int(hidden))),
        source=source or str(root.resolve()),
        source_sha256=h.hexdigest(),
        description=f"text-to-image {index['_class_name']} from {root}",
        text=text,
    )


def plan_options(model: ModelSpec, sampler: str) -> dict:
    """The pipeline scheduler's fields that move the timesteps, as the solver's plan takes them
    (steps_offset; DDIM's set_alpha_to_one; clip_sample). Empty for other sources."""
    import inspect

    from edgediff.runtimes.samplers import get_solver

    if model.text is None:
        return {}
    cfg = model.text.scheduler_config
    opts = {
        "steps_offset": int(cfg.get("steps_offset", 0) or 0),
        "set_alpha_to_one": bool(cfg.get("set_alpha_to_one", True)),
    }
    if cfg.get("clip_sample"):
        opts["clip_sample"] = float(cfg.get("clip_sample_range", 1.0))
    takes = inspect.signature(get_solver(sampler).plan).parameters
    return {k: v for k, v in opts.items() if k in takes}


def _load_pruned_dir(spec: str) -> ModelSpec:

    return _load_diffusers_dir(spec, build=lambda model_dir: load_pruned(model_dir)[0])


def _load_factory(spec: str) -> ModelSpec:
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise EdgediffError(f"source {spec!r}: cannot import module {mod_name!r}: {e}") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise EdgediffError(f"source {spec!r}: module {mod_name!r} has no callable {attr!r}")
    result = factory()
    if not isinstance(result, ModelSpec):
        raise EdgediffError(
            f"source {spec!r}: the factory returned {type(result).__name__}; "
            "it must return edgediff.compiler.capture.ModelSpec"
        )
    module = result.module.eval()
    return ModelSpec(
        module=module,
        schedule=result.schedule,
        sample_shape=tuple(result.sample_shape),
        conditioning=result.conditioning,
        source=spec,
        source_sha256=result.source_sha256 or sha256_state(module),
        description=result.description or f"factory {spec}",
    )


def _kind(spec: str) -> str:
    if spec.startswith("builtin:"):
        return "builtin"
    if Path(spec).exists():
        if not Path(spec).is_dir():
            raise EdgediffError(
                f"source {spec!r}: a file; expected a diffusers folder, builtin:NAME or package.module:factory"
            )
        if is_pipeline_dir(Path(spec)):
            return "pipeline"
        return "pruned" if (Path(spec) / "pruned_shapes.json").is_file() else "diffusers"
    if ":" in spec and "/" not in spec:
        return "factory"
    raise EdgediffError(f"source {spec!r}: no such folder, and not builtin:NAME or package.module:factory")


LOADERS = {
    "builtin": _load_builtin,
    "diffusers": _load_diffusers_dir,
    "pruned": _load_pruned_dir,
    "pipeline": _load_pipeline_dir,
    "factory": _load_factory,
}


def load_source(spec: str | ModelSpec, *, allow_extra_tensors: bool = False) -> ModelSpec:
    """Resolve a source string (or pass a ModelSpec through) to a ModelSpec in eval mode.

    A diffusers folder whose weights lack a tensor of its config is refused; one whose weights hold
    tensors the config does not use is refused unless `allow_extra_tensors`.
    """
    if isinstance(spec, ModelSpec):
        return spec
    kind = _kind(spec)
    if kind == "diffusers":
        model = _load_diffusers_dir(spec, allow_extra_tensors=allow_extra_tensors)
    elif kind == "pipeline":
        model = _load_pipeline_dir(spec, allow_extra_tensors=allow_extra_tensors)
    else:
        model = LOADERS[kind](spec)
    check_finite_weights(model)
    return model


def check_finite_weights(model: ModelSpec) -> None:
    """Refuse weights with NaN or inf, naming the first such tensor (its output would be NaN at every step)."""
    parts = [("", model.module)]
    if model.text is not None:
        parts += [("text_encoder.", model.text.text_encoder), ("vae_decoder.", model.text.vae_decoder)]
    for prefix, module in parts:
        _check_finite(model, prefix, module)


def _check_finite(model: ModelSpec, prefix: str, module) -> None:
    for name, t in module.state_dict().items():
        name = prefix + name
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise EdgediffError(
                f"{model.source}: weight {name!r} has {bad} non-finite value(s) (NaN or inf) of {t.numel()}; "
                "the weights are broken, not the sampler settings"
            )


def _has_null_condition(source: str) -> bool:
    """False for a diffusers model folder whose config has no labels to guide with (an unconditional
    UNet2DModel, a bare UNet2DConditionModel): its guidance default is then 1, and an asked-for scale
    is refused by compile_model. True where the config cannot tell (other sources decide at load)."""
    root = Path(source)
    if not root.is_dir() or source.startswith("builtin:"):
        return True
    try:
        model_dir, _ = _find_model_dir(root)
        config = read_json(model_dir / "config.json", "model config", nonfinite=True)
    except EdgediffError:
        return True  # the compile names the problem
    cls = config.get("_class_name")
    if cls == "UNet2DModel":
        return bool(config.get("num_class_embeds")) and config.get("class_embed_type") in (None, "timestep")
    if cls == "UNet2DConditionModel":
        return False
    return True


def resolve_student_folder(source: str) -> Path | None:
    """The student folder a source names (a committed builtin student or a folder), else None."""

    if source.startswith("builtin:"):
        return builtin_student_folder(source.split(":", 1)[1])
    p = Path(source)
    return p if p.is_dir() else None


def recipe_defaults(source: str) -> dict:
    """sampler/steps/spacing/guidance a student folder records (empty for other sources)."""

    pipeline = DIGITS_SD if source == "builtin:digits-sd" else Path(source)
    if is_pipeline_dir(pipeline):  # a text-to-image pipeline: its scheduler's spacing, guidance 7.5
        cfg_file = pipeline / "scheduler" / "scheduler_config.json"
        cfg = read_json(cfg_file, "scheduler config", nonfinite=True) if cfg_file.is_file() else {}
        return {"spacing": cfg.get("timestep_spacing", "leading"), "guidance": TEXT_GUIDANCE}
    folder = resolve_student_folder(source)
    record = read_student_record(folder) if folder else None
    if record is None:
        return {} if _has_null_condition(source) else {"guidance": 1.0}
    return {
        "sampler": record["sampler"],
        "steps": int(record["steps"]),
        "spacing": record["spacing"],
        "guidance": float(record["guidance"]["scale"]),
    }
