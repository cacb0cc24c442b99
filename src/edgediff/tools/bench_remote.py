"""`edgediff bench --device ssh://USER@HOST[:PORT] | adb:SERIAL`: run the bundle on another machine.

    local: bundle/ + edgediff-run (+ lib/: the OpenVINO libraries it loads) ──staging dir──┐
    ssh:   tar | ssh "mkdir DIR && tar -x"          adb: adb -s SERIAL push staging/. DIR  │
    there: cd DIR && LD_LIBRARY_PATH=DIR/lib ./edgediff-run bundle -n 1 --bench            │
                 --runs R --warmup W --json DIR/bench.json; cat DIR/bench.json   <─────────┘
    back:  the JSON (raw times, peak RSS of the runner on the device) + uname/nproc/cpuinfo

The runner must match the device: the device's `uname -m` is compared with the binary's ELF
machine field before anything is copied. The default binary is csrc/build/edgediff-run
(x86-64 with OpenVINO, `make -C csrc runner`); for an arm64 device build edgediff-run
against an aarch64 OpenVINO (CC=aarch64-linux-gnu-gcc, OV_DIR=the aarch64 wheel's openvino/)
and pass it with --runner-binary and its library folder with --runner-libs.
Tools used: ssh and tar (no scp or sftp server needed) for ssh; adb for Android.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.bundle import Bundle
from edgediff.targets.host import INTERESTING
from edgediff.tools.bench import check_runner_can_run, find_runner, runner_args

# ELF e_machine -> `uname -m` names
ELF_MACHINES = {0x3E: ("x86_64", "amd64"), 0xB7: ("aarch64", "arm64", "armv8l"), 0x28: ("armv7l", "arm")}
# the OpenVINO libraries edgediff-run needs for the CPU plugin reading ONNX or IR
OV_LIBS = (
    "libopenvino.so",
    "libopenvino_c.so",
    "libopenvino_intel_cpu_plugin.so",
    "libopenvino_arm_cpu_plugin.so",
    "libopenvino_ir_frontend.so",
    "libopenvino_onnx_frontend.so",
    "libtbb.so",
    "libtbbmalloc.so",
    "libtbbbind_2_5.so",
    "libhwloc.so",
)
ADB_DIR = "/data/local/tmp/edgediff-bench"
REMOTE_STAGES = ("probe", "copy", "run", "clean up")
HOST_PROBE = (
    "uname -m; uname -sr; (nproc || getconf _NPROCESSORS_ONLN) 2>/dev/null; "
    "grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || echo 'flags:'; "
    "grep -m1 -i -E '^(model name|Hardware|cpu model)' /proc/cpuinfo 2>/dev/null || true"
)


def elf_machine(path: Path) -> tuple[str, ...] | None:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return None
    order = "little" if head[5] == 1 else "big"
    return ELF_MACHINES.get(int.from_bytes(head[18:20], order), (f"elf-machine-{head[18]}",))


def openvino_libs() -> list[Path]:
    """The libraries of the local openvino wheel that edgediff-run loads (its rpath points there)."""
    import importlib.util

    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.submodule_search_locations:
        return []
    libs = Path(list(spec.submodule_search_locations)[0]) / "libs"
    return sorted(p for p in libs.glob("*.so*") if any(p.name.startswith(n) for n in OV_LIBS))


class Ssh:
    def __init__(self, user: str, host: str, port: int, *, identity: str | None = None, options: tuple[str, ...] = ()):
        self.target = f"{user}@{host}"
        self.base = ["ssh", "-p", str(port), "-o", "BatchMode=yes"]
        if identity:
            self.base += ["-i", identity]
        for o in options:
            self.base += ["-o", o]
        self.where = f"ssh://{user}@{host}:{port}"

    def run(self, command: str, *, stdin=None, timeout: float = 600) -> str:
        r = subprocess.run(
            [*self.base, self.target, command], stdin=stdin, capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0:
            raise EdgediffError(
                f"{self.where}: `{command}` failed (exit {r.returncode}): "
                f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'no message'}"
            )
        return r.stdout

    def mkdtemp(self) -> str:
        return self.run("mktemp -d /tmp/edgediff-bench.XXXXXX").strip()

    def push_dir(self, local: Path, remote: str) -> None:
        tar = subprocess.Popen(["tar", "-h", "-C", str(local), "-cf", "-", "."], stdout=subprocess.PIPE)
        try:
            self.run(f"tar -C {shlex.quote(remote)} -xf -", stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar.wait()


class Adb:
    def __init__(self, serial: str, *, adb: str = "adb"):
        self.base = [adb, "-s", serial]
        self.where = f"adb:{serial}"

    def _call(self, args: list[str], timeout: float = 600) -> str:
        r = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise EdgediffError(
                f"{self.where}: `adb {' '.join(args)}` failed (exit {r.returncode}): "
                f"{r.stderr.strip() or r.stdout.strip() or 'no message'}"
            )
        return r.stdout

    def run(self, command: str, *, timeout: float = 600) -> str:
        return self._call(["shell", command], timeout)

    def mkdtemp(self) -> str:
        self.run(f"rm -rf {ADB_DIR} && mkdir -p {ADB_DIR}")
        return ADB_DIR

    def push_dir(self, local: Path, remote: str) -> None:
        self._call(["push", f"{local}/.", remote])


def stage(bundle: Bundle, exe: Path, libs: list[Path], dest: Path) -> None:
    """Symlinks (tar -h and adb push follow them): bundle/, edgediff-run, lib/*."""
    (dest / "bundle").symlink_to(bundle.root.resolve(), target_is_directory=True)
    (dest / "edgediff-run").symlink_to(exe.resolve())
    (dest / "lib").mkdir()
    for lib in libs:
        (dest / "lib" / lib.name).symlink_to(lib.resolve())


def parse_probe(text: str) -> dict:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    info: dict = {"machine": lines[0] if lines else "?"}
    if len(lines) > 1:
        info["os"] = lines[1]
    if len(lines) > 2 and lines[2].isdigit():
        info["cores"] = int(lines[2])
    if len(lines) > 3:
        flags = set(lines[3].partition(":")[2].split())
        info["features"] = [f for f in INTERESTING if f in flags]
    if len(lines) > 4:
        info["cpu_model"] = lines[4].partition(":")[2].strip()
    return info


def measure_remote(
    bundle: Bundle,
    kind: str,
    fields: dict,
    *,
    warmup_runs: int,
    num_runs: int,
    runner_binary: str | None = None,
    runner_libs: str | None = None,
    threads: int = 0,
    identity: str | None = None,
    ssh_options: tuple[str, ...] = (),
    adb: str = "adb",
    keep: bool = False,
    progress=None,
) -> tuple[dict, dict, str]:
    """(raw runner JSON, device description, runner label). progress(stage) is called as each of
    REMOTE_STAGES starts."""
    progress = progress or (lambda stage: None)
    check_runner_can_run(
        bundle,
        instead="on a device such a bundle runs through the app's own runtime "
        "(csrc/examples/embed.c shows the backend interface)",
    )
    if kind == "ssh":
        if shutil.which("ssh") is None or shutil.which("tar") is None:
            raise EdgediffError("ssh and tar are needed on PATH for --device ssh://...")
        dev = Ssh(fields["user"], fields["host"], fields["port"], identity=identity, options=tuple(ssh_options))
    else:
        if shutil.which(adb) is None:
            raise EdgediffError(f"{adb} not found on PATH (Android platform-tools) for --device adb:SERIAL")
        dev = Adb(fields["serial"], adb=adb)
    exe = find_runner(runner_binary)
    progress("probe")
    host = parse_probe(dev.run(HOST_PROBE))
    machines = elf_machine(exe)
    if machines is None:
        raise EdgediffError(f"{exe}: not an ELF executable")
    if host["machine"] not in machines:
        raise EdgediffError(
            f"{exe} is built for {machines[0]} but {dev.where} is {host['machine']}; build "
            f"edgediff-run for {host['machine']} and pass --runner-binary (and --runner-libs)"
        )
    libs = sorted(Path(runner_libs).glob("*.so*")) if runner_libs else openvino_libs()
    remote = dev.mkdtemp()
    q = shlex.quote(remote)
    try:
        progress("copy")
        with tempfile.TemporaryDirectory() as tmp:
            stage(bundle, exe, libs, Path(tmp))
            dev.push_dir(Path(tmp), remote)
        args = runner_args(
            "bundle", warmup_runs=warmup_runs, num_runs=num_runs, json_path="bench.json", threads=threads
        )
        progress("run")
        out = dev.run(
            f"cd {q} && LD_LIBRARY_PATH={q}/lib ./edgediff-run {' '.join(map(shlex.quote, args))} "
            f">/dev/null && cat bench.json"
        )
    finally:
        if not keep:
            progress("clean up")
            try:
                dev.run(f"rm -rf {q}")
            except EdgediffError:
                pass
    try:
        raw = json.loads(out)
    except json.JSONDecodeError as e:
        raise EdgediffError(f"{dev.where}: edgediff-run's bench.json is not JSON ({e.msg} at {e.pos})") from None
    return raw, host, f"edgediff-run on {dev.where} ({exe.name}, {len(libs)} libraries copied)"
