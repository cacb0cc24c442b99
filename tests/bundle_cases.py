"""Damaged bundles that both loaders must treat alike: `load_bundle` (Python) and
`edgediff-run` (csrc/src/bundle.c). tests/test_bundle_box.py runs every case through both.

Each case damages a private copy of the tiny bundle in place; `outside` is an empty folder
next to it (outside the bundle). `expect` lists the fragments the refusal must contain, the
first one right after the bundle's own path ("ROOT/" + expect[0]); None means the bundle is
accepted. `{outside}` in a fragment stands for the real path of that folder. `at_load` says
the refusal comes before any byte is hashed (so it happens with verification off too).
`c_expect` is the C runner's expectation where it differs by design (it checks a .mlpackage
folder but does not hash folders: edgediff.h, edd_bundle_verify).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgediff.runtimes.bundle import sha256_path, size_bytes

MODEL = "model/denoiser.onnx"
SAME = object()  # c_expect: as expect


@dataclass(frozen=True)
class Case:
    name: str
    damage: Callable[[Path, Path], None]  # (bundle root, outside folder)
    expect: tuple[str, ...] | None
    at_load: bool = True
    c_expect: object = SAME


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def save(root: Path, m: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(m, indent=2))


def rename_entry(root: Path, old: str, new: str) -> None:
    """List files[old]'s record under `new` (model.file follows when it was `old`)."""
    m = manifest(root)
    m["files"] = {(new if k == old else k): v for k, v in m["files"].items()}
    if m["model"]["file"] == old:
        m["model"]["file"] = new
    save(root, m)


def replace(root: Path, name: str, make: Callable[[Path], None]) -> None:
    (root / name).unlink()
    make(root / name)


def add_package(root: Path, name: str, build: Callable[[Path], None]) -> None:
    """A .mlpackage folder at root/name, listed in the manifest with its true digest and size."""
    pkg = root / name
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}\n')
    (pkg / "Data" / "weights.bin").write_bytes(bytes(range(256)) * 4)
    build(pkg)
    m = manifest(root)
    m["files"][name] = {"sha256": sha256_path(pkg), "bytes": size_bytes(pkg)}
    save(root, m)


def _dotdot(root, outside):
    shutil.copy(root / MODEL, outside / "denoiser.onnx")
    rename_entry(root, MODEL, "../outside/denoiser.onnx")


def _absolute(root, outside):
    shutil.copy(root / MODEL, outside / "denoiser.onnx")
    rename_entry(root, MODEL, str(outside / "denoiser.onnx"))


def _dot_component(root, outside):
    rename_entry(root, MODEL, "model/./denoiser.onnx")


def _symlink_out(root, outside):
    shutil.copy(root / MODEL, outside / "denoiser.onnx")  # the same bytes: only the place is wrong
    replace(root, MODEL, lambda p: p.symlink_to(outside / "denoiser.onnx"))


def _folder_symlink_out(root, outside):
    shutil.move(root / "model", outside / "model")
    (root / "model").symlink_to(outside / "model")


def _dev_zero(root, outside):
    replace(root, MODEL, lambda p: p.symlink_to("/dev/zero"))


def _fifo(name):
    return lambda root, outside: replace(root, name, lambda p: os.mkfifo(p))


def _directory(root, outside):
    replace(root, "report.json", lambda p: p.mkdir())


def _larger(root, outside):
    with open(root / MODEL, "ab") as f:
        f.write(b"\0" * 16)


def _smaller(root, outside):  # still valid JSON, only shorter: refused by its sha256
    (root / "report.json").write_text(json.dumps(json.loads((root / "report.json").read_text())))


def _missing(root, outside):
    (root / "report.json").unlink()


def _dangling(root, outside):
    replace(root, "report.json", lambda p: p.symlink_to(root / "nowhere.json"))


def _loop(root, outside):
    replace(root, "report.json", lambda p: p.symlink_to(p))


def _no_bytes(root, outside):
    m = manifest(root)
    del m["files"]["report.json"]["bytes"]
    save(root, m)


def _manifest_out(root, outside):
    shutil.move(root / "manifest.json", outside / "manifest.json")
    (root / "manifest.json").symlink_to(outside / "manifest.json")


def _symlink_inside(root, outside):
    (root / MODEL).rename(root / "model" / "real.onnx")
    (root / MODEL).symlink_to("real.onnx")


def _package_ok(root, outside):
    def build(pkg):
        (pkg / "Data" / "alias.bin").symlink_to("weights.bin")  # inside the bundle: allowed

    add_package(root, "model/extra.mlpackage", build)


def _package_link_out(root, outside):
    (outside / "w.bin").write_bytes(b"x" * 8)
    add_package(root, "model/extra.mlpackage", lambda pkg: (pkg / "Data" / "link.bin").symlink_to(outside / "w.bin"))


def _package_fifo(root, outside):
    add_package(root, "model/extra.mlpackage", lambda pkg: os.mkfifo(pkg / "Data" / "pipe"))


def _package_dir_link(root, outside):
    add_package(root, "model/extra.mlpackage", lambda pkg: (pkg / "More").symlink_to("Data"))


def _folder_not_package(root, outside):
    (root / "model" / "extra").mkdir()
    (root / "model" / "extra" / "a.bin").write_bytes(b"a")
    m = manifest(root)
    m["files"]["model/extra"] = {"sha256": sha256_path(root / "model" / "extra"), "bytes": 1}
    save(root, m)


_M = 'manifest.json: files["'
CASES = [
    Case(
        "dotdot-path",
        _dotdot,
        (_M + '../outside/denoiser.onnx"] must be a relative path inside the bundle',),
    ),
    Case("absolute-path", _absolute, (_M + '{outside}/denoiser.onnx"] must be a relative path inside the bundle',)),
    Case("dot-component", _dot_component, (_M + 'model/./denoiser.onnx"] must be a relative path inside the bundle',)),
    Case(
        "symlink-outside", _symlink_out, (_M + MODEL + '"] resolves outside the bundle (to {outside}/denoiser.onnx)',)
    ),
    Case(
        "folder-symlink-outside",
        _folder_symlink_out,
        (_M + MODEL + '"] resolves outside the bundle (to {outside}/model/denoiser.onnx)',),
    ),
    Case("symlink-dev-zero", _dev_zero, (_M + MODEL + '"] resolves outside the bundle (to /dev/zero)',)),
    Case("fifo-model", _fifo(MODEL), (_M + MODEL + '"] is a FIFO, not a regular file',)),
    Case("fifo-manifest", _fifo("manifest.json"), ("manifest.json: a FIFO, not a regular file",)),
    Case("fifo-scheduler", _fifo("scheduler.json"), ("scheduler.json: a FIFO, not a regular file",)),
    Case("directory-as-file", _directory, (_M + 'report.json"] is a directory, not a regular file',)),
    Case("folder-not-mlpackage", _folder_not_package, (_M + 'model/extra"] is a directory, not a regular file',)),
    Case("larger-than-manifest", _larger, (_M + MODEL + '"] is ', " bytes on disk, more than its bytes field (")),
    Case(
        "smaller-than-manifest",
        _smaller,
        ("report.json: sha256 ", "does not match manifest.json", " bytes where files['report.json'].bytes says "),
        at_load=False,
    ),
    Case("missing-file", _missing, ("report.json: listed in manifest.json files but missing",)),
    Case("dangling-symlink", _dangling, ("report.json: listed in manifest.json files but missing",)),
    Case("symlink-loop", _loop, (_M + 'report.json"] cannot be resolved (Too many levels of symbolic links)',)),
    Case("no-bytes-field", _no_bytes, (_M + 'report.json"].bytes must be a non-negative integer',)),
    Case("manifest-symlink-outside", _manifest_out, ("manifest.json: resolves outside the bundle (to {outside}",)),
    Case("symlink-inside", _symlink_inside, None),
    Case(
        "mlpackage-ok",
        _package_ok,
        None,
        c_expect=(_M + 'model/extra.mlpackage"] is a .mlpackage folder, which this runtime does not hash',),
    ),
    Case(
        "mlpackage-symlink-outside",
        _package_link_out,
        (_M + 'model/extra.mlpackage"] holds Data/link.bin, which resolves outside the bundle (to {outside}/w.bin)',),
    ),
    Case("mlpackage-fifo", _package_fifo, (_M + 'model/extra.mlpackage"] holds Data/pipe, which is a FIFO',)),
    Case(
        "mlpackage-symlink-to-folder",
        _package_dir_link,
        (_M + 'model/extra.mlpackage"] holds More, which is a directory, not a regular file',),
    ),
]
