"""Load and validate device profiles (targets/profiles/*.toml)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgediff.runtimes.errors import EdgediffError

PROFILE_DIR = Path(__file__).parent / "profiles"
FORMATS = ("onnx", "openvino", "tflite", "coreml")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
_KEYS = {"name", "description", "format", "runtime", "static_shapes", "units"}


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    format: str
    runtime: str
    static_shapes: bool
    units: dict[str, tuple[str, ...]]  # execution unit -> precisions it runs

    @property
    def precisions(self) -> tuple[str, ...]:
        seen: list[str] = []
        for precs in self.units.values():
            seen += [p for p in precs if p not in seen]
        return tuple(seen)

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise EdgediffError(f"target {self.name}: precision {precision!r} is not supported "
                                f"(supported: {', '.join(self.precisions)})")

    @classmethod
    def from_dict(cls, d: dict, path: Path) -> "TargetProfile":
        unknown = set(d) - _KEYS
        if unknown:
            raise EdgediffError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
        for key in ("name", "format", "runtime", "units"):
            if key not in d:
                raise EdgediffError(f"{path}: missing field {key!r}")
        if d["format"] not in FORMATS:
            raise EdgediffError(f"{path}: field format is {d['format']!r}; one of {', '.join(FORMATS)}")
        units = {}
        for unit, spec in d["units"].items():
            precs = tuple(spec.get("precisions", ()))
            bad = [p for p in precs if p not in PRECISIONS]
            if bad or not precs:
                raise EdgediffError(f"{path}: units.{unit}.precisions must be a non-empty list of "
                                    f"{', '.join(PRECISIONS)} (got {list(precs)})")
            units[unit] = precs
        return cls(name=d["name"], description=d.get("description", ""), format=d["format"],
                   runtime=d["runtime"], static_shapes=bool(d.get("static_shapes", False)), units=units)


def available_targets() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_target(name: str) -> TargetProfile:
    path = PROFILE_DIR / f"{name}.toml"
    if not path.exists():
        raise EdgediffError(f"unknown target {name!r} (available: {', '.join(available_targets())})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise EdgediffError(f"{path}: invalid TOML: {e}") from None
    return TargetProfile.from_dict(data, path)
