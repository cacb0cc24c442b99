"""How much of a host bench run is its denoiser steps: `edgediff bench`'s mean run time against
its mean step time x steps (the rest is the loop, noise and guidance: a few microseconds a step).

    python benchmarks/host_bench_loop.py [--bundle DIR] [--runs 10] [--warmup-runs 2]

Default bundle: builtin:digits compiled for host-cpu (DDIM, 20 steps) into a temporary folder.
Prints the ratio e2e_ms.avg / (step_ms.avg x steps) of one bench run. On an idle machine it lies
within a few per cent of 1; under load single runs scatter, so this is a figure to read, not a
test (tests/test_bench.py checks the JSON's schema only).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    from edgediff.compiler.pipeline import compile_model
    from edgediff.compiler.recipe import Recipe
    from edgediff.tools.bench import bench

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help="a compiled bundle (default: compile builtin:digits)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup-runs", type=int, default=2)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = a.bundle
        if root is None:
            root = Path(tmp) / "digits"
            compile_model("builtin:digits", root, recipe=Recipe(sampler="ddim", steps=20))
        r = bench(root, device="host", warmup_runs=a.warmup_runs, num_runs=a.runs)
    steps = r["step_ms"]["count"] // r["e2e_ms"]["count"]
    ratio = r["e2e_ms"]["avg"] / (r["step_ms"]["avg"] * steps)
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"bundle {root}: {steps} steps, {r['e2e_ms']['count']} runs")
    print(f"  step   avg {r['step_ms']['avg']:.3f} ms  (p50 {r['step_ms']['p50']:.3f}, max {r['step_ms']['max']:.3f})")
    print(f"  run    avg {r['e2e_ms']['avg']:.3f} ms")
    print(f"  run / (step x {steps}) = {ratio:.4f}  ({100 * (ratio - 1):+.2f} % outside the steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
