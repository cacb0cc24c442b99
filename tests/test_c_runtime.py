"""The C sampling runtime (csrc) against the Python reference it mirrors.

- noise: edgediff.runtimes._cruntime.normal equals rng.normal bit for bit (10^6 draws each);
- every solver in SOLVERS: the same fake model (the one of test_samplers.py) through both
  loops; every step's model input and (guided) output agree to 1e-6 relative, the final
  samples to 1e-5 absolute; one solver update on the same inputs agrees to 1e-6;
- classifier-free guidance, plan validation with the Python messages' field names, bad
  arguments raising EdgediffError / TypeError instead of crashing, independent contexts in
  threads;
- the C-level suite (csrc/tests/test_edd.c) built with -Wall -Wextra -Werror -std=c99
  and run under AddressSanitizer + UndefinedBehaviorSanitizer, and the embedding example.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgediff.core.errors import EdgediffError
from edgediff.core.schedule import make_schedule
from edgediff.runtimes import rng
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.samplers import SOLVERS, get_solver
from edgediff.runtimes.sampling import sample

try:
    from edgediff.runtimes import _cruntime as C
except ImportError as e:  # a clear message instead of a collection error deep in a traceback
    raise ImportError(f"the C runtime extension is not built ({e}); run `pip install -e .`") from e

C_DIR = Path(__file__).resolve().parents[1] / "csrc"
SHAPE = (3, 5, 5)  # 75 values per image: not a multiple of 4, so the rng's truncation is exercised
NOISE = NoiseSource(seed=20240611, streams=(3, 11))
SPACINGS = {"lcm": ("lcm",)}  # solvers not listed here run on the three diffusers spacings
STEPS = (1, 2, 4, 10, 50)


def fake_model(x, t):
    """A smooth nonlinear eps(x, t), as in test_samplers.py (numpy, float32)."""
    t = np.asarray(t, np.float32).reshape(-1, 1, 1, 1)
    return (np.float32(0.5) * np.tanh(x) + np.float32(0.01) * t / np.float32(1000)).astype(np.float32)


def labelled_model(calls):
    def denoise(x, t, labels):
        calls.append((x.shape[0], None if labels is None else labels.copy()))
        shift = 0.0 if labels is None else labels.astype(np.float32).reshape(-1, 1, 1, 1) * np.float32(0.1)
        return (fake_model(x, t) + shift).astype(np.float32)

    return denoise


def rel_error(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-8))


ERRORS: dict[str, list[float]] = {}  # solver -> [max relative per step, max abs final, max relative single step]


@pytest.fixture(scope="module", autouse=True)
def report_errors(request):
    """Print the worst C-vs-Python error per solver after the module's tests."""
    yield
    if not ERRORS:
        return
    lines = [
        "",
        "C runtime vs Python reference, worst case per solver:",
        "  solver    per-step rel | final abs | one step rel",
    ]
    lines += [f"  {name:9s} {a:.2e}     | {b:.2e}  | {c:.2e}" for name, (a, b, c) in sorted(ERRORS.items())]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n".join(lines))


def record(name, index, value):
    worst = ERRORS.setdefault(name, [0.0, 0.0, 0.0])
    worst[index] = max(worst[index], value)


# ---- noise ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,stream,call", [(2024, 0, 0), (2**64 - 1, 2**32 - 1, 2**32 - 1), (12345678901234, 9, 7)])
def test_normal_is_bit_identical_for_a_million_draws(seed, stream, call):
    got = C.normal(seed, stream, call, 10**6)
    assert got.dtype == np.float32 and got.shape == (10**6,)
    np.testing.assert_array_equal(got.view(np.uint32), rng.normal(seed, stream, call, 10**6).view(np.uint32))


def test_normal_small_sizes_and_golden_bits():
    for n in range(10):  # truncation inside a block
        np.testing.assert_array_equal(C.normal(5, 6, 7, n).view(np.uint32), rng.normal(5, 6, 7, n).view(np.uint32))
    assert [int(v) for v in C.normal(0, 0, 0, 8).view(np.uint32)] == [
        0x3F7DBB33,
        0xBF6CB6B0,
        0xBF1E1B9F,
        0xBEF6D1B2,
        0xBE1D5357,
        0x3E392A6D,
        0x3F54EC98,
        0x3E4A2DA3,
    ]
    np.testing.assert_array_equal(C.normal(np.uint64(7), np.int32(1), np.int64(2), 3), rng.normal(7, 1, 2, 3))


@pytest.mark.parametrize(
    "bad",
    [
        dict(seed=-1),
        dict(seed=2**64),
        dict(stream=2**32),
        dict(call=-1),
        dict(seed=1.5),
        dict(n=-1),
        dict(n=2**34),
        dict(stream="0"),
    ],
)
def test_normal_bad_arguments_raise(bad):
    args = dict(seed=0, stream=0, call=0, n=4) | bad
    with pytest.raises(EdgediffError, match=next(iter(bad))):
        C.normal(**args)


# ---- every solver: the whole loop, and one update ----------------------------------------------


def cases():
    for name in SOLVERS:
        for spacing in SPACINGS.get(name, ("leading", "trailing", "linspace")):
            for steps in STEPS:
                yield pytest.param(name, steps, spacing, {}, "epsilon", id=f"{name}-{spacing}-{steps}")
            yield pytest.param(name, 10, spacing, {}, "v_prediction", id=f"{name}-{spacing}-10-v")
            yield pytest.param(name, 10, spacing, {}, "sample", id=f"{name}-{spacing}-10-x0")
    yield pytest.param("ddpm", 1000, "leading", {}, "epsilon", id="ddpm-leading-1000")
    for steps in (1, 4, 10, 50):
        yield pytest.param("ddim", steps, "trailing", {"eta": 0.5}, "epsilon", id=f"ddim-eta0.5-{steps}")
        yield pytest.param("ddim", steps, "leading", {"eta": 1.0}, "v_prediction", id=f"ddim-eta1-{steps}-v")
    for name in ("ddpm", "ddim"):
        yield pytest.param(name, 10, "leading", {"clip_sample": 0.5}, "epsilon", id=f"{name}-clip0.5")
    yield pytest.param("ddim", 10, "leading", {"set_alpha_to_one": False}, "epsilon", id="ddim-final-alpha")
    for steps in (2, 4):
        yield pytest.param("lcm", steps, "lcm", {"timestep_scaling": 0.1}, "epsilon", id=f"lcm-scaling0.1-{steps}")


def make_plan(name, steps, spacing, opts, prediction_type="epsilon"):
    kwargs = dict(opts) if name == "lcm" else dict(opts, spacing=spacing)
    return get_solver(name).plan(make_schedule(prediction_type=prediction_type), steps, **kwargs)


def trajectory(run, plan, **kwargs):
    """(per-step (t, x_in, eps) list, final sample) from sampling.sample or _cruntime.sample."""
    steps = []

    def callback(i, t, x_in, eps):
        steps.append((float(t), np.array(x_in), np.array(eps)))

    if run is sample:
        out = sample(
            lambda x, t, labels: fake_model(x, t), plan, NOISE, sample_shape=SHAPE, callback=callback, **kwargs
        )
    else:
        out = C.sample(
            plan,
            lambda x, t, labels: fake_model(x, t),
            NOISE.seed,
            NOISE.streams,
            sample_shape=SHAPE,
            callback=callback,
            **kwargs,
        )
    return steps, out


def test_every_solver_is_in_the_c_runtime():
    for name in SOLVERS:
        assert C.Plan(make_plan(name, 4, "leading" if name != "lcm" else "lcm", {})).solver == name


@pytest.mark.parametrize("name,steps,spacing,opts,prediction_type", list(cases()))
def test_sample_matches_python(name, steps, spacing, opts, prediction_type):
    plan = make_plan(name, steps, spacing, opts, prediction_type)
    py_steps, py_out = trajectory(sample, plan)
    c_steps, c_out = trajectory(C.sample, plan)
    assert len(c_steps) == len(py_steps) == steps
    worst = 0.0
    for (tc, xc, ec), (tp, xp, ep) in zip(c_steps, py_steps):
        assert np.float32(tc) == np.float32(tp)
        assert xc.shape == xp.shape == (len(NOISE.streams), *SHAPE) and xc.dtype == np.float32
        worst = max(worst, rel_error(xc, xp), rel_error(ec, ep))
    final = float(np.abs(c_out.astype(np.float64) - py_out).max())
    record(name, 0, worst)
    record(name, 1, final)
    assert c_out.shape == py_out.shape and c_out.dtype == np.float32
    assert np.isfinite(c_out).all()
    assert worst <= 1e-6, f"{name}: per-step relative error {worst:.2e}"
    assert final <= 1e-5, f"{name}: final max abs error {final:.2e}"


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_one_step_matches_python(name, prediction_type):
    """step / init_latent / model_input on identical inputs, at every step of a 6-step plan."""
    opts = {"eta": 0.7} if name == "ddim" else {}
    plan = make_plan(name, 6, "trailing" if name != "lcm" else "lcm", opts, prediction_type)
    solver, cplan = get_solver(name), C.Plan(plan.to_dict())
    gen = np.random.default_rng(1)
    x, eps, prev, z = (gen.standard_normal((2, *SHAPE)).astype(np.float32) for _ in range(4))
    np.testing.assert_array_equal(C.init_latent(cplan, z), solver.init_latent(plan, z))
    for i in range(len(plan)):
        assert cplan.uses_noise(i) == solver.uses_noise(plan, i)
        np.testing.assert_array_equal(C.model_input(cplan, i, x), solver.model_input(plan, i, x))
        for carry in (None, prev) if i else (None,):
            noise = z if solver.uses_noise(plan, i) else None
            want_x, want_carry = solver.step(plan, i, x, eps, carry, noise)
            got_x, got_carry = C.step(cplan, i, x, eps, carry, noise)
            assert got_x.shape == x.shape and got_x.dtype == np.float32
            err = rel_error(got_x, want_x)
            record(name, 2, err)
            assert err <= 1e-6
            if want_carry is None:
                assert got_carry is None
            else:
                assert rel_error(got_carry, want_carry) <= 1e-6


# ---- plans --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SOLVERS))
def test_plan_from_dict_json_or_plan(name):
    plan = make_plan(name, 7, "linspace" if name != "lcm" else "lcm", {})
    for source in (plan, plan.to_dict(), json.loads(json.dumps(plan.to_dict()))):
        cp = C.Plan(source)
        assert cp.solver == name and len(cp) == 7 and cp.has_carry == (name == "dpmpp-2m")
        assert list(cp.timesteps) == plan.timesteps.tolist()
        np.testing.assert_array_equal(np.float32(cp.model_timesteps), plan.model_timesteps)


def test_bad_plans_name_the_field_like_python():
    good = make_plan("euler", 4, "linspace", {}).to_dict()
    broken = [
        ({**good, "extra": 1}, "'extra'"),
        ({k: v for k, v in good.items() if k != "params"}, "'params'"),
        ({**good, "solver": "heun"}, "'heun'.*ddpm, ddim, dpmpp-2m, euler, lcm"),
        ({**good, "timesteps": [999, 1000, 3, 1]}, "timesteps"),
        ({**good, "timesteps": [3, 999, 500, 1]}, "timesteps"),
        ({**good, "timesteps": [999.5, 700, 300, 1]}, "timesteps"),
        ({**good, "timesteps": []}, "timesteps"),
        ({**good, "params": {**good["params"], "churn": 0.1}}, "'churn'"),
        ({**good, "params": {**good["params"], "sigmas": good["params"]["sigmas"][:-1]}}, "'sigmas'"),
        ({**good, "params": {**good["params"], "sigmas": "abc"}}, "'sigmas'"),
        ({**good, "params": {**good["params"], "init_sigma": True}}, "'init_sigma'"),
        ({**good, "params": {**good["params"], "init_sigma": None}}, "'init_sigma'"),
        ({**good, "params": {k: v for k, v in good["params"].items() if k != "init_sigma"}}, "'init_sigma'"),
        ({**good, "schedule": {"alphas_cumprod": [0.9, 1.5]}}, r"\(0, 1\]"),
        ({**good, "schedule": {**good["schedule"], "betas": [0.1]}}, "'betas'"),
        ({**good, "schedule": {**good["schedule"], "prediction_type": "x0"}}, "'x0'"),
        ({**good, "schedule": [0.5]}, "schedule"),
    ]
    for plan, match in broken:
        with pytest.raises(EdgediffError, match=match):
            C.Plan(plan)
        with pytest.raises(EdgediffError, match=match):  # sample() validates the same way
            C.sample(plan, lambda x, t, labels: x, 0, (0,), sample_shape=SHAPE)
    for bad in ("not a plan", 3, None):
        with pytest.raises(EdgediffError, match="plan"):
            C.Plan(bad)


# ---- guidance -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "euler"])
def test_guidance_matches_python(name):
    plan = make_plan(name, 6, "leading", {})
    labels, null, guidance = np.array([2, 7]), 10, 3.5
    py_calls, c_calls = [], []
    want = sample(
        labelled_model(py_calls), plan, NOISE, labels=labels, guidance=guidance, null_label=null, sample_shape=SHAPE
    )
    got = C.sample(
        plan,
        labelled_model(c_calls),
        NOISE.seed,
        NOISE.streams,
        labels=labels,
        guidance=guidance,
        null_label=null,
        sample_shape=SHAPE,
    )
    assert len(c_calls) == len(plan)
    assert all(b == 4 and list(lab) == [2, 7, 10, 10] for b, lab in c_calls)
    assert float(np.abs(got.astype(np.float64) - want).max()) <= 1e-5
    unguided = C.sample(plan, labelled_model(c_calls), NOISE.seed, NOISE.streams, labels=labels, sample_shape=SHAPE)
    assert c_calls[-1][0] == 2 and list(c_calls[-1][1]) == [2, 7]  # guidance 1: one row per image, labels passed
    assert np.abs(unguided - got).max() > 1e-3


# ---- threads ------------------------------------------------------------------------------------


def test_contexts_in_threads_equal_sequential_runs():
    jobs = [
        (make_plan(name, 8, "leading" if name != "lcm" else "lcm", {}), seed)
        for seed in (1, 2)
        for name in ("ddpm", "dpmpp-2m", "euler", "lcm")
    ]
    barrier = threading.Barrier(2)

    def run(job, wait=False):
        plan, seed = job
        if wait:
            barrier.wait(timeout=10)  # both threads start together, so their C runs overlap
        return C.sample(plan, lambda x, t, labels: fake_model(x, t), seed, (0, 1, 2), sample_shape=SHAPE)

    sequential = [run(job) for job in jobs]
    with ThreadPoolExecutor(2) as pool:
        parallel = list(pool.map(lambda j: run(j, wait=True), jobs[:2])) + list(pool.map(run, jobs[2:]))
    for a, b in zip(sequential, parallel):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(sequential[0], sequential[4])  # the seed matters


# ---- bad arguments: a Python error, never a crash -------------------------------------------------


def test_sample_argument_errors():
    plan = make_plan("ddim", 3, "leading", {})
    model = labelled_model([])
    ok = dict(sample_shape=SHAPE)

    def bad_size(x, t, labels):
        return np.zeros(5, np.float32)

    def boom(x, t, labels):
        raise ValueError("boom from the denoiser")

    def bad_callback(i, t, x_in, eps):
        raise KeyError("from the callback")

    cases = [
        (lambda: C.sample(plan, model, 0, (0, 1), labels=[1, 2], guidance=2.0, **ok), EdgediffError, "null_label"),
        (lambda: C.sample(plan, model, 0, (0, 1), labels=[1, 2, 3], **ok), EdgediffError, "3 labels"),
        (lambda: C.sample(plan, model, 0, (), **ok), EdgediffError, "at least one stream"),
        (lambda: C.sample(plan, model, 0, (-1,), **ok), EdgediffError, "stream"),
        (lambda: C.sample(plan, model, 0, (2**32,), **ok), EdgediffError, "stream"),
        (lambda: C.sample(plan, model, 0, "ab", **ok), EdgediffError, "streams"),
        (lambda: C.sample(plan, model, -5, (0,), **ok), EdgediffError, "seed"),
        (lambda: C.sample(plan, model, 0, (0,), sample_shape=(3, 0, 5)), EdgediffError, r"sample_shape\[1\]"),
        (lambda: C.sample(plan, model, 0, (0,), sample_shape=(1,) * 9), EdgediffError, "sample_shape"),
        (lambda: C.sample(plan, model, 0, (0,), sample_shape=()), EdgediffError, "sample_shape"),
        (lambda: C.sample(plan, model, 0, (0,), sample_shape=3), EdgediffError, "sample_shape"),
        (lambda: C.sample(plan, model, 0, (0,), labels=["a"], **ok), EdgediffError, "labels"),
        (
            lambda: C.sample(plan, model, 0, (0,), null_label="x", guidance=2.0, labels=[1], **ok),
            EdgediffError,
            "null_label",
        ),
        (lambda: C.sample(plan, model, 0, (0,)), TypeError, "sample_shape"),
        (lambda: C.sample(plan, "not callable", 0, (0,), **ok), TypeError, "denoise"),
        (lambda: C.sample(plan, model, 0, (0,), callback=3, **ok), TypeError, "callback"),
        (lambda: C.sample(plan, model, 0, (0,), guidance="2", **ok), TypeError, "real number"),
        (lambda: C.sample(plan, bad_size, 0, (0,), **ok), EdgediffError, "denoiser returned 5 values"),
        (lambda: C.sample(plan, lambda x, t, labels: "eps", 0, (0,), **ok), EdgediffError, "denoiser's output"),
        (lambda: C.sample(plan, boom, 0, (0,), **ok), ValueError, "boom from the denoiser"),
        (lambda: C.sample(plan, model, 0, (0,), callback=bad_callback, **ok), KeyError, "from the callback"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


def test_step_argument_errors():
    plan = C.Plan(make_plan("ddpm", 3, "leading", {}))
    x = np.zeros((2, *SHAPE), np.float32)
    with pytest.raises(EdgediffError, match="step index 3 out of range"):
        C.step(plan, 3, x, x, None, x)
    with pytest.raises(EdgediffError, match="step index"):
        C.model_input(plan, -1, x)
    with pytest.raises(EdgediffError, match="uses noise"):
        C.step(plan, 0, x, x, None, None)
    with pytest.raises(EdgediffError, match="eps has 3 values"):
        C.step(plan, 0, x, np.zeros(3), None, x)
    with pytest.raises(EdgediffError, match="eps must be"):
        C.step(plan, 0, x, None, None, x)
    with pytest.raises(TypeError):
        C.step(plan, 0, x)
    with pytest.raises(AttributeError):
        plan.solver = "ddim"  # read-only


# ---- the C-level suite and the embedding example -------------------------------------------------


def fnv1a(z: np.ndarray) -> int:
    h = 0xCBF29CE484222325
    for byte in z.astype("<f4").tobytes():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def test_c_suite_hashes_are_pythons():
    """test_edd.c checks a million draws by hash (so it can run alone, e.g. under qemu);
    the hashes it pins are those of the Python reference."""
    source = (C_DIR / "tests" / "test_edd.c").read_text()
    for args in [(2024, 0, 0, 10**6), (2**64 - 1, 2**32 - 1, 2**32 - 1, 10**6 + 3)]:
        assert f"0x{fnv1a(rng.normal(*args)):016x}ULL" in source


needs_cc = pytest.mark.skipif(
    not (shutil.which("make") and (shutil.which("cc") or shutil.which("gcc"))), reason="no C compiler / make"
)


@needs_cc
def test_c_suite_under_sanitizers(tmp_path):
    """`make -C csrc check`: -Wall -Wextra -Werror -std=c99, ASan + UBSan, in a scratch dir."""
    r = subprocess.run(
        ["make", "-s", "-C", str(C_DIR), "check", f"BUILD={tmp_path}"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout and "runtime error" not in r.stderr


@needs_cc
def test_embedding_example(tmp_path):
    """examples/embed.c: a program with its own backend links the static library and runs."""
    r = subprocess.run(
        ["make", "-s", "-C", str(C_DIR), "example", f"BUILD={tmp_path}"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "embed: ok" in r.stdout


@needs_cc
def test_c_suite_under_thread_sanitizer(tmp_path):
    """`make check-tsan`: the suite's threads test (contexts sharing a plan, bundles parsed in
    parallel, 4 threads x 20 runs) under ThreadSanitizer: no data race, same bits as alone."""
    r = subprocess.run(
        ["make", "-s", "-C", str(C_DIR), "check-tsan", f"BUILD={tmp_path}"], capture_output=True, text=True, timeout=300
    )
    if "ThreadSanitizer" in r.stderr and "unexpected memory mapping" in r.stderr:
        pytest.skip("ThreadSanitizer cannot run on this kernel's memory layout")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout and "WARNING: ThreadSanitizer" not in r.stderr


def _libfuzzer_works() -> bool:
    """clang is there and links -fsanitize=fuzzer (Debian: the libclang-rt-dev package)."""
    if not shutil.which("clang"):
        return False
    r = subprocess.run(
        ["clang", "-fsanitize=fuzzer", "-x", "c", "-", "-o", "/dev/null"],
        capture_output=True,
        input="int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }",
        text=True,
    )
    return r.returncode == 0


@pytest.mark.skipif(
    not (shutil.which("make") and _libfuzzer_works()),
    reason="no clang with libFuzzer (apt-get install clang libclang-rt-dev)",
)
def test_json_fuzz_short_run(tmp_path):
    """csrc/fuzz: a few seconds of libFuzzer (with ASan + UBSan) on the JSON reader and
    the bundle loader find nothing; the exec count is what libFuzzer reports."""
    r = subprocess.run(
        ["make", "-s", "-C", str(C_DIR), "fuzz", f"BUILD={tmp_path}", "FUZZ_SECONDS=4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    runs = re.search(r"Done (\d+) runs", r.stderr)
    assert runs and int(runs.group(1)) > 1000, r.stderr[-2000:]
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr


@pytest.mark.skipif(
    not (shutil.which("make") and shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
    reason="no aarch64 cross compiler / qemu-aarch64 (.ci/run installs gcc-aarch64-linux-gnu, qemu-user)",
)
def test_c_suite_on_aarch64_under_qemu(tmp_path):
    """The same suite cross-compiled for aarch64 (where FMA is in the base ISA and GCC contracts
    by default) and run under emulation: the pinned noise hashes hold there too."""
    r = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(C_DIR),
            "check",
            f"BUILD={tmp_path}",
            "SAN=",
            "CC=aarch64-linux-gnu-gcc",
            "AR=aarch64-linux-gnu-ar",
            "RUN=qemu-aarch64 -L /usr/aarch64-linux-gnu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout
