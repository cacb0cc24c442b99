"""A bundle is a closed box, for the Python loader and the C runner alike.

Every case of tests/bundle_cases.py damages a copy of the tiny bundle (a path with "..", an
absolute path, symlinks out of the bundle or to /dev/zero, FIFOs, a folder where a file is
named, sizes that disagree with the manifest, a missing file, ...) and is run through
`load_bundle` and through `edgediff-run` (runner core, fake backend). Both must refuse it with
the fragments the case lists (and, when the refusal comes before hashing, with the very same
line), or both accept it. Nothing may hang: the C runner runs under a timeout, the Python
loader under an alarm. A symlink inside the bundle to another regular file inside it is
accepted (case "symlink-inside"); a .mlpackage folder is the only folder allowed, and the C
runner checks it but does not hash it (case "mlpackage-ok").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess

import pytest
from bundle_cases import CASES, SAME, Case

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.bundle import load_bundle

TIMEOUT_S = 30


@pytest.fixture
def damaged(request, bundle_copy, tmp_path):
    """(root, outside, case): the tiny bundle's copy with the case's damage applied."""
    case: Case = request.param
    outside = tmp_path / "outside"
    outside.mkdir()
    case.damage(bundle_copy, outside)
    return bundle_copy, outside, case


def fragments(case_expect, root, outside) -> list[str]:
    real = os.path.realpath(outside)
    parts = [f.replace("{outside}", real) for f in case_expect]
    return [f"{root}/{parts[0]}", *parts[1:]]


@contextlib.contextmanager
def no_hang(seconds=TIMEOUT_S):
    """Fail (instead of blocking the suite) if the body takes longer than `seconds`."""

    def hung(signum, frame):
        raise AssertionError(f"load_bundle blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def python_refusal(root, *, verify=True) -> str | None:
    with no_hang():
        try:
            load_bundle(root, verify=verify)
        except EdgediffError as e:
            return str(e)
    return None


def c_run(build, root, tmp_path, *extra):
    return subprocess.run(
        [str(build / "edgediff-run-core"), str(root), "--backend", "fake", "--raw", str(tmp_path / "x.f32"), *extra],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


IDS = [c.name for c in CASES]


@pytest.mark.parametrize("damaged", CASES, ids=IDS, indirect=True)
def test_python_loader(damaged):
    root, outside, case = damaged
    message = python_refusal(root)
    if case.expect is None:
        assert message is None, message
        return
    assert message is not None, f"{case.name}: load_bundle accepted the bundle"
    assert "\n" not in message
    for fragment in fragments(case.expect, root, outside):
        assert fragment in message, (fragment, message)
    unverified = python_refusal(root, verify=False)
    assert (unverified == message) if case.at_load else unverified is None, unverified


@pytest.mark.parametrize("damaged", CASES, ids=IDS, indirect=True)
def test_c_runner(damaged, c_runner_build, tmp_path):
    root, outside, case = damaged
    expect = case.expect if case.c_expect is SAME else case.c_expect
    r = c_run(c_runner_build, root, tmp_path)
    if expect is None:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("edgediff-run: "), r.stderr
        for fragment in fragments(expect, root, outside):
            assert fragment in r.stderr, (fragment, r.stderr)
    unverified = c_run(c_runner_build, root, tmp_path, "--no-verify")
    if case.expect is not None and case.at_load:
        assert unverified.returncode == 1 and unverified.stderr == r.stderr, unverified.stderr
        # before hashing, one rule: the C line is the Python message, word for word
        assert r.stderr == f"edgediff-run: {python_refusal(root)}\n"
    else:
        assert unverified.returncode == 0, unverified.stderr


def test_cases_cover_the_issue():
    """The damage kinds the issue names are all in the shared list."""
    names = {c.name for c in CASES}
    for want in (
        "dotdot-path",
        "absolute-path",
        "symlink-outside",
        "symlink-dev-zero",
        "fifo-model",
        "fifo-manifest",
        "directory-as-file",
        "larger-than-manifest",
        "smaller-than-manifest",
        "missing-file",
        "symlink-inside",
    ):
        assert want in names


@pytest.mark.parametrize(
    "text, message",
    [("[" * 65 + "]" * 65, "nested too deeply"), ('{"a": NaN}', "NaN is not JSON")],
)
def test_bundle_json_is_read_as_the_c_reader_reads_it(tiny_bundle, tmp_path, text, message):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle.root, copy)
    (copy / "manifest.json").write_text(text)
    with pytest.raises(EdgediffError, match=message):
        load_bundle(copy, verify=False)
