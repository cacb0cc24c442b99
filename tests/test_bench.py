"""edgediff bench and edgediff report (src/edgediff/tools/bench.py, bench_remote.py, report.py).

- the statistics against their definitions; device strings; the Pareto front;
- a host run's JSON schema, its peak RSS being the worker's own (not pytest's);
- an estimate: measured false, assumptions listed, the roofline arithmetic;
- ssh for real: an sshd started here on 127.0.0.1 (throwaway host and user keys, this user),
  the bundle and edgediff-run (+ OpenVINO libraries) copied over and run there;
- adb: the command lines, through a fake adb on PATH (no device here);
- report: report.md, report.json and the PNGs.
"""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgediff.cli.main import main as cli
from edgediff.core.errors import EdgediffError
from edgediff.tools import bench as B

C_DIR = Path(__file__).resolve().parents[1] / "csrc"
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)

try:
    import openvino  # noqa: F401

    HAVE_OV = True
except ImportError:
    HAVE_OV = False


# ---- statistics and parsing ---------------------------------------------------------------------


def test_summarize_against_definitions():
    v = [4.0, 1.0, 3.0, 2.0, 10.0]
    s = B.summarize(v)
    assert list(s) == list(B.STAT_KEYS)
    assert s["count"] == 5 and s["min"] == 1.0 and s["max"] == 10.0 and s["avg"] == 4.0
    assert s["std"] == pytest.approx(np.sqrt(((np.array(v) - 4.0) ** 2).mean()))  # population std
    # linear interpolation between order statistics: sorted 1 2 3 4 10, p90 at position 3.6
    assert s["p50"] == 3.0 and s["p90"] == pytest.approx(4 + 0.6 * 6) and s["p5"] == pytest.approx(1.2)
    assert s["p99"] == pytest.approx(4 + 0.96 * 6)
    one = B.summarize([7.5])
    assert all(one[k] == 7.5 for k in ("min", "avg", "p5", "p50", "p99", "max")) and one["std"] == 0
    with pytest.raises(EdgediffError, match="zero runs"):
        B.summarize([])


def test_parse_device():
    assert B.parse_device("host") == ("host", {})
    assert B.parse_device("ssh://me@10.0.0.2") == ("ssh", {"user": "me", "host": "10.0.0.2", "port": 22})
    assert B.parse_device("ssh://me@box:2222") == ("ssh", {"user": "me", "host": "box", "port": 2222})
    assert B.parse_device("ssh://me@[::1]:2200") == ("ssh", {"user": "me", "host": "::1", "port": 2200})
    assert B.parse_device("adb:R5CT1234") == ("adb", {"serial": "R5CT1234"})
    assert B.parse_device("pixel-8") == ("profile", {"name": "pixel-8"})
    for bad, msg in (
        ("ssh://box", "USER@HOST"),
        ("ssh://me@box:x", "port 'x'"),
        ("ssh://me@box:70000", "1..65535"),
        ("adb:", "adb:SERIAL"),
        ("pixel-9", "device profile"),
    ):
        with pytest.raises(EdgediffError, match=msg):
            B.parse_device(bad)


def test_pareto_front():
    from edgediff.tools.report import pareto_front

    lat = [10.0, 5.0, 7.0, 20.0, 5.0]
    psnr = [40.0, 30.0, 35.0, 50.0, 20.0]
    assert pareto_front(lat, psnr) == [1, 2, 0, 3]  # point 4 is beaten by point 1 (same speed, better)
    fd = [0.30, 0.50, 0.60, 0.20, 0.40]
    assert pareto_front(lat, fd, higher_is_better=False) == [4, 0, 3]


# ---- host ----------------------------------------------------------------------------------------


def own_vmhwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


@pytest.fixture(scope="module")
def host_result(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "host.json"
    assert cli(["bench", str(tiny_bundle.root), "--warmup-runs", "1", "--num-runs", "3", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_host_bench_json_schema(host_result, tiny_bundle):
    r = host_result
    for key in (
        "step_ms",
        "e2e_ms",
        "init_ms",
        "first_ms",
        "peak_rss_mb",
        "size_mb",
        "measured",
        "device",
        "denoise_ms",
        "iterations_per_s",
        "images_per_s",
        "coverage",
        "versions",
        "host",
        "model",
        "sampler",
    ):
        assert key in r, key
    assert r["measured"] is True and r["device"] == "host" and r["schema"] == B.SCHEMA
    steps = len(tiny_bundle.scheduler["plan"]["timesteps"])
    assert list(r["step_ms"]) == list(B.STAT_KEYS) and r["step_ms"]["count"] == 3 * steps
    assert r["e2e_ms"]["count"] == 3 and len(r["step_ms_samples"]) == 3 * steps
    st = r["step_ms"]
    assert 0 < st["min"] <= st["p5"] <= st["p50"] <= st["p90"] <= st["p95"] <= st["p99"] <= st["max"]
    assert r["iterations_per_s"] == pytest.approx(1e3 / st["avg"])
    # a run holds its steps: never shorter than their sum (how close it is depends on the machine's
    # load, a figure benchmarks/host_bench_loop.py prints; a test does not depend on it)
    assert r["e2e_ms"]["avg"] + 1e-3 >= sum(r["step_ms_samples"]) / r["e2e_ms"]["count"] > 0  # 1e-3: rounding
    assert r["init_ms"] > 0 and r["first_ms"] > 0
    assert r["size_mb"] * 1e6 == pytest.approx(
        sum(p.stat().st_size for p in tiny_bundle.root.rglob("*") if p.is_file())
    )
    assert r["coverage"]["unit"] == "cpu" and r["coverage"]["units"]["cpu"]["unsupported"] == 0
    assert "ONNX Runtime" in r["backend"] and r["versions"]["onnxruntime"]
    # the worker's own peak, not this pytest process's (torch alone is larger than the worker)
    assert 10 < r["peak_rss_mb"] < own_vmhwm_mb()


def test_bench_prints_a_summary(tiny_bundle, capsys):
    assert cli(["bench", str(tiny_bundle.root), "--warmup-runs", "0", "--num-runs", "1"]) == 0
    text = capsys.readouterr().out
    for label in (
        "MEASURED",
        "Initialized session in",
        "First inference (cold",
        "Step latency (ms): count=",
        "p95=",
        "p99=",
        "Peak memory footprint (MB)",
        "Size on disk",
        "Operator coverage",
        "Versions:",
    ):
        assert label in text, label


def test_bench_errors_name_the_input(tmp_path, capsys):
    assert cli(["bench", str(tmp_path / "nope")]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
    assert cli(["bench", str(tmp_path), "--device", "ssh://nobody"]) == 2
    assert "ssh://USER@HOST" in capsys.readouterr().err


# ---- estimates -----------------------------------------------------------------------------------


def test_estimate_is_labelled_and_follows_the_roofline(tiny_bundle, tmp_path, capsys):
    from edgediff.targets import load_target

    out = tmp_path / "est.json"
    assert cli(["bench", str(tiny_bundle.root), "--device", "pixel-8", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ESTIMATED" in text and "MEASURED" not in text and "Assumptions:" in text
    r = json.loads(out.read_text())
    assert r["measured"] is False and r["device"] == "pixel-8"
    assert len(r["assumptions"]) >= 4 and any("lower bound" in a for a in r["assumptions"])
    assert any("tflite" in a for a in r["assumptions"])  # an onnx bundle estimated for a tflite device says so
    # no measured figure is filled in
    assert all(r["step_ms"][k] is None for k in B.STAT_KEYS) and r["peak_rss_mb"] is None and r["first_ms"] is None
    m = tiny_bundle.report["model"]
    macs = m["macs_per_step"] * m["forward_passes_per_step"]
    p = load_target("pixel-8")
    unit = p.unit_for("fp32")
    want = max(2 * macs / p.peak_ops(unit, "fp32"), m["params"] * 4 / (p.bandwidth_gbps * 1e9)) * 1e3
    assert r["step_ms"]["estimate"] == pytest.approx(want)
    steps = len(tiny_bundle.scheduler["plan"]["timesteps"])
    assert r["e2e_ms"]["estimate"] == pytest.approx(want * steps)


def test_estimate_for_a_precision_the_device_lacks(tiny_bundle):
    from edgediff.runtimes.bundle import load_bundle
    from edgediff.targets import load_target

    b = load_bundle(tiny_bundle.root)
    b.manifest["model"]["precision"] = "int4"
    with pytest.raises(EdgediffError, match="pixel-8.*int4"):
        B.estimate(b, load_target("pixel-8"))


# ---- ssh, for real -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if SSHD is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server; .ci/run does)")
    if not shutil.which("ssh-keygen") or not shutil.which("ssh"):
        pytest.skip("ssh / ssh-keygen are not installed (apt-get install openssh-client)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    if os.getuid() == 0:  # sshd running as root insists on its privilege separation directory
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    (d / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {d / 'host_key'}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w")
    )
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    opts = [
        "StrictHostKeyChecking=no",
        f"UserKnownHostsFile={d / 'known_hosts'}",
        "LogLevel=ERROR",
        "ConnectTimeout=10",
    ]
    ssh = (
        ["ssh", "-p", str(port), "-i", str(d / "user_key"), "-o", "BatchMode=yes"]
        + [x for o in opts for x in ("-o", o)]
        + [f"{user}@127.0.0.1"]
    )
    try:
        for _ in range(50):  # until it accepts connections
            if proc.poll() is not None:
                pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()}")
            if subprocess.run([*ssh, "true"], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"sshd on port {port} never accepted the key: {(d / 'sshd.log').read_text()}")
        yield {"device": f"ssh://{user}@127.0.0.1:{port}", "identity": str(d / "user_key"), "options": opts, "ssh": ssh}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    if not (HAVE_OV and shutil.which("make") and shutil.which("cc")):
        pytest.skip("edgediff-run needs make, a C compiler and openvino")
    out = tmp_path_factory.mktemp("cbuild")
    r = subprocess.run(
        ["make", "-s", "-C", str(C_DIR), "runner", f"BUILD={out}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out / "edgediff-run"


def test_bench_over_ssh(sshd, runner, tiny_bundle, tmp_path):
    out = tmp_path / "ssh.json"
    args = [
        "bench",
        str(tiny_bundle.root),
        "--device",
        sshd["device"],
        "--runner-binary",
        str(runner),
        "--identity",
        sshd["identity"],
        "--warmup-runs",
        "1",
        "--num-runs",
        "3",
        "--keep-remote",
        "--json",
        str(out),
    ]
    for o in sshd["options"]:
        args += ["--ssh-option", o]
    assert cli(args) == 0
    r = json.loads(out.read_text())
    steps = len(tiny_bundle.scheduler["plan"]["timesteps"])
    assert r["measured"] is True and r["device"] == sshd["device"]
    assert r["step_ms"]["count"] == 3 * steps and r["e2e_ms"]["count"] == 3 and r["warmup_runs"] == 1
    assert "OpenVINO" in r["backend"] and "ssh://" in r["runner"]
    assert r["host"]["machine"] == "x86_64" and r["host"]["cores"] >= 1
    assert 10 < r["peak_rss_mb"] < own_vmhwm_mb()  # the runner's own, measured there
    # the copy is self-contained: the runner there resolves OpenVINO from the copied lib/ folder
    remote = subprocess.run(
        [*sshd["ssh"], "ls -dt /tmp/edgediff-bench.* | head -1"], capture_output=True, text=True, check=True
    ).stdout.strip()
    ldd = subprocess.run(
        [*sshd["ssh"], f"cd {remote} && LD_LIBRARY_PATH={remote}/lib ldd ./edgediff-run"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{remote}/lib/libopenvino_c.so" in ldd, ldd
    subprocess.run([*sshd["ssh"], f"rm -rf {remote}"], check=True)


def test_remote_refuses_a_runner_for_another_machine(sshd, tiny_bundle, tmp_path):
    fake = tmp_path / "edgediff-run-arm64"
    fake.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(11) + (0xB7).to_bytes(2, "little") + bytes(44))
    with pytest.raises(EdgediffError, match="built for aarch64 but ssh://.* is x86_64"):
        B.bench(
            tiny_bundle.root,
            device=sshd["device"],
            runner_binary=str(fake),
            remote={"identity": sshd["identity"], "ssh_options": tuple(sshd["options"])},
        )


# ---- adb: the command lines, through a fake adb ------------------------------------------------------

FAKE_ADB = r"""#!/bin/sh
# records its arguments, answers like a device would
printf '%s\n' "$*" >> "$(dirname "$0")/adb.log"
case "$*" in
  *"shell uname -m"*) printf 'aarch64\nLinux 6.1.25-android14\n9\nFeatures\t: fp asimd asimddp i8mm bf16\nHardware\t: Tensor G3\n' ;;
  *"./edgediff-run"*) cat "$(dirname "$0")/canned.json" ;;
esac
exit 0
"""


def test_adb_command_lines(tiny_bundle, tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "adb").write_text(FAKE_ADB)
    (d / "adb").chmod((d / "adb").stat().st_mode | stat.S_IEXEC)
    steps = len(tiny_bundle.scheduler["plan"]["timesteps"])
    (d / "canned.json").write_text(
        json.dumps(
            {
                "runner": "edgediff-run",
                "backend": "OpenVINO 2026 CPU",
                "images": 1,
                "steps": steps,
                "init_ms": 10.0,
                "first_ms": 5.0,
                "warmup_runs": 1,
                "e2e_ms": [4.0, 4.0],
                "step_ms": [1.0] * (2 * steps),
                "denoise_ms": [0.9] * (2 * steps),
                "peak_rss_mb": 50.0,
            }
        )
    )
    arm = tmp_path / "edgediff-run-arm64"
    arm.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(11) + (0xB7).to_bytes(2, "little") + bytes(44))
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "libopenvino_c.so.2641").write_bytes(b"x")
    r = B.bench(
        tiny_bundle.root,
        device="adb:R5CT1234",
        warmup_runs=1,
        num_runs=2,
        runner_binary=str(arm),
        remote={"adb": str(d / "adb"), "runner_libs": str(libs)},
    )
    log = (d / "adb.log").read_text().splitlines()
    assert all(line.startswith("-s R5CT1234 ") for line in log), log
    pushes = [ln for ln in log if " push " in ln]
    assert len(pushes) == 1 and pushes[0].endswith("/. /data/local/tmp/edgediff-bench")
    run = [ln for ln in log if "./edgediff-run" in ln]
    assert run == [
        "-s R5CT1234 shell cd /data/local/tmp/edgediff-bench && "
        "LD_LIBRARY_PATH=/data/local/tmp/edgediff-bench/lib ./edgediff-run bundle -n 1 --bench "
        "--runs 2 --warmup 1 --json bench.json >/dev/null && cat bench.json"
    ]
    assert log[-1] == "-s R5CT1234 shell rm -rf /data/local/tmp/edgediff-bench"  # cleaned up
    assert r["measured"] is True and r["device"] == "adb:R5CT1234" and r["step_ms"]["p50"] == 1.0
    assert r["host"]["machine"] == "aarch64" and r["host"]["cores"] == 9 and "i8mm" in r["host"]["features"]
    assert r["host"]["cpu_model"] == "Tensor G3" and r["peak_rss_mb"] == 50.0


# ---- report --------------------------------------------------------------------------------------


def test_report_writes_markdown_and_figures(tiny_bundle, bundle_copy, host_result, tmp_path, capsys):
    est = tmp_path / "est.json"
    assert cli(["bench", str(bundle_copy), "--device", "pixel-8", "--json", str(est)]) == 0
    measured = tmp_path / "host.json"
    measured.write_text(json.dumps(host_result))
    out = tmp_path / "report"
    assert (
        cli(
            [
                "report",
                str(tiny_bundle.root),
                str(bundle_copy),
                "-o",
                str(out),
                "-n",
                "6",
                "--bench-json",
                str(measured),
                "--bench-json",
                str(est),
            ]
        )
        == 0
    )
    md = (out / "report.md").read_text()
    for png in ("quality_latency.png", "step_latency.png", "size.png", "images.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in md
    assert "*estimated*" in md and "Assumptions of the estimate for copy on pixel-8" in md
    data = json.loads((out / "report.json").read_text())
    assert [d["bench"]["measured"] for d in data] == [True, False]
    q = data[0]["quality"]
    assert q["num_samples"] == 6 and q["psnr_db"] > 60  # an FP32 ONNX bundle vs its PyTorch reference
    assert q["fd_digits"] is None  # not the digits model
    assert data[0]["quality"]["psnr_db_vs_first_reference"] == pytest.approx(q["psnr_db"])  # its own reference
    assert data[1]["quality"]["psnr_db_vs_first_reference"] is not None
    assert "wrote" in capsys.readouterr().out


def test_report_rejects_a_foreign_json(tiny_bundle, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"bundle": "x"}))
    assert cli(["report", str(tiny_bundle.root), "-o", str(tmp_path / "r"), "--bench-json", str(bad)]) == 2
    assert f"{bad}: missing field 'measured'" in capsys.readouterr().err


def test_host_bench_with_the_c_runner(runner, tiny_bundle):
    r = B.bench(tiny_bundle.root, warmup_runs=1, num_runs=2, runner="c", runner_binary=str(runner))
    steps = len(tiny_bundle.scheduler["plan"]["timesteps"])
    assert r["measured"] is True and "edgediff-run" in r["runner"] and "OpenVINO" in r["backend"]
    assert r["step_ms"]["count"] == 2 * steps and r["warmup_runs"] == 1
    assert 10 < r["peak_rss_mb"] < own_vmhwm_mb()  # VmHWM: fork + exec from pytest does not leak into it
    # every step's denoiser call lies inside its step
    assert r["denoise_ms"]["avg"] <= r["step_ms"]["avg"]


def test_edgediff_run_refuses_formats_it_cannot_run(tiny_bundle, bundle_copy):
    from edgediff.runtimes.bundle import load_bundle

    b = load_bundle(bundle_copy)
    b.manifest["model"]["format"] = "tflite"
    with pytest.raises(EdgediffError, match="not format 'tflite'"):
        B.check_runner_can_run(b, instead="use --runner python")
