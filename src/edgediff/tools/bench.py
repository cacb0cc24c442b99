"""`edgediff bench`: one benchmark schema for every device, measured or estimated, always labelled.

    BUNDLE ──device──┬─ host           worker subprocess (bench_worker.py): the bundle's backend in the
                     │                 C loop, or --runner c: edgediff-run --bench --json, locally
                     ├─ ssh://U@H[:P]  bundle + edgediff-run (+ its OpenVINO libraries) copied over ssh,
                     ├─ adb:SERIAL     run there with --bench --json, the JSON read back (bench_remote.py)
                     └─ PROFILE NAME   roofline estimate from the profile's peak throughput and bandwidth
                                       and the bundle's MACs and weight bytes per step: measured false
                                          │
          raw times (per run, per step) ──┴─> summarize() ─> result dict (JSON) ─> format_result()

Every figure of a measured result comes from one process that ran the bundle and nothing else
(peak RSS is that process's own, never the caller's). An estimate fills only the `estimate`
fields and lists its assumptions; the measured distribution keys are null there.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.bundle import Bundle, load_bundle, size_bytes
from edgediff.targets import available_targets, load_target
from edgediff.targets.host import detect_host
from edgediff.tools.runner import CHECKOUT_RUNNER, build_info, installed_runner, openvino_problem

STAT_KEYS = ("count", "min", "avg", "std", "p5", "p50", "p90", "p95", "p99", "max")
PERCENTILES = {"p5": 5, "p50": 50, "p90": 90, "p95": 95, "p99": 99}
# bytes per weight at each precision a bundle can record (manifest model.precision)
WEIGHT_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int16": 1.0, "int4": 0.5}
SCHEMA = "edgediff-bench/1"


def summarize(values) -> dict:
    """count, min, avg, std (population, as TFLite's benchmark_model), percentiles (numpy's linear
    interpolation, the same rule as edgediff-run's summary), max."""
    v = np.asarray(list(values), np.float64)
    if v.size == 0:
        raise EdgediffError("no timings to summarize (zero runs)")
    out = {"count": int(v.size), "min": float(v.min()), "avg": float(v.mean()), "std": float(v.std())}
    out |= {k: float(np.percentile(v, q)) for k, q in PERCENTILES.items()}
    out["max"] = float(v.max())
    return out


def empty_stats() -> dict:
    return dict.fromkeys(STAT_KEYS)


# ---------------------------------------------------------------- device strings
def parse_device(device: str) -> tuple[str, dict]:
    """'host' | 'ssh://USER@HOST[:PORT]' | 'adb:SERIAL' | a profile name -> (kind, fields)."""
    if device == "host":
        return "host", {}
    if device.startswith("ssh://"):
        rest = device[len("ssh://") :]
        user, at, hostport = rest.rpartition("@")
        if not at or not user or not hostport:
            raise EdgediffError(f"--device {device}: expected ssh://USER@HOST[:PORT]")
        host, port = hostport, 22
        if hostport.startswith("["):  # [IPv6]:port
            host, _, tail = hostport[1:].partition("]")
            if tail:
                port = tail.lstrip(":")
        elif ":" in hostport:
            host, port = hostport.rsplit(":", 1)
        try:
            port = int(port)
        except ValueError:
            raise EdgediffError(f"--device {device}: port {port!r} is not a number") from None
        if not (host and 0 < port < 65536):
            raise EdgediffError(f"--device {device}: expected ssh://USER@HOST[:PORT] with a port in 1..65535")
        return "ssh", {"user": user, "host": host, "port": port}
    if device.startswith("adb:"):
        serial = device[4:]
        if not serial:
            raise EdgediffError(f"--device {device}: expected adb:SERIAL (see `adb devices`)")
        return "adb", {"serial": serial}

    if device in available_targets() or device.endswith(".toml"):
        return "profile", {"name": device}
    raise EdgediffError(
        f"--device {device!r}: not host, ssh://USER@HOST[:PORT], adb:SERIAL or a device profile "
        f"(profiles: {', '.join(available_targets())})"
    )


# ---------------------------------------------------------------- shared result fields
def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("edgediff", "numpy", "onnxruntime", "openvino", "ai-edge-litert", "coremltools"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def coverage_summary(bundle: Bundle) -> dict | None:
    """Operator coverage per unit, from the compile's report.json (src/edgediff/compiler/coverage.py)."""
    cov = bundle.report.get("coverage")
    if not cov:
        return None
    units = {
        name: {
            "supported": len(u["supported"]),
            "rewritten": len(u["rewritten"]),
            "unsupported": len(u["unsupported"]),
            "not_documented": len(u["not_documented"]),
        }
        for name, u in cov["units"].items()
    }
    return {
        "target": bundle.manifest.get("target"),
        "unit": cov["unit"],
        "op_types": len(cov["op_counts"]),
        "units": units,
    }


def bundle_facts(bundle: Bundle) -> dict:
    m, r, s = bundle.manifest, bundle.report, bundle.scheduler
    model = r.get("model", {})
    return {
        "bundle": str(bundle.root),
        "model": {
            "file": m["model"]["file"],
            "format": m["model"]["format"],
            "precision": m["model"].get("precision"),
            "params": model.get("params"),
            "macs_per_call": model.get("macs_per_step"),
            "rows_per_step": model.get("forward_passes_per_step", 1),
        },
        "sampler": {"solver": s["solver"], "steps": len(s["plan"]["timesteps"]), "guidance": s["guidance_scale"]},
        "size_mb": size_bytes(bundle.root) / 1e6,
        "model_size_mb": size_bytes(bundle.root / "model") / 1e6,
        "coverage": coverage_summary(bundle),
    }


def assemble(
    bundle: Bundle, raw: dict, *, device: str, runner: str, host: dict, warmup_runs: int, local: bool = True
) -> dict:
    """A measured result from a run's raw times: e2e_ms (per run), step_ms and denoise_ms (every step
    of every timed run), init_ms, first_ms, peak_rss_mb, images per run."""
    images = int(raw.get("images", 1))
    e2e = [t / images for t in raw["e2e_ms"]]
    step = summarize(raw["step_ms"])
    result = {
        "schema": SCHEMA,
        "measured": True,
        "device": device,
        "runner": runner,
        "backend": raw.get("backend"),
        **bundle_facts(bundle),
        "images_per_run": images,
        "warmup_runs": warmup_runs,
        "num_runs": len(raw["e2e_ms"]),
        "init_ms": raw["init_ms"],
        "first_ms": raw["first_ms"] / images,
        "step_ms": step,
        "denoise_ms": summarize(raw["denoise_ms"]),
        "e2e_ms": summarize(e2e),
        "iterations_per_s": 1e3 / step["avg"] if step["avg"] > 0 else None,
        "images_per_s": 1e3 / summarize(e2e)["avg"],
        "peak_rss_mb": raw["peak_rss_mb"],
        "step_ms_samples": [round(float(t), 6) for t in raw["step_ms"]],
        "versions": (
            {**versions(), **raw.get("versions", {})}
            if local
            else {"edgediff (local)": versions().get("edgediff"), "runner backend": raw.get("backend")}
        ),
        "host": host,
        "notes": "first_ms and e2e_ms are per image (a run's time / images per run); step_ms is a "
        "step of a run of images_per_run images; iterations/s = 1000 / step_ms.avg",
    }
    return result


# ---------------------------------------------------------------- host
def _follow_worker_stderr(proc, bar) -> str:
    """Feed the worker's progress lines to the bar; return the rest of its stderr."""
    rest = []
    for line in proc.stderr:
        if line.startswith("@progress "):
            done, total = map(int, line.split()[1:3])
            if bar is not None:
                bar.total = total
                bar.n = done
                bar.refresh()
        else:
            rest.append(line)
    return "".join(rest)


def measure_host_python(bundle: Bundle, *, warmup_runs: int, num_runs: int, threads: int = 0, bar=None) -> dict:
    """The bundle's own backend (src/edgediff/runtimes/backends.py) in the C loop, in a fresh Python process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"  # a file, not stdout: one pipe only, so no pipe can fill up unread
        cmd = [
            sys.executable,
            "-m",
            "edgediff.tools.bench_worker",
            str(bundle.root),
            "--warmup-runs",
            str(warmup_runs),
            "--num-runs",
            str(num_runs),
            "--threads",
            str(threads),
            "--json",
            str(out),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err = _follow_worker_stderr(proc, bar)
        if proc.wait() != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit status {proc.returncode}"
            raise EdgediffError(f"{bundle.root}: benchmark worker failed: {last}")
        return json.loads(out.read_text())


def default_runner() -> Path:
    """The runner installed with the package when it has the OpenVINO backend, else a checkout's
    csrc/build/edgediff-run (`make -C csrc runner`)."""
    exe = installed_runner()
    if exe is not None and build_info().get("backend") == "openvino":
        return exe
    return CHECKOUT_RUNNER


def find_runner(path: str | None) -> Path:
    exe = Path(path) if path else default_runner()
    if exe.is_file():
        if not path and exe == installed_runner() and (problem := openvino_problem(build_info())):
            if not CHECKOUT_RUNNER.is_file():
                raise EdgediffError(f"{exe}: {problem}")
            return CHECKOUT_RUNNER
        return exe
    installed = "" if path else f" (the installed one: {build_info().get('note')})"
    raise EdgediffError(
        f"{exe}: edgediff-run not found{installed}; build it with `make -C csrc runner "
        f"PYTHON={sys.executable}` or pass --runner-binary PATH"
    )


def runner_args(bundle_dir: str, *, warmup_runs: int, num_runs: int, json_path: str, threads: int = 0) -> list[str]:
    args = [
        bundle_dir,
        "-n",
        "1",
        "--bench",
        "--runs",
        str(num_runs),
        "--warmup",
        str(warmup_runs),
        "--json",
        json_path,
    ]
    return args + (["--threads", str(threads)] if threads else [])


def check_runner_can_run(bundle: Bundle, *, instead: str) -> None:
    """edgediff-run's OpenVINO backend reads onnx and openvino bundles (timestep groups included)."""
    if bundle.model_format not in ("onnx", "openvino"):
        raise EdgediffError(
            f"{bundle.root}: edgediff-run runs OpenVINO (onnx or openvino bundles), "
            f"not format {bundle.model_format!r}; {instead}"
        )


def measure_host_c(bundle: Bundle, exe: Path, *, warmup_runs: int, num_runs: int, threads: int = 0) -> dict:
    check_runner_can_run(bundle, instead="use --runner python")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        r = subprocess.run(
            [
                str(exe),
                *runner_args(
                    str(bundle.root), warmup_runs=warmup_runs, num_runs=num_runs, json_path=str(out), threads=threads
                ),
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise EdgediffError(f"{exe}: {r.stderr.strip() or f'exit status {r.returncode}'}")
        return json.loads(out.read_text())


def host_description() -> dict:

    info = detect_host()
    info["os"] = f"{platform.system()} {platform.release()}"
    return info


def bench(
    bundle_path: str | Path,
    *,
    device: str = "host",
    warmup_runs: int = 2,
    num_runs: int = 10,
    runner: str = "python",
    runner_binary: str | None = None,
    threads: int = 0,
    remote: dict | None = None,
    bar=None,
) -> dict:
    """Benchmark a bundle on `device`; see the module docstring. Returns the JSON-ready result."""
    kind, fields = parse_device(device)
    bundle = load_bundle(bundle_path)
    if kind == "profile":
        return estimate(bundle, load_target(fields["name"]))
    if kind == "host":
        if runner == "c":
            exe = find_runner(runner_binary)
            raw = measure_host_c(bundle, exe, warmup_runs=warmup_runs, num_runs=num_runs, threads=threads)
            label = f"edgediff-run ({exe})"
        else:
            raw = measure_host_python(bundle, warmup_runs=warmup_runs, num_runs=num_runs, threads=threads, bar=bar)
            label = "python worker: C sampling loop + the bundle's backend"
        result = assemble(bundle, raw, device="host", runner=label, host=host_description(), warmup_runs=warmup_runs)
        result["roofline"] = host_roofline(bundle, result)
        return result
    from edgediff.tools.bench_remote import measure_remote

    def stage_progress(stage):
        if bar is not None:
            bar.set_postfix_str(stage)
            bar.update(1)

    raw, host, label = measure_remote(
        bundle,
        kind,
        fields,
        warmup_runs=warmup_runs,
        num_runs=num_runs,
        runner_binary=runner_binary,
        threads=threads,
        progress=stage_progress,
        **(remote or {}),
    )
    return assemble(bundle, raw, device=device, runner=label, host=host, warmup_runs=warmup_runs, local=False)


# ---------------------------------------------------------------- estimates
def work_per_step(bundle: Bundle) -> tuple[float, float, list[str]]:
    """(MACs, DRAM bytes) of one sampling step for one image, and how they were counted."""
    m = bundle.report.get("model", {})
    macs_call, params = m.get("macs_per_step"), m.get("params")
    if not macs_call or not params:
        raise EdgediffError(
            f"{bundle.root / 'report.json'}: field model.macs_per_step / model.params missing; "
            "recompile the bundle to get an estimate"
        )
    rows = m.get("forward_passes_per_step", 1)
    precision = bundle.manifest["model"].get("precision") or "fp32"
    if precision not in WEIGHT_BYTES:
        raise EdgediffError(
            f"{bundle.root / 'manifest.json'}: field model.precision {precision!r} unknown "
            f"(known: {', '.join(WEIGHT_BYTES)})"
        )
    macs = float(macs_call) * rows
    weight_bytes = params * WEIGHT_BYTES[precision]
    how = [
        f"MACs per step = {macs_call / 1e6:.2f} M per row (report.json model.macs_per_step, PyTorch's FLOP "
        f"counter / 2) x {rows} row(s) per step (classifier-free guidance runs the conditional and "
        f"unconditional rows in one call)",
        f"bytes per step = {params / 1e6:.3f} M params x {WEIGHT_BYTES[precision]:g} B ({precision}) of weights "
        "read once from DRAM per call; activations assumed to stay in caches (not counted)",
    ]
    return macs, weight_bytes, how


def roofline_ms(macs: float, nbytes: float, peak_ops: float, bandwidth_gbps: float) -> tuple[float, str]:
    compute = 2 * macs / peak_ops * 1e3
    memory = nbytes / (bandwidth_gbps * 1e9) * 1e3
    return max(compute, memory), "compute" if compute >= memory else "memory"


def estimate(bundle: Bundle, profile) -> dict:
    """Roofline lower bound on a device that cannot be reached: measured false, assumptions listed."""
    facts = bundle_facts(bundle)
    precision = facts["model"]["precision"] or "fp32"
    cov = bundle.report.get("coverage")
    unit = cov["unit"] if cov and bundle.manifest.get("target") == profile.name else profile.unit_for(precision)
    peak = profile.peak_ops(unit, precision)
    macs, nbytes, how = work_per_step(bundle)
    step, bound = roofline_ms(macs, nbytes, peak, profile.bandwidth_gbps)
    steps = facts["sampler"]["steps"]
    u = profile.unit(unit)
    assumptions = [
        "roofline lower bound: max(2 x MACs / peak, bytes / bandwidth); real kernels reach a fraction of peak, "
        "so the device will be slower than this",
        f"unit {unit} ({u.description or u.delegate}) at {precision}: peak {u.peak_tops[precision]:g} TOPS "
        f"({u.peak_source})",
        f"memory bandwidth {profile.bandwidth_gbps:g} GB/s ({profile.memory.source})",
        *how,
        "the sampler's own work between steps (a few vector ops per pixel) is not counted",
    ]
    if bundle.model_format != profile.format:
        assumptions.append(
            f"this bundle is {bundle.model_format}, the device runs {profile.format}: the estimate "
            f"is for the same model compiled with --target {profile.name}"
        )
    e2e = step * steps
    step_ms = empty_stats() | {"estimate": step}
    e2e_ms = empty_stats() | {"estimate": e2e}
    return {
        "schema": SCHEMA,
        "measured": False,
        "device": profile.name,
        "runner": None,
        "backend": None,
        **facts,
        "images_per_run": 1,
        "warmup_runs": None,
        "num_runs": None,
        "init_ms": None,
        "first_ms": None,
        "step_ms": step_ms,
        "denoise_ms": empty_stats(),
        "e2e_ms": e2e_ms,
        "iterations_per_s": {"estimate": 1e3 / step},
        "images_per_s": {"estimate": 1e3 / e2e},
        "peak_rss_mb": None,
        "memory_mb": {"estimate": nbytes / 1e6, "basis": "weights only; runtime and activations not counted"},
        "bound": bound,
        "macs_per_step": macs,
        "bytes_per_step": nbytes,
        "unit": unit,
        "assumptions": assumptions,
        "versions": versions(),
        "host": {"profile": profile.name, "description": profile.description},
    }


def host_roofline(bundle: Bundle, result: dict) -> dict | None:
    """The host-cpu profile's roofline next to the measurement: how much of its peak the host reached."""
    try:
        profile = load_target("host-cpu")
        precision = result["model"]["precision"] or "fp32"
        unit = profile.unit_for(precision)
        macs, nbytes, _ = work_per_step(bundle)
        step, bound = roofline_ms(macs, nbytes, profile.peak_ops(unit, precision), profile.bandwidth_gbps)
    except EdgediffError:
        return None
    return {
        "measured": False,
        "profile": "host-cpu",
        "unit": unit,
        "step_ms_estimate": step,
        "bound": bound,
        "fraction_of_roofline": step / result["step_ms"]["p50"] if result["step_ms"]["p50"] else None,
    }


# ---------------------------------------------------------------- printing
def _f(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def format_result(r: dict) -> str:
    """A summary in the manner of TFLite's benchmark_model (times in ms)."""
    m, s = r["model"], r["sampler"]
    lines = [
        f"Bundle: [{r['bundle']}]",
        f"Device: [{r['device']}]  "
        + ("MEASURED" if r["measured"] else "ESTIMATED (not measured: roofline, see assumptions)"),
        f"Model: [{m['file']}] {m['format']} {m['precision']}, {_f((m['params'] or 0) / 1e6, '.2f')} M params, "
        f"{_f((m['macs_per_call'] or 0) / 1e9, '.3f')} GMACs per row, {m['rows_per_step']} row(s) per step",
        f"Sampler: [{s['solver']}] {s['steps']} steps, guidance {s['guidance']}",
    ]
    if r["measured"]:
        st, e = r["step_ms"], r["e2e_ms"]
        h = r["host"]
        lines += [
            f"Runner: [{r['runner']}]",
            f"Backend: [{r['backend']}]",
            f"Host: {h.get('cpu_model', h.get('machine', '?'))}, {h.get('cores', '?')} cores, "
            f"{', '.join(h.get('features', [])) or 'no ISA flags read'}",
            f"Num runs: [{r['num_runs']}]  Warmup runs: [{r['warmup_runs']}]  Images per run: [{r['images_per_run']}]",
            f"Initialized session in {r['init_ms']:.3f}ms.",
            f"First inference (cold, per image): {r['first_ms']:.3f}ms",
            f"Step latency (ms): count={st['count']} min={st['min']:.4f} avg={st['avg']:.4f} std={st['std']:.4f} "
            f"p5={st['p5']:.4f} p50={st['p50']:.4f} p90={st['p90']:.4f} p95={st['p95']:.4f} p99={st['p99']:.4f} "
            f"max={st['max']:.4f}",
            f"End-to-end per image (ms): count={e['count']} min={e['min']:.3f} avg={e['avg']:.3f} std={e['std']:.3f} "
            f"p50={e['p50']:.3f} p90={e['p90']:.3f} max={e['max']:.3f}",
            f"Throughput: {r['iterations_per_s']:.2f} iterations/s, {r['images_per_s']:.3f} images/s",
            f"Peak memory footprint (MB): {_f(r['peak_rss_mb'], '.1f')} (peak RSS of the process that ran the bundle)",
        ]
        roof = r.get("roofline")
        if roof:
            lines.append(
                f"Roofline (host-cpu profile, estimated): {roof['step_ms_estimate']:.4f} ms/step "
                f"({roof['bound']}-bound); the measured p50 runs at "
                f"{100 * roof['fraction_of_roofline']:.1f} % of that speed"
            )
    else:
        lines += [
            f"Unit: [{r['unit']}]  {r['bound']}-bound",
            f"Step latency (ms, estimated lower bound): {r['step_ms']['estimate']:.4f}",
            f"End-to-end per image (ms, estimated lower bound): {r['e2e_ms']['estimate']:.3f}",
            f"Throughput (estimated upper bound): {r['iterations_per_s']['estimate']:.2f} iterations/s",
            f"Weights in memory (MB, estimated): {r['memory_mb']['estimate']:.2f}",
            "Assumptions:",
            *(f"  - {a}" for a in r["assumptions"]),
        ]
    lines.append(f"Size on disk (MB): {r['size_mb']:.3f} (model {r['model_size_mb']:.3f})")
    cov = r.get("coverage")
    if cov:
        lines.append(
            f"Operator coverage ({cov['op_types']} op types, target {cov['target']}, * = the unit that runs it):"
        )
        for name, u in cov["units"].items():
            lines.append(
                f"  {'*' if name == cov['unit'] else ' '}{name:5} {u['supported']} supported, "
                f"{u['rewritten']} rewritten, {u['unsupported']} unsupported, "
                f"{u['not_documented']} not documented"
            )
    else:
        lines.append("Operator coverage: not in report.json (bundle compiled before coverage was recorded)")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()))
    return "\n".join(lines)


__all__ = ["STAT_KEYS", "SCHEMA", "bench", "estimate", "format_result", "parse_device", "summarize"]
