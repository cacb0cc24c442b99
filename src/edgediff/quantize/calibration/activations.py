"""Per-layer activation statistics over a calibration set, optionally per timestep group.

    CalibrationSet ──rows of group g──► torch module with forward hooks on Conv/Linear layers
                                         │ input[0] and output of each matched layer
                                         ▼
                     {"<layer>:input" | "<layer>:output": {g: Observer}}  ──result()──► QuantRange

Timestep groups: the plan's steps 0..S-1 split into G contiguous runs along the trajectory
(`step_groups`), each with its own activation ranges; the runtime picks the group by step.
Weights are not observed here (they are static; use observers.observe(w, axis=...)).
"""

from __future__ import annotations

import fnmatch

import numpy as np
import torch
from torch import nn

from edgediff.core.errors import EdgediffError
from edgediff.quantize.calibration.observers import Observer
from edgediff.quantize.calibration.record import CalibrationSet

# Layer types observed by default, with the axis of their weight's output channels.
# To quantize a new layer type, add it here (sensitivity.py uses the same table).
WEIGHT_AXIS: dict[type, int] = {
    nn.Conv1d: 0,
    nn.Conv2d: 0,
    nn.Conv3d: 0,
    nn.Linear: 0,
    nn.ConvTranspose2d: 1,
}

WHICH = ("input", "output")


def match_layers(
    module: nn.Module, patterns: list[str] | None = None, types: tuple[type, ...] = tuple(WEIGHT_AXIS)
) -> list[str]:
    """Names of the submodules of `types` that match any glob in `patterns` (all when None).

    A pattern that matches nothing is an error naming it, so a typo never silently observes
    nothing. Call it to list what a pattern selects.
    """
    names = [n for n, m in module.named_modules() if n and isinstance(m, types)]
    if patterns is None:
        return names
    chosen = []
    for p in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise EdgediffError(
                f"layer pattern {p!r} matches no {'/'.join(t.__name__ for t in types)} layer; "
                f"there are {len(names)} such layers, e.g. {', '.join(names[:4])}"
            )
        chosen += [n for n in hits if n not in chosen]
    return [n for n in names if n in chosen]  # model order


def step_groups(num_steps: int, groups: int) -> np.ndarray:
    """Group index of each plan step: G contiguous runs of (as nearly as possible) equal length.

    Step 0 is the first (noisiest) step, so group 0 holds the high-noise end of the trajectory.
    """
    if not isinstance(groups, int) or groups < 1:
        raise EdgediffError(f"timestep groups must be a positive integer, got {groups!r}")
    if groups > num_steps:
        raise EdgediffError(f"{groups} timestep groups for a plan of {num_steps} steps; at most one group per step")
    out = np.empty(num_steps, np.int64)
    for g, run in enumerate(np.array_split(np.arange(num_steps), groups)):
        out[run] = g
    return out


def split_key(key: str) -> tuple[str, str]:
    """'down_blocks.0.resnets.0.conv1:input' -> ('down_blocks.0.resnets.0.conv1', 'input')."""
    layer, _, which = key.rpartition(":")
    return layer, which


def collect_activations(
    model,
    calib: CalibrationSet,
    *,
    kind: str = "minmax",
    groups: int = 1,
    layers: list[str] | None = None,
    which: tuple[str, ...] = WHICH,
    bits: int = 8,
    symmetric: bool = False,
    batch_size: int = 64,
    progress=None,
    **observer_options,
) -> dict[str, dict[int, Observer]]:
    """Run every row of `calib` through `model` (a ModelSpec or torch module) and observe
    the inputs and/or outputs of the matched layers, per timestep group.

    Returns {"<layer>:input" / "<layer>:output": {group: Observer}}; each group of the plan
    must have rows in `calib` (a selection may have dropped some steps).
    `progress(k)` is called after each batch with its number of rows.
    """
    module: nn.Module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise EdgediffError(f"collect_activations needs a ModelSpec or torch module, got {type(model).__name__}")
    bad = [w for w in which if w not in WHICH]
    if bad or not which:
        raise EdgediffError(f"which must name some of {', '.join(WHICH)}, got {which!r}")
    group_of_step = step_groups(calib.num_steps, groups)
    row_group = group_of_step[calib.step]
    for g in range(groups):
        if not (row_group == g).any():
            steps = np.nonzero(group_of_step == g)[0]
            raise EdgediffError(
                f"timestep group {g} (steps {steps[0]}..{steps[-1]}) has no rows in the calibration "
                "set; record or select rows at those steps, or use fewer groups"
            )
    names = match_layers(module, layers)
    if not names:
        raise EdgediffError("the model has no Conv/Linear layers to observe")
    Observer(kind, bits=bits, symmetric=symmetric, **observer_options)  # unknown kind/option: fail before running
    stats = {
        f"{n}:{w}": {g: Observer(kind, bits=bits, symmetric=symmetric, **observer_options) for g in range(groups)}
        for n in names
        for w in which
    }
    current = {"group": 0}

    def make_hook(name):
        def hook(mod, inputs, output):
            g = current["group"]
            try:
                if "input" in which:
                    stats[f"{name}:input"][g].update(inputs[0].detach().float().cpu().numpy())
                if "output" in which:
                    stats[f"{name}:output"][g].update(output.detach().float().cpu().numpy())
            except EdgediffError as e:
                raise EdgediffError(f"layer {name} (timestep group {g}): {e}") from None

        return hook

    subs = dict(module.named_modules())
    handles = [subs[n].register_forward_hook(make_hook(n)) for n in names]
    try:
        with torch.inference_mode():
            for g in range(groups):
                current["group"] = g
                rows = np.nonzero(row_group == g)[0]
                for start in range(0, rows.size, batch_size):
                    chunk = rows[start : start + batch_size]
                    module(*calib.model_args(chunk))
                    if progress is not None:
                        progress(chunk.size)
    finally:
        for h in handles:
            h.remove()
    return stats
