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
signature. Each refusal names the file and the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edgediff.core.errors import EdgediffError

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


def _read_json(root: Path, name: str) -> dict:
    path = root / name
    if not path.is_file():
        raise EdgediffError(f"{path}: missing; not an edgediff bundle")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgediffError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise EdgediffError(f"{path}: expected a JSON object")
    return data


def _field(d: dict, key: str, where: str):
    if key not in d:
        raise EdgediffError(f"{where}: missing field {key!r}")
    return d[key]


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    root = Path(path)
    if not root.is_dir():
        raise EdgediffError(f"{root}: no such bundle folder")
    manifest = _read_json(root, MANIFEST)
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
    model = _field(manifest, "model", where)
    for key in ("format", "file", "inputs", "outputs"):
        _field(model, key, f"{where} (model)")
    _field(manifest, "conditioning", where)
    if model["file"] not in files:
        raise EdgediffError(f"{where}: model.file {model['file']!r} is not listed under files")
    for name in (SCHEDULER, REPORT):
        if name not in files:
            raise EdgediffError(f"{where}: files has no entry for {name}")
    if verify:
        for name, rec in files.items():
            fpath = root / name
            if not fpath.exists():
                raise EdgediffError(f"{fpath}: listed in manifest.json files but missing")
            digest = sha256_path(fpath)
            if digest != rec.get("sha256"):
                raise EdgediffError(
                    f"{fpath}: sha256 {digest[:12]}… does not match manifest.json "
                    f"files[{name!r}].sha256 {str(rec.get('sha256'))[:12]}…; the file changed "
                    "after compile"
                )
    bundle = Bundle(
        root=root, manifest=manifest, scheduler=_read_json(root, SCHEDULER), report=_read_json(root, REPORT)
    )
    if verify:
        check_signature(bundle)
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
