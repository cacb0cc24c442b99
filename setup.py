"""Builds the C parts of the package: the extension module edgediff.runtimes._cruntime and the
standalone runner edgediff/bin/edgediff-run.

Everything else about the package (name, dependencies, src/ layout) is in pyproject.toml; this file
only adds the C, so `pip install .` and `pip install -e .` compile it with the platform's C compiler.

    csrc/python/_cruntime.c + csrc/src/**.c ──────────────────────► edgediff/runtimes/_cruntime.abi3.so
    csrc/tools/*.c + csrc/src/**.c (+ csrc/backends/openvino.c) ──► edgediff/bin/edgediff-run
                                   csrc/tools/*.c + csrc/src/**.c ──► edgediff/bin/edgediff-run-core
                                                   what was built ──► edgediff/bin/runner.json

The extension uses the stable ABI (Py_LIMITED_API 3.11): one binary serves every CPython >= 3.11.
The runner links the openvino wheel's C library (libopenvino_c) when that wheel is importable at
build time (pyproject.toml's build requirements bring it); otherwise edgediff-run is the runner core
(fake backend only), and runner.json, `edgediff-run --version` and `--help` say so. It finds
libopenvino_c at run time through its rpath ($ORIGIN/../../openvino/libs: the openvino wheel beside
edgediff in site-packages) or the LD_LIBRARY_PATH that the `edgediff-run` console script sets.
"""

import importlib.util
import json
import os
import sysconfig
from glob import glob
from importlib import metadata
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C = "csrc"  # the C runtime, outside the Python package tree
RUNTIME = sorted(glob(f"{C}/src/*.c") + glob(f"{C}/src/solvers/*.c"))
SOURCES = [f"{C}/python/_cruntime.c", *RUNTIME]
RUNNER = [f"{C}/tools/edgediff_run.c", f"{C}/tools/image.c", *RUNTIME]
# no fused multiply-add and no fast-math: the noise is specified bit for bit (rng.py)
FP_FLAGS = ["-ffp-contract=off", "-fno-fast-math"]
# from edgediff/bin/ to site-packages/openvino/libs, where the openvino wheel keeps libopenvino_c
OV_RPATH = "$ORIGIN/../../openvino/libs"


def find_openvino() -> tuple[dict | None, str]:
    """The openvino wheel's C API as importable here ({root, lib, version}), or None and why not."""
    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        return None, "the openvino package was not importable at build time"
    root = Path(next(iter(spec.submodule_search_locations)))
    libs = sorted((root / "libs").glob("libopenvino_c.so*"))
    if not libs or not (root / "include" / "openvino" / "c").is_dir():
        return None, f"{root}: no libopenvino_c.so and C headers (include/openvino/c) at build time"
    try:
        version = metadata.version("openvino")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"root": root, "lib": libs[0], "version": version}, ""


class BuildExt(build_ext):
    def run(self):
        # setuptools builds into build_lib and then copies the extension into the source tree for
        # --inplace and editable installs; edgediff/bin/ is copied the same way
        to_source = self.inplace or self.editable_mode
        self.runner_in_source = to_source
        super().run()
        if to_source:
            build_py = self.get_finalized_command("build_py")
            dest = Path(build_py.get_package_dir("edgediff")) / "bin"
            self.copy_tree(str(self.runner_dir()), str(dest))

    def runner_dir(self) -> Path:
        return Path(self.build_lib) / "edgediff" / "bin"

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            flags = ["/fp:precise"]
        else:
            flags = FP_FLAGS
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + flags
        super().build_extensions()
        self.build_runner()

    def build_runner(self):
        """edgediff/bin/: edgediff-run (with OpenVINO when its C API is here), edgediff-run-core, runner.json."""
        bindir = self.runner_dir()
        bindir.mkdir(parents=True, exist_ok=True)
        if self.compiler.compiler_type != "unix":
            # the runner is POSIX C (clock_gettime, getrusage); `edgediff-run` says it was not built
            info = {
                "backend": None,
                "note": f"not built: the runner needs a POSIX C compiler, not {self.compiler.compiler_type}",
            }
            (bindir / "runner.json").write_text(json.dumps(info, indent=1) + "\n")
            return
        self.link_runner(bindir / "edgediff-run-core", core=True)
        ov, why = find_openvino()
        if ov is None:
            self.link_runner(bindir / "edgediff-run", core=True)
            info = {"backend": "fake", "note": f"runner core, fake backend only: {why}"}
        else:
            rpaths = [OV_RPATH]
            if getattr(self, "runner_in_source", False):  # editable: edgediff/bin/ is in src/, not site-packages
                rpaths.append(os.path.join(sysconfig.get_path("purelib"), "openvino", "libs"))
            self.link_runner(bindir / "edgediff-run", core=False, ov=ov, rpaths=rpaths)
            info = {
                "backend": "openvino",
                "openvino": ov["version"],
                "library": ov["lib"].name,
                "note": f"OpenVINO backend, built against OpenVINO {ov['version']} ({ov['lib'].name})",
            }
        (bindir / "runner.json").write_text(json.dumps(info, indent=1) + "\n")

    def link_runner(self, exe: Path, *, core: bool, ov: dict | None = None, rpaths: list[str] = ()):
        tmp = os.path.join(self.build_temp, exe.name)
        sources = RUNNER if core else [*RUNNER, f"{C}/backends/openvino.c"]
        include_dirs = [f"{C}/include", f"{C}/tools"] + ([] if core else [f"{C}/backends", str(ov["root"] / "include")])
        objects = self.compiler.compile(
            sources,
            output_dir=tmp,
            macros=[("EDD_RUN_NO_OPENVINO", None)] if core else [],
            include_dirs=include_dirs,
            extra_postargs=["-std=c99", *FP_FLAGS],
            debug=self.debug,
        )
        libs = [] if core else [str(ov["lib"])]
        self.compiler.link_executable(
            objects,
            exe.name,
            output_dir=str(exe.parent),
            extra_postargs=[*libs, *(f"-Wl,-rpath,{p}" for p in rpaths), *([] if core else ["-pthread"]), "-lm"],
            debug=self.debug,
        )


setup(
    ext_modules=[
        Extension(
            "edgediff.runtimes._cruntime",
            sources=SOURCES,
            include_dirs=[f"{C}/include"],
            define_macros=[("Py_LIMITED_API", "0x030B0000")],
            py_limited_api=True,
        )
    ],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
