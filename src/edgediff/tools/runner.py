"""Where the C runner edgediff-run is, what it was built with, and what it needs to start.

    pip install .  ── setup.py ──► edgediff/bin/edgediff-run        OpenVINO backend (or the core, see below)
                                  edgediff/bin/edgediff-run-core   fake backend only, no libraries
                                  edgediff/bin/runner.json         {"backend", "openvino", "library", "note"}
    a checkout     ── make -C csrc runner ──► csrc/build/edgediff-run

The OpenVINO build loads libopenvino_c.so.N from the openvino wheel (site-packages/openvino/libs);
N is fixed at build time, so the installed openvino must carry the same library. Standard library only:
the `edgediff-run` console script imports this before it execs the binary.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BIN = Path(__file__).resolve().parents[1] / "bin"
CHECKOUT_RUNNER = Path(__file__).resolve().parents[3] / "csrc" / "build" / "edgediff-run"


def installed_runner(name: str = "edgediff-run") -> Path | None:
    """edgediff/bin/NAME as installed with the package, or None (a source tree that was never built)."""
    exe = BIN / name
    return exe if exe.is_file() else None


def build_info() -> dict:
    """runner.json of the installed runner; {"backend": None, "note": why} when there is none."""
    try:
        return json.loads((BIN / "runner.json").read_text())
    except (OSError, ValueError):
        return {"backend": None, "note": f"not installed: no {BIN / 'runner.json'} (install edgediff with pip)"}


def openvino_libs() -> Path | None:
    """The installed openvino wheel's library folder, found without importing openvino."""
    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = Path(next(iter(spec.submodule_search_locations))) / "libs"
    return libs if libs.is_dir() else None


def openvino_problem(info: dict) -> str | None:
    """Why the OpenVINO build of the runner cannot start here, or None when its library is installed."""
    want = info.get("library", "libopenvino_c")
    libs = openvino_libs()
    if libs is None:
        return f"needs {want} from the openvino package, which is not installed (pip install 'edgediff[openvino]')"
    if not (libs / want).exists():
        have = ", ".join(sorted(p.name for p in libs.glob("libopenvino_c.so*"))) or "no libopenvino_c"
        return (
            f"built against OpenVINO {info.get('openvino', '?')} ({want}), but {libs} has {have}: "
            f"pip install openvino=={info.get('openvino', '?')}, or reinstall edgediff against this openvino"
        )
    return None
