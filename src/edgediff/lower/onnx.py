"""Lower a ModelSpec to ONNX (opset 18), fp32 or fp16, with a dynamic batch axis.

    ModelSpec --torch.export--> ONNX fp32 --(fp16: weights and math in half, fp32 I/O)--> file

The exporter is PyTorch's torch.export-based one (the TorchScript path is deprecated). It is
the slow part of a compile for small models (seconds to a minute), so one process exports a
module once: compiling the same ModelSpec for several targets reuses the export while the
module's weights, input names and shapes are unchanged (`_EXPORTS`).
fp16 keeps float32 inputs/outputs so the runtime's arrays do not change with precision.

Models over protobuf's 2 GB limit: a graph whose weights exceed EXTERNAL_DATA_BYTES is written
as NAME.onnx plus one weights file NAME.onnx.data beside it (ONNX external data, which ONNX
Runtime and OpenVINO read from the model's folder; the bundle lists and hashes both). Such a
graph is never held in the export cache, and its shapes are not re-inferred (protobuf would
have to serialise it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
import weakref
from pathlib import Path

import onnx
import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec, sha256_state
from edgediff.lower.registry import Lowered

OPSET = 18
PRECISIONS = ("fp32", "fp16")
# weights above this go to NAME.onnx.data: protobuf cannot serialise a message over 2 GiB, and the
# graph itself (nodes, attributes, shapes) must fit beside the weights
EXTERNAL_DATA_BYTES = 1 << 30


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each tensor once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def initializer_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of a graph's initializers as loaded (raw_data, or the typed fields' element count)."""
    total = 0
    for init in proto.graph.initializer:
        if init.raw_data:
            total += len(init.raw_data)
        else:
            n = 1
            for d in init.dims:
                n *= d
            total += n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


def is_large(proto: onnx.ModelProto) -> bool:
    return initializer_bytes(proto) > EXTERNAL_DATA_BYTES


def data_file(path: Path) -> Path:
    """The external weights file of the graph at `path` (written only for a large graph)."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def save_onnx(proto: onnx.ModelProto, path: Path) -> Path:
    """Write `proto` to `path`; a large graph's weights to data_file(path) (the proto's tensors
    then point there, so save it once). Returns `path`."""
    path = Path(path)
    data = data_file(path)
    data.unlink(missing_ok=True)
    if is_large(proto):
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    else:
        onnx.save(proto, str(path))
    return path


def remove_onnx(path: Path) -> None:
    """Remove a graph file and its external weights file, if any."""
    Path(path).unlink(missing_ok=True)
    data_file(path).unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and warnings meant for its own developers."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


# module -> (what the export depends on besides the code, the ONNX bytes); entries go with the module
_EXPORTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, bytes]] = weakref.WeakKeyDictionary()


def export_onnx(model: ModelSpec, path: Path) -> onnx.ModelProto:
    """Export fp32 ONNX with the batch axis dynamic; returns the loaded proto."""
    names = model.input_names()
    args = model.example_inputs(batch=2)
    key = (tuple(names), tuple((tuple(a.shape), a.dtype) for a in args), sha256_state(model.module))
    return cached_export(model.module, key, path, lambda: _export(model, path, names, args))


def cached_export(module: torch.nn.Module, key, path: Path, export) -> onnx.ModelProto:
    """`export()` writes `path` and returns its proto; skipped (the cached bytes written to
    `path`) while `module` is alive and `key` (its weights, inputs) unchanged."""
    hit = _EXPORTS.get(module)
    if hit is not None and hit[0] == key:
        Path(path).write_bytes(hit[1])
        data_file(path).unlink(missing_ok=True)
        return onnx.load_from_string(hit[1])
    proto = export()
    if not data_file(path).exists():  # a large graph is not kept in memory twice
        _EXPORTS[module] = (key, Path(path).read_bytes())
    return proto


def _export(model: ModelSpec, path: Path, names: list[str], args: tuple) -> onnx.ModelProto:
    # a named dynamic dim: the same graph as Dim("batch", min=1, max=4096) (op counts, input/output
    # shapes); it exported faster in an unbenchmarked timing here, so no figure is claimed
    batch = "batch"
    sig_names = _forward_arg_names(model.module, len(args))
    dynamic = {n: {0: batch} for n in sig_names}
    return torch_export(model.module, args, path, names, ["eps"], dynamic, what=model.source)


def torch_export(module, args: tuple, path: Path, input_names, output_names, dynamic_shapes, *, what: str):
    """fp32 ONNX of `module` at `path` (dynamo exporter; one file, or with data_file(path) when its
    weights exceed EXTERNAL_DATA_BYTES); a failure is one line naming `what`."""
    data_file(path).unlink(missing_ok=True)
    large = weight_bytes(module) > EXTERNAL_DATA_BYTES
    with _quiet(), torch.inference_mode(False), torch.no_grad():
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                dynamo=True,
                external_data=large,
                verbose=False,
            )
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgediffError(f"ONNX export of {what} failed: {first}") from e
    return onnx.load(str(path))


def _forward_arg_names(module: torch.nn.Module, n: int) -> list[str]:
    import inspect

    params = [
        p
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) < n:
        raise EdgediffError(
            f"{model_name(module)}.forward takes {len(params)} positional inputs; the source's conditioning needs {n}"
        )
    return [p.name for p in params[:n]]


def model_name(module: torch.nn.Module) -> str:
    return type(module).__name__


def to_fp16(proto: onnx.ModelProto, *, keep_fp32: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Half-precision weights and compute; float32 graph inputs and outputs. The nodes named in
    `keep_fp32` stay float32, with casts around them (the converter's node_block_list)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        # shape inference serialises the graph: not possible over 2 GB (the exporter's types suffice)
        half = convert_float_to_float16(
            proto,
            keep_io_types=True,
            node_block_list=list(keep_fp32) or None,
            disable_shape_infer=is_large(proto),
        )
    # The converter inserts one Cast per (value, consumer) and can emit the same Cast twice
    # when a value feeds several ops kept in float32; identical duplicates are dropped.
    seen: dict[tuple, bytes] = {}
    nodes = []
    for node in half.graph.node:
        key = tuple(node.output)
        blob = node.SerializeToString()
        if key in seen:
            if seen[key] != blob:
                raise EdgediffError(f"fp16 conversion produced two different nodes writing {key}")
            continue
        seen[key] = blob
        nodes.append(node)
    del half.graph.node[:]
    half.graph.node.extend(nodes)
    return _skip_cast_pairs(half, set(keep_fp32)) if keep_fp32 else half


def _skip_cast_pairs(proto: onnx.ModelProto, kept: set[str]) -> onnx.ModelProto:
    """The converter casts a kept-fp32 node's output (or a float32 graph input) to fp16 and back to
    fp32 for the next kept node: Cast(to float) of Cast(to float16) of such an x reads x itself,
    and casts no one reads go."""
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    fp32_inputs = {i.name for i in proto.graph.input if i.type.tensor_type.elem_type == f32}

    def to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producer = {o: n for n in proto.graph.node for o in n.output}
    alias = {}
    for node in proto.graph.node:
        src = producer.get(node.input[0]) if node.input else None
        if to(node) == f32 and src is not None and to(src) == f16:
            origin = producer.get(src.input[0])
            if src.input[0] in fp32_inputs or (origin is not None and origin.name in kept):
                alias[node.output[0]] = src.input[0]  # the fp32 value before the round trip
    if not alias:
        return proto
    graph_outputs = {o.name for o in proto.graph.output}
    nodes = []
    for node in proto.graph.node:
        if node.output and node.output[0] in alias and node.output[0] not in graph_outputs:
            continue
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
        nodes.append(node)
    read = {i for n in nodes for i in n.input} | graph_outputs
    nodes = [n for n in nodes if to(n) is None or any(o in read for o in n.output)]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def lower_onnx(model: ModelSpec, out_dir: Path, *, precision: str = "fp32") -> Path:
    """Write `out_dir/denoiser.onnx` at the given precision and return its path."""
    if precision not in PRECISIONS:
        raise EdgediffError(
            f"ONNX lowering: precision {precision!r} is not supported (supported: {', '.join(PRECISIONS)})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "denoiser.onnx"
    proto = export_onnx(model, path)
    if precision == "fp16":
        proto = to_fp16(proto)
    proto.producer_name = "edgediff"
    return save_onnx(proto, path)


def fix_batch(proto: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Fix the batch axis of every graph input and output to `batch` (what NPUs such as QNN's HTP need)."""
    for v in [*proto.graph.input, *proto.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    del proto.graph.value_info[:]  # shapes inferred for the dynamic graph; re-inferred below
    if is_large(proto):  # inference serialises the graph; value_info is optional, runtimes infer it
        return proto
    return onnx.shape_inference.infer_shapes(proto)


def lower_onnx_bundle(
    model: ModelSpec,
    out_dir: Path,
    *,
    precision: str,
    ir: Path,
    static_batch: int | None = None,
    weights: str | None = None,
):
    """The registry's entry (src/edgediff/lower/registry.py): reuse the fp32 export `ir`, convert, fix shapes."""
    if precision not in PRECISIONS:
        raise EdgediffError(
            f"ONNX lowering: precision {precision!r} is not supported (supported: {', '.join(PRECISIONS)})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "denoiser.onnx"
    proto = onnx.load(str(ir))
    if static_batch is not None:
        proto = fix_batch(proto, static_batch)
    if precision == "fp16":
        proto = to_fp16(proto)
    proto.producer_name = "edgediff"
    save_onnx(proto, path)
    return Lowered(
        file=path, record={"opset": OPSET, "static_batch": static_batch}, runtime={"static_batch": static_batch}
    )
