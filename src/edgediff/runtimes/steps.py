"""Per-step hints for the denoiser: the timestep group and the feature-cache flag of each step.

    scheduler.json "timestep_groups": {"files": [...], "step_group": [g0, g1, ...], ...}  -> groups
                   "cache_schedule":  {"interval": N} | {"steps": ["full", "cached", ...]} -> cached
    StepTable ──sampling.sample / _cruntime.sample──► denoise(x, t, cond, step=StepCall(i, group, cached))

The C runtime reads the same two fields (csrc/src/bundle.c) with the same checks and
hands the same values to its backend (edd_denoise_args.group / .cached); the two loops give
a denoiser that takes them the identical sequence. `cached` is a permission, not an order: a
denoiser without a feature cache runs the full model (every backend here does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from edgediff.core.errors import EdgediffError

MAX_GROUPS = 64  # EDD_MAX_GROUPS
_GROUP_KEYS = {"files", "step_group", "shared_weights"}
_CACHE_KEYS = {"interval", "steps"}


class StepCall(NamedTuple):
    """What a step-aware denoiser is told at each call (a plain tuple (i, group, cached) from C)."""

    index: int
    group: int
    cached: bool


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class StepTable:
    """groups[i]: the timestep group of plan step i (None: no groups); cached[i]: step i may reuse
    cached deep features (None: no cache schedule). Both have one entry per plan step."""

    num_steps: int
    groups: tuple[int, ...] | None = None
    num_groups: int = 0
    cached: tuple[bool, ...] | None = None

    def __post_init__(self):
        if self.groups is not None:
            if len(self.groups) != self.num_steps:
                raise EdgediffError(f"step groups: {len(self.groups)} entries for {self.num_steps} steps")
            bad = [g for g in self.groups if not _int(g) or not 0 <= g < self.num_groups]
            if bad:
                raise EdgediffError(f"step groups: {bad[0]!r} is not a group index in 0..{self.num_groups - 1}")
        if self.cached is not None:
            if len(self.cached) != self.num_steps:
                raise EdgediffError(f"cache flags: {len(self.cached)} entries for {self.num_steps} steps")
            if self.num_steps and self.cached[0]:
                raise EdgediffError("cache flags: the first step has nothing cached to reuse")

    def call(self, i: int) -> StepCall:
        return StepCall(
            i,
            self.groups[i] if self.groups is not None else 0,
            bool(self.cached[i]) if self.cached is not None else False,
        )

    @classmethod
    def from_scheduler(cls, sched: dict, num_steps: int, *, where: str = "scheduler.json") -> StepTable | None:
        """The table of a scheduler.json dict (None when both fields are null or absent)."""
        groups, num_groups = parse_groups(sched.get("timestep_groups"), num_steps, where=where)
        cached = parse_cache_schedule(sched.get("cache_schedule"), num_steps, where=where)
        if groups is None and cached is None:
            return None
        return cls(num_steps=num_steps, groups=groups, num_groups=num_groups, cached=cached)


def parse_groups(g, num_steps: int, *, where: str = "scheduler.json") -> tuple[tuple[int, ...] | None, int]:
    """timestep_groups -> (step_group, number of groups); bundle.c's read_groups."""
    if g is None:
        return None, 0
    if not isinstance(g, dict):
        raise EdgediffError(f"{where}: timestep_groups must be an object or null, got {type(g).__name__}")
    unknown = set(g) - _GROUP_KEYS
    if unknown:
        raise EdgediffError(f"{where}: timestep_groups has unknown key {sorted(unknown)[0]!r}")
    for key in ("files", "step_group"):
        if key not in g:
            raise EdgediffError(f"{where}: timestep_groups is missing the field {key!r}")
    files, steps = g["files"], g["step_group"]
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_GROUPS:
        raise EdgediffError(f"{where}: timestep_groups.files must list 1..{MAX_GROUPS} files")
    for k, f in enumerate(files):
        if not isinstance(f, str) or not f or f.startswith("/") or ".." in f:
            raise EdgediffError(f"{where}: timestep_groups.files[{k}] must be a relative path inside the bundle")
    _per_step_list(steps, "timestep_groups.step_group", "a list of group indices", num_steps, where)
    for k, s in enumerate(steps):
        if not _int(s):
            raise EdgediffError(f"{where}: timestep_groups.step_group[{k}] must be an integer, got {s!r}")
        if not 0 <= s < len(files):
            raise EdgediffError(
                f"{where}: timestep_groups.step_group[{k}] is {s}; it must be a group index in "
                f"0..{len(files) - 1} (timestep_groups.files lists {len(files)})"
            )
    return tuple(steps), len(files)


def _per_step_list(value, field: str, what: str, num_steps: int, where: str) -> None:
    """A list with one entry per plan step, else an error naming `field`."""
    if not isinstance(value, list):
        raise EdgediffError(f"{where}: {field} must be {what}")
    if len(value) != num_steps:
        raise EdgediffError(f"{where}: {field} has {len(value)} entries but the plan has {num_steps} steps")


def parse_cache_schedule(c, num_steps: int, *, where: str = "scheduler.json") -> tuple[bool, ...] | None:
    """cache_schedule -> one flag per step (True: may reuse cached features); bundle.c's read_cache."""
    if c is None:
        return None
    if not isinstance(c, dict):
        raise EdgediffError(f"{where}: cache_schedule must be an object or null, got {type(c).__name__}")
    unknown = set(c) - _CACHE_KEYS
    if unknown:
        raise EdgediffError(f"{where}: cache_schedule has unknown key {sorted(unknown)[0]!r}")
    if ("interval" in c) == ("steps" in c):
        raise EdgediffError(f"{where}: cache_schedule must have exactly one of 'interval' and 'steps'")
    if "interval" in c:
        n = c["interval"]
        if not _int(n) or n < 1:
            raise EdgediffError(f"{where}: cache_schedule.interval must be a positive integer, got {n!r}")
        return cache_flags(n, num_steps)
    steps = c["steps"]
    _per_step_list(steps, "cache_schedule.steps", 'a list of "full" / "cached"', num_steps, where)
    for k, s in enumerate(steps):
        if s not in ("full", "cached"):
            raise EdgediffError(f'{where}: cache_schedule.steps[{k}] must be "full" or "cached", got {s!r}')
    if steps and steps[0] != "full":
        raise EdgediffError(
            f'{where}: cache_schedule.steps[0] must be "full": the first step has nothing cached to reuse'
        )
    return tuple(s == "cached" for s in steps)


def cache_flags(interval: int, num_steps: int) -> tuple[bool, ...]:
    """{"interval": N}: step i runs the full model when i % N == 0, else may reuse the cache."""
    return tuple(i % interval != 0 for i in range(num_steps))
