"""What `edgediff targets` prints: a table for people, a dict for `--json`."""

from __future__ import annotations

from edgediff.targets.profile import TargetProfile


def _units(p: TargetProfile) -> str:
    return "; ".join(f"{u}: {','.join(precs)}" for u, precs in p.units.items())


def format_targets_table(profiles: list[TargetProfile]) -> str:
    """One row per profile: name, format, runtime, units with precisions, shapes, memory, bandwidth."""
    head = ("NAME", "FORMAT", "RUNTIME", "UNITS: PRECISIONS", "SHAPES", "BUDGET MB", "GB/s", "DESCRIPTION")
    rows = [
        (
            p.name,
            p.format,
            p.runtime,
            _units(p),
            "static" if p.static_shapes else "dynamic",
            f"{p.memory_budget_mb:,}",
            f"{p.bandwidth_gbps:g}",
            p.description,
        )
        for p in profiles
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    right = {5, 6}  # numbers
    lines = []
    for r in [head, *rows]:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    return "\n".join(lines)


def targets_json(profiles: list[TargetProfile]) -> dict:
    """{name: {format, runtime, units: {unit: [precisions]}, static_shapes, description, ...}}.

    The first five keys are the shape `edgediff targets --json` has always had; the rest is new.
    """
    out = {}
    for p in profiles:
        out[p.name] = {
            "format": p.format,
            "runtime": p.runtime,
            "units": {u: list(precs) for u, precs in p.units.items()},
            "static_shapes": p.static_shapes,
            "description": p.description,
            "memory": {
                "total_mb": p.memory.total_mb,
                "budget_mb": p.memory.budget_mb,
                "bandwidth_gbps": p.memory.bandwidth_gbps,
                "source": p.memory.source,
            },
            "cores": p.cores,
            "features": list(p.features),
            "detected": dict(p.detected),
            "compute_units": {
                u.name: {
                    "description": u.description,
                    "delegate": u.delegate,
                    "precisions": list(u.precisions),
                    "peak_tops": dict(u.peak_tops),
                    "peak_source": u.peak_source,
                    "ops": {
                        "source": u.ops.source,
                        "default": u.ops.default,
                        "supported": sorted(u.ops.supported),
                        "unsupported": sorted(u.ops.unsupported),
                        "notes": dict(u.ops.notes),
                    },
                }
                for u in p.compute_units.values()
            },
            "file": str(p.path) if p.path else None,
        }
    return out
