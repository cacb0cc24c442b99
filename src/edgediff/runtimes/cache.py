"""Feature caching across steps: a full graph that also outputs a deep feature, a shallow graph
that takes it back, and the denoiser that picks one per step from the cache schedule.

    manifest.json  model: the full graph     (sample, timestep[, cond])                -> eps, cached_feature
                   cache: {shallow: {file, inputs, outputs}, feature: {name, shape}, depth, ...}
                          the shallow graph  (sample, timestep[, cond], cached_feature) -> eps
    scheduler.json cache_schedule: {"steps": ["full", "cached", ...]}   (one entry per plan step)

    CachedDenoiser(x, t, cond, step=StepCall(i, group, cached))
        cached False: eps, feature = full(x, t, cond); the feature is kept (both CFG halves: the
                      loop's batch of 2B rows is one call)
        cached True:  eps = shallow(x, t, cond, kept feature)

The kept feature is the one piece of state between calls, and it is checked: a cached call
must follow a full call of the same run (a step index after it, the same batch of rows), else
it is an error naming the step, never a silent full step. Called without `step` (a caller
outside the sampling loops) it runs the full graph and keeps nothing.
The compiler's split (src/edgediff/compiler/cache.py) makes the pair; its PyTorch twin runs
through this same class, so the bundle and PyTorch run one schedule with one bookkeeping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.backends import _cond_dtype, model_signature, ort_options

FEATURE = "cached_feature"  # the full graph's second output and the shallow graph's last input
SHALLOW_KEYS = {"file", "inputs", "outputs"}
CACHE_KEYS = {"shallow", "feature", "depth", "shared_weights", "macs_per_image"}
SPIN = False  # ONNX Runtime's intra-op threads spin-wait between a pair's calls (off: they sleep)


class CachedDenoiser:
    """full(x, t, cond) -> (eps, feature) and shallow(x, t, cond, feature) -> eps, run per step."""

    takes_step = True

    def __init__(self, full, shallow, *, label: str = ""):
        self.full, self.shallow, self.label = full, shallow, label
        self._kept: tuple[int, np.ndarray] | None = None  # (step index of the full call, feature)
        self.calls = {"full": 0, "cached": 0}

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None, *, step=None) -> np.ndarray:
        if step is None:
            return self.full(x, t, cond)[0]
        index, cached = int(step[0]), bool(step[2])
        if not cached:
            eps, feature = self.full(x, t, cond)
            self._kept = (index, feature)
            self.calls["full"] += 1
            return eps
        if self._kept is None or self._kept[0] >= index:
            raise EdgediffError(f"step {index}: the cache schedule reuses a feature, but no full step came before it")
        if self._kept[1].shape[0] != x.shape[0]:
            raise EdgediffError(
                f"step {index}: the cached feature has {self._kept[1].shape[0]} rows, this call {x.shape[0]}"
            )
        self.calls["cached"] += 1
        return self.shallow(x, t, cond, self._kept[1])


def _feeds(inputs, x, t, cond, feature=None) -> dict:
    feeds = {inputs[0][0]: np.ascontiguousarray(x, np.float32), inputs[1][0]: np.ascontiguousarray(t, np.float32)}
    rest = inputs[2:]
    if feature is not None:
        feeds[rest[-1][0]] = np.ascontiguousarray(feature, np.float32)
        rest = rest[:-1]
    if rest:
        name, dtype = rest[0]
        feeds[name] = np.ascontiguousarray(cond, _cond_dtype(dtype))
    return feeds


class _OrtGraph:
    """One ONNX Runtime session, every output returned (float32)."""

    def __init__(self, path: Path, *, threads: int = 0):
        import onnxruntime as ort

        opts = ort_options(threads)
        # two sessions take turns step by step: a session's pool spinning after its run would take the
        # cores from the other one (measured on the shared 2-core host: benchmarks/cache.py --spin)
        if not SPIN:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        types = {"tensor(int64)": "int64", "tensor(int32)": "int32"}
        self.inputs = [(i.name, types.get(i.type, "float32")) for i in self.session.get_inputs()]
        self.label = f"ONNX Runtime {ort.__version__} CPUExecutionProvider"

    def __call__(self, x, t, cond=None, feature=None) -> list[np.ndarray]:
        return [
            o.astype(np.float32, copy=False) for o in self.session.run(None, _feeds(self.inputs, x, t, cond, feature))
        ]


class _OpenVINOGraph:
    """OpenVINO's CPU plugin at INFERENCE_PRECISION_HINT f32 (as backends.OpenVINODenoiser)."""

    def __init__(self, path: Path, *, threads: int = 0):
        from edgediff.runtimes.backends import _OV_DTYPES, OpenVINODenoiser, _require, openvino_core

        ov = _require("openvino", "openvino", "openvino")
        config = {"INFERENCE_PRECISION_HINT": OpenVINODenoiser.HINT, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = openvino_core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.inputs = [
            (p.get_any_name(), _OV_DTYPES.get(p.get_element_type().get_type_name(), "float32"))
            for p in self.compiled.inputs
        ]
        self.label = f"OpenVINO {ov.__version__.split('-')[0]} CPU plugin (INFERENCE_PRECISION_HINT f32)"

    def __call__(self, x, t, cond=None, feature=None) -> list[np.ndarray]:
        out = self.request.infer(_feeds(self.inputs, x, t, cond, feature))
        return [np.array(out[o], dtype=np.float32) for o in self.compiled.outputs]


GRAPHS = {"onnx": _OrtGraph, "openvino": _OpenVINOGraph}


class _Batched:
    """A graph with a fixed batch run on any batch: chunks of `batch`, the last padded by its final row."""

    def __init__(self, inner, batch: int | None):
        self.inner, self.batch, self.label = inner, batch, inner.label

    def __call__(self, x, t, cond=None, feature=None) -> list[np.ndarray]:
        n, b = x.shape[0], self.batch
        if b is None or n == b:
            return self.inner(x, t, cond, feature)
        parts = []
        for s in range(0, n, b):
            idx = np.minimum(np.arange(s, s + b), n - 1)
            out = self.inner(
                x[idx], t[idx], None if cond is None else cond[idx], None if feature is None else feature[idx]
            )
            parts.append([o[: min(b, n - s)] for o in out])
        return [np.concatenate(col) for col in zip(*parts)]


def open_graph(path: Path, fmt: str, *, threads: int = 0):
    if fmt not in GRAPHS:
        raise EdgediffError(
            f"{path}: a cached bundle of format {fmt!r} has no backend here (cached formats: {', '.join(GRAPHS)})"
        )
    batch = model_signature(path, fmt)["inputs"][0]["shape"][0]
    return _Batched(GRAPHS[fmt](path, threads=threads), batch if isinstance(batch, int) else None)


def cached_denoiser(root: Path, manifest: dict, *, threads: int = 0) -> CachedDenoiser:
    """The CachedDenoiser of a bundle whose manifest has a `cache` block (checked by check_cache)."""
    fmt = manifest["model"]["format"]
    full = open_graph(Path(root) / manifest["model"]["file"], fmt, threads=threads)
    shallow = open_graph(Path(root) / manifest["cache"]["shallow"]["file"], fmt, threads=threads)

    def run_shallow(x, t, cond, feature):
        return shallow(x, t, cond, feature)[0]

    return CachedDenoiser(full, run_shallow, label=f"{full.label}, full + shallow graphs")


def check_cache(root: Path, manifest: dict, scheduler: dict) -> None:
    """manifest.json `cache` and scheduler.json `cache_schedule` agree: both or neither, the shallow
    graph listed under files, the feature the full graph's second output and the shallow graph's
    last input. The file signatures themselves are check_cache_signatures' (load_bundle verify)."""
    mf, sf = f"{root}/manifest.json", f"{root}/scheduler.json"
    cache, schedule = manifest.get("cache"), scheduler.get("cache_schedule")
    if cache is None and schedule is not None:
        raise EdgediffError(
            f"{sf}: cache_schedule is set but {mf} has no cache (no shallow graph to run the cached steps)"
        )
    if cache is None:
        return
    if schedule is None:
        raise EdgediffError(f"{mf}: cache is set but {sf} has no cache_schedule")
    if not isinstance(cache, dict):
        raise EdgediffError(f"{mf}: cache must be an object, got {type(cache).__name__}")
    unknown = sorted(set(cache) - CACHE_KEYS)
    if unknown:
        raise EdgediffError(f"{mf}: cache has unknown key {unknown[0]!r}")
    shallow = cache.get("shallow")
    if not isinstance(shallow, dict) or not isinstance(shallow.get("file"), str):
        raise EdgediffError(f"{mf}: cache.shallow must be an object with the shallow graph's file")
    if sorted(set(shallow) - SHALLOW_KEYS):
        raise EdgediffError(f"{mf}: cache.shallow has unknown key {sorted(set(shallow) - SHALLOW_KEYS)[0]!r}")
    if shallow["file"] not in manifest.get("files", {}):
        raise EdgediffError(f"{mf}: cache.shallow.file {shallow['file']!r} is not listed under files")
    for key in ("inputs", "outputs"):
        if not isinstance(shallow.get(key), list) or not shallow[key]:
            raise EdgediffError(f"{mf}: cache.shallow.{key} must list the shallow graph's tensors")
    feature = cache.get("feature")
    if not isinstance(feature, dict) or feature.get("name") != FEATURE:
        raise EdgediffError(f"{mf}: cache.feature must be an object with name {FEATURE!r}")
    outs = manifest["model"]["outputs"]
    if len(outs) != 2 or outs[1].get("name") != FEATURE:
        raise EdgediffError(f"{mf}: model.outputs must be [eps, {FEATURE}] for a cached bundle")
    if shallow["inputs"][-1].get("name") != FEATURE or len(shallow["inputs"]) != len(manifest["model"]["inputs"]) + 1:
        raise EdgediffError(f"{mf}: cache.shallow.inputs must be the model's inputs and then {FEATURE}")
    if shallow["inputs"][-1].get("shape") != outs[1].get("shape"):
        raise EdgediffError(f"{mf}: cache.shallow's {FEATURE} input and model.outputs[1] differ in shape")


def check_cache_signature(root: Path, manifest: dict) -> None:
    """The shallow graph file's own inputs/outputs equal manifest.json cache.shallow's."""
    cache = manifest.get("cache")
    if cache is None:
        return
    path = Path(root) / cache["shallow"]["file"]
    actual = model_signature(path, manifest["model"]["format"])
    for side in ("inputs", "outputs"):
        if actual[side] != cache["shallow"][side]:
            raise EdgediffError(
                f"{path}: {side} {actual[side]} do not match manifest.json cache.shallow.{side} {cache['shallow'][side]}"
            )
