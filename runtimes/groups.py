"""Timestep groups: one graph per group of plan steps, all sharing one copy of the int8 weights.

    scheduler.json "timestep_groups": {"files": [g0.onnx, g1.onnx, ...],
                                       "step_group": [group of plan step 0, 1, ...],
                                       "shared_weights": "model/weights.bin"}
    denoise(x, t, cond, step=StepCall(i, group, cached)) ──group──► that group's session
    denoise(x, t, cond) ──t──► nearest plan step ──step_group──► that group's session

The sampling loops (Python and C) pass the step's group from scheduler.json (steps.StepTable),
the same number the C runtime gives its own backends (edd_denoise_args.group); without it
(a caller outside the loops) the group is that of the nearest plan timestep.

The group graphs reference the int8 weights in weights.bin as ONNX external data, so the
weights exist once on disk. In memory each ONNX Runtime session keeps its own pre-packed copy
of the weights for its int8 kernels: sharing packed weights between sessions needs ONNX
Runtime's C API (a prepacked-weights container), which its Python API does not expose. Each
group's session therefore reads weights.bin itself. Handing every session the same
initializer arrays instead (SessionOptions.add_initializer) was measured to cost more, not
less: cifar-arch W8A8 with G = 4 adds 293 MB resident that way and 245 MB this way, against
118 MB for G = 1 (`python benchmarks/quantize.py`, memory table). The file is still checked
once at load (every external initializer must fit inside weights.bin).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgediff.runtimes.backends import open_denoiser
from edgediff.runtimes.errors import EdgediffError

_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16}


def check_shared(model_file: Path, shared: Path) -> None:
    """Every initializer `model_file` keeps in `shared` lies inside it, with a size that fits its type."""
    import onnx

    if not shared.is_file():
        raise EdgediffError(f"{model_file}: its shared weights file {shared} is missing")
    size = shared.stat().st_size
    proto = onnx.load(str(model_file), load_external_data=False)
    for init in proto.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        if Path(info.get("location", "")).name != shared.name:
            continue
        off, length = int(info.get("offset", 0)), int(info.get("length", -1))
        expect = int(np.prod(init.dims, dtype=np.int64)) * np.dtype(_NP.get(init.data_type, np.uint8)).itemsize
        if init.data_type not in _NP or length != expect or off < 0 or off + length > size:
            raise EdgediffError(f"{model_file}: initializer {init.name!r} does not fit {shared} "
                                f"(offset {off}, length {length}, {size} bytes)")


class GroupedDenoiser:
    """Runs, for each call, the graph of the timestep group that serves the call's step."""

    takes_step = True  # the loops pass step=StepCall(i, group, cached) (runner.generate)

    def __init__(self, root: Path, groups: dict, plan_timesteps, *, fmt: str = "onnx", threads: int = 0):
        try:
            files = [Path(root) / f for f in groups["files"]]
            self.step_group = np.asarray(groups["step_group"], np.int64)
        except KeyError as e:
            raise EdgediffError(f"{root / 'scheduler.json'}: timestep_groups is missing field {e.args[0]!r}") from None
        self.timesteps = np.asarray(plan_timesteps, np.float64)
        if self.step_group.shape != self.timesteps.shape or self.step_group.min() < 0 \
                or self.step_group.max() >= len(files):
            raise EdgediffError(f"{root / 'scheduler.json'}: timestep_groups.step_group must give a group in "
                                f"0..{len(files) - 1} for each of the plan's {self.timesteps.size} steps")
        shared = groups.get("shared_weights")
        if shared:  # a damaged or truncated weights.bin is named here, not deep inside a session
            for f in files:
                check_shared(f, Path(root) / shared)
        self.models = [open_denoiser(f, fmt, threads=threads) for f in files]

    def group_of(self, t: np.ndarray) -> np.ndarray:
        """Group of each timestep: that of the nearest plan step."""
        t = np.asarray(t, np.float64).reshape(-1)
        nearest = np.abs(t[:, None] - self.timesteps[None, :]).argmin(axis=1)
        return self.step_group[nearest]

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None, *, step=None) -> np.ndarray:
        if step is not None:  # (index, group, cached): the loop's table; `cached` is not used (no feature cache)
            group = int(step[1])
            if not 0 <= group < len(self.models):
                raise EdgediffError(f"step {step[0]}: group {group} out of range (this bundle has "
                                    f"{len(self.models)} groups)")
            return self.models[group](x, t, cond)
        g = self.group_of(t)
        if (g == g[0]).all():
            return self.models[int(g[0])](x, t, cond)
        out = np.empty(x.shape, np.float32)
        for k in np.unique(g):
            rows = np.nonzero(g == k)[0]
            out[rows] = self.models[int(k)](x[rows], t[rows], None if cond is None else cond[rows])
        return out


def grouped_denoiser(root: Path, groups: dict | None, plan_timesteps, *, model_file: Path | None = None,
                     fmt: str = "onnx", threads: int = 0):
    """The denoiser of a bundle folder: grouped when `groups` is given, else `model_file` alone."""
    if groups:
        return GroupedDenoiser(root, groups, plan_timesteps, fmt=fmt, threads=threads)
    if model_file is None:
        model_file = next(Path(root, "model").glob("*.onnx"))
    return open_denoiser(model_file, fmt, threads=threads)
