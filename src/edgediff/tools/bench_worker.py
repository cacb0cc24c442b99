"""The process `edgediff bench --device host` measures: it loads one bundle, runs it, prints JSON.

    python -m edgediff.tools.bench_worker BUNDLE --warmup-runs W --num-runs R [--threads T] --json OUT

It is a separate process so that its peak RSS (getrusage, RUSAGE_SELF) is the bundle's and the
backend's, not the caller's (pytest, torch): it imports neither torch nor the compiler.
Timing follows edgediff-run --bench: init = bundle load with sha256 checks + backend session;
first = the first full sampling run (cold: graph optimisation, allocation); a step runs from
the start of its denoiser call to the start of the next one (the last: to the run's end).
Progress goes to stderr as "@progress DONE TOTAL" lines, the figures to the --json file.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.bundle import load_bundle
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels, generate


def peak_rss_kb() -> int:
    """This process's own peak RSS: VmHWM (Linux). ru_maxrss is carried across fork + exec, so it
    would report the parent's size (the CLI, or pytest with torch loaded) when that is larger."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kB; elsewhere not comparable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edgediff.tools.bench_worker")
    p.add_argument("bundle")
    p.add_argument("--warmup-runs", type=int, default=2)
    p.add_argument("--num-runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", required=True, help="where to write the figures")
    a = p.parse_args(argv)

    try:
        t0 = time.perf_counter()
        b = load_bundle(a.bundle)
        t_bundle = time.perf_counter()
        inner = bundle_denoiser(b, threads=a.threads)
        t_init = time.perf_counter()
        setup = SamplingSetup.from_bundle(b)
        labels = default_labels(setup, 1)
        starts: list[float] = []
        ends: list[float] = []

        def denoise(x, t, cond, **step):
            starts.append(time.perf_counter())
            eps = inner(x, t, cond, **step)
            ends.append(time.perf_counter())
            return eps

        # the per-step table reaches a step-aware denoiser (a cached bundle's pair, timestep groups)
        denoise.takes_step = getattr(inner, "takes_step", False)

        total = 1 + a.warmup_runs + a.num_runs

        def run(k: int) -> float:
            starts.clear()
            ends.clear()
            generate(denoise, setup, n=1, seed=k, labels=labels)
            e = time.perf_counter()
            print(f"@progress {k + 1} {total}", file=sys.stderr, flush=True)
            return e

        first_start = time.perf_counter()
        first_ms = (run(0) - first_start) * 1e3
        for k in range(a.warmup_runs):
            run(1 + k)
        e2e, step_ms, denoise_ms = [], [], []
        for k in range(a.num_runs):
            s = time.perf_counter()
            e = run(1 + a.warmup_runs + k)
            e2e.append((e - s) * 1e3)
            bounds = starts[1:] + [e]
            step_ms += [(nxt - st) * 1e3 for st, nxt in zip(starts, bounds)]
            denoise_ms += [(en - st) * 1e3 for st, en in zip(starts, ends)]
    except EdgediffError as e:
        print(f"edgediff: error: {e}", file=sys.stderr)
        return 2
    rss_kb = peak_rss_kb()
    versions = {}
    for mod in ("onnxruntime", "openvino"):
        if mod in sys.modules:
            versions[mod] = getattr(sys.modules[mod], "__version__", "?")
    Path(a.json).write_text(
        json.dumps(
            {
                "backend": getattr(inner, "label", type(inner).__name__),
                "images": 1,
                "steps": len(setup.plan.timesteps),
                "init_ms": (t_init - t0) * 1e3,
                "bundle_ms": (t_bundle - t0) * 1e3,
                "first_ms": first_ms,
                "warmup_runs": a.warmup_runs,
                "e2e_ms": e2e,
                "step_ms": step_ms,
                "denoise_ms": denoise_ms,
                "peak_rss_mb": rss_kb / 1024,
                "versions": versions,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
