"""The recipe: what to build (sampler, steps, guidance, precision, quantization).

Recipe(...)            the Python API; validated on construction
Recipe.from_dict(d)    a recipe TOML's [compile] table / the CLI's options; unknown keys refused
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgediff.core.errors import EdgediffError, check_known_keys
from edgediff.quantize.w8a8 import SCHEMES, QuantizeOptions
from edgediff.runtimes.samplers import get_solver


@dataclass(frozen=True)
class Recipe:
    """What to build: the sampler the app will run and the precision of the model."""

    sampler: str = "dpmpp-2m"
    steps: int = 20
    guidance: float = 3.0
    spacing: str = "leading"
    precision: str | None = None  # None: the target's first precision that its format's lowering writes
    weights: str | None = None  # weight compression on top of the precision (Core ML: int8, palette4, palette6)
    quantize: str | None = None  # "w8a8": int8 weights and activations (src/edgediff/quantize/w8a8.py)
    groups: int = 1  # timestep groups, each with its own activation scales, one set of int8 weights
    calib: str | None = None  # calibration .npz (`edgediff calibrate`); None: record it here
    calib_samples: int = 32  # trajectories recorded when calib is None
    quant_options: QuantizeOptions = QuantizeOptions()

    def __post_init__(self):
        get_solver(self.sampler)  # unknown name -> EdgediffError listing the solvers
        if self.quantize is not None and self.quantize not in SCHEMES:
            raise EdgediffError(f"recipe: quantize {self.quantize!r} is not a scheme (known: {', '.join(SCHEMES)})")
        if self.quantize is not None and self.precision not in (None, "fp32", "int8"):
            raise EdgediffError(f"recipe: quantize {self.quantize} starts from fp32, not precision {self.precision!r}")
        if not isinstance(self.groups, int) or not 1 <= self.groups <= self.steps:
            raise EdgediffError(f"recipe: groups must be an integer in 1..steps ({self.steps}), got {self.groups!r}")
        if self.groups > 1 and self.quantize != "w8a8":
            raise EdgediffError(
                "recipe: groups > 1 needs quantize w8a8 (groups hold activation scales; "
                f"{self.quantize or 'no quantize'} has none)"
            )
        if not isinstance(self.calib_samples, int) or self.calib_samples <= 0:
            raise EdgediffError(f"recipe: calib_samples must be a positive integer (got {self.calib_samples!r})")
        if isinstance(self.quant_options, dict):
            object.__setattr__(self, "quant_options", QuantizeOptions.from_dict(self.quant_options))
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise EdgediffError(f"recipe: steps must be a positive integer (got {self.steps!r})")
        if not np.isfinite(self.guidance) or self.guidance < 0:
            raise EdgediffError(f"recipe: guidance must be a finite number >= 0 (got {self.guidance!r})")

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        check_known_keys(d, cls, "recipe")
        return cls(**d)
