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

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.readers import read_json
from edgediff.core.schedule import NoiseSchedule, schedule_from_diffusers_config
from edgediff.core.spec import Conditioning, DiffusersAdapter, ModelSpec, sha256_file, sha256_state
from edgediff.distill.distill import (
    attach_student,  # a distilled student's record and w-embedding
    read_student_record,
)
from edgediff.prune.store import load_pruned, read_shapes
from edgediff.zoo.builtin import builtin_student_folder, load_builtin


def _load_builtin(spec: str) -> ModelSpec:

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
        return "pruned" if (Path(spec) / "pruned_shapes.json").is_file() else "diffusers"
    if ":" in spec and "/" not in spec:
        return "factory"
    raise EdgediffError(f"source {spec!r}: no such folder, and not builtin:NAME or package.module:factory")


LOADERS = {
    "builtin": _load_builtin,
    "diffusers": _load_diffusers_dir,
    "pruned": _load_pruned_dir,
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
    else:
        model = LOADERS[kind](spec)
    check_finite_weights(model)
    return model


def check_finite_weights(model: ModelSpec) -> None:
    """Refuse weights with NaN or inf, naming the first such tensor (its output would be NaN at every step)."""
    for name, t in model.module.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise EdgediffError(
                f"{model.source}: weight {name!r} has {bad} non-finite value(s) (NaN or inf) of {t.numel()}; "
                "the weights are broken, not the sampler settings"
            )


def resolve_student_folder(source: str) -> Path | None:
    """The student folder a source names (a committed builtin student or a folder), else None."""

    if source.startswith("builtin:"):
        return builtin_student_folder(source.split(":", 1)[1])
    p = Path(source)
    return p if p.is_dir() else None


def recipe_defaults(source: str) -> dict:
    """sampler/steps/spacing/guidance a student folder records (empty for other sources)."""

    folder = resolve_student_folder(source)
    record = read_student_record(folder) if folder else None
    if record is None:
        return {}
    return {
        "sampler": record["sampler"],
        "steps": int(record["steps"]),
        "spacing": record["spacing"],
        "guidance": float(record["guidance"]["scale"]),
    }
