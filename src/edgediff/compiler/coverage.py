"""Operator coverage: which of the model's ops each unit of the target is documented to run.

    ONNX op types of the fp32 export ──┐
    target profile [units.*.ops] ──────┼──> per unit: supported / rewritten / unsupported / not documented
    lowering.decomposes (rewrites) ────┘         │
                                                 └─ the unit that runs the chosen precision: an op
                                                    documented unsupported with no rewrite whose ops
                                                    are all supported -> EdgediffError (op, target)

The profiles speak ONNX op types (src/edgediff/targets/README.md), so the op list comes from the ONNX export
whatever the final format. A rewrite is a decomposition the format's converter performs (for
example coremltools and litert-torch lower InstanceNormalization to mean / sub / mul / sqrt /
div); it counts only when every op it produces is documented as supported on the unit. Ops
that are neither documented supported nor unsupported are reported "not documented": they
may still fail on the device, which the report says.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgediff.core.errors import EdgediffError
from edgediff.targets import TargetProfile


def onnx_op_counts(path: Path) -> dict[str, int]:
    """Op type -> count over the main graph (and any subgraphs) of an ONNX file."""
    import onnx

    counts: Counter = Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(onnx.load(str(path), load_external_data=False).graph)
    return dict(sorted(counts.items()))


def unit_coverage(profile: TargetProfile, unit: str, ops: list[str], decomposes: dict[str, tuple[str, ...]]) -> dict:
    """Sort `ops` for one unit, applying the rewrites that make an op fully supported."""
    report = profile.check_ops(ops, unit)
    status = {op: "supported" for op in report.supported}
    status |= {op: "unsupported" for op in report.unsupported}
    status |= {op: "unknown" for op in report.unknown}
    rewritten = {}
    for op, st in status.items():
        into = decomposes.get(op)
        if st != "supported" and into and profile.check_ops(into, unit).complete:
            rewritten[op] = list(into)
    u = profile.unit(unit)
    return {
        "delegate": u.delegate,
        "precisions": list(u.precisions),
        "supported": [op for op, st in status.items() if st == "supported"],
        "rewritten": rewritten,
        "unsupported": [op for op, st in status.items() if st == "unsupported" and op not in rewritten],
        "not_documented": [op for op, st in status.items() if st == "unknown" and op not in rewritten],
        "notes": report.notes,
        "source": report.source,
    }


def coverage(
    profile: TargetProfile,
    op_counts: dict[str, int],
    *,
    precision: str,
    fmt: str,
    decomposes: dict[str, tuple[str, ...]],
) -> dict:
    """The coverage record for report.json; raises if the chosen unit cannot run a required op."""
    ops = sorted(op_counts)
    chosen = profile.unit_for(precision)
    units = {name: unit_coverage(profile, name, ops, decomposes) for name in profile.compute_units}
    bad = units[chosen]["unsupported"]
    if bad:
        src = units[chosen]["source"]
        raise EdgediffError(
            f"target {profile.name}: op {', '.join(bad)} is documented unsupported on unit "
            f"{chosen} ({units[chosen]['delegate']}) and no {fmt} rewrite avoids it "
            f"(op support source: {src})"
        )
    c = units[chosen]
    return {
        "unit": chosen,
        "precision": precision,
        "op_counts": op_counts,
        "summary": {
            "supported": len(c["supported"]),
            "rewritten": len(c["rewritten"]),
            "not_documented": len(c["not_documented"]),
        },
        "units": units,
    }


def format_coverage(record: dict) -> str:
    """The lines `edgediff compile` prints."""
    lines = []
    for name, u in record["units"].items():
        mark = "*" if name == record["unit"] else " "
        parts = [f"{len(u['supported'])} supported"]
        if u["rewritten"]:
            parts.append("rewritten: " + ", ".join(f"{op}->{'/'.join(into)}" for op, into in u["rewritten"].items()))
        if u["unsupported"]:
            parts.append("unsupported: " + ", ".join(u["unsupported"]))
        if u["not_documented"]:
            nd = u["not_documented"]
            parts.append(f"not documented ({len(nd)}): " + ", ".join(nd[:8]) + (", ..." if len(nd) > 8 else ""))
        lines.append(f"  {mark}{name:5} {'; '.join(parts)}")
    return "\n".join(lines)
