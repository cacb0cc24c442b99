"""Atomic writes: stage in a hidden sibling, rename into place when complete.

    parent/.NAME.tmp-PID-XXXX/   <- a folder is written here (staging)
         | swap_into_place
         v
    parent/NAME/                 <- os.replace; an older folder there is moved aside, then deleted

    parent/.NAME.tmp-PID-XXXX    <- a single file (write_file_atomic), os.replace onto parent/NAME

Every writer of a folder or file a user sees (bundles, pruned models, students, images, JSON
results) goes through this, so an interrupted or failed run leaves the old output or none.
The staging name carries the writer's pid: a later run removes the leftovers of writers
that are no longer alive (a kill -9 cannot clean up after itself). SIGTERM is handled like
SIGINT while staging: the stack unwinds and the staging folder is removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from edgediff.core.errors import EdgediffError


def _stem(name: str) -> str:
    """The part of a name a staging name repeats (short enough that the staging name fits NAME_MAX)."""
    return name[:120]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove staging and moved-aside leftovers of `out` whose writer process is gone; returns them."""
    parent = out.resolve().parent
    pattern = re.compile(rf"^\.{re.escape(_stem(out.name))}\.(tmp|old)-(\d+)(-.*)?$")
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m and int(m.group(2)) != os.getpid() and not _alive(int(m.group(2))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


class Terminated(BaseException):
    """SIGTERM arrived while staging (a BaseException, like KeyboardInterrupt: not caught by `except Exception`)."""


@contextlib.contextmanager
def _sigterm_unwinds():
    """While the block runs in the main thread, SIGTERM raises Terminated so that `finally` clauses run."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield  # not ours to change: another thread, or the application handles SIGTERM itself
        return

    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def staging(out: Path):
    """Yield an empty staging folder beside `out`; removed unless published."""
    out = Path(out)
    parent = out.resolve().parent
    remove_stale(out)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{_stem(out.name)}.tmp-{os.getpid()}-", dir=parent))
    except OSError as e:
        raise EdgediffError(f"{out}: cannot create output folder ({e.strerror})") from None
    try:
        with _sigterm_unwinds():
            yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder `tmp` to `out`; an existing `out` is moved aside first and
    removed after, so `out` is at every moment either the old folder or the new one."""
    old = None
    if out.exists():
        old = out.with_name(f".{_stem(out.name)}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_writable(path: Path) -> None:
    """Before a long run: can a file be created beside `path`? (an error names the folder)"""
    path = Path(path)
    parent = Path(os.path.abspath(path)).parent
    try:
        if not parent.is_dir():
            raise EdgediffError(f"{path}: folder {parent} does not exist")
        if len(path.name.encode()) > os.pathconf(parent, "PC_NAME_MAX"):
            raise EdgediffError(f"{path}: file name too long")
        if path.is_dir():
            raise EdgediffError(f"{path}: is a folder; give a file name")
    except OSError as e:  # a path component too long, a loop of links, ...
        raise EdgediffError(f"{path}: {e.strerror.lower()}") from None
    if not os.access(parent, os.W_OK):
        raise EdgediffError(f"{path}: cannot write to {parent} (permission denied)")


def write_file_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` to a temporary file beside `path`, then rename it onto `path` (never a partial file)."""
    path = Path(path)
    check_writable(path)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{_stem(path.name)}.tmp-{os.getpid()}-", dir=os.path.dirname(os.path.abspath(path))
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise EdgediffError(f"{path}: cannot write it ({e.strerror})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
