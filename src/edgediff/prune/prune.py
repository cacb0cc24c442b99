"""The prune pass: structured channel pruning of a denoiser, with really smaller tensors.

    ModelSpec ─> importance (src/edgediff/prune/importance.py: Diff-Pruning Taylor over timesteps | magnitude)
              ─> Torch-Pruning dependency graph over the diffusers model
                   UNet2DModel            channels of convolutions, GroupNorms (kept divisible by their
                                          groups), skip concatenations, attention head widths
                   DiTTransformer2DModel  whole attention heads and feed-forward neurons (the residual
                                          width, patch embedding and adaLN stay)
              ─> pruned ModelSpec + record (ratio, protected layers, params and MACs before/after)

`ratio` is the fraction of channels removed from every prunable group ("uniform"), or from the
whole network ranked together ("global", each group capped at `max_ratio`); MACs fall roughly
with the square of the kept fraction. Layers whose names match a protect pattern (fnmatch, on
the diffusers model's module names) keep their output channels; conv_in, conv_out and the
time/class embeddings are protected by default.

The pruned model is saved by src/edgediff/prune/store.py as a folder `edgediff compile` reads.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from edgediff.core.errors import EdgediffError
from edgediff.core.options import nonneg_int, option, pattern_value, positive_float, positive_int
from edgediff.core.spec import DiffusersAdapter, ModelSpec
from edgediff.core.stats import count_macs, count_params
from edgediff.prune.importance import IMPORTANCES

Scope = Literal["uniform", "global"]

# Output channels these keep (fnmatch patterns on module names), per model class.
DEFAULT_PROTECT = {
    "UNet2DModel": ("conv_in", "conv_out", "time_proj", "time_embedding*", "class_embedding"),
    # DiT: only heads and feed-forward neurons are pruned; everything else writes the residual
    # stream or the conditioning and is protected by construction (see _dit_roots).
    "DiTTransformer2DModel": ("pos_embed*", "proj_out*", "transformer_blocks.*.norm1*"),
}


@dataclass(frozen=True)
class PruneOptions:
    """Rare knobs of `prune`; each field is an `edgediff prune` flag and a recipe [prune] key."""

    importance: Literal["taylor", "magnitude"] = option(
        "taylor",
        choices=lambda: tuple(IMPORTANCES),
        help="taylor: Diff-Pruning's gradient importance over timesteps; magnitude: weight norms",
    )
    scope: Scope = option("uniform", help="the same ratio in every layer, or one ranking over the whole network")
    protect: tuple[str, ...] = option(
        (), metavar="PATTERN", help="keep the output channels of layers whose names match (fnmatch)"
    )
    default_protect: bool = option(True, help="also protect the model class's DEFAULT_PROTECT layers")
    max_ratio: float = option(0.8, help="global scope: no group loses more than this fraction")
    taylor_threshold: float = option(
        0.05, help="stop summing gradients at the first t with L_t < this x max L (Taylor importance)"
    )
    taylor_batch: int = option(32, parse=positive_int, help="images per timestep in the Taylor pass")
    # 20: ~21 backward passes on builtin:digits (the 0.05 threshold stops near t = 410) instead of ~410
    taylor_stride: int = option(20, parse=positive_int, help="visit every k-th timestep (Taylor importance)")
    seed: int = option(0, parse=nonneg_int, help="seed of the Taylor pass and the fine-tune")
    # (fnmatch pattern, ratio): the layers a pattern matches lose this fraction instead of `ratio`
    layer_ratios: tuple[tuple[str, float], ...] = option(
        (),
        name="layer_ratio",
        parse=pattern_value,
        metavar="PATTERN=R",
        help="layers whose names match lose the fraction R instead of the ratio",
    )

    def __post_init__(self):
        if self.importance not in ("taylor", "magnitude"):
            raise EdgediffError(f"prune: importance {self.importance!r}; choose taylor or magnitude")
        if self.scope not in ("uniform", "global"):
            raise EdgediffError(f"prune: scope {self.scope!r}; choose uniform or global")
        if not 0 < self.max_ratio < 1:
            raise EdgediffError(f"prune: max_ratio must lie in (0, 1), got {self.max_ratio}")
        if self.taylor_batch < 1 or self.taylor_stride < 1:
            raise EdgediffError("prune: taylor_batch and taylor_stride must be at least 1")
        object.__setattr__(self, "protect", tuple(self.protect))
        object.__setattr__(self, "layer_ratios", tuple((str(p), check_ratio(r)) for p, r in self.layer_ratios))


@dataclass
class PruneResult:
    model: ModelSpec  # the pruned model (a new module; the input is not modified)
    record: dict = field(default_factory=dict)
    protected: dict[str, list[str]] = field(default_factory=dict)  # pattern -> module names it matched


def check_ratio(ratio: float) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise EdgediffError(f"prune: ratio must be a number in (0, 1), got {ratio!r}") from None
    if not 0 < r < 1:
        raise EdgediffError(
            f"prune: ratio must lie strictly between 0 and 1 (the fraction of channels removed), got {ratio}"
        )
    return r


def _inner(model: ModelSpec) -> tuple[nn.Module, str]:
    m = model.module
    if not isinstance(m, DiffusersAdapter) or m.kind not in DEFAULT_PROTECT:
        kind = m.kind if isinstance(m, DiffusersAdapter) else type(m).__name__
        raise EdgediffError(
            f"prune: source {model.source!r} is a {kind}; structured pruning supports diffusers "
            f"{' and '.join(DEFAULT_PROTECT)} (builtin:NAME or a diffusers folder)"
        )
    return m.model, m.kind


def match_protected(net: nn.Module, patterns: tuple[str, ...]) -> dict[str, list[str]]:
    """pattern -> names of the weighted modules it matches (a pattern also covers its submodules)."""
    names = [n for n, m in net.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    return {
        p: [n for n in names if fnmatch.fnmatchcase(n, p) or any(fnmatch.fnmatchcase(a, p) for a in _ancestors(n))]
        for p in patterns
    }


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _attention_modules(net: nn.Module):
    from diffusers.models.attention_processor import Attention

    return [(n, m) for n, m in net.named_modules() if isinstance(m, Attention)]


def _dit_roots(net: nn.Module) -> set[nn.Module]:
    """DiT: the layers whose output channels may go (q/k/v heads and the feed-forward hidden layer)."""
    roots = set()
    for name, m in net.named_modules():
        if name.endswith((".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".ff.net.0.proj")):
            roots.add(m)
    return roots


def _fix_attention(net: nn.Module, before: dict[str, tuple[int, int]]) -> None:
    """After pruning: each diffusers Attention's heads and widths follow its q/k/v layers."""
    for name, m in _attention_modules(net):
        heads, head_dim = before[name]
        q = m.to_q.out_features
        if q % head_dim == 0 and q // head_dim != heads:  # whole heads removed
            m.heads = q // head_dim
        if q % m.heads:
            raise EdgediffError(f"prune: attention {name} would have width {q}, not divisible by {m.heads} heads")
        m.inner_dim = q
        m.inner_kv_dim = m.to_k.out_features
    for name, m in net.named_modules():  # diffusers' resamplers assert their input width
        if type(m).__name__ in ("Upsample2D", "Downsample2D") and isinstance(getattr(m, "conv", None), nn.Conv2d):
            m.channels, m.out_channels = m.conv.in_channels, m.conv.out_channels


def _forward_check(model: ModelSpec, what: str) -> None:
    try:
        with torch.no_grad():
            out = model.module(*model.example_inputs(batch=2))
    except Exception as e:
        raise EdgediffError(f"prune: the {what} model does not run ({type(e).__name__}: {e})") from None
    if tuple(out.shape[1:]) != tuple(model.sample_shape):
        raise EdgediffError(f"prune: the {what} model returns shape {tuple(out.shape)}")


def prune(
    model: ModelSpec,
    *,
    ratio: float,
    options: PruneOptions = PruneOptions(),
    data: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
) -> PruneResult:
    """Remove `ratio` of the channels of `model` (see the module docstring); returns a new model.

    `data` ({"x0", ["label"]}, training.diffusion.training_data) is needed for Taylor importance.
    """
    import torch_pruning as tp

    from edgediff.prune.importance import accumulate_taylor_gradients, get_importance

    ratio = check_ratio(ratio)
    _inner(model)
    pruned = replace(
        model, module=copy.deepcopy(model.module).eval(), description=f"{model.description} (pruned {ratio:g})"
    )
    net, kind = _inner(pruned)

    patterns = (DEFAULT_PROTECT[kind] if options.default_protect else ()) + options.protect
    protected = match_protected(net, patterns)
    unknown = [p for p in options.protect if not protected.get(p)]
    if unknown:
        raise EdgediffError(
            f"prune: --protect {unknown[0]!r} matches no layer of {kind} "
            f"(layer names look like {', '.join(_sample_names(net))})"
        )
    modules = dict(net.named_modules())
    ignored = [modules[n] for names in protected.values() for n in names]
    if kind == "DiTTransformer2DModel":  # everything but heads and feed-forward neurons keeps its width
        roots = _dit_roots(net)
        ignored += [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m not in roots]

    params0, macs0 = count_params(net), count_macs(pruned.module, pruned.example_inputs(batch=1))
    record: dict = {
        "ratio": ratio,
        "scope": options.scope,
        "importance": options.importance,
        "model_class": kind,
        "protect": list(patterns),
        "source": model.source,
        "source_sha256": model.source_sha256,
    }

    taylor = None
    if options.importance == "taylor":
        if data is None:
            raise EdgediffError("prune: Taylor importance needs training images (pass --data, or use magnitude)")
        taylor = accumulate_taylor_gradients(
            pruned,
            data,
            threshold=options.taylor_threshold,
            batch=options.taylor_batch,
            stride=options.taylor_stride,
            seed=options.seed,
            progress=progress,
        )
        record["taylor"] = taylor.to_dict()

    heads = {}  # q/k/v layer -> heads, so head widths shrink evenly (UNet) or whole heads go (DiT)
    before = {}
    for name, m in _attention_modules(net):
        before[name] = (m.heads, m.to_q.out_features // m.heads)
        for lin in (m.to_q, m.to_k, m.to_v):
            heads[lin] = m.heads
    layer_ratio = {}
    for pattern, names in match_protected(net, tuple(p for p, _ in options.layer_ratios)).items():
        if not names:
            raise EdgediffError(
                f"prune: --layer-ratio {pattern!r} matches no layer of {kind} "
                f"(layer names look like {', '.join(_sample_names(net))})"
            )
        r = dict(options.layer_ratios)[pattern]
        layer_ratio.update({modules[n]: r for n in names if isinstance(modules[n], (nn.Conv2d, nn.Linear))})
    if layer_ratio:
        record["layer_ratios"] = [list(x) for x in options.layer_ratios]
    is_dit = kind == "DiTTransformer2DModel"
    example = tuple(pruned.example_inputs(batch=1))
    pruner = tp.pruner.BasePruner(
        pruned.module,
        example_inputs=example,
        importance=get_importance(options.importance),
        global_pruning=options.scope == "global",
        pruning_ratio=ratio,
        max_pruning_ratio=options.max_ratio,
        pruning_ratio_dict=layer_ratio or None,
        ignored_layers=ignored,
        num_heads=heads,
        prune_num_heads=is_dit,
        prune_head_dims=not is_dit,
        head_pruning_ratio=ratio if is_dit else 0.0,
        forward_fn=lambda mod, inputs: mod(*inputs),
    )
    pruner.step()
    pruned.module.zero_grad(set_to_none=True)
    _fix_attention(net, before)
    _forward_check(pruned, "pruned")
    params1, macs1 = count_params(net), count_macs(pruned.module, pruned.example_inputs(batch=1))
    record.update(
        {
            "params_before": params0,
            "params_after": params1,
            "macs_before": macs0,
            "macs_after": macs1,
            "macs_reduction": round(1 - macs1 / macs0, 4),
            "protected_layers": sorted({n for names in protected.values() for n in names}),
        }
    )
    return PruneResult(model=pruned, record=record, protected=protected)


def _sample_names(net: nn.Module, k: int = 4) -> list[str]:
    names = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    step = max(1, len(names) // k)
    return names[::step][:k]


def format_protected(protected: dict[str, list[str]]) -> str:
    """The listing the CLI prints: each pattern and the layers it matched."""
    lines = []
    for pattern, names in protected.items():
        shown = ", ".join(names[:6]) + (f", … ({len(names)} layers)" if len(names) > 6 else "")
        lines.append(f"  protect {pattern:28} -> {shown or 'nothing'}")
    return "\n".join(lines)


def scheduler_config(model: ModelSpec) -> dict:
    """A diffusers scheduler_config.json that reproduces `model.schedule` (betas written out)."""
    import numpy as np

    ac = np.asarray(model.schedule.alphas_cumprod, dtype=np.float64)
    betas = 1 - ac / np.concatenate([[1.0], ac[:-1]])
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": int(ac.size),
        "trained_betas": betas.tolist(),
        "prediction_type": model.schedule.prediction_type,
        "clip_sample": False,
    }


# what skipping the recovery costs, measured on builtin:digits (docs/pruning.md: FD-digits 0.38 unpruned)
FINETUNE_OFF_WARNING = (
    "no recovery fine-tune (--finetune-steps 0): the pruned model is not recovered and its quality drops "
    "(builtin:digits at --ratio 0.4: FD-digits 28.0 and class accuracy 0.11 against 0.38 and 1.00 unpruned)"
)


@dataclass(frozen=True)
class FinetuneOptions:
    """The recovery fine-tune (src/edgediff/prune/recover.py) that `prune_to_dir` runs after pruning."""

    # on by default: an unrecovered prune of builtin:digits at 0.4 is unusable (see FINETUNE_OFF_WARNING)
    steps: int = option(
        600, name="finetune_steps", parse=nonneg_int, help="recovery fine-tune steps (0: skip, quality drops)"
    )
    batch_size: int = option(64, parse=positive_int, help="global batch over all processes")
    lr: float = option(5e-4, parse=positive_float, help="fine-tune learning rate")
    warmup: int = option(50, parse=nonneg_int, help="learning-rate warm-up steps")
    # short runs: a 0.999 average would still remember the first steps
    ema_decay: float = option(0.995, help="decay of the weights' moving average")
    distill_weight: float = option(1.0, help="weight of the teacher-output loss")
    # 1: on a shared 2-core host two OpenMP threads ran the fine-tune at 6.8 s/step against 0.45 s idle
    # (measured on the builtin:digits prune); one thread degrades gracefully when another job runs
    threads: int | None = option(1, parse=positive_int, help="torch threads (Taylor pass and fine-tune)")
    progress: bool = option(True, switch=("quiet", False), help="no progress bars")
