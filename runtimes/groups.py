"""Timestep groups: one graph per group of plan steps, all sharing one copy of the int8 weights.

    scheduler.json "timestep_groups": {"files": [g0.onnx, g1.onnx, ...],
                                       "step_group": [group of plan step 0, 1, ...],
                                       "shared_weights": "model/weights.bin"}
    denoise(x, t, cond, step=StepCall(i, group, cached)) ──group──► that group's session
    denoise(x, t, cond) ──t──► nearest plan step ──step_group──► that group's session

The sampling loops (Python and C) pass the step's group from scheduler.json (steps.StepTable),
the same number the C runtime gives its own backends (edd_denoise_args.group); without it
(a caller outside the loops) the group is that of the nearest plan timestep.

The group graphs reference the int8 weights in weights.bin as ONNX external data. The file is
read once; its tensors are handed to every group's ONNX Runtime session as the same
initializer buffers (SessionOptions.add_initializer), so the weights exist once on disk and
their raw bytes once in memory. (ONNX Runtime may still pre-pack them per session for its
kernels.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgediff.runtimes.backends import open_denoiser
from edgediff.runtimes.errors import EdgediffError

_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16}


def shared_initializers(model_file: Path, shared: Path) -> dict[str, np.ndarray]:
    """Arrays of the initializers of `model_file` stored in the external file `shared`."""
    import onnx

    blob = np.fromfile(shared, dtype=np.uint8)
    proto = onnx.load(str(model_file), load_external_data=False)
    out = {}
    for init in proto.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        if Path(info.get("location", "")).name != shared.name:
            continue
        off, length = int(info.get("offset", 0)), int(info["length"])
        if off + length > blob.size or init.data_type not in _NP:
            raise EdgediffError(f"{model_file}: initializer {init.name!r} does not fit {shared} "
                                f"(offset {off}, length {length}, {blob.size} bytes)")
        out[init.name] = blob[off:off + length].view(_NP[init.data_type]).reshape(tuple(init.dims))
    return out


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
        self.initializers = shared_initializers(files[0], Path(root) / shared) if shared else None
        self.models = [open_denoiser(f, fmt, threads=threads, initializers=self.initializers) for f in files]

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
