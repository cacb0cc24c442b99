"""core: the strict readers and the atomic writers every package uses."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from edgediff.core import files
from edgediff.core.errors import EdgediffError
from edgediff.core.readers import MAX_JSON_DEPTH, read_json, read_toml
from edgediff.runtimes.images import save_grid

# ---- readers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested too deeply"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, "nested too deeply"),  # past Python's own recursion limit
        ('{"a": NaN}', "NaN is not JSON"),
        ('{"a": Infinity}', "Infinity is not JSON"),
        ('{"a": 1,}', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_read_json_refuses_what_the_c_reader_refuses(tmp_path, text, message):
    p = tmp_path / "x.json"
    p.write_text(text)
    with pytest.raises(EdgediffError, match=message) as e:
        read_json(p, "a test file")
    assert str(e.value).startswith(f"{p}: ") and "\n" not in str(e.value)


def test_read_json_accepts_the_deepest_allowed(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"a": ' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}")
    assert "a" in read_json(p, "a test file")


def test_readers_refuse_non_files_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(EdgediffError, match="not a regular file"):
        read_json(fifo, "a test file")
    assert time.monotonic() - t0 < 5
    with pytest.raises(EdgediffError, match="a folder"):
        read_toml(tmp_path, "a test file")
    with pytest.raises(EdgediffError, match=r"missing \(a test file\)"):
        read_json(tmp_path / "gone.json", "a test file")
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(EdgediffError, match="not UTF-8 text .* offset 7"):
        read_json(bad, "a test file")


# ---- atomic writes ---------------------------------------------------------------------------------


def test_write_file_atomic_leaves_the_old_file_when_the_disk_is_full(tmp_path, monkeypatch):
    p = tmp_path / "out.json"
    p.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(EdgediffError, match="No space left on device"):
        files.write_file_atomic(p, "new")
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["out.json"]


def test_save_grid_writes_no_partial_image(tmp_path, monkeypatch):
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "disk full")))
    with pytest.raises(EdgediffError, match="disk full"):
        save_grid(np.zeros((4, 1, 8, 8), np.float32), tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []


def test_check_writable_names_the_problem(tmp_path):
    with pytest.raises(EdgediffError, match="file name too long"):
        files.check_writable(tmp_path / ("x" * 300 + ".json"))
    with pytest.raises(EdgediffError, match="does not exist"):
        files.check_writable(tmp_path / "no" / "x.json")
    with pytest.raises(EdgediffError, match="is a folder"):
        files.check_writable(tmp_path)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_staging_removes_leftovers_of_dead_writers_only(tmp_path):
    out = tmp_path / "bundle"
    dead = tmp_path / f".bundle.tmp-{_dead_pid()}-abc"
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"x")
    moved = tmp_path / f".bundle.old-{_dead_pid()}"
    moved.mkdir()
    live = tmp_path / f".bundle.tmp-{os.getppid()}-def"  # a live process (the test runner's parent)
    live.mkdir()
    other = tmp_path / ".other.tmp-1-x"
    other.mkdir()
    with files.staging(out) as tmp:
        assert tmp.name.startswith(f".bundle.tmp-{os.getpid()}-")
    assert not dead.exists() and not moved.exists() and live.exists() and other.exists() and not tmp.exists()


def test_sigterm_while_staging_removes_the_staging_folder(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from edgediff.core.files import staging
        with staging(Path({str(tmp_path / "b")!r})) as tmp:
            (tmp / "part").write_bytes(b"x")
            print(tmp, flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staged = p.stdout.readline().strip()
    assert staged and os.path.isdir(staged)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode != 0 and "Terminated" in err
    assert not os.path.exists(staged) and list(tmp_path.iterdir()) == []


def test_diffusers_configs_may_hold_infinity(tmp_path):
    p = tmp_path / "scheduler_config.json"
    p.write_text('{"lambda_min_clipped": -Infinity}')  # what diffusers' DPMSolverMultistepScheduler writes
    assert read_json(p, "scheduler config", nonfinite=True)["lambda_min_clipped"] == float("-inf")
    with pytest.raises(EdgediffError, match="Infinity is not JSON"):
        read_json(p, "scheduler config")
