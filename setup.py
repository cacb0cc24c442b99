"""Builds the C sampling runtime's extension module, edgediff.runtimes._cruntime.

Everything else about the package (name, dependencies, src/ layout) is in pyproject.toml; this file only adds the extension, so `pip install .` and
`pip install -e .` compile it with the platform's C compiler. It uses the stable ABI
(Py_LIMITED_API 3.11): one binary serves every CPython >= 3.11.
"""

from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C = "csrc"  # the C runtime, outside the Python package tree
SOURCES = [f"{C}/python/_cruntime.c"] + sorted(glob(f"{C}/src/*.c") + glob(f"{C}/src/solvers/*.c"))


class BuildExt(build_ext):
    """No fused multiply-add and no fast-math: the noise is specified bit for bit (rng.py)."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            flags = ["/fp:precise"]
        else:
            flags = ["-ffp-contract=off", "-fno-fast-math"]
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + flags
        super().build_extensions()


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
