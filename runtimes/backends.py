"""Backends: run a bundle's denoiser file as `denoise(x, t, cond) -> eps` on numpy arrays.

To add a backend, write a class with `__init__(self, path, *, threads)` and `__call__`, and
add it to BACKENDS under the bundle's model format; add its signature reader to SIGNATURES.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgediff.runtimes.errors import EdgediffError

_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 11: "float64"}


def _onnx_signature(path: Path) -> dict:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors carry no file name
        raise EdgediffError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None

    def describe(values):
        out = []
        for v in values:
            tt = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim]
            out.append({"name": v.name, "dtype": _ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)), "shape": dims})
        return out

    inits = {i.name for i in model.graph.initializer}
    return {"inputs": describe([i for i in model.graph.input if i.name not in inits]),
            "outputs": describe(model.graph.output)}


SIGNATURES = {"onnx": _onnx_signature}


def model_signature(path: Path, fmt: str) -> dict:
    if fmt not in SIGNATURES:
        raise EdgediffError(f"{path}: model format {fmt!r} has no reader (known: {', '.join(SIGNATURES)})")
    return SIGNATURES[fmt](path)


class OnnxRuntimeDenoiser:
    """ONNX Runtime on the CPU execution provider."""

    def __init__(self, path: Path, *, threads: int = 0, initializers: dict | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        # initializers: name -> numpy array shared with other sessions (timestep groups, groups.py);
        # the OrtValues wrap the arrays without copying them
        self._shared = [ort.OrtValue.ortvalue_from_numpy(a) for a in (initializers or {}).values()]
        for name, value in zip(initializers or {}, self._shared):
            opts.add_initializer(name, value)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, i.type) for i in self.session.get_inputs()]

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        feeds = {self.inputs[0][0]: np.ascontiguousarray(x, np.float32),
                 self.inputs[1][0]: np.ascontiguousarray(t, np.float32)}
        if len(self.inputs) > 2:
            name, typ = self.inputs[2]
            dtype = np.int64 if "int64" in typ else np.float32
            feeds[name] = np.ascontiguousarray(cond, dtype)
        return self.session.run(None, feeds)[0].astype(np.float32, copy=False)


BACKENDS = {"onnx": OnnxRuntimeDenoiser}


def open_denoiser(path: Path, fmt: str, *, threads: int = 0, initializers: dict | None = None):
    if fmt not in BACKENDS:
        raise EdgediffError(f"{path}: no backend on this host runs format {fmt!r} "
                            f"(available: {', '.join(BACKENDS)})")
    if initializers:
        return BACKENDS[fmt](path, threads=threads, initializers=initializers)
    return BACKENDS[fmt](path, threads=threads)
