"""The strict readers every package uses for the files a user or a tool hands us.

    read_json(path, what)  -> dict    a regular file, UTF-8, one JSON object, nesting <= 64,
                                      no NaN/Infinity literals (as the C reader, csrc/src/json.c),
                                      unless nonfinite=True (diffusers' own configs: its
                                      DPM-Solver writes lambda_min_clipped: -Infinity)
    read_toml(path, what)  -> dict    a regular file, valid TOML
    read_safetensors(path, what) -> {name: torch.Tensor}

Each refusal is one EdgediffError that starts with the path and says what the file is for
(`what`), never a decoder's traceback.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path

from edgediff.core.errors import EdgediffError

MAX_JSON_DEPTH = 64  # EDD_JSON_MAX_DEPTH in csrc/src/json.h


def _regular_file(path: Path, what: str) -> None:
    """Refuse a missing path, a folder, a FIFO or a device before opening it (a FIFO would block)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EdgediffError(f"{path}: missing ({what})") from None
    except OSError as e:
        raise EdgediffError(f"{path}: cannot read it ({what}): {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise EdgediffError(f"{path}: {kind} ({what}); expected a file")


def _read_text(path: Path, what: str) -> str:
    _regular_file(path, what)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgediffError(f"{path}: not UTF-8 text ({what}): invalid byte at offset {e.start}") from None
    except OSError as e:
        raise EdgediffError(f"{path}: cannot read it ({what}): {e.strerror}") from None


def _depth(value, limit: int) -> int:
    """Nesting depth of a parsed JSON value, counting containers; stops once past `limit`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str, where: str, *, nonfinite: bool = False):
    """Parse JSON text as the C reader does; `where` names the source in messages."""
    try:
        data = json.loads(text, parse_constant=None if nonfinite else _no_constant)
    except json.JSONDecodeError as e:
        raise EdgediffError(f"{where}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # NaN / Infinity literals
        raise EdgediffError(f"{where}: not valid JSON: {e}") from None
    except RecursionError:
        raise EdgediffError(f"{where}: not valid JSON: nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise EdgediffError(f"{where}: not valid JSON: nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return data


def read_json(path: str | Path, what: str, *, nonfinite: bool = False) -> dict:
    """One JSON object from a regular file (`nonfinite`: accept NaN / Infinity as Python's json writes them)."""
    path = Path(path)
    data = parse_json(_read_text(path, what), f"{path}", nonfinite=nonfinite)
    if not isinstance(data, dict):
        raise EdgediffError(f"{path}: expected a JSON object ({what}), found {type(data).__name__}")
    return data


def read_toml(path: str | Path, what: str) -> dict:
    """A TOML document from a regular file."""
    path = Path(path)
    try:
        return tomllib.loads(_read_text(path, what))
    except tomllib.TOMLDecodeError as e:
        raise EdgediffError(f"{path}: not valid TOML ({what}): {e}") from None


def read_safetensors(path: str | Path, what: str) -> dict:
    """All tensors of a safetensors file, as torch tensors."""
    from safetensors import SafetensorError  # deferred: torch loads with it, and readers serve torch-free callers
    from safetensors.torch import load_file

    path = Path(path)
    _regular_file(path, what)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgediffError(f"{path}: not a readable safetensors file ({what}): {first}") from None
