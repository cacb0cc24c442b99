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
weights exist once on disk. In memory, ONNX Runtime runs all the groups in ONE session
(OneSession): the group graphs differ only in activation scales, zero points and int32 biases;
ONNX Runtime fuses QDQ into its integer kernels only where those are constants, but the fused
kernels (QLinearConv, QGemm, MatMulIntegerToFloat, QuantizeLinear) read them as ordinary inputs.
So ONNX Runtime optimizes the group graphs itself (into a temporary folder; the result is
specific to this host and version, which is why it is done at load and not at compile), the
values that differ between groups become inputs of the optimized graph, and each call feeds
its group's values. One session holds one packed copy of the int8 weights for any G, and its
outputs equal those of a session per group exactly (tests/test_quantize.py). Where the
optimized graphs do not line up (ONNX Runtime folded a value that differs between groups),
each group gets its own session, which keeps its own packed copy of the weights.
OpenVINO compiles one model per group (its int8 transformations need constant ranges).
TFLite: one flatbuffer holds every group as a subgraph under the signature "group{k}", its
buffers stored once (compiler/quant_tflite.merge_groups); timestep_groups.files names that
file once per group, and one interpreter serves every group's signature.
The file is checked once at load (every external initializer must fit inside weights.bin).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.backends import FixedBatch, TFLiteDenoiser, model_signature, open_denoiser, ort_options

_NP = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 10: np.float16}


def check_shared(model_file: Path, shared: Path, proto=None) -> None:
    """Every initializer `model_file` (or its loaded `proto`) keeps in `shared` lies inside it, with
    a size that fits its type."""
    import onnx

    if not shared.is_file():
        raise EdgediffError(f"{model_file}: its shared weights file {shared} is missing")
    size = shared.stat().st_size
    if proto is None:
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
            raise EdgediffError(
                f"{model_file}: initializer {init.name!r} does not fit {shared} "
                f"(offset {off}, length {length}, {size} bytes)"
            )


class NotShareable(Exception):
    """The group graphs cannot share one session (the reason is the message)."""


def _inline_values(proto) -> dict:
    from onnx import TensorProto, numpy_helper

    return {
        i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_location != TensorProto.EXTERNAL
    }


def _structure(proto) -> list:
    return [(n.domain, n.op_type, tuple(n.input), tuple(n.output)) for n in proto.graph.node]


def _differing(values: list[dict]) -> set[str]:
    """Names whose value is not the same in every group (the name sets must be equal)."""
    names = set(values[0])
    if any(set(v) != names for v in values[1:]):
        raise NotShareable("the graphs do not have the same initializers")
    return {
        k
        for k in names
        if any(
            v[k].dtype != values[0][k].dtype
            or v[k].shape != values[0][k].shape
            or not np.array_equal(v[k], values[0][k])
            for v in values[1:]
        )
    }


class OneSession:
    """ONNX Runtime: one session for every group; the values that differ between groups are inputs."""

    def __init__(self, files: list[Path], protos: list, *, threads: int = 0):
        """`protos`: the group graphs, loaded without their external data."""
        import onnx
        import onnxruntime as ort

        if any(_structure(p) != _structure(protos[0]) for p in protos[1:]):
            raise NotShareable("the group graphs differ in their nodes")
        values = [_inline_values(p) for p in protos]
        varying = _differing(values)
        with tempfile.TemporaryDirectory(prefix="edgediff-groups-") as tmp:
            tmp = Path(tmp)
            optimized = []
            for g, f in enumerate(files):  # every group optimized: the values that follow the groups show
                opts = ort_options(threads)
                opts.optimized_model_filepath = str(tmp / f"g{g}.onnx")
                # ConstantSharing merges equal scalars, and equal in one group need not be equal in another
                self._session(ort, str(f), opts, disabled_optimizers=["ConstantSharing"])
                optimized.append(onnx.load(str(tmp / f"g{g}.onnx"), load_external_data=False))
            if any(_structure(p) != _structure(optimized[0]) for p in optimized[1:]):
                raise NotShareable("ONNX Runtime optimizes the groups' graphs into different graphs")
            opt_values = [_inline_values(p) for p in optimized]
            self.names = sorted(_differing(opt_values))
            for k in self.names:  # each must be a value of the bundle's graphs, unchanged by the optimizer
                # (a bias scale consumed by a fused-away DequantizeLinear is gone from all of them alike)
                if k not in varying or any(not np.array_equal(o[k], v[k]) for o, v in zip(opt_values, values)):
                    raise NotShareable(f"ONNX Runtime computed {k!r} from values that differ between groups")
            single = optimized[0]
            self.ops = Counter(n.op_type for n in single.graph.node)  # what the one session runs
            keep = [i for i in single.graph.initializer if i.name not in set(self.names)]
            del single.graph.initializer[:]
            single.graph.initializer.extend(keep)
            for k in self.names:
                v = opt_values[0][k]
                single.graph.input.append(
                    onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                )
            opts = ort_options(threads)
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimized already
            # the optimized graph still reads the bundle's weights.bin (external data, relative to the bundle)
            opts.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(Path(files[0]).parent.resolve())
            )
            self.session = self._session(ort, single.SerializeToString(), opts)
        self.inputs = [(i.name, i.type) for i in self.session.get_inputs() if i.name not in set(self.names)]
        self.output = self.session.get_outputs()[0].name
        # one binding per group, its values bound once; a call binds only x, t and cond
        # (self._values keeps the bound OrtValues alive as long as the bindings)
        self._values = [
            {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v[k])) for k in self.names} for v in values
        ]
        self.bindings = []
        for vals in self._values:
            b = self.session.io_binding()
            for k, v in vals.items():
                b.bind_ortvalue_input(k, v)
            self.bindings.append(b)
        self.label = f"ONNX Runtime {ort.__version__} CPUExecutionProvider, one session for {len(files)} groups"

    @staticmethod
    def _session(ort, model, opts, **kwargs):
        try:
            return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"], **kwargs)
        except Exception as e:  # e.g. an ONNX Runtime without the external-data folder option: a session per group
            raise NotShareable(
                f"ONNX Runtime {ort.__version__} could not build the shared session ({str(e).splitlines()[0][:200]})"
            ) from None

    def run(self, group: int, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        b = self.bindings[group]
        b.bind_cpu_input(self.inputs[0][0], np.ascontiguousarray(x, np.float32))
        b.bind_cpu_input(self.inputs[1][0], np.ascontiguousarray(t, np.float32))
        if len(self.inputs) > 2:
            name, typ = self.inputs[2]
            b.bind_cpu_input(name, np.ascontiguousarray(cond, np.int64 if "int64" in typ else np.float32))
        b.bind_output(self.output)
        self.session.run_with_iobinding(b)
        return b.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)


class _GroupOf:
    """`denoise(x, t, cond)` of one group of a OneSession."""

    def __init__(self, one: OneSession, group: int):
        self.one, self.group, self.label = one, group, one.label

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        return self.one.run(self.group, x, t, cond)


class GroupedDenoiser:
    """Runs, for each call, the graph of the timestep group that serves the call's step."""

    takes_step = True  # the loops pass step=StepCall(i, group, cached) (runner.generate)

    def __init__(
        self, root: Path, groups: dict, plan_timesteps, *, fmt: str = "onnx", threads: int = 0, one_session: bool = True
    ):
        try:
            files = [Path(root) / f for f in groups["files"]]
            self.step_group = np.asarray(groups["step_group"], np.int64)
        except KeyError as e:
            raise EdgediffError(f"{root / 'scheduler.json'}: timestep_groups is missing field {e.args[0]!r}") from None
        self.timesteps = np.asarray(plan_timesteps, np.float64)
        if (
            self.step_group.shape != self.timesteps.shape
            or self.step_group.min() < 0
            or self.step_group.max() >= len(files)
        ):
            raise EdgediffError(
                f"{root / 'scheduler.json'}: timestep_groups.step_group must give a group in "
                f"0..{len(files) - 1} for each of the plan's {self.timesteps.size} steps"
            )
        self.one_session, self.why_sessions = None, None
        if fmt == "tflite":  # one flatbuffer, group k under the signature "group{k}" (quant_tflite.merge_groups)
            if len(set(files)) != 1:
                raise EdgediffError(
                    f"{root / 'scheduler.json'}: a TFLite bundle's timestep_groups.files must name "
                    "its one flatbuffer once per group"
                )
            first = TFLiteDenoiser(files[0], threads=threads, signature="group0")
            models = [first] + [
                TFLiteDenoiser(files[0], signature=f"group{k}", interpreter=first.interpreter)
                for k in range(1, len(files))
            ]
            batch = first.runner.get_input_details()[first.inputs[0][0]]["shape_signature"][0]
            self.models = models if batch < 0 else [FixedBatch(m, int(batch)) for m in models]
            self.sessions, self.label = 1, f"{first.label}, {len(models)} timestep groups in one flatbuffer"
            return
        import onnx

        protos = [onnx.load(str(f), load_external_data=False) for f in files]  # read once: checked, shared
        shared = groups.get("shared_weights")
        if shared:  # a damaged or truncated weights.bin is named here, not deep inside a session
            for f, proto in zip(files, protos):
                check_shared(f, Path(root) / shared, proto)
        if fmt == "onnx" and one_session and len(files) > 1:
            try:
                self.one_session = OneSession(files, protos, threads=threads)
            except NotShareable as e:
                self.why_sessions = str(e)
        if self.one_session is not None:
            batch = model_signature(files[0], fmt)["inputs"][0]["shape"][0]
            self.models = [
                _GroupOf(self.one_session, g)
                if not isinstance(batch, int)
                else FixedBatch(_GroupOf(self.one_session, g), batch)
                for g in range(len(files))
            ]
        else:
            self.models = [open_denoiser(f, fmt, threads=threads) for f in files]
        self.sessions = 1 if self.one_session is not None else len(files)

    def group_of(self, t: np.ndarray) -> np.ndarray:
        """Group of each timestep: that of the nearest plan step."""
        t = np.asarray(t, np.float64).reshape(-1)
        nearest = np.abs(t[:, None] - self.timesteps[None, :]).argmin(axis=1)
        return self.step_group[nearest]

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None, *, step=None) -> np.ndarray:
        if step is not None:  # (index, group, cached): the loop's table; `cached` is not used (no feature cache)
            group = int(step[1])
            if not 0 <= group < len(self.models):
                raise EdgediffError(
                    f"step {step[0]}: group {group} out of range (this bundle has {len(self.models)} groups)"
                )
            return self.models[group](x, t, cond)
        g = self.group_of(t)
        if (g == g[0]).all():
            return self.models[int(g[0])](x, t, cond)
        out = np.empty(x.shape, np.float32)
        for k in np.unique(g):
            rows = np.nonzero(g == k)[0]
            out[rows] = self.models[int(k)](x[rows], t[rows], None if cond is None else cond[rows])
        return out


def grouped_denoiser(
    root: Path,
    groups: dict | None,
    plan_timesteps,
    *,
    model_file: Path | None = None,
    fmt: str = "onnx",
    threads: int = 0,
    one_session: bool = True,
):
    """The denoiser of a bundle folder: grouped when `groups` is given, else `model_file` alone."""
    if groups:
        return GroupedDenoiser(root, groups, plan_timesteps, fmt=fmt, threads=threads, one_session=one_session)
    if model_file is None:
        model_file = next(Path(root, "model").glob("*.onnx"))
    return open_denoiser(model_file, fmt, threads=threads)
