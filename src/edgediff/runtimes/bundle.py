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
    elif kind in ("embedding", "text"):  # text: its components and latent block are check_components'
        if len(inputs) < 3:
            raise EdgediffError(f"{mf}: conditioning.kind is {kind!r} but model.inputs has no condition input")
    elif kind != "none":
        raise EdgediffError(f"{mf}: conditioning.kind {kind!r} is not one of none, class, embedding, text")

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
    bundle = Bundle(root=root, manifest=manifest, scheduler=scheduler, report=_read_json(root, REPORT, root_real))
    check_components(bundle)
    if verify:
        from edgediff.runtimes.cache import check_cache_signature

        check_signature(bundle)
        check_cache_signature(root, manifest)
        check_component_signatures(bundle)
    return bundle


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


def check_components(bundle: Bundle) -> None:
    """The components and latent block of a text bundle, strictly; other bundles must have neither."""
    where, swhere = f"{bundle.root / MANIFEST}", f"{bundle.root / SCHEDULER}"
    cond = bundle.manifest["conditioning"]
    kind = cond.get("kind") if isinstance(cond, dict) else None
    comps = bundle.manifest.get("components")
    if kind != "text":
        if comps is not None:
            raise EdgediffError(f"{where}: field components is set but conditioning.kind is {kind!r}, not 'text'")
        return
    if not isinstance(comps, dict):
        raise EdgediffError(f"{where}: field components must be an object for conditioning kind text")
    unknown = sorted(set(comps) - {*GRAPHS, "tokenizer"})
    if unknown:
        raise EdgediffError(f"{where}: components has unknown key {unknown[0]!r}")
    files = bundle.manifest["files"]
    for name in GRAPHS:
        c = _field(comps, name, f"{where} (components)")
        if not isinstance(c, dict):
            raise EdgediffError(f"{where}: components.{name} must be an object")
        for key in ("file", "format", "inputs", "outputs"):
            _field(c, key, f"{where} (components.{name})")
        if c["file"] not in files:
            raise EdgediffError(f"{where}: components.{name}.file {c['file']!r} is not listed under files")
        if c["format"] != bundle.model_format:
            raise EdgediffError(
                f"{where}: components.{name}.format is {c['format']!r}; the denoiser's is {bundle.model_format!r}"
            )
    tok = _field(comps, "tokenizer", f"{where} (components)")
    folder, tfiles = (
        tok.get("folder") if isinstance(tok, dict) else None,
        tok.get("files") if isinstance(tok, dict) else None,
    )
    if not isinstance(folder, str) or _bad_name(folder):
        raise EdgediffError(f"{where}: components.tokenizer.folder must be a relative folder name")
    if not isinstance(tfiles, list) or not tfiles:
        raise EdgediffError(f"{where}: components.tokenizer.files must be a non-empty list")
    for f in tfiles:
        if not isinstance(f, str) or not f.startswith(folder + "/") or f not in files:
            raise EdgediffError(
                f"{where}: components.tokenizer.files entry {f!r} must be a file of {folder}/ listed under files"
            )
    names = {f.rsplit("/", 1)[-1] for f in tfiles}
    if not ({"vocab.json", "merges.txt"} <= names or "tokenizer.json" in names):
        raise EdgediffError(f"{where}: components.tokenizer.files needs vocab.json and merges.txt (or tokenizer.json)")
    shape = cond.get("shape")
    if not _positive_ints(shape, 2):
        raise EdgediffError(f"{where}: conditioning.shape must be [max_length, hidden] for kind text")
    if tok.get("max_length") != shape[0]:
        raise EdgediffError(
            f"{where}: components.tokenizer.max_length is {tok.get('max_length')!r}; conditioning.shape says {shape[0]}"
        )
    if bundle.scheduler.get("conditioning") != "text":
        raise EdgediffError(
            f"{swhere}: field conditioning is {bundle.scheduler.get('conditioning')!r}; expected 'text'"
        )
    latent = _field(bundle.scheduler, "latent", swhere)
    if not isinstance(latent, dict):
        raise EdgediffError(f"{swhere}: field latent must be an object")
    unknown = sorted(set(latent) - {"shape", "scaling_factor", "image_shape"})
    if unknown:
        raise EdgediffError(f"{swhere}: latent has unknown key {unknown[0]!r}")
    if not _positive_ints(latent.get("shape"), 3) or tuple(latent["shape"]) != bundle.sample_shape:
        raise EdgediffError(
            f"{swhere}: latent.shape is {latent.get('shape')!r}; the denoiser's sample is {list(bundle.sample_shape)}"
        )
    sf = latent.get("scaling_factor")
    if isinstance(sf, bool) or not isinstance(sf, (int, float)) or not sf > 0 or sf != sf or sf == float("inf"):
        raise EdgediffError(f"{swhere}: latent.scaling_factor must be a number > 0, got {sf!r}")
    image = latent.get("image_shape")
    if not _positive_ints(image, 3) or image[0] != 3:
        raise EdgediffError(f"{swhere}: latent.image_shape must be [3, H, W], got {image!r}")


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
