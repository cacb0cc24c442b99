"""Write a bundle atomically: stage in a hidden sibling folder, verify, rename into place.

    out/.bundle.tmp-XXXX/  <- model/, scheduler.json, report.json, manifest.json (last)
         | load_bundle(verify=True) on the staged folder
         v
    out/bundle/            <- os.replace; an older bundle there is swapped out, then deleted

Nothing is left behind on failure: the staging folder is removed, and an existing
folder that is not a bundle is never replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgediff.core.errors import EdgediffError
from edgediff.core.files import swap_into_place
from edgediff.runtimes.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    REPORT,
    SCHEDULER,
    load_bundle,
    sha256_path,
    size_bytes,
)


def check_output(out: Path) -> None:
    """Fail early (before any work) if `out` cannot become a bundle."""
    parent = out.resolve().parent
    if out.exists() and not out.is_dir():
        raise EdgediffError(f"{out}: exists and is a file; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise EdgediffError(f"{out}: exists and is not an edgediff bundle; refusing to replace it")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise EdgediffError(f"{out}: cannot create it: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK):
        raise EdgediffError(f"{out}: cannot write to {probe} (permission denied)")


def _dump(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def publish(tmp: Path, out: Path, *, manifest: dict, scheduler: dict, report: dict) -> None:
    """Write the JSON files into `tmp`, verify the whole bundle, then rename it to `out`."""
    _dump(tmp / SCHEDULER, scheduler)
    _dump(tmp / REPORT, report)
    files = {}
    for entry in sorted(tmp.rglob("*")):
        rel = entry.relative_to(tmp).as_posix()
        # a .mlpackage is a folder: hashed as one entry; plain folders list their files
        if entry.is_file() and not any(p.suffix == ".mlpackage" for p in entry.relative_to(tmp).parents):
            files[rel] = {"sha256": sha256_path(entry), "bytes": size_bytes(entry)}
        elif entry.is_dir() and entry.suffix == ".mlpackage":
            files[rel] = {"sha256": sha256_path(entry), "bytes": size_bytes(entry)}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": files}
    _dump(tmp / MANIFEST, manifest)
    load_bundle(tmp, verify=True)  # the runtime's own checks, before anyone can see the bundle
    swap_into_place(tmp, out)
