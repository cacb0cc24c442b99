"""The `edgediff-run` console script: execs the C runner installed with the package.

    edgediff-run ARGS ──► edgediff/bin/edgediff-run ARGS        LD_LIBRARY_PATH += site-packages/openvino/libs
                     └──► edgediff/bin/edgediff-run-core ARGS   openvino missing and only --help or
                                                                --backend fake asked for
    a core-only build (no OpenVINO at build time) runs only for --help and --backend fake
    edgediff-run --version   what was built (runner.json), no binary run
    edgediff-run --help      the runner's usage, then the same line

Everything else (options, exit status 0/1/2, one-line errors) is the C runner's own: see
csrc/tools/edgediff_run.c. Imports nothing heavy, so it starts as fast as the binary.
"""

from __future__ import annotations

import os
import subprocess
import sys

from edgediff.tools.runner import build_info, installed_runner, openvino_libs, openvino_problem


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgediff")
    except PackageNotFoundError:
        return "0+unknown"


def _wants_fake(args: list[str]) -> bool:
    return any(a == "--backend" and b == "fake" for a, b in zip(args, args[1:], strict=False))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    info = build_info()
    build = f"edgediff-run (edgediff {_version()}): {info.get('note', '')}"
    if "--version" in args:
        print(build)
        return 0
    exe = installed_runner()
    if exe is None:
        print(f"edgediff-run: {info.get('note', 'not installed')}", file=sys.stderr)
        return 1
    wants_help = any(a in ("-h", "--help") for a in args)
    env = dict(os.environ)
    if info.get("backend") == "openvino":
        problem = openvino_problem(info)
        if problem is None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(openvino_libs()), env.get("LD_LIBRARY_PATH")]))
        elif (wants_help or _wants_fake(args)) and installed_runner("edgediff-run-core"):
            exe = installed_runner("edgediff-run-core")
            build += f"; now the runner core (fake backend only): {problem}"
        else:
            print(f"edgediff-run: {problem}", file=sys.stderr)
            return 1
    elif not (wants_help or _wants_fake(args)):
        # the core's default backend is a formula, not the bundle's model: only when asked for by name
        print(
            f"edgediff-run: this build is the {info.get('note')}; pass --backend fake to run it anyway, "
            "or reinstall edgediff where the openvino wheel is importable at build time",
            file=sys.stderr,
        )
        return 1
    if wants_help:
        sys.stdout.flush()
        code = subprocess.run([str(exe), *args], env=env).returncode
        print(build)
        return code
    try:
        os.execve(str(exe), [str(exe), *args], env)
    except OSError as e:
        print(f"edgediff-run: {exe}: {e.strerror}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
