"""Atomic folder writes: stage in a hidden sibling folder, rename into place when complete.

    out/.NAME.tmp-XXXX/  <- everything is written here
         | swap_into_place
         v
    out/NAME/            <- os.replace; an older folder there is moved aside, then deleted

Every writer of a folder a user sees (bundles, pruned models, students) goes through this.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from edgediff.core.errors import EdgediffError


@contextlib.contextmanager
def staging(out: Path):
    """Yield an empty staging folder beside `out`; removed unless published."""
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise EdgediffError(f"{out}: cannot create output folder ({e.strerror})") from None
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` to `out`; an existing `out` is moved aside first and
    removed after, so `out` is at every moment either the old folder or the new one."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
