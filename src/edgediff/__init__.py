"""edgediff: a deployment compiler for diffusion models.

    import edgediff
    bundle = edgediff.compile("builtin:digits", "out/digits", target="host-cpu")
    images = edgediff.generate("out/digits", n=8, seed=0)      # float32 (8, C, H, W) in [-1, 1]

The public API is the names in ``__all__``; everything else is reachable through its
package (``edgediff.compiler``, ``edgediff.quantize``, ``edgediff.runtimes``, ...).
Names load on first use, so ``import edgediff`` stays fast and needs no torch.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgediff")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

# name -> (module, attribute); to add a public name, add one line here
_API = {
    "compile": ("edgediff.compiler.pipeline", "compile_model"),
    "Recipe": ("edgediff.compiler.pipeline", "Recipe"),
    "load_source": ("edgediff.compiler.capture", "load_source"),
    "load_bundle": ("edgediff.runtimes.bundle", "load_bundle"),
    "generate": ("edgediff.runtimes.api", "generate"),
    "ModelSpec": ("edgediff.core.spec", "ModelSpec"),
    "NoiseSchedule": ("edgediff.core.schedule", "NoiseSchedule"),
    "EdgediffError": ("edgediff.core.errors", "EdgediffError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'edgediff' has no attribute {name!r}") from None
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
