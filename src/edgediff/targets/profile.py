"""Load and validate device profiles (targets/profiles/*.toml).

A profile is data: one TOML file per device. This module turns a file into a frozen
`TargetProfile`, rejecting unknown keys and wrong types with one-line errors that name the
file and the field, and answers the questions compile and bench ask of a device:
which unit runs a precision, which ONNX ops a unit takes, how fast and how much memory.

The field meanings are in src/edgediff/targets/README.md; host-cpu.toml is the smallest example.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgediff.core.errors import EdgediffError
from edgediff.core.readers import read_toml

PROFILE_DIR = Path(__file__).parent / "profiles"
# fp32/fp16/bf16: float weights and compute. int8: 8-bit weights and activations.
# int16: 16-bit activations, 8-bit weights (QNN's "a16w8"). int4: 4-bit weights.
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int16", "int4")
OP_DEFAULTS = ("supported", "unsupported", "unknown")  # what an op missing from both lists is
DETECT = ("none", "host")
_OP_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]*$")  # ONNX op type names (tests check them against onnx.defs)

OpStatus = Literal["supported", "unsupported", "unknown"]


# ---------------------------------------------------------------- schema
@dataclass(frozen=True)
class OpSupport:
    """Which ONNX op types one unit (through its delegate) is documented to run."""

    source: str  # URL of the vendor page the lists come from, or "not documented: ..."
    default: OpStatus = "unknown"  # status of an op that is in neither list
    supported: frozenset[str] = frozenset()
    unsupported: frozenset[str] = frozenset()
    notes: dict[str, str] = field(default_factory=dict)  # op type -> documented constraint

    def status(self, op_type: str) -> OpStatus:
        if op_type in self.supported:
            return "supported"
        if op_type in self.unsupported:
            return "unsupported"
        return self.default


@dataclass(frozen=True)
class ComputeUnit:
    """One execution unit of a device (CPU, GPU, NPU, ANE, HTP) as the runtime reaches it."""

    name: str
    description: str
    delegate: str  # the runtime component that drives the unit (execution provider, delegate, plugin)
    precisions: tuple[str, ...]  # in order of preference
    peak_tops: dict[str, float]  # precision -> peak tera-ops/s (1 multiply-add = 2 ops)
    peak_source: str  # URL, or "estimate: <basis>"
    ops: OpSupport


@dataclass(frozen=True)
class Memory:
    total_mb: int  # physical memory of the device
    budget_mb: int  # memory a model (weights + activations) may use
    bandwidth_gbps: float  # peak DRAM bandwidth, GB/s
    source: str


@dataclass(frozen=True)
class OpReport:
    """Result of `TargetProfile.check_ops`: every op type sorted into one of three groups."""

    target: str
    unit: str
    supported: tuple[str, ...]
    unsupported: tuple[str, ...]
    unknown: tuple[str, ...]
    notes: dict[str, str]  # documented constraints for the ops in this report
    source: str

    @property
    def ok(self) -> bool:
        """No op is documented as unsupported (unknown ones may still fail on device)."""
        return not self.unsupported

    @property
    def complete(self) -> bool:
        """Every op is documented as supported."""
        return not self.unsupported and not self.unknown

    def summary(self) -> str:
        parts = [f"{len(self.supported)} supported"]
        if self.unsupported:
            parts.append("unsupported: " + ", ".join(self.unsupported))
        if self.unknown:
            parts.append("not documented: " + ", ".join(self.unknown))
        return f"target {self.target}, unit {self.unit}: " + "; ".join(parts)

    def raise_if_unsupported(self, *, allow_unknown: bool = False) -> None:
        """Raise an EdgediffError naming the ops and the target unless the check passed."""
        if self.unsupported or (self.unknown and not allow_unknown):
            raise EdgediffError(self.summary() + f" (op support source: {self.source})")


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    format: str
    runtime: str
    static_shapes: bool
    units: dict[str, tuple[str, ...]]  # unit -> precisions it runs, in preference order
    compute_units: dict[str, ComputeUnit]
    memory: Memory
    cores: int | None = None  # CPU cores the runtime can use
    features: tuple[str, ...] = ()  # ISA features (e.g. avx512_vnni, asimddp)
    detected: dict[str, object] = field(default_factory=dict)  # what load-time detection merged in
    path: Path | None = None

    # -- precisions ---------------------------------------------------------
    @property
    def precisions(self) -> tuple[str, ...]:
        seen: list[str] = []
        for precs in self.units.values():
            seen += [p for p in precs if p not in seen]
        return tuple(seen)

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise EdgediffError(
                f"target {self.name}: precision {precision!r} is not supported "
                f"(supported: {', '.join(self.precisions)})"
            )

    def unit_for(self, precision: str) -> str:
        """The preferred unit (first in file order) that runs `precision`."""
        self.check_precision(precision)
        return next(u for u, precs in self.units.items() if precision in precs)

    # -- units --------------------------------------------------------------
    def unit(self, name: str) -> ComputeUnit:
        if name not in self.compute_units:
            raise EdgediffError(f"target {self.name}: no unit {name!r} (units: {', '.join(self.compute_units)})")
        return self.compute_units[name]

    def op_support(self, unit: str) -> tuple[frozenset[str], frozenset[str]]:
        """(documented supported, documented unsupported) ONNX op types for `unit`."""
        ops = self.unit(unit).ops
        return ops.supported, ops.unsupported

    def check_ops(self, op_types: Iterable[str], unit: str) -> OpReport:
        """Sort `op_types` into supported / unsupported / unknown for `unit`."""
        ops = self.unit(unit).ops
        groups: dict[str, list[str]] = {"supported": [], "unsupported": [], "unknown": []}
        for op in sorted(set(op_types)):
            groups[ops.status(op)].append(op)
        return OpReport(
            target=self.name,
            unit=unit,
            supported=tuple(groups["supported"]),
            unsupported=tuple(groups["unsupported"]),
            unknown=tuple(groups["unknown"]),
            notes={op: n for op, n in ops.notes.items() if op in set(op_types)},
            source=ops.source,
        )

    # -- roofline numbers ---------------------------------------------------
    def peak_ops(self, unit: str, precision: str) -> float:
        """Peak arithmetic rate of `unit` at `precision`, in ops/s."""
        u = self.unit(unit)
        if precision not in u.peak_tops:
            raise EdgediffError(
                f"target {self.name}: unit {unit} does not run precision {precision!r} "
                f"(runs: {', '.join(u.precisions)})"
            )
        return u.peak_tops[precision] * 1e12

    @property
    def bandwidth_gbps(self) -> float:
        return self.memory.bandwidth_gbps

    @property
    def memory_budget_mb(self) -> int:
        return self.memory.budget_mb

    # -- construction -------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, path: Path) -> TargetProfile:
        r = _Table(d, path, "")
        name = r.take("name", str)
        if name != path.stem:
            raise EdgediffError(
                f"{path}: field name is {name!r} but the file is {path.name} (they must match: name = {path.stem!r})"
            )
        fmt = r.take("format", str)  # checked against the lowering registry where it is used (compiler/routes.py)
        detect = r.take("detect", str, "none")
        if detect not in DETECT:
            raise EdgediffError(f"{path}: field detect is {detect!r}; one of {', '.join(DETECT)}")
        cores = r.take("cores", int, None)
        if cores is not None and cores <= 0:
            raise EdgediffError(f"{path}: field cores must be a positive integer (got {cores})")
        units_table = r.take("units", dict)
        if not units_table:
            raise EdgediffError(f"{path}: field units must list at least one unit")
        compute_units = {u: _unit(u, spec, path) for u, spec in units_table.items()}
        profile = cls(
            name=name,
            description=r.take("description", str, ""),
            format=fmt,
            runtime=r.take("runtime", str),
            static_shapes=r.take("static_shapes", bool, False),
            units={u: cu.precisions for u, cu in compute_units.items()},
            compute_units=compute_units,
            memory=_memory(r.take("memory", dict), path),
            cores=cores,
            features=tuple(r.take("features", list, [], of=str)),
            path=path,
        )
        r.done()
        if detect == "host":
            from edgediff.targets.host import merge_host  # deferred: host.py builds on this module's classes

            profile = merge_host(profile)
        return profile


# ---------------------------------------------------------------- validation
_REQUIRED = object()
_TYPE_NAMES = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "a table",
}


class _Table:
    """Reads one TOML table, checking types; `done()` rejects the keys nobody asked for."""

    def __init__(self, data: dict, path: Path, where: str):
        self.data, self.path, self.where, self.seen = data, path, where, set()

    def take(self, key: str, kind: type, default=_REQUIRED, *, of: type | None = None):
        self.seen.add(key)
        where = f"{self.where}{key}"
        if key not in self.data:
            if default is _REQUIRED:
                raise EdgediffError(f"{self.path}: missing field {where}")
            return default
        value = self.data[key]
        if not _is(value, kind):
            raise EdgediffError(f"{self.path}: field {where} must be {_TYPE_NAMES[kind]} (got {value!r})")
        if of is not None:
            bad = [v for v in value if not _is(v, of)]
            if bad:
                raise EdgediffError(f"{self.path}: field {where} must hold only {_TYPE_NAMES[of]}s (got {bad[0]!r})")
        return float(value) if kind is float else value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise EdgediffError(
                f"{self.path}: unknown field {', '.join(self.where + k for k in unknown)} "
                f"(known here: {', '.join(sorted(self.seen))})"
            )


def _is(value, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _unit(name: str, spec, path: Path) -> ComputeUnit:
    where = f"units.{name}."
    if not isinstance(spec, dict):
        raise EdgediffError(f"{path}: field units.{name} must be a table (got {spec!r})")
    r = _Table(spec, path, where)
    precisions = tuple(r.take("precisions", list, of=str))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise EdgediffError(
            f"{path}: field {where}precisions must be a non-empty list of "
            f"{', '.join(PRECISIONS)} (got {list(precisions)})"
        )
    if len(set(precisions)) != len(precisions):
        raise EdgediffError(f"{path}: field {where}precisions lists a precision twice ({list(precisions)})")
    peak = r.take("peak_tops", dict)
    pr = _Table(peak, path, where + "peak_tops.")
    peak_tops = {p: pr.take(p, float) for p in precisions}
    pr.done()
    for p, v in peak_tops.items():
        if v <= 0:
            raise EdgediffError(f"{path}: field {where}peak_tops.{p} must be positive (got {v})")
    unit = ComputeUnit(
        name=name,
        description=r.take("description", str, ""),
        delegate=r.take("delegate", str),
        precisions=precisions,
        peak_tops=peak_tops,
        peak_source=r.take("peak_source", str),
        ops=_ops(r.take("ops", dict), path, where + "ops."),
    )
    r.done()
    return unit


def _ops(spec: dict, path: Path, where: str) -> OpSupport:
    r = _Table(spec, path, where)
    source = r.take("source", str)
    if not (source.startswith("http") or source.startswith("not documented")):
        raise EdgediffError(
            f"{path}: field {where}source must be a URL or start with 'not documented' (got {source!r})"
        )
    default = r.take("default", str, "unknown")
    if default not in OP_DEFAULTS:
        raise EdgediffError(f"{path}: field {where}default is {default!r}; one of {', '.join(OP_DEFAULTS)}")
    lists = {}
    for key in ("supported", "unsupported"):
        ops = r.take(key, list, [], of=str)
        bad = [op for op in ops if not _OP_TYPE.match(op)]
        if bad:
            raise EdgediffError(f"{path}: field {where}{key} holds {bad[0]!r}, not an ONNX op type name")
        lists[key] = frozenset(ops)
    both = sorted(lists["supported"] & lists["unsupported"])
    if both:
        raise EdgediffError(f"{path}: field {where}supported and {where}unsupported both list {', '.join(both)}")
    notes = r.take("notes", dict, {})
    nr = _Table(notes, path, where + "notes.")
    notes = {op: nr.take(op, str) for op in notes}
    stray = sorted(set(notes) - lists["supported"] - lists["unsupported"])
    if stray:
        raise EdgediffError(f"{path}: field {where}notes.{stray[0]} names an op in neither list")
    r.done()
    return OpSupport(
        source=source, default=default, supported=lists["supported"], unsupported=lists["unsupported"], notes=notes
    )


def _memory(spec: dict, path: Path) -> Memory:
    r = _Table(spec, path, "memory.")
    mem = Memory(
        total_mb=r.take("total_mb", int),
        budget_mb=r.take("budget_mb", int),
        bandwidth_gbps=r.take("bandwidth_gbps", float),
        source=r.take("source", str),
    )
    r.done()
    for key in ("total_mb", "budget_mb", "bandwidth_gbps"):
        if getattr(mem, key) <= 0:
            raise EdgediffError(f"{path}: field memory.{key} must be positive (got {getattr(mem, key)})")
    if mem.budget_mb > mem.total_mb:
        raise EdgediffError(
            f"{path}: field memory.budget_mb ({mem.budget_mb}) exceeds memory.total_mb ({mem.total_mb})"
        )
    return mem


# ---------------------------------------------------------------- loading
def available_targets() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile_file(path: str | Path) -> TargetProfile:
    """Load and validate one profile file (any location)."""
    path = Path(path)
    return TargetProfile.from_dict(read_toml(path, "device profile"), path)


def load_target(name: str | Path) -> TargetProfile:
    """Load a profile by name (targets/profiles/NAME.toml) or by the path of a .toml file."""
    if isinstance(name, Path) or str(name).endswith(".toml"):
        return load_profile_file(name)
    path = PROFILE_DIR / f"{name}.toml"
    if not path.exists():
        raise EdgediffError(f"unknown target {name!r} (available: {', '.join(available_targets())})")
    return load_profile_file(path)
