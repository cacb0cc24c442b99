"""The C text-to-image pipeline: per-component times and peak RSS, normal vs --low-memory.

    python benchmarks/c_text_pipeline.py [--bundle DIR] [--prompt TEXT] [-n 1] [--runs 5] [--threads 0]

Default bundle: builtin:digits-sd compiled for host-cpu (its recipe defaults) into a temporary
folder. Both modes run csrc's `edgediff-run BUNDLE --prompt P --bench --json` (OpenVINO CPU, f32
hint), each in its own process, so each peak RSS (VmHWM) is that mode's own:

- normal: the three graphs (text encoder, denoiser, VAE decoder) compiled once at init, kept;
- low memory: each graph read + compiled just before its phase and freed after it.

Printed: the graphs' file sizes, tokenize / load / text encode / per step / decode / end to end
(first run and warm average), peak RSS of each mode and the ratio low-memory / normal, with the
CPU model and its ISA flags. The machine may be shared with other jobs: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "csrc"


def build_runner(build: Path) -> Path:
    r = subprocess.run(
        ["make", "-s", "-C", str(C_DIR), "runner", f"BUILD={build}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        sys.exit("building edgediff-run failed:\n" + r.stdout + r.stderr)
    return build / "edgediff-run"


def compile_bundle(dest: Path) -> Path:
    from edgediff.cli.main import main as cli

    print(f"compiling builtin:digits-sd into {dest} ...", flush=True)
    if cli(["compile", "builtin:digits-sd", "--target", "host-cpu", "-o", str(dest)]) != 0:
        sys.exit("compile failed")
    return dest


def bench(runner: Path, bundle: Path, args, low: bool, out: Path) -> dict:
    cmd = [str(runner), str(bundle), "--prompt", args.prompt, "-n", str(args.n), "--bench"]
    cmd += ["--runs", str(args.runs), "--threads", str(args.threads), "--json", str(out)]
    if low:
        cmd.append("--low-memory")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"edgediff-run failed: {r.stderr}")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--prompt", default="a handwritten 7")
    ap.add_argument("-n", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    from edgediff.targets.host import detect_host

    host = detect_host()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runner = build_runner(tmp / "build")
        bundle = args.bundle or compile_bundle(tmp / "digits-sd")
        manifest = json.loads((bundle / "manifest.json").read_text())
        files = manifest["files"]
        graphs = {
            "text encoder": manifest["components"]["text_encoder"]["file"],
            "denoiser": manifest["model"]["file"],
            "VAE decoder": manifest["components"]["vae_decoder"]["file"],
        }
        modes = {"normal": bench(runner, bundle, args, False, tmp / "n.json")}
        modes["low memory"] = bench(runner, bundle, args, True, tmp / "l.json")
    print(f"\nC text pipeline, {bundle}: {manifest['recipe']['sampler']}, {modes['normal']['steps']} steps,")
    print(f"  {args.n} image(s), guidance {modes['normal']['guidance']:g}, {args.runs} warm runs per mode")
    print(
        f"  host: {host.get('cpu_model', '?')}, flags {' '.join(host.get('features', []))}, {host.get('cores')} cores"
    )
    print("  (the machine may be shared with other jobs; compare the ratios)")
    for name, f in graphs.items():
        print(f"  {name:<13}{f} ({files[f]['bytes'] / 2**20:.2f} MiB)")
    print(f"\n  {'':<26}{'normal':>12}{'low memory':>14}")

    def row(label, fn):
        a, b = fn(modes["normal"]), fn(modes["low memory"])
        print(f"  {label:<26}{a:>12.3f}{b:>14.3f}")

    mean = statistics.fmean
    row("init ms", lambda m: m["init_ms"])
    row("first run ms", lambda m: m["first_ms"])
    row("warm run ms (avg)", lambda m: mean(m["e2e_ms"]))
    row("  tokenize ms", lambda m: mean(m["tokenize_ms"]))
    row("  load + compile ms", lambda m: mean(m["load_ms"]))
    row("  text encode ms", lambda m: mean(m["text_encode_ms"]))
    row("  per step ms", lambda m: mean(m["step_ms"]))
    row("  decode ms", lambda m: mean(m["decode_ms"]))
    row("peak RSS MB", lambda m: m["peak_rss_mb"])
    ratio = modes["low memory"]["peak_rss_mb"] / modes["normal"]["peak_rss_mb"]
    slower = mean(modes["low memory"]["e2e_ms"]) / mean(modes["normal"]["e2e_ms"])
    print(f"\n  peak RSS low memory / normal = {ratio:.3f}; warm run time low memory / normal = {slower:.2f}x")


if __name__ == "__main__":
    main()
