"""The bundle: what the compiler writes and every runtime reads.

    bundle/
      manifest.json    format + version, source hash, target, recipe, every file with sha256,
                       model input/output signature, quantization/pruning records, provenance
      scheduler.json   solver, training schedule (alphas_cumprod), the timesteps to visit,
                       prediction type, guidance scale, timestep groups, cache schedule
      model/           denoiser.onnx (later: .xml+.bin, .tflite, .mlpackage)
      report.json      sizes, parameters, MACs per step, fidelity vs the reference, stage timings

`load_bundle` refuses anything that does not match: wrong format or version, a file whose
sha256 differs from the manifest, a model whose inputs/outputs differ from the recorded
signature, and any listed file that is not a regular file inside the bundle folder (see
"the box" below). Each refusal names the file and the field.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from edgediff.core.errors import EdgediffError
from edgediff.core.readers import parse_json

FORMAT = "edgediff-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SCHEDULER = "scheduler.json"
REPORT = "report.json"


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names + contents, sorted)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def size_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict
    scheduler: dict
    report: dict

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest["model"]["file"]

    @property
    def model_format(self) -> str:
        return self.manifest["model"]["format"]

    @property
    def conditioning(self) -> dict:
        return self.manifest["conditioning"]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["model"]["inputs"][0]["shape"][1:])


# ---- the box: every file a bundle names stays inside it -----------------------------------------
#
# The rule, shared with csrc/src/bundle.c (tests/bundle_cases.py holds the cases both loaders
# are run on, with the message each must print):
#
#   name      a files key is a relative path: "/"-separated, no leading "/", no "", "." or ".."
#             component, no NUL byte
#   missing   ROOT/NAME must exist (a dangling symlink counts as missing)
#   inside    its real path (every symlink on the way resolved) lies strictly inside the real
#             bundle folder; a symlink within the bundle to another file within it is allowed
#   regular   what it resolves to is a regular file: never a FIFO, device, socket or directory.
#             The one folder allowed is a NAME ending in .mlpackage (hashed as one entry); each
#             entry inside it is a folder or a regular file, or a symlink to a regular file that
#             is itself inside the bundle
#   size      its size (a package: the sum of its files') is at most files[NAME].bytes, checked
#             before a byte is hashed; a smaller file is then refused by its sha256
#
# manifest.json and scheduler.json themselves must be regular files inside the bundle, at most
# 64 MiB; they are opened with O_NONBLOCK and checked with fstat, so a FIFO never blocks.

MAX_JSON_BYTES = 64 << 20  # as csrc/src/bundle.c's MAX_FILE_BYTES
_CHUNK = 1 << 20


def _kind(mode: int) -> str | None:
    """None for a regular file, else what it is instead ("a FIFO")."""
    for test, what in (
        (stat.S_ISREG, None),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return what
    return "not a file"


def _bad_name(name) -> bool:
    return (
        not isinstance(name, str)
        or not name
        or name.startswith("/")
        or "\0" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
    )


def _inside(root_real: str, real: str) -> bool:
    return real.startswith(root_real.rstrip("/") + "/")


@dataclass(frozen=True)
class _Part:
    """One regular file to hash: `rel` is its name inside a .mlpackage (None for a plain file)."""

    rel: str | None
    path: str  # the real path, symlinks resolved
    size: int
    ident: tuple[int, int]  # (st_dev, st_ino) when it was checked


def _package(root_real: str, top: str, where: str) -> list[_Part]:
    """The files of a .mlpackage folder in sha256_path's order, each checked against the rule."""
    parts: list[_Part] = []

    def walk(folder: str, prefix: str) -> None:
        for entry in sorted(os.listdir(folder)):
            path, rel = os.path.join(folder, entry), prefix + entry
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                walk(path, rel + "/")
                continue
            real = path
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(path)
                if not _inside(root_real, real):
                    raise EdgediffError(f"{where} holds {rel}, which resolves outside the bundle (to {real})")
                try:
                    st = os.stat(real)
                except OSError as e:
                    raise EdgediffError(f"{where} holds {rel}, which cannot be read ({e.strerror})") from None
            what = _kind(st.st_mode)
            if what:
                raise EdgediffError(f"{where} holds {rel}, which is {what}, not a regular file")
            parts.append(_Part(rel, real, st.st_size, (st.st_dev, st.st_ino)))

    walk(top, "")
    return parts


def check_entry(root: Path, name, rec, *, root_real: str | None = None) -> list[_Part]:
    """Apply the box rule to manifest.json files[name]; the files to hash, or EdgediffError."""
    where = f'{root / MANIFEST}: files["{name}"]'
    if _bad_name(name):
        raise EdgediffError(f"{where} must be a relative path inside the bundle")
    if not isinstance(rec, dict):
        raise EdgediffError(f"{where} must be an object, got {type(rec).__name__}")
    limit = rec.get("bytes")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise EdgediffError(f"{where}.bytes must be a non-negative integer")
    root_real = root_real or os.path.realpath(root)
    path = root / name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EdgediffError(f"{path}: listed in manifest.json files but missing") from None
    except OSError as e:
        raise EdgediffError(f"{where} cannot be resolved ({e.strerror})") from None
    real = os.path.realpath(path)
    if not _inside(root_real, real):
        raise EdgediffError(f"{where} resolves outside the bundle (to {real})")
    what = _kind(st.st_mode)
    if what == "a directory" and name.endswith(".mlpackage"):
        parts = _package(root_real, real, where)
    elif what:
        raise EdgediffError(f"{where} is {what}, not a regular file")
    else:
        parts = [_Part(None, real, st.st_size, (st.st_dev, st.st_ino))]
    size = sum(p.size for p in parts)
    if size > limit:
        raise EdgediffError(f"{where} is {size} bytes on disk, more than its bytes field ({limit}); not hashed")
    return parts


def _open_checked(part_path: str, ident: tuple[int, int] | None, where: str) -> int:
    """An O_NONBLOCK descriptor of a regular file (the one checked, when `ident` is given)."""
    fd = os.open(part_path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    what = _kind(st.st_mode)
    if what or (ident is not None and (st.st_dev, st.st_ino) != ident):
        os.close(fd)
        raise EdgediffError(f"{where} is {what or 'another file'}, not the regular file that was checked")
    return fd


def _hash_parts(parts: list[_Part], limit: int, where: str) -> tuple[str, int]:
    """sha256_path's digest of the checked parts, reading at most `limit` bytes in all."""
    h, left = hashlib.sha256(), limit
    for part in parts:
        if part.rel is not None:
            h.update(part.rel.encode() + b"\0")
        fd = _open_checked(part.path, part.ident, where)
        try:
            while chunk := os.read(fd, min(_CHUNK, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise EdgediffError(f"{where} grew past its bytes field ({limit}) while it was hashed")
                h.update(chunk)
        finally:
            os.close(fd)
    return h.hexdigest(), limit - left


def _read_json(root: Path, name: str, root_real: str | None = None) -> dict:
    path = root / name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EdgediffError(f"{path}: missing; not an edgediff bundle") from None
    except OSError as e:
        raise EdgediffError(f"{path}: cannot be read ({e.strerror})") from None
    real = os.path.realpath(path)
    if not _inside(root_real or os.path.realpath(root), real):
        raise EdgediffError(f"{path}: resolves outside the bundle (to {real})")
    what = _kind(st.st_mode)
    if what:
        raise EdgediffError(f"{path}: {what}, not a regular file")
    if st.st_size > MAX_JSON_BYTES:
        raise EdgediffError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB")
    fd = _open_checked(real, (st.st_dev, st.st_ino), str(path))
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise EdgediffError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise EdgediffError(f"{path}: not UTF-8 text: invalid byte at offset {e.start}") from None
    data = parse_json(text, str(path))  # the C reader's rules: nesting <= 64, no NaN literals
    if not isinstance(data, dict):
        raise EdgediffError(f"{path}: expected a JSON object")
    return data


def _field(d: dict, key: str, where: str):
    if key not in d:
        raise EdgediffError(f"{where}: missing field {key!r}")
    return d[key]


MAX_TENSORS = 4  # model inputs / outputs a manifest may describe (EDD_MAX_TENSORS in edgediff.h)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _typed(d: dict, key: str, types, want: str, file: str, where: str = ""):
    """d[key] of one of `types`; a message as bundle.c's member() writes it."""
    at = f"{where}." if where else ""
    if key not in d:
        raise EdgediffError(f"{file}: {where + ' is ' if where else ''}missing the field {key!r}")
    v = d[key]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        raise EdgediffError(f"{file}: {at}{key} must be {want}, got {type(v).__name__}")
    return v


def _tensors(items, field: str, file: str) -> None:
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_TENSORS:
        n = len(items) if isinstance(items, list) else type(items).__name__
        raise EdgediffError(f"{file}: {field} must list 1..{MAX_TENSORS} tensors, got {n}")
    for i, t in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(t, dict):
            raise EdgediffError(f"{file}: {where} must be an object, got {type(t).__name__}")
        _typed(t, "name", str, "a string", file, where)
        _typed(t, "dtype", str, "a string", file, where)
        shape = _typed(t, "shape", list, "a list", file, where)
        for k, d in enumerate(shape):
            if not ((_int(d) and d >= 1) or isinstance(d, str)):
                raise EdgediffError(f"{file}: {where}.shape[{k}] must be a positive integer or a name")


def check_schema(root: Path, manifest: dict, scheduler: dict) -> None:
    """manifest.json and scheduler.json fields that a runtime needs, checked as the C reader
    (csrc/src/bundle.c) checks them: a bundle that passes here can be run (load_bundle and
    `edgediff inspect` call it; the file checks of "the box" are check_entry's)."""
    from edgediff.runtimes.samplers.base import Plan, is_finite
    from edgediff.runtimes.steps import StepTable

    mf, sf = str(root / MANIFEST), str(root / SCHEDULER)
    model = _typed(manifest, "model", dict, "an object", mf)
    for key in ("format", "file"):
        _typed(model, key, str, "a string", mf, "model")
    _tensors(_typed(model, "inputs", list, "a list", mf, "model"), "model.inputs", mf)
    _tensors(_typed(model, "outputs", list, "a list", mf, "model"), "model.outputs", mf)
    inputs = model["inputs"]
    if len(inputs) < 2:
        raise EdgediffError(f"{mf}: model.inputs must list at least the sample and the timestep, got {len(inputs)}")
    shape = inputs[0]["shape"]
    if len(shape) < 2:
        raise EdgediffError(f"{mf}: model.inputs[0].shape must be (batch, ...sample), got {len(shape)} dimensions")
    for k, d in enumerate(shape[1:], start=1):
        if not _int(d):
            raise EdgediffError(f"{mf}: model.inputs[0].shape[{k}] must be a fixed size")
    cond = _typed(manifest, "conditioning", dict, "an object", mf)
    kind = _typed(cond, "kind", str, "a string", mf, "conditioning")
    if kind == "class":
        k = _typed(cond, "num_classes", (int, float), "an integer", mf, "conditioning")
        if not _int(k) or k < 1:
            raise EdgediffError(f"{mf}: conditioning.num_classes must be a positive integer, got {k!r}")
        if not _int(_typed(cond, "null_label", (int, float), "an integer", mf, "conditioning")):
            raise EdgediffError(f"{mf}: conditioning.null_label must be an integer")
        if len(inputs) < 3:
            raise EdgediffError(f"{mf}: conditioning.kind is 'class' but model.inputs has no label input")
    elif kind in ("embedding", "text"):
        if len(inputs) < 3:
            raise EdgediffError(f"{mf}: conditioning.kind is {kind!r} but model.inputs has no condition input")
    elif kind != "none":
        raise EdgediffError(f"{mf}: conditioning.kind {kind!r} is not one of none, class, embedding, text")
    if kind == "text":
        _check_text_manifest(mf, manifest)
    elif manifest.get("components") is not None:
        raise EdgediffError(f"{mf}: field components is set but conditioning.kind is {kind!r}, not 'text'")

    plan = Plan.from_dict(_typed(scheduler, "plan", dict, "an object", sf), where=sf)
    guidance = _typed(scheduler, "guidance_scale", (int, float), "a number", sf)
    if not is_finite(guidance):
        raise EdgediffError(f"{sf}: guidance_scale must be finite, got {guidance!r}")
    if "spacing" in scheduler and scheduler["spacing"] is not None:
        _typed(scheduler, "spacing", str, "a string", sf)
    StepTable.from_scheduler(scheduler, len(plan.model_timesteps), where=sf)
    groups = scheduler.get("timestep_groups")
    if isinstance(groups, dict):
        for k, name in enumerate(groups.get("files", [])):
            if name not in manifest["files"]:
                raise EdgediffError(f"{sf}: timestep_groups.files[{k}] {name!r} is not listed under {MANIFEST} files")
    if kind == "text":
        _check_text_scheduler(mf, sf, manifest, scheduler)
    from edgediff.runtimes.cache import check_cache

    check_cache(root, manifest, scheduler)
    if manifest.get("cache") is not None and groups is not None:
        raise EdgediffError(
            f"{sf}: timestep_groups and a cache are both set; a cached bundle has one full / shallow pair"
        )


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read a bundle folder. Every file manifest.json lists is checked against the box rule
    above (inside the folder, a regular file, no larger than its bytes field); with `verify`
    each is then hashed and compared with its sha256, and the model's signature with the
    manifest's. A symlink is followed only when it resolves to a regular file inside the
    bundle: a bundle may link model/b.onnx to model/a.onnx, never to a file outside."""
    root = Path(path)
    if not root.is_dir():
        raise EdgediffError(f"{root}: no such bundle folder")
    root_real = os.path.realpath(root)
    manifest = _read_json(root, MANIFEST, root_real)
    where = f"{root / MANIFEST}"
    fmt = _field(manifest, "format", where)
    if fmt != FORMAT:
        raise EdgediffError(f"{where}: field format is {fmt!r}, expected {FORMAT!r}")
    version = _field(manifest, "format_version", where)
    if version != FORMAT_VERSION:
        raise EdgediffError(
            f"{where}: field format_version is {version!r}; this edgediff reads version {FORMAT_VERSION}"
        )
    files = _field(manifest, "files", where)
    if not isinstance(files, dict):
        raise EdgediffError(f"{where}: files must be an object, got {type(files).__name__}")
    model = _field(manifest, "model", where)
    for key in ("format", "file", "inputs", "outputs"):
        _field(model, key, f"{where} (model)")
    _field(manifest, "conditioning", where)
    if model["file"] not in files:
        raise EdgediffError(f"{where}: model.file {model['file']!r} is not listed under files")
    for name in (SCHEDULER, REPORT):
        if name not in files:
            raise EdgediffError(f"{where}: files has no entry for {name}")
    scheduler = _read_json(root, SCHEDULER, root_real)  # read before the files, as the C loader does
    check_schema(root, manifest, scheduler)
    checked = {name: check_entry(root, name, rec, root_real=root_real) for name, rec in files.items()}
    if verify:
        for name, parts in checked.items():
            rec = files[name]
            digest, size = _hash_parts(parts, rec["bytes"], f'{where}: files["{name}"]')
            if digest != rec.get("sha256"):
                note = (
                    f"; it is {size} bytes where files[{name!r}].bytes says {rec['bytes']}"
                    if size != rec["bytes"]
                    else ""
                )
                raise EdgediffError(
                    f"{root / name}: sha256 {digest[:12]}… does not match manifest.json "
                    f"files[{name!r}].sha256 {str(rec.get('sha256'))[:12]}…; the file changed "
                    f"after compile{note}"
                )
    check_external_data(root, files)
    bundle = Bundle(root=root, manifest=manifest, scheduler=scheduler, report=_read_json(root, REPORT, root_real))
    check_components(bundle)
    if verify:
        from edgediff.runtimes.cache import check_cache_signature

        check_signature(bundle)
        check_cache_signature(root, manifest)
        check_component_signatures(bundle)
    return bundle


def check_external_data(root: Path, files: dict) -> None:
    """The box holds for ONNX external data too: every weights file an .onnx graph of the bundle
    points to (a model over 2 GB keeps its weights in NAME.onnx.data) must be a file the manifest
    lists, named relative to the graph's folder, and every tensor must lie within its bytes."""
    import posixpath

    graphs = [name for name in files if name.endswith(".onnx")]
    if not graphs:
        return
    import onnx

    for name in graphs:
        try:
            proto = onnx.load(str(root / name), load_external_data=False)
        except Exception as e:  # protobuf decode errors carry no file name
            raise EdgediffError(f"{root / name}: not a readable ONNX model ({type(e).__name__})") from None
        for init in proto.graph.initializer:
            if init.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in init.external_data}
            loc = info.get("location", "")
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), loc))
            if _bad_name(loc) or target not in files:
                raise EdgediffError(
                    f"{root / name}: initializer {init.name!r} keeps its data in {loc!r}, which is not a "
                    f"file of the bundle (manifest.json files)"
                )
            try:
                end = int(info.get("offset", 0)) + int(info.get("length", 0))
            except ValueError:
                raise EdgediffError(
                    f"{root / name}: initializer {init.name!r}: offset/length are not integers"
                ) from None
            if end > files[target]["bytes"]:
                raise EdgediffError(
                    f"{root / name}: initializer {init.name!r} reads bytes up to {end} of {target}, "
                    f"which holds {files[target]['bytes']}"
                )


def check_signature(bundle: Bundle) -> None:
    """The model file's own inputs/outputs must equal manifest.json model.inputs/outputs."""
    from edgediff.runtimes.backends import model_signature

    actual = model_signature(bundle.model_path, bundle.model_format)
    expected = {"inputs": bundle.manifest["model"]["inputs"], "outputs": bundle.manifest["model"]["outputs"]}
    for side in ("inputs", "outputs"):
        if actual[side] != expected[side]:
            raise EdgediffError(
                f"{bundle.model_path}: {side} {actual[side]} do not match manifest.json model.{side} {expected[side]}"
            )


# ---- a text-to-image bundle's components (conditioning kind "text") -------------------------------
#
#   manifest.json  components: {text_encoder: {file, format, precision, runtime, inputs, outputs},
#                               vae_decoder: {...}, tokenizer: {kind, folder, files, max_length}}
#   scheduler.json conditioning: "text", latent: {shape: [C, h, w], scaling_factor, image_shape: [3, H, W]}

GRAPHS = ("text_encoder", "vae_decoder")


def _positive_ints(v, n: int) -> bool:
    return (
        isinstance(v, list) and len(v) == n and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
    )


def _first_unknown(d: dict, keys) -> str | None:
    unknown = sorted(set(d) - set(keys))
    return unknown[0] if unknown else None


def _last_dim(t: dict):
    shape = t["shape"]
    return shape[-1] if shape else None


def _dims(shape) -> str:
    return "[" + ", ".join("?" if isinstance(d, str) else str(d) for d in shape) + "]"


def _check_text_manifest(mf: str, manifest: dict) -> None:
    """manifest.json components of a text bundle, as csrc/src/bundle.c read_components checks them."""
    comps = manifest.get("components")
    if not isinstance(comps, dict):
        raise EdgediffError(f"{mf}: field components must be an object for conditioning kind text")
    unknown = _first_unknown(comps, (*GRAPHS, "tokenizer"))
    if unknown is not None:
        raise EdgediffError(f"{mf}: components has unknown key {unknown!r}")
    files, model_format = manifest["files"], manifest["model"]["format"]
    for name in GRAPHS:
        where = f"components.{name}"
        c = _typed(comps, name, dict, "an object", mf, "components")
        file = _typed(c, "file", str, "a string", mf, where)
        fmt = _typed(c, "format", str, "a string", mf, where)
        _typed(c, "inputs", list, "a list", mf, where)
        _typed(c, "outputs", list, "a list", mf, where)
        if file not in files:
            raise EdgediffError(f"{mf}: {where}.file {file!r} is not listed under files")
        if fmt != model_format:
            raise EdgediffError(f"{mf}: {where}.format is {fmt!r}; the denoiser's is {model_format!r}")
        _tensors(c["inputs"], f"{where}.inputs", mf)
        _tensors(c["outputs"], f"{where}.outputs", mf)
    tok = _typed(comps, "tokenizer", dict, "an object", mf, "components")
    folder, tfiles = tok.get("folder"), tok.get("files")
    if not isinstance(folder, str) or _bad_name(folder):
        raise EdgediffError(f"{mf}: components.tokenizer.folder must be a relative folder name")
    if not isinstance(tfiles, list) or not tfiles:
        raise EdgediffError(f"{mf}: components.tokenizer.files must be a non-empty list")
    for k, f in enumerate(tfiles):
        if not isinstance(f, str):
            raise EdgediffError(f"{mf}: components.tokenizer.files[{k}] must be a string")
        if not f.startswith(folder + "/") or f not in files:
            raise EdgediffError(
                f"{mf}: components.tokenizer.files entry {f!r} must be a file of {folder}/ listed under files"
            )
    names = {f.rsplit("/", 1)[-1] for f in tfiles}
    if not ({"vocab.json", "merges.txt"} <= names or "tokenizer.json" in names):
        raise EdgediffError(f"{mf}: components.tokenizer.files needs vocab.json and merges.txt (or tokenizer.json)")
    shape = manifest["conditioning"].get("shape")
    if not _positive_ints(shape, 2):
        raise EdgediffError(f"{mf}: conditioning.shape must be [max_length, hidden] for kind text")
    n = tok.get("max_length")
    if not _int(n):
        raise EdgediffError(f"{mf}: components.tokenizer.max_length must be an integer")
    if n != shape[0]:
        raise EdgediffError(f"{mf}: components.tokenizer.max_length is {n}; conditioning.shape says {shape[0]}")
    width = shape[1]  # every graph agrees on the embedding width (fixed sizes compared)
    for field, t in (
        ("components.text_encoder.outputs[0]", comps["text_encoder"]["outputs"][0]),
        ("model.inputs[2]", manifest["model"]["inputs"][2]),
    ):
        last = _last_dim(t)
        if last is None or (_int(last) and last != width):
            raise EdgediffError(f"{mf}: {field}.shape ends in {last or 0}; conditioning.shape says width {width}")


def _check_text_scheduler(mf: str, sf: str, manifest: dict, scheduler: dict) -> None:
    """scheduler.json conditioning and latent of a text bundle, as csrc/src/bundle.c read_latent checks them."""
    if scheduler.get("conditioning") != "text":
        raise EdgediffError(f"{sf}: field conditioning must be 'text' for a text bundle")
    latent = _typed(scheduler, "latent", dict, "an object", sf)
    unknown = next((k for k in latent if k not in ("shape", "scaling_factor", "image_shape")), None)
    if unknown is not None:
        raise EdgediffError(f"{sf}: latent has unknown key {unknown!r}")
    sample = list(manifest["model"]["inputs"][0]["shape"][1:])
    shape = latent.get("shape")
    if not _positive_ints(shape, 3):
        raise EdgediffError(
            f"{sf}: latent.shape must be 3 positive integers equal to the denoiser's sample {_dims(sample)}"
        )
    if shape != sample:
        raise EdgediffError(f"{sf}: latent.shape is {_dims(shape)}; the denoiser's sample is {_dims(sample)}")
    f = latent.get("scaling_factor")
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < float("inf"):
        raise EdgediffError(f"{sf}: latent.scaling_factor must be a finite number > 0")
    image = latent.get("image_shape")
    if not _positive_ints(image, 3) or image[0] != 3:
        raise EdgediffError(f"{sf}: latent.image_shape must be [3, H, W]")
    dec = manifest["components"]["vae_decoder"]
    for k in range(3):  # the decoder takes the latent and gives the image (fixed sizes compared)
        din, dout = dec["inputs"][0]["shape"], dec["outputs"][0]["shape"]
        if len(din) != 4 or (_int(din[k + 1]) and din[k + 1] != shape[k]):
            raise EdgediffError(
                f"{mf}: components.vae_decoder.inputs[0].shape is {_dims(din)}; {SCHEDULER} latent.shape is {_dims(shape)}"
            )
        if len(dout) != 4 or (_int(dout[k + 1]) and dout[k + 1] != image[k]):
            raise EdgediffError(
                f"{mf}: components.vae_decoder.outputs[0].shape is {_dims(dout)}; {SCHEDULER} latent.image_shape is "
                f"{_dims(image)}"
            )


# the files a tokenizer folder may hold that a reader opens by name (csrc/src/bundle.c TOKENIZER_FILES)
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def check_components(bundle: Bundle) -> None:
    """A text bundle's tokenizer folder: inside the bundle, and every file in it that a tokenizer
    reads by name listed (so boxed and hashed). The fields are check_schema's."""
    comps = bundle.manifest.get("components")
    if bundle.conditioning.get("kind") != "text" or not isinstance(comps, dict):
        return
    tok = comps["tokenizer"]
    folder = bundle.root / tok["folder"]
    real = os.path.realpath(folder)
    if not os.path.isdir(real):
        raise EdgediffError(f"{folder}: the tokenizer folder cannot be resolved (No such file or directory)")
    if not _inside(os.path.realpath(bundle.root), real):
        raise EdgediffError(f"{folder}: the tokenizer folder resolves outside the bundle (to {real})")
    for name in TOKENIZER_FILES:
        rel = f"{tok['folder']}/{name}"
        if rel not in tok["files"] and os.path.lexists(folder / name):
            raise EdgediffError(
                f"{folder / name}: in the tokenizer folder but not listed in manifest.json components.tokenizer.files"
            )


def check_component_signatures(bundle: Bundle) -> None:
    """Each component graph's own inputs/outputs must equal manifest.json components.NAME.inputs/outputs."""
    from edgediff.runtimes.backends import model_signature

    comps = bundle.manifest.get("components")
    if not comps:
        return
    for name in GRAPHS:
        c = comps[name]
        path = bundle.root / c["file"]
        actual = model_signature(path, c["format"])
        for side in ("inputs", "outputs"):
            if actual[side] != c[side]:
                raise EdgediffError(
                    f"{path}: {side} {actual[side]} do not match manifest.json components.{name}.{side} {c[side]}"
                )
