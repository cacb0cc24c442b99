"""Load-time detection for `detect = "host"` profiles (host-cpu.toml).

The file stays static; what this machine has is read when the profile loads and merged in:

    cores      CPUs this process may run on (sched_getaffinity)
    features   ISA flags that matter for inference (/proc/cpuinfo "flags" or "Features")
    memory     MemTotal, and MemAvailable as the budget (/proc/meminfo, capped by cgroup memory.max)
    peak_tops  of every unit: cores x clock x ops-per-cycle for the detected ISA (an estimate)

Ops per cycle per core assume two vector FMA pipes, the common case for the ISA; they are
ceilings for a roofline, not predictions. Anything that cannot be read keeps the file's value.
"""

from __future__ import annotations

import os
import platform
from dataclasses import replace
from pathlib import Path

from edgediff.targets.profile import ComputeUnit, Memory, TargetProfile

# The flags worth showing: vector width, dot products, half and bfloat16 arithmetic, matrix units.
INTERESTING = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "fphp",
    "asimdhp",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)


def _fp32_per_cycle(f: set[str]) -> int:
    if "avx512f" in f:
        return 64  # 2 FMA pipes x 16 lanes x 2 ops
    if "avx2" in f and "fma" in f:
        return 32  # 2 x 8 x 2
    if "asimd" in f:
        return 16  # 2 x 4 x 2 (128-bit NEON)
    return 8


def _fp16_per_cycle(f: set[str]) -> int:
    if "avx512_fp16" in f or "asimdhp" in f:
        return 2 * _fp32_per_cycle(f)  # native half arithmetic: twice the lanes
    return _fp32_per_cycle(f)  # F16C / conversion only: computed at fp32 rate


def _int8_per_cycle(f: set[str]) -> int:
    if "amx_int8" in f:
        return 2048  # AMX TMUL: 1024 int8 multiply-adds per cycle
    if "avx512_vnni" in f:
        return 256  # 2 x 64 multiply-adds x 2 (vpdpbusd)
    if "avx_vnni" in f:
        return 128
    if "i8mm" in f:
        return 128  # smmla: 2 pipes x 32 multiply-adds x 2
    if "asimddp" in f:
        return 64  # sdot: 2 pipes x 16 multiply-adds x 2
    return 2 * _fp32_per_cycle(f)


_PER_CYCLE = {
    "fp32": _fp32_per_cycle,
    "fp16": _fp16_per_cycle,
    "int8": _int8_per_cycle,
    "int4": _fp32_per_cycle,  # weight-only: unpacked to float, computed at the fp32 rate
    "bf16": lambda f: (
        1024
        if "amx_bf16" in f
        else (2 * _fp32_per_cycle(f) if "avx512_bf16" in f or "bf16" in f else _fp32_per_cycle(f))
    ),
}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def detect_host() -> dict:
    """What this machine has, as far as /proc and /sys tell; missing entries are left out."""
    info: dict = {"machine": platform.machine()}
    try:
        info["cores"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        info["cores"] = os.cpu_count() or 1
    cpuinfo = _read("/proc/cpuinfo")
    flags: set[str] = set()
    mhz = []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "model name" and "cpu_model" not in info:
            info["cpu_model"] = value.strip()
        elif key == "cpu MHz":
            mhz.append(float(value))
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    if max_khz.isdigit():
        info["mhz"] = int(max_khz) / 1000
    elif mhz:
        info["mhz"] = max(mhz)
    if flags:
        info["features"] = [f for f in INTERESTING if f in flags]
    meminfo = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            meminfo[key] = int(value.split()[0]) // 1024
    cgroup_max = _read("/sys/fs/cgroup/memory.max").strip()
    limit = int(cgroup_max) // 2**20 if cgroup_max.isdigit() else None
    if "MemTotal" in meminfo:
        info["memory_total_mb"] = min(meminfo["MemTotal"], limit or meminfo["MemTotal"])
    if "MemAvailable" in meminfo:
        info["memory_available_mb"] = min(meminfo["MemAvailable"], limit or meminfo["MemAvailable"])
    return info


def _peak_tops(unit: ComputeUnit, info: dict) -> tuple[dict[str, float], str] | None:
    if "mhz" not in info or "features" not in info:
        return None
    f = set(info["features"])
    peaks = {p: info["cores"] * info["mhz"] * 1e6 * _PER_CYCLE[p](f) / 1e12 for p in unit.precisions if p in _PER_CYCLE}
    if set(peaks) != set(unit.precisions):
        return None
    basis = (
        f"estimate at load: {info['cores']} cores x {info['mhz']:.0f} MHz x ops/cycle for "
        f"{', '.join(info['features']) or 'scalar'} (two vector pipes assumed; src/edgediff/targets/host.py)"
    )
    return peaks, basis


def merge_host(profile: TargetProfile, info: dict | None = None) -> TargetProfile:
    """`profile` with this machine's cores, features, memory and CPU peaks merged in."""
    info = detect_host() if info is None else info
    units = {}
    for name, unit in profile.compute_units.items():
        peak = _peak_tops(unit, info)
        units[name] = replace(unit, peak_tops=peak[0], peak_source=peak[1]) if peak else unit
    mem = profile.memory
    if "memory_total_mb" in info and "memory_available_mb" in info:
        mem = Memory(
            total_mb=info["memory_total_mb"],
            budget_mb=info["memory_available_mb"],
            bandwidth_gbps=mem.bandwidth_gbps,
            source=f"detected at load: /proc/meminfo (budget = MemAvailable); bandwidth: {mem.source}",
        )
    return replace(
        profile,
        compute_units=units,
        memory=mem,
        cores=info.get("cores", profile.cores),
        features=tuple(info.get("features", profile.features)),
        detected=info,
    )
