"""The recipe: what to build (sampler, steps, guidance, precision, quantization).

Recipe(...)            the Python API; validated on construction
Recipe.from_dict(d)    from a dict of field names; unknown keys refused

Each field's help, choices and default are the `edgediff compile` flag's and the recipe TOML
[compile] key's (src/edgediff/core/options.py); QuantizeOptions' fields are flags of their own.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from edgediff.core.errors import EdgediffError, check_known_keys
from edgediff.core.options import option, positive_int
from edgediff.core.schedule import SPACINGS
from edgediff.quantize.w8a8 import SCHEMES, QuantizeOptions
from edgediff.runtimes.samplers import SOLVERS, get_solver


def spacings() -> tuple[str, ...]:
    """The timestep spacings: the schedule's (core.schedule.SPACINGS), then those a solver plans alone
    (its `plan(spacing=...)` default, e.g. lcm's own grid)."""
    own = (inspect.signature(cls.plan).parameters["spacing"].default for cls in SOLVERS.values())
    return SPACINGS + tuple(dict.fromkeys(s for s in own if s not in SPACINGS))


def weight_compressions() -> tuple[str, ...]:
    """Every weight compression some lowering writes (lower.registry.LOWERINGS)."""
    from edgediff.lower.registry import LOWERINGS

    return tuple(dict.fromkeys(w for lo in LOWERINGS.values() for w in (lo.weights or ())))


def _calibrating() -> tuple[str, ...]:
    """The schemes whose routes record activation ranges (compiler.routes.ROUTES)."""
    from edgediff.compiler.routes import ROUTES

    return tuple(dict.fromkeys(scheme for (scheme, _), r in ROUTES.items() if r.calibrate and scheme))


def _calibrates(scheme: str | None) -> bool:
    return scheme is not None and scheme in _calibrating()


@dataclass(frozen=True)
class Recipe:
    """What to build: the sampler the app will run and the precision of the model."""

    sampler: str = option("dpmpp-2m", choices=lambda: tuple(SOLVERS), help="the sampler the app runs")
    steps: int = option(20, parse=positive_int, help="sampling steps")
    guidance: float = option(3.0, help="classifier-free guidance scale (1 = off)")
    spacing: str = option("leading", choices=spacings, help="where the sampler's timesteps lie")
    # None: the target's first precision that its format's lowering writes
    precision: str | None = option(
        None, help="fp32, fp16, int8, ... (default: the target's first that its format's lowering writes)"
    )
    # weight compression on top of the precision (Core ML: int8 linear, 4- or 6-bit palettization)
    weights: str | None = option(
        None, choices=weight_compressions, help="weight compression (Core ML: int8, 4- or 6-bit palettes)"
    )
    # "w8a8": int8 weights and activations (src/edgediff/quantize/w8a8.py); "w4": weight-only
    quantize: str | None = option(
        None,
        choices=SCHEMES,
        help="w8a8: int8 weights and activations; w4: weight-only, 4-bit linear layers and int8 "
        "convolutions, float activations (no calibration)",
    )
    groups: int = option(
        1, parse=positive_int, help="timestep groups with their own activation scales (one copy of the int8 weights)"
    )
    calib: str | None = option(
        None,
        metavar="NPZ",
        help="calibration set from `edgediff calibrate` (default: record one along this recipe's trajectory)",
    )
    calib_samples: int = option(32, parse=positive_int, help="trajectories to record when no calib is given")
    calib_prompts: str | None = option(
        None,
        metavar="FILE",
        help="text-to-image: prompts to calibrate on, one a line (UTF-8; default: a builtin list)",
    )
    # how the source is read (compiler.capture.load_source): recorded in the manifest's recipe
    allow_extra_tensors: bool = option(
        False, help="accept a diffusers folder whose weights hold tensors its config does not use"
    )
    # feature caching across steps (compiler/cache.py): a uniform interval or an explicit schedule
    cache: int | None = option(
        None,
        parse=positive_int,
        metavar="N",
        help="cache deep UNet features: a full step every N steps, the rest shallow",
    )
    cache_schedule: str | None = option(
        None,
        metavar="full,cached,...|auto:K",
        help="cache deep UNet features on an explicit schedule, one entry per step; auto:K places K full "
        "steps where the deep feature changes most on the FP32 trajectory",
    )
    cache_depth: int = option(
        1, parse=positive_int, help="the skip branch the cache splits at: 1 = the first down / last up block"
    )
    quant_options: QuantizeOptions = option(
        QuantizeOptions(), cli=False, help="the rarer quantize knobs (their own flags: QuantizeOptions)"
    )

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
        if self.calib is not None and not _calibrates(self.quantize):
            raise EdgediffError(
                f"recipe: calib (--calib) is given but quantize (--quantize) is {self.quantize or 'not set'}, "
                f"which does not calibrate; add --quantize {' or '.join(_calibrating())} or drop --calib"
            )
        if self.calib_prompts is not None and not _calibrates(self.quantize):
            raise EdgediffError(
                f"recipe: calib_prompts (--calib-prompts) is given but quantize (--quantize) is "
                f"{self.quantize or 'not set'}, which does not calibrate; add --quantize "
                f"{' or '.join(_calibrating())} or drop --calib-prompts"
            )
        if self.calib_prompts is not None and self.calib is not None:
            raise EdgediffError(
                "recipe: calib (--calib) and calib_prompts (--calib-prompts) are both given; a calibration "
                "set already holds its prompts' embeddings: give one of them"
            )
        if not isinstance(self.calib_samples, int) or self.calib_samples <= 0:
            raise EdgediffError(f"recipe: calib_samples must be a positive integer (got {self.calib_samples!r})")
        if isinstance(self.quant_options, dict):
            object.__setattr__(self, "quant_options", QuantizeOptions.from_dict(self.quant_options))
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise EdgediffError(f"recipe: steps must be a positive integer (got {self.steps!r})")
        if not np.isfinite(self.guidance) or self.guidance < 0:
            raise EdgediffError(f"recipe: guidance must be a finite number >= 0 (got {self.guidance!r})")
        cache_steps(self)  # the cache options' own checks

    def cached_steps(self) -> tuple[bool, ...] | None:
        """One flag per plan step (True: the shallow graph with the cached feature); None: no cache.
        An auto schedule is chosen at compile time (cache_auto); asking for its flags here is an error."""
        if cache_auto(self) is not None:
            raise EdgediffError("--cache-schedule auto: the schedule is chosen when compiling (compiler/cache.py)")
        return cache_steps(self)

    def cache_auto(self) -> int | None:
        """K of --cache-schedule auto:K (the full steps the compiler places), else None."""
        return cache_auto(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        check_known_keys(d, cls, "recipe")
        return cls(**d)


def cache_auto(r: Recipe) -> int | None:
    """--cache-schedule auto:K as K (checked: an integer from 1 to --steps), or None for any other value."""
    v = r.cache_schedule
    if not isinstance(v, str) or not v.strip().startswith("auto"):
        return None
    k = v.strip()[len("auto") :].lstrip()
    k = k[1:].strip() if k.startswith(":") else None
    if not k or not k.isdigit() or not 1 <= int(k) <= r.steps:
        raise EdgediffError(
            f"--cache-schedule {v!r}: auto takes the number of full steps, auto:K with K from 1 to "
            f"--steps ({r.steps}), e.g. auto:{max(1, r.steps // 3)}"
        )
    return int(k)


def cache_steps(r: Recipe) -> tuple[bool, ...] | None:
    """--cache N / --cache-schedule as one flag per step; each error names its option."""
    if r.cache is not None and r.cache_schedule is not None:
        raise EdgediffError(
            "--cache and --cache-schedule: give one of them (a uniform interval or an explicit schedule)"
        )
    if not isinstance(r.cache_depth, int) or isinstance(r.cache_depth, bool) or r.cache_depth < 1:
        raise EdgediffError(f"--cache-depth: must be a positive integer, got {r.cache_depth!r}")
    if r.cache is None and r.cache_schedule is None:
        if r.cache_depth != 1:
            raise EdgediffError("--cache-depth: needs --cache N or --cache-schedule")
        return None
    if r.quantize is not None:
        raise EdgediffError(
            f"--cache with --quantize {r.quantize}: a cached bundle is float for now (the shallow graph's "
            "calibration on the cached feature is not built yet)"
        )
    if r.cache is not None:
        if not isinstance(r.cache, int) or isinstance(r.cache, bool) or r.cache < 1:
            raise EdgediffError(f"--cache: must be a positive integer, got {r.cache!r}")
        return tuple(i % r.cache != 0 for i in range(r.steps))
    if not isinstance(r.cache_schedule, str):
        raise EdgediffError(
            f"--cache-schedule: must be a comma-separated list of full / cached, got {r.cache_schedule!r}"
        )
    if cache_auto(r) is not None:
        return None
    entries = [e.strip() for e in r.cache_schedule.split(",")]
    bad = [e for e in entries if e not in ("full", "cached")]
    if bad:
        raise EdgediffError(f"--cache-schedule: entry {bad[0]!r} is not full or cached")
    if len(entries) != r.steps:
        raise EdgediffError(f"--cache-schedule: {len(entries)} entries, but --steps is {r.steps} (one entry per step)")
    if entries[0] != "full":
        raise EdgediffError("--cache-schedule: the first entry must be full (the first step has nothing cached)")
    return tuple(e == "cached" for e in entries)
