"""Backends: run a bundle's denoiser file as `denoise(x, t, cond) -> eps` on numpy arrays.

To add a backend, write a class with `__init__(self, path, *, threads)` and `__call__`, and
add it to BACKENDS under the bundle's model format; add its signature reader to SIGNATURES.
Optional runtimes (OpenVINO, LiteRT, coremltools) are imported when a bundle of their format
is opened; a missing one is an EdgediffError naming the pip extra that installs it.

A model whose signature fixes the batch (static shapes, for NPUs) is run in chunks of that
batch, the last one padded by repeating its final row, so callers never see the difference.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgediff.core.errors import EdgediffError

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
    return {
        "inputs": describe([i for i in model.graph.input if i.name not in inits]),
        "outputs": describe(model.graph.output),
    }


@contextlib.contextmanager
def quiet_output():
    """Silence Python and native (fd 1 and 2) output of an optional package: coremltools and
    litert-torch print progress and platform notes at import and during conversion."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def require(module: str, extra: str, fmt: str):
    """Import an optional runtime/converter package, or say which pip extra installs it."""
    if module in sys.modules:
        return sys.modules[module]
    try:
        with quiet_output():
            return importlib.import_module(module)
    except ImportError as e:
        raise EdgediffError(
            f"format {fmt} needs the optional package {module.split('.')[0]!r} ({e.msg}); "
            f"install it with: pip install 'edgediff[{extra}]'"
        ) from None


_require = require

_OV_CORE = None


def openvino_core():
    """The one ov.Core of this process, shared by every OpenVINO graph edgediff opens.

    Each Core loads its own CPU plugin, and the plugin points the calling thread's signal stack
    (sigaltstack) at a buffer of its own, putting the previous one back when its last compiled
    model is destroyed. Two Cores whose models are freed in the order they were made (the full and
    shallow graphs of a cached bundle, a text bundle's three components) leave the thread on a
    freed buffer, and the next signal handled there (SIGTERM in `edgediff compile`) crashes the
    process with SIGSEGV. One Core for the process keeps a single buffer alive for its lifetime."""
    global _OV_CORE
    if _OV_CORE is None:
        _OV_CORE = _require("openvino", "openvino", "openvino").Core()
    return _OV_CORE


_OV_DTYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "f64": "float64"}


def _openvino_signature(path: Path) -> dict:
    core = openvino_core()
    try:
        model = core.read_model(str(path))
    except Exception as e:
        raise EdgediffError(f"{path}: not a readable OpenVINO IR ({type(e).__name__})") from None

    def describe(ports):
        out = []
        for p in ports:
            dims = [
                ("batch" if k == 0 else "?") if d.is_dynamic else d.get_length()
                for k, d in enumerate(p.get_partial_shape())
            ]
            et = p.get_element_type().get_type_name()
            out.append({"name": p.get_any_name(), "dtype": _OV_DTYPES.get(et, et), "shape": dims})
        return out

    return {"inputs": describe(model.inputs), "outputs": describe(model.outputs)}


def _tflite_runner(path: Path, threads: int = 0, *, signature: str | None = None, interpreter=None):
    """(interpreter, signature runner): `signature` None is the model's first; a given
    `interpreter` (of the same file) is reused, so several signatures share one loaded model."""
    mod = _require("ai_edge_litert.interpreter", "tflite", "tflite")
    try:
        with quiet_output():  # the delegate announces itself on stderr from native code
            it = interpreter or mod.Interpreter(model_path=str(path), num_threads=threads or None)
    except Exception as e:
        raise EdgediffError(f"{path}: not a loadable TFLite model ({type(e).__name__}: {e})") from None
    if signature is None and len(it.get_signature_list()) > 1:  # timestep groups: "group0" first
        signature = next(iter(it.get_signature_list()))
    if signature is not None and signature not in it.get_signature_list():
        raise EdgediffError(f"{path}: no signature {signature!r} (it has: {', '.join(it.get_signature_list())})")
    with quiet_output():
        runner = it.get_signature_runner(signature)
    return it, runner


def _tflite_describe(details: dict) -> list[dict]:
    out = []
    for name, d in sorted(details.items(), key=lambda kv: kv[1]["index"]):
        dims = [("batch" if k == 0 else "?") if int(v) < 0 else int(v) for k, v in enumerate(d["shape_signature"])]
        out.append({"name": name, "dtype": np.dtype(d["dtype"]).name, "shape": dims})
    return out


def _tflite_signature(path: Path) -> dict:
    _, runner = _tflite_runner(path)
    return {
        "inputs": _tflite_describe(runner.get_input_details()),
        "outputs": _tflite_describe(runner.get_output_details()),
    }


# Core ML FeatureTypes.ArrayFeatureType.ArrayDataType values
_COREML_DTYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32", 131080: "int8"}


def _coreml_signature(path: Path) -> dict:
    """Read from the package's spec: coremltools parses it on any OS (prediction needs macOS)."""
    ct = _require("coremltools", "coreml", "coreml")
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as e:
        raise EdgediffError(f"{path}: not a readable Core ML package ({type(e).__name__})") from None

    def describe(features):
        return [
            {
                "name": f.name,
                "dtype": _COREML_DTYPES.get(f.type.multiArrayType.dataType, str(f.type.multiArrayType.dataType)),
                "shape": [int(d) for d in f.type.multiArrayType.shape],
            }
            for f in features
        ]

    return {"inputs": describe(spec.description.input), "outputs": describe(spec.description.output)}


SIGNATURES = {
    "onnx": _onnx_signature,
    "openvino": _openvino_signature,
    "tflite": _tflite_signature,
    "coreml": _coreml_signature,
}


def model_signature(path: Path, fmt: str) -> dict:
    if fmt not in SIGNATURES:
        raise EdgediffError(f"{path}: model format {fmt!r} has no reader (known: {', '.join(SIGNATURES)})")
    return SIGNATURES[fmt](path)


def ort_options(threads: int = 0):
    """ONNX Runtime session options of every edgediff session: errors only, `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return opts


class OnnxRuntimeDenoiser:
    """ONNX Runtime on the CPU execution provider."""

    def __init__(self, path: Path, *, threads: int = 0):
        import onnxruntime as ort

        opts = ort_options(threads)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, i.type) for i in self.session.get_inputs()]
        self.label = f"ONNX Runtime {ort.__version__} CPUExecutionProvider"

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        feeds = {
            self.inputs[0][0]: np.ascontiguousarray(x, np.float32),
            self.inputs[1][0]: np.ascontiguousarray(t, np.float32),
        }
        if len(self.inputs) > 2:
            name, typ = self.inputs[2]
            dtype = np.int64 if "int64" in typ else np.float32
            feeds[name] = np.ascontiguousarray(cond, dtype)
        return self.session.run(None, feeds)[0].astype(np.float32, copy=False)


def _cond_dtype(dtype: str):
    return np.int32 if dtype == "int32" else np.int64 if dtype == "int64" else np.float32


class OpenVINODenoiser:
    """OpenVINO on the CPU plugin, INFERENCE_PRECISION_HINT f32 so the numbers are checkable here
    (this plugin picks bf16 by default on CPUs with AVX-512 BF16 or AMX)."""

    HINT = "f32"

    def __init__(self, path: Path, *, threads: int = 0, static_batch: int | None = None):
        ov = _require("openvino", "openvino", "openvino")
        core = openvino_core()
        config = {"INFERENCE_PRECISION_HINT": self.HINT, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        model = core.read_model(str(path))
        if static_batch:  # every input's batch fixed, as the C backend compiles it (edd_ov_params.static_batch)
            model.reshape({p.get_any_name(): [static_batch, *list(p.get_partial_shape())[1:]] for p in model.inputs})
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.inputs = [(p.get_any_name(), p.get_element_type().get_type_name()) for p in self.compiled.inputs]
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin actually runs with
        self.hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.label = f"OpenVINO {ov.__version__.split('-')[0]} CPU plugin (INFERENCE_PRECISION_HINT {self.hint})"

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        feeds = {
            self.inputs[0][0]: np.ascontiguousarray(x, np.float32),
            self.inputs[1][0]: np.ascontiguousarray(t, np.float32),
        }
        if len(self.inputs) > 2:
            name, et = self.inputs[2]
            feeds[name] = np.ascontiguousarray(cond, _cond_dtype(_OV_DTYPES.get(et, et)))
        out = self.request.infer(feeds)
        return np.array(out[self.compiled.outputs[0]], dtype=np.float32)


class TFLiteDenoiser:
    """LiteRT's interpreter (ai-edge-litert) with its default XNNPACK delegate on the CPU."""

    def __init__(self, path: Path, *, threads: int = 0, signature: str | None = None, interpreter=None):
        import ai_edge_litert

        self.interpreter, self.runner = _tflite_runner(path, threads, signature=signature, interpreter=interpreter)
        self.inputs = [(i["name"], i["dtype"]) for i in _tflite_describe(self.runner.get_input_details())]
        self.output = _tflite_describe(self.runner.get_output_details())[0]["name"]
        self.warm = False
        self.label = f"LiteRT {getattr(ai_edge_litert, '__version__', '')} interpreter (XNNPACK, CPU)".replace(
            "  ", " "
        )

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        feeds = {
            self.inputs[0][0]: np.ascontiguousarray(x, np.float32),
            self.inputs[1][0]: np.ascontiguousarray(t, np.float32),
        }
        if len(self.inputs) > 2:
            name, dtype = self.inputs[2]
            feeds[name] = np.ascontiguousarray(cond, _cond_dtype(dtype))
        if not self.warm:  # the XNNPACK delegate is created, and announces itself, on the first call
            with quiet_output():
                out = self.runner(**feeds)[self.output]
            self.warm = True
            return np.array(out, dtype=np.float32)
        return np.array(self.runner(**feeds)[self.output], dtype=np.float32)


class FixedBatch:
    """Runs a static-batch denoiser on any batch: chunks of `batch`, the last padded."""

    def __init__(self, inner, batch: int):
        self.inner, self.batch = inner, batch
        self.label = getattr(inner, "label", type(inner).__name__)

    def __call__(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        n, b = x.shape[0], self.batch
        if n == b:
            return self.inner(x, t, cond)
        outs = []
        for s in range(0, n, b):
            idx = np.minimum(np.arange(s, s + b), n - 1)  # pad by repeating the last row
            out = self.inner(x[idx], t[idx], None if cond is None else cond[idx])
            outs.append(out[: min(b, n - s)])
        return np.concatenate(outs)


BACKENDS = {"onnx": OnnxRuntimeDenoiser, "openvino": OpenVINODenoiser, "tflite": TFLiteDenoiser}
# Formats this host can check only structurally: why a backend is missing.
NOT_HERE = {"coreml": "Core ML prediction needs macOS (coremltools runs models only there)"}


def open_denoiser(path: Path, fmt: str, *, threads: int = 0):
    if fmt in NOT_HERE:
        raise EdgediffError(f"{path}: format {fmt!r} cannot run on this host: {NOT_HERE[fmt]}")
    if fmt not in BACKENDS:
        raise EdgediffError(f"{path}: no backend on this host runs format {fmt!r} (available: {', '.join(BACKENDS)})")
    denoise = BACKENDS[fmt](path, threads=threads)
    batch = model_signature(path, fmt)["inputs"][0]["shape"][0]
    return FixedBatch(denoise, batch) if isinstance(batch, int) else denoise


class Graph:
    """One graph of a text-to-image bundle (text encoder, VAE decoder): `graph(x) -> first output`,
    on ONNX Runtime's CPU provider or OpenVINO's CPU plugin (f32, as OpenVINODenoiser)."""

    def __init__(self, path: Path, fmt: str, *, threads: int = 0):
        self.path, self.fmt = Path(path), fmt
        if fmt == "onnx":
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(path), ort_options(threads), providers=["CPUExecutionProvider"])
            inp = self.session.get_inputs()[0]
            self.input, self.dtype = inp.name, np.int64 if "int64" in inp.type else np.float32
            self.label = f"ONNX Runtime {ort.__version__} CPUExecutionProvider"
        elif fmt == "openvino":
            ov = _require("openvino", "openvino", "openvino")
            config = {"INFERENCE_PRECISION_HINT": OpenVINODenoiser.HINT, "PERFORMANCE_HINT": "LATENCY"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            core = openvino_core()
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
            self.request = self.compiled.create_infer_request()
            port = self.compiled.inputs[0]
            et = _OV_DTYPES.get(port.get_element_type().get_type_name(), "float32")
            self.input, self.dtype = port.get_any_name(), _cond_dtype(et)
            self.label = f"OpenVINO {ov.__version__.split('-')[0]} CPU plugin"
        elif fmt == "tflite":
            self.interpreter, self.runner = _tflite_runner(path, threads)
            inp = _tflite_describe(self.runner.get_input_details())[0]
            self.input, self.dtype = inp["name"], _cond_dtype(inp["dtype"])
            self.output = _tflite_describe(self.runner.get_output_details())[0]["name"]
            self.label = "LiteRT interpreter (XNNPACK, CPU)"
        elif fmt in NOT_HERE:
            raise EdgediffError(f"{path}: format {fmt!r} cannot run on this host: {NOT_HERE[fmt]}")
        else:
            raise EdgediffError(f"{path}: no backend on this host runs format {fmt!r} for a pipeline component")
        batch = model_signature(path, fmt)["inputs"][0]["shape"][0]
        self.batch = batch if isinstance(batch, int) else None

    def _run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, self.dtype)
        if self.fmt == "onnx":
            return np.asarray(self.session.run(None, {self.input: x})[0], np.float32)
        if self.fmt == "tflite":
            with quiet_output():  # the XNNPACK delegate announces itself from native code
                return np.array(self.runner(**{self.input: x})[self.output], dtype=np.float32)
        out = self.request.infer({self.input: x})
        return np.array(out[self.compiled.outputs[0]], dtype=np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.batch is None or x.shape[0] == self.batch:
            return self._run(x)
        outs = []
        for s in range(0, x.shape[0], self.batch):  # a static batch: chunks, the last padded
            idx = np.minimum(np.arange(s, s + self.batch), x.shape[0] - 1)
            outs.append(self._run(x[idx])[: min(self.batch, x.shape[0] - s)])
        return np.concatenate(outs)


def load_tokenizer(folder: Path):
    """The bundle's CLIP tokenizer (transformers' CLIPTokenizer over the copied files)."""
    try:
        from transformers import CLIPTokenizer
    except ImportError as e:
        raise EdgediffError(f"{folder}: the tokenizer needs the package 'transformers' ({e.msg})") from None
    try:
        with quiet_output():
            return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgediffError(f"{folder}: not a loadable CLIP tokenizer: {first}") from None


def tokenize(tokenizer, prompts: list[str], max_length: int, *, warn=None) -> np.ndarray:
    """input_ids int64 (len(prompts), max_length): padded, and truncated as CLIP does (the
    start token, the first max_length - 2 tokens, the end token); warn(message) per truncated prompt."""
    for p in prompts:
        n = len(tokenizer(p, truncation=False, verbose=False).input_ids)
        if n > max_length and warn is not None:
            short = p if len(p) <= 60 else p[:57] + "..."
            warn(f"prompt {short!r} is {n} tokens; truncated to {max_length} as CLIP does")
    out = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="np")
    return np.asarray(out.input_ids, np.int64)
