"""The pruned-model folder: a diffusers folder plus the shapes its config cannot say.

    DIR/
      config.json                           the unpruned model's diffusers config (architecture)
      scheduler/scheduler_config.json       its noise schedule
      diffusion_pytorch_model.safetensors   the pruned weights (really smaller tensors, no masks)
      pruned_shapes.json                    {"format": FORMAT, "modules": {name: {attr: value}}, "record": {...}}

diffusers configs hold one channel count per block, and pruning leaves every layer its own, so
`load_pruned` builds the model from config.json, then gives each module named in
pruned_shapes.json its stored attributes (Conv2d in/out channels, Linear in/out features,
GroupNorm channels and groups, LayerNorm width, Attention heads and inner width) and
parameters of the stored shapes, and only then loads the weights (strictly: every tensor's
shape is checked). `edgediff compile DIR` reads such a folder through src/edgediff/compiler/capture.py.

To support another layer type, add its attributes to `_ATTRS` and a rule to `_param_shapes`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from edgediff.core.errors import EdgediffError
from edgediff.core.readers import read_json, read_safetensors

FORMAT = "edgediff-pruned/1"
SHAPES_FILE = "pruned_shapes.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def _attention_types() -> tuple:
    from diffusers.models.attention_processor import Attention

    return (Attention,)


# module type name -> attributes that pruning changes (and the loader restores)
_ATTRS = {
    "Conv2d": ("in_channels", "out_channels"),
    "Linear": ("in_features", "out_features"),
    "GroupNorm": ("num_channels", "num_groups"),
    "LayerNorm": ("normalized_shape",),
    "Embedding": ("num_embeddings", "embedding_dim"),
    "Attention": ("heads", "inner_dim", "inner_kv_dim"),
    "Resample": ("channels", "out_channels"),  # diffusers Upsample2D / Downsample2D check their input width
}


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, _attention_types()):
        return "Attention"
    if type(m).__name__ in ("Upsample2D", "Downsample2D"):
        return "Resample"
    for name in ("Conv2d", "Linear", "GroupNorm", "LayerNorm", "Embedding"):
        if isinstance(m, getattr(nn, name)):
            return name
    return None


def module_shapes(model: nn.Module) -> dict[str, dict]:
    """{module name: {attr: value}} for every module whose attributes pruning can change."""
    out = {}
    for name, m in model.named_modules():
        kind = _kind(m)
        if kind is None:
            continue
        rec = {"type": kind}
        for a in _ATTRS[kind]:
            if hasattr(m, a):
                v = getattr(m, a)
                rec[a] = list(v) if isinstance(v, (tuple, list)) else v
        out[name] = rec
    return out


def changed_shapes(original: nn.Module, pruned: nn.Module) -> dict[str, dict]:
    """The entries of module_shapes(pruned) that differ from the unpruned model's."""
    before = module_shapes(original)
    return {k: v for k, v in module_shapes(pruned).items() if before.get(k) != v}


def _param_shapes(kind: str, m: nn.Module) -> dict[str, tuple]:
    if kind == "Conv2d":
        return {"weight": (m.out_channels, m.in_channels // m.groups, *m.kernel_size), "bias": (m.out_channels,)}
    if kind == "Linear":
        return {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}
    if kind == "GroupNorm":
        return {"weight": (m.num_channels,), "bias": (m.num_channels,)}
    if kind == "LayerNorm":
        return {"weight": tuple(m.normalized_shape), "bias": tuple(m.normalized_shape)}
    if kind == "Embedding":
        return {"weight": (m.num_embeddings, m.embedding_dim)}
    return {}


def apply_shapes(model: nn.Module, shapes: dict[str, dict], *, where: str = SHAPES_FILE) -> None:
    """Give the modules named in `shapes` their stored attributes and parameters of those shapes."""
    modules = dict(model.named_modules())
    for name, rec in shapes.items():
        if name not in modules:
            raise EdgediffError(f"{where}: module {name!r} is not in the model that config.json builds")
        m = modules[name]
        kind = _kind(m)
        if kind != rec.get("type"):
            raise EdgediffError(
                f"{where}: module {name!r} is a {kind or type(m).__name__}, the file says {rec.get('type')!r}"
            )
        for a, v in rec.items():
            if a == "type":
                continue
            if a not in _ATTRS[kind]:
                raise EdgediffError(f"{where}: module {name!r}: unknown attribute {a!r} for {kind}")
            setattr(m, a, tuple(v) if isinstance(v, list) else v)
        for pname, shape in _param_shapes(kind, m).items():
            p = getattr(m, pname, None)
            if isinstance(p, nn.Parameter):
                setattr(m, pname, nn.Parameter(torch.empty(shape, dtype=p.dtype), requires_grad=p.requires_grad))


def save_pruned(unet: nn.Module, original: nn.Module, scheduler_config: dict, dest: Path, *, record: dict) -> None:
    """Write the folder (see the module docstring) to `dest`, which must not exist yet."""
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True)
    (dest / "scheduler").mkdir()
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    config = {"_class_name": type(unet).__name__, **config}
    (dest / "config.json").write_text(json.dumps(config, indent=2, default=list) + "\n")
    (dest / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2) + "\n")
    state = {k: v.detach().contiguous().clone() for k, v in unet.state_dict().items()}
    save_file(state, str(dest / WEIGHTS_FILE))
    shapes = {"format": FORMAT, "modules": changed_shapes(original, unet), "record": record}
    (dest / SHAPES_FILE).write_text(json.dumps(shapes, indent=2) + "\n")


def is_pruned_dir(path: Path) -> bool:
    return (Path(path) / SHAPES_FILE).is_file()


def read_shapes(root: Path) -> dict:
    path = Path(root) / SHAPES_FILE
    data = read_json(path, "the pruned shapes")
    if data.get("format") != FORMAT:
        raise EdgediffError(f"{path}: field format is {data.get('format')!r}; this edgediff reads {FORMAT!r}")
    if not isinstance(data.get("modules"), dict):
        raise EdgediffError(f"{path}: field modules must be an object {{module name: shapes}}")
    return data


def load_pruned(root: Path) -> tuple[nn.Module, dict, dict]:
    """(pruned diffusers model in eval mode, its config, pruned_shapes.json) from a pruned folder."""
    import diffusers

    root = Path(root)
    data = read_shapes(root)
    config = read_json(root / "config.json", "the model config", nonfinite=True)
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise EdgediffError(
            f"{root / 'config.json'}: field _class_name {config.get('_class_name')!r} is not a diffusers model class"
        )
    state = torch.random.get_rng_state()
    try:  # the initial weights are all overwritten; non-persistent buffers come from the config
        model = cls.from_config(config)
    finally:
        torch.random.set_rng_state(state)
    apply_shapes(model, data["modules"], where=str(root / SHAPES_FILE))
    weights = root / WEIGHTS_FILE
    tensors = read_safetensors(weights, "the pruned weights")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise EdgediffError(f"{weights}: does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    bad = [k for k in expected if tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise EdgediffError(
            f"{weights}: tensor {bad[0]!r} has shape {tuple(tensors[bad[0]].shape)}, "
            f"{SHAPES_FILE} gives {tuple(expected[bad[0]].shape)}"
        )
    model.load_state_dict(tensors, assign=False)
    return model.eval(), config, data


def publish_dir(work: Path, out: Path) -> None:
    """Move a finished folder into place (replacing nothing: `out` must not exist)."""
    if out.exists():
        shutil.rmtree(work, ignore_errors=True)
        raise EdgediffError(f"{out}: already exists; choose a new output folder")
    work.rename(out)
