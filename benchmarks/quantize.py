"""W8A8 quantization: edgediff's timestep-aware pass against ONNX Runtime's and NNCF's own.

    python benchmarks/quantize.py [--num-samples 256] [--calib-samples 32] [--out out/bench_quantize]
                                  [--skip-speed] [--skip-quality]

Quality, builtin:digits, DPM-Solver++ at 20 and at 4 steps, guidance 3, labels 0..9 in turn,
the same seeds for every row; PSNR of the final images against the FP32 PyTorch model,
FD-digits and class accuracy from the committed classifier, model size on disk. With FD-digits:
its difference from FP32's with a paired-bootstrap std (the images share seeds), and the Frechet
distance to FP32's images, because a quantized model can land below FP32's own FD-digits by
changing its images.
Every quantizer gets the same calibration budget: 32 trajectories x the sampler's steps
(x 2 CFG halves) rows.
  - ORT quantize_static, default settings, calibrated on random timesteps (real digits noised
    at t ~ U[0, T), random labels and the null label) - the peer as a user would run it;
  - NNCF quantize, default settings, on OpenVINO (the fp32 ONNX converted), fed the sampler's
    trajectory; run with the f32 precision hint so that bf16 does not blur its figure;
  - edgediff W8A8 with G = 1, G > 1 timestep groups, and mixed precision (G > 1 plus the
    sensitivity ranking's worst layers kept float).
  - edgediff W8A8 G = 1 and G > 1 compiled for pixel-8 (TFLite, run by LiteRT with XNNPACK; the
    groups as signatures of one flatbuffer), where ai-edge-quantizer is installed;
  - edgediff w4 (weight-only: 4-bit linear layers, int8 convolutions, fp32 activations) on
    ONNX Runtime and on OpenVINO.
Speed, builtin:cifar-arch (35.7 M params), batch 1, 2 threads: ms per denoiser call of ORT
fp32, ORT quantize_static int8 (QDQ, per-channel, Conv/MatMul/Gemm), edgediff int8 and w4, and
where openvino is installed OpenVINO f32 hint / default / NNCF int8 / edgediff int8 and w4;
ratios from the same run, sizes on disk. Then ONNX Runtime's profiler on each ORT model (--rounds rounds, the least of each figure): kernel ms
per call by op class (convolution, matmul, quantize/dequantize, layout, other float ops), the
convolutions' GMAC/s, and the largest per-class ratio, which caps the whole-model ratio.
Memory, builtin:cifar-arch W8A8: resident memory a fresh process adds by loading the model and
running every step once: G = 1; G = 4 as the runtime loads it (ONNX Runtime: one session for all
groups, src/edgediff/runtimes/groups.py); G = 4 with one session per group; and where openvino is installed,
G = 1 and 4 compiled by OpenVINO (one compiled model per group, as the C runtime's backend does);
with each, the seconds to load and the median ms of one call.
Writes <out>.json and <out>.png.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgediff.compiler.capture import load_source
from edgediff.core.spec import torch_denoiser
from edgediff.lower.onnx import lower_onnx
from edgediff.quantize.calibration import record_trajectories
from edgediff.quantize.w8a8 import QuantizeOptions, quantize
from edgediff.quantize.weight_only import quantize_w4_onnx, quantize_w4_openvino
from edgediff.runtimes import quality
from edgediff.runtimes.backends import OnnxRuntimeDenoiser, openvino_core
from edgediff.runtimes.groups import grouped_denoiser
from edgediff.runtimes.runner import SamplingSetup, default_labels, generate
from edgediff.runtimes.samplers import get_solver
from edgediff.tools.evaluate import DigitsJudge

THREADS = 2


def host():
    from edgediff.targets.host import detect_host

    info = detect_host()
    feats = tuple(info.get("features", ()))
    vnni = any(f in feats for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    desc = f"{info.get('cpu_model', 'unknown CPU')}, {'with' if vnni else 'no'} VNNI ({' '.join(feats)})"
    return feats, desc


HOST_FEATURES, HOST_DESC = host()


def size_mb(path: Path) -> float:
    files = [p for p in path.iterdir()] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files if p.is_file()) / 1e6


def feeds_of(rows_x, rows_t, rows_c, names, batch=16):
    out = []
    for s in range(0, len(rows_x), batch):
        f = {names[0]: rows_x[s : s + batch], names[1]: rows_t[s : s + batch]}
        if rows_c is not None:
            f[names[2]] = rows_c[s : s + batch]
        out.append(f)
    return out


def random_timestep_rows(spec, n, seed):
    """The peer's calibration: real digits noised at uniform random timesteps, random labels."""
    from edgediff.training.data import digits_splits

    real, _ = digits_splits()["diffusion"]
    rng = np.random.default_rng(seed)
    x0 = real[rng.integers(0, len(real), n)].astype(np.float32)
    t = rng.integers(0, spec.schedule.num_train_timesteps, n)
    abar = spec.schedule.alphas_cumprod[t].astype(np.float32)[:, None, None, None]
    x = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * rng.standard_normal(x0.shape).astype(np.float32)
    c = rng.integers(0, spec.conditioning.num_classes + 1, n).astype(np.int64)
    return x.astype(np.float32), t.astype(np.float32), c


def ort_quantize_static(fp32: Path, out: Path, feeds, **kw) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + "_pre.onnx")
    # what ORT's documentation asks for before quantize_static (its symbolic shape inference
    # cannot follow this graph's dynamic batch, so only the ONNX shape inference and optimizer run)
    with contextlib.chdir(out.parent):  # it leaves temporary files in the working directory
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), **kw)
    pre.unlink()
    return out


class OpenVinoDenoiser:
    def __init__(self, model, config=None):
        self.compiled = openvino_core().compile_model(
            model, "CPU", {"INFERENCE_NUM_THREADS": THREADS, **(config or {})}
        )

    def __call__(self, x, t, cond=None):
        args = [np.ascontiguousarray(x, np.float32), np.ascontiguousarray(t, np.float32)]
        if cond is not None:
            args.append(np.ascontiguousarray(cond, np.int64))
        return np.asarray(self.compiled(args)[0], np.float32)


def nncf_quantize(fp32: Path, feeds, out: Path) -> Path:
    import nncf
    import openvino as ov

    model = openvino_core().read_model(str(fp32))
    items = [list(f.values()) for f in feeds]
    q = nncf.quantize(model, nncf.Dataset(items), subset_size=sum(len(i[0]) for i in items))
    ov.save_model(q, str(out))
    return out


# ---------------------------------------------------------------- quality
def fd_spread(judge: DigitsJudge, imgs: np.ndarray, ref_images: np.ndarray | None, resamples: int = 200) -> dict:
    """A row's FD-digits against FP32's, which saw the same seeds and labels: the difference and its
    standard deviation over a paired bootstrap (the same resampled seeds for both, so the difference
    is measured apart from which seeds were drawn), and `fd_to_fp32`, the Frechet distance between this row's features and FP32's (0: the same
    image distribution; a lower FD-digits than FP32's own is a change, not a gain)."""
    out = {"fd_minus_fp32": None, "fd_minus_fp32_std": None, "fd_to_fp32": None}
    if ref_images is None:
        return out
    feats, ref = judge.features(imgs), judge.features(ref_images)
    idx = np.random.default_rng(0).integers(0, len(imgs), (resamples, len(imgs)))
    fd = lambda f: quality.frechet_distance(quality.gaussian_stats(f), judge.real_stats)  # noqa: E731
    diff = np.array([fd(feats[i]) - fd(ref[i]) for i in idx])
    out.update(
        fd_minus_fp32=float(fd(feats) - fd(ref)),
        fd_minus_fp32_std=float(diff.std()),
        fd_to_fp32=quality.frechet_distance(quality.gaussian_stats(feats), quality.gaussian_stats(ref)),
    )
    return out


def quality_rows(steps: int, a, work: Path, judge: DigitsJudge) -> list[dict]:
    spec = load_source("builtin:digits")
    plan = get_solver("dpmpp-2m").plan(spec.schedule, steps, spacing="leading")
    setup = SamplingSetup(
        plan=plan, guidance=3.0, conditioning=spec.conditioning.to_dict(), sample_shape=tuple(spec.sample_shape)
    )
    labels = default_labels(setup, a.num_samples)
    d = work / f"digits{steps}"
    d.mkdir(parents=True, exist_ok=True)
    fp32 = lower_onnx(spec, d / "fp32")
    print(f"[{steps} steps] recording {a.calib_samples} calibration trajectories", file=sys.stderr)
    calib = record_trajectories(
        spec, sampler="dpmpp-2m", steps=steps, guidance=3.0, num_samples=a.calib_samples, seed=1
    )
    names = spec.input_names()
    rows = []

    def run(name, denoise, size, note=""):
        bar = tqdm(total=a.num_samples * steps, desc=f"{name} {steps} steps", file=sys.stderr, leave=False)
        imgs = generate(denoise, setup, n=a.num_samples, seed=0, labels=labels, progress=bar.update)
        bar.close()
        score = judge.score(imgs, labels)
        psnr = quality.psnr_db(imgs, ref_images) if ref_images is not None else None
        row = {
            "steps": steps,
            "model": name,
            "psnr_db": None if psnr is None or not np.isfinite(psnr) else psnr,
            "fd_digits": score["fd_digits"],
            "class_accuracy": score["class_accuracy"],
            "size_mb": size,
            "note": note,
            **fd_spread(judge, imgs, ref_images),
        }
        rows.append(row)
        print(
            f"  {name:34} PSNR {row['psnr_db'] or float('inf'):6.2f}  FD {row['fd_digits']:7.3f}  "
            f"acc {row['class_accuracy']:.3f}  {size:.2f} MB",
            file=sys.stderr,
        )
        return imgs

    ref_images = None
    ref_images = run("FP32 (PyTorch)", torch_denoiser(spec), size_mb(fp32), "reference")

    # peer 1: ORT quantize_static, default settings, random timesteps
    xr, tr, cr = random_timestep_rows(spec, len(calib), seed=1)
    try:
        ort_path = ort_quantize_static(fp32, d / "ort_int8.onnx", feeds_of(xr, tr, cr, names))
        label, note = "ORT quantize_static (default)", "random timesteps"
    except ValueError as e:  # the all-ops default refuses this graph; the Conv/MatMul/Gemm setting is its next
        print(f"  ORT default settings failed ({e}); Conv/MatMul/Gemm instead", file=sys.stderr)
        ort_path = ort_quantize_static(
            fp32, d / "ort_int8.onnx", feeds_of(xr, tr, cr, names), op_types_to_quantize=["Conv", "MatMul", "Gemm"]
        )
        label, note = "ORT quantize_static (Conv/MatMul/Gemm)", f"random timesteps; default failed: {e}"
    run(label, OnnxRuntimeDenoiser(ort_path, threads=THREADS), size_mb(ort_path), note)

    # peer 2: NNCF default on OpenVINO, fed the trajectory
    try:
        ov_path = nncf_quantize(fp32, feeds_of(calib.x, calib.t, calib.cond, names), d / "nncf_int8.xml")
        run(
            "NNCF quantize (default)",
            OpenVinoDenoiser(str(ov_path), {"INFERENCE_PRECISION_HINT": "f32"}),
            size_mb(ov_path) + size_mb(ov_path.with_suffix(".bin")),
            "sampler trajectory, OpenVINO f32 hint",
        )
    except ImportError as e:
        print(f"  NNCF skipped: {e}", file=sys.stderr)

    groups = min(4, steps)
    variants = [
        ("edgediff W8A8 G=1", 1, QuantizeOptions()),
        (f"edgediff W8A8 G={groups}", groups, QuantizeOptions()),
        (
            f"edgediff W8A8 G={groups} mixed (+4 float)",
            groups,
            QuantizeOptions(sensitive_float=4, sensitivity_rows=128),
        ),
    ]
    for name, g, opts in variants:
        vd = d / name.replace(" ", "_").replace("=", "").replace("(", "").replace(")", "").replace("+", "")
        vd.mkdir(exist_ok=True)
        path = vd / "denoiser.onnx"
        shutil.copy(fp32, path)
        q = quantize(spec, calib, onnx_path=path, plan=plan, groups=g, options=opts, target_features=HOST_FEATURES)
        entry = None
        if g > 1:
            entry = {"files": [f.name for f in q.files], "step_group": q.step_group, "shared_weights": q.shared.name}
        denoise = grouped_denoiser(vd, entry, plan.model_timesteps, model_file=q.files[0], threads=THREADS)
        floats = ", ".join(
            f["layer"].replace("model.", "") for f in q.record["float_layers"] if f["why"].startswith("sensitivity")
        )
        run(
            name,
            denoise,
            size_mb(vd),
            f"{q.record['num_int8']} int8 / {q.record['num_float']} float layers, "
            f"{q.record['weight_bits']}-bit weights" + (f"; by sensitivity: {floats}" if floats else ""),
        )
        if g == 1 and not opts.sensitive_float:
            ov_row(name, q, vd, run)

    # the same pass written into TFLite (pixel-8: LiteRT + XNNPACK), through the compiler, G = 1 and G > 1
    if importlib.util.find_spec("ai_edge_quantizer"):
        from edgediff.compiler.pipeline import compile_model
        from edgediff.compiler.recipe import Recipe
        from edgediff.runtimes.runner import bundle_denoiser

        calib_path = calib.save(d / "calib.npz")
        for g in sorted({1, groups}):
            b = compile_model(
                "builtin:digits",
                d / f"tflite_g{g}",
                target="pixel-8",
                recipe=Recipe(
                    sampler="dpmpp-2m", steps=steps, guidance=3.0, quantize="w8a8", groups=g, calib=str(calib_path)
                ),
            )
            merged = b.report["quantize"]["tflite"].get("groups")
            run(
                f"edgediff W8A8 G={g} TFLite",
                bundle_denoiser(b),
                size_mb(b.root / "model"),
                "LiteRT + XNNPACK; "
                + (
                    f"{g} groups in one flatbuffer, buffers {merged['buffer_bytes'] / 1e6:.2f} MB "
                    f"(as {g} files: {merged['buffer_bytes_if_separate'] / 1e6:.2f} MB)"
                    if merged
                    else "one group"
                ),
            )

    # weight-only 4-bit: no calibration, the same graph on both runtimes
    wd = d / "w4"
    wd.mkdir(exist_ok=True)
    shutil.copy(fp32, wd / "denoiser.onnx")
    rec = quantize_w4_onnx(wd / "denoiser.onnx")
    run(
        "edgediff w4 (ORT)",
        OnnxRuntimeDenoiser(wd / "denoiser.onnx", threads=THREADS),
        size_mb(wd),
        f"{rec['matmulnbits']} linear layers 4-bit (MatMulNBits), {rec['conv_int8']} convs int8, fp32 activations",
    )
    try:
        od = d / "w4_ov"
        od.mkdir(exist_ok=True)
        shutil.copy(fp32, od / "denoiser.onnx")
        xml, rec = quantize_w4_openvino(od / "denoiser.onnx", od)
        run(
            "edgediff w4 (OpenVINO)",
            OpenVinoDenoiser(str(xml), {"INFERENCE_PRECISION_HINT": "f32"}),
            size_mb(od),
            f"NNCF compress_weights: {rec['int4_constants']} 4-bit / {rec['int8_constants']} 8-bit constants",
        )
    except ImportError as e:
        print(f"  OpenVINO w4 skipped: {e}", file=sys.stderr)
    return rows


def ov_row(name, q, vd, run):
    """The same G=1 graph run by OpenVINO (QDQ -> FakeQuantize, our scales)."""
    try:
        from edgediff.lower.openvino import lower_openvino_int8
    except ImportError:
        return
    od = vd.with_name(vd.name + "_ov")
    od.mkdir(exist_ok=True)
    src = od / "denoiser.onnx"
    shutil.copy(q.files[0], src)
    low = lower_openvino_int8(src, od)
    run(
        name + " on OpenVINO",
        OpenVinoDenoiser(str(low.file), {"INFERENCE_PRECISION_HINT": "f32"}),
        size_mb(od),
        f"{low.record['fake_quantize']} FakeQuantize, f32 hint",
    )


# ---------------------------------------------------------------- speed
def speed_rows(a, work: Path) -> list[dict]:
    spec = load_source("builtin:cifar-arch")
    d = work / "cifar"
    d.mkdir(parents=True, exist_ok=True)
    print("[cifar-arch] exporting fp32 ONNX", file=sys.stderr)
    fp32 = lower_onnx(spec, d / "fp32")
    steps = 10
    plan = get_solver("dpmpp-2m").plan(spec.schedule, steps, spacing="leading")
    calib = record_trajectories(spec, sampler="dpmpp-2m", steps=steps, guidance=1.0, num_samples=2, seed=1)
    names = spec.input_names()
    path = d / "edgediff" / "denoiser.onnx"
    path.parent.mkdir(exist_ok=True)
    shutil.copy(fp32, path)
    q = quantize(spec, calib, onnx_path=path, plan=plan, target_features=HOST_FEATURES)
    from onnxruntime.quantization import QuantType

    ort_path = ort_quantize_static(
        fp32,
        d / "ort_int8.onnx",
        feeds_of(calib.x, calib.t, None, names, batch=4),
        per_channel=True,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    args = _speed_args()  # cifar-arch: (1, 3, 32, 32), t = 500
    torch.set_num_threads(THREADS)
    # (name, kind, file or source, OpenVINO config): made by _make, in this process or in a child
    cands = [
        ("PyTorch fp32 eager", "torch", "builtin:cifar-arch", None),
        ("ORT fp32", "ort", fp32, None),
        ("ORT int8 quantize_static (QDQ, per-channel, Conv/MatMul/Gemm)", "ort", ort_path, None),
        ("ORT int8 edgediff W8A8", "ort", q.files[0], None),
    ]
    sizes = {
        "ORT fp32": size_mb(fp32),
        "ORT int8 quantize_static (QDQ, per-channel, Conv/MatMul/Gemm)": size_mb(ort_path),
        "ORT int8 edgediff W8A8": size_mb(q.files[0]),
    }
    w4 = d / "w4" / "denoiser.onnx"
    w4.parent.mkdir(exist_ok=True)
    shutil.copy(fp32, w4)
    quantize_w4_onnx(w4)
    cands.append(("ORT edgediff w4 (weight-only)", "ort", w4, None))
    sizes["ORT edgediff w4 (weight-only)"] = size_mb(w4)
    try:
        import openvino  # noqa: F401  (ImportError: no OpenVINO rows)

        cands += [
            ("OpenVINO f32 hint", "ov", fp32, {"INFERENCE_PRECISION_HINT": "f32"}),
            ("OpenVINO default", "ov", fp32, None),
        ]
        ov_path = nncf_quantize(fp32, feeds_of(calib.x, calib.t, None, names, batch=4), d / "nncf_int8.xml")
        cands.append(("OpenVINO int8 NNCF default", "ov", ov_path, None))
        from edgediff.lower.openvino import lower_openvino_int8

        od = d / "edgediff_ov"
        od.mkdir(exist_ok=True)
        shutil.copy(q.files[0], od / "denoiser.onnx")
        ours_ov = lower_openvino_int8(od / "denoiser.onnx", od).file
        cands.append(("OpenVINO int8 edgediff W8A8 (our scales)", "ov", ours_ov, None))
        # the same with every layer int8 (--no-float-defaults), as NNCF's default quantizes them
        pa = d / "edgediff_all" / "denoiser.onnx"
        pa.parent.mkdir(exist_ok=True)
        shutil.copy(fp32, pa)
        qa = quantize(
            spec,
            calib,
            onnx_path=pa,
            plan=plan,
            target_features=HOST_FEATURES,
            options=QuantizeOptions(defaults="none"),
        )
        all_ov = lower_openvino_int8(qa.files[0], pa.parent).file
        cands.append(("OpenVINO int8 edgediff W8A8, no float layers", "ov", all_ov, None))
        sizes["OpenVINO int8 edgediff W8A8, no float layers"] = size_mb(pa.parent)
        wo = d / "w4_ov"
        wo.mkdir(exist_ok=True)
        shutil.copy(fp32, wo / "denoiser.onnx")
        w4_xml, _ = quantize_w4_openvino(wo / "denoiser.onnx", wo)
        cands.append(("OpenVINO edgediff w4 (weight-only)", "ov", w4_xml, None))
        sizes.update(
            {
                "OpenVINO f32 hint": size_mb(fp32),
                "OpenVINO default": size_mb(fp32),
                "OpenVINO int8 NNCF default": size_mb(ov_path) + size_mb(ov_path.with_suffix(".bin")),
                "OpenVINO int8 edgediff W8A8 (our scales)": size_mb(od),
                "OpenVINO edgediff w4 (weight-only)": size_mb(wo),
            }
        )
    except ImportError as e:
        print(f"  OpenVINO skipped: {e}", file=sys.stderr)
    times = time_isolated(cands, a) if a.timing == "isolated" else time_interleaved(cands, a, args)
    kernels = kernel_rows(cands, a)
    rows = [
        {"runtime": name, "ms_per_call": 1000 * float(np.median(v)), "size_mb": sizes.get(name), "timing": a.timing}
        for name, v in times.items()
    ]
    base = {r["runtime"]: r["ms_per_call"] for r in rows}
    for r in rows:
        r["vs_ort_fp32"] = base["ORT fp32"] / r["ms_per_call"]
        r["vs_torch_fp32"] = base["PyTorch fp32 eager"] / r["ms_per_call"]
    return rows, kernels, memory_rows(spec, fp32, calib, plan, d)


def _make(kind: str, arg, config):
    """The denoiser a speed candidate names: PyTorch eager, an ONNX Runtime session or an OpenVINO model."""
    if kind == "torch":
        return torch_denoiser(load_source(str(arg)))
    if kind == "ort":
        return OnnxRuntimeDenoiser(Path(arg), threads=THREADS)
    return OpenVinoDenoiser(str(arg), config)


def _speed_args():
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    return x, np.array([500.0], np.float32), None


def time_interleaved(cands, a, args) -> dict:
    """All candidates in this process, interleaved rounds: a load change on a shared machine hits
    every runtime alike. Each round runs a runtime once untimed first, because the previous
    runtime's worker threads keep spinning for a while after its call (ONNX Runtime, OpenMP,
    TBB) and on 2 cores slow whichever call comes next; some of that remains (see --timing)."""
    fns = [(name, _make(kind, arg, cfg)) for name, kind, arg, cfg in cands]
    times = {name: [] for name, _ in fns}
    for _, fn in fns:
        for _ in range(3):
            fn(*args)
    for _ in tqdm(range(a.reps), desc="speed rounds", file=sys.stderr, leave=False):
        for name, fn in fns:
            fn(*args)
            t0 = time.perf_counter()
            fn(*args)
            times[name].append(time.perf_counter() - t0)
    return times


_TIMER = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import quantize as B
import torch
torch.set_num_threads(B.THREADS)
kind, arg, config, reps = sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), int(sys.argv[5])
fn = B._make(kind, arg, config)
args = B._speed_args()
for _ in range(3):
    fn(*args)
ts = []
for _ in range(reps):
    t0 = time.perf_counter(); fn(*args); ts.append(time.perf_counter() - t0)
print(statistics.median(ts))
"""


def time_isolated(cands, a) -> dict:
    """Each candidate alone in a fresh process (no other runtime's threads beside it), `a.reps`
    calls after 3 warm-up calls; `a.rounds` rounds over all candidates, so a load change still
    reaches every runtime; a candidate's figure is its median over the rounds' medians."""
    times = {name: [] for name, *_ in cands}
    with tqdm(
        total=a.rounds * len(cands), desc="speed (a process per runtime and round)", file=sys.stderr, leave=False
    ) as bar:
        for _ in range(a.rounds):
            for name, kind, arg, cfg in cands:
                out = _run_child(_TIMER, Path(__file__).resolve().parent, kind, arg, json.dumps(cfg), a.reps)
                times[name].append(float(out[-1]))
                bar.update()
    return times


# ---------------------------------------------------------------- where ONNX Runtime's time goes
# op classes of ONNX Runtime's optimized graphs (fp32 and QDQ-fused int8); anything else is "float other"
OP_CLASSES = {
    "convolution": {"Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger"},
    "matmul / gemm": {
        "MatMul",
        "FusedMatMul",
        "Gemm",
        "FusedGemm",
        "QGemm",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
    },
    "quantize / dequantize": {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"},
    "layout (transpose, reorder, reshape, concat)": {
        "Transpose",
        "ReorderInput",
        "ReorderOutput",
        "Reshape",
        "Shape",
        "Unsqueeze",
        "Squeeze",
        "Gather",
        "Slice",
        "Concat",
        "QLinearConcat",
        "Expand",
    },
}

_PROFILER = """
import collections, json, statistics, sys, time, numpy as np, onnxruntime as ort
path, reps, threads, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
so.enable_profiling = True; so.profile_file_prefix = prefix; so.log_severity_level = 3
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
feeds = {s.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32),
         s.get_inputs()[1].name: np.array([500.0], np.float32)}
for _ in range(3):
    s.run(None, feeds)
wall = []
for _ in range(reps):
    t0 = time.perf_counter(); s.run(None, feeds); wall.append(time.perf_counter() - t0)
ops, macs = collections.Counter(), 0
events = [e for e in json.load(open(s.end_profiling())) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
for e in events[-len(events) * reps // (reps + 3):]:  # the timed calls only
    op = e["args"]["op_name"]
    ops[op] += e["dur"] / 1e3 / reps
    if op == "Conv":  # fp32 (an int8 kernel's profile does not list its prepacked weight)
        shapes = [list(d.values())[0] for d in e["args"]["input_type_shape"]]
        out = list(e["args"]["output_type_shape"][0].values())[0]
        macs += int(np.prod(out)) * int(np.prod(shapes[1][1:])) / reps
print(json.dumps({"wall_ms": 1e3 * statistics.median(wall), "ops": ops, "conv_macs": macs}, separators=(",", ":")))
"""


def kernel_rows(cands, a) -> dict:
    """ONNX Runtime's profiler on each ORT candidate (a fresh process each, `a.reps` calls after 3
    warm-up calls, `a.rounds` rounds over the candidates): kernel ms per call by op class, the
    convolutions' MACs per second, and what the run costs beyond its kernels. Each figure is the
    smallest over the rounds: another process on the machine can only slow a kernel, so the
    minimum is the kernel's own time, for fp32 and int8 alike. A whole-model ratio is a weighted
    mean of the per-class ratios, so it cannot exceed the largest of them: these rows show where
    an int8 speedup is capped."""
    other = "float other (norms, activations, adds)"
    runs: dict[str, list[dict]] = {}
    ort_cands = [c for c in cands if c[1] == "ort"]
    with (
        tempfile.TemporaryDirectory(prefix="edgediff-prof-") as tmp,
        tqdm(total=a.rounds * len(ort_cands), desc="ORT profiles", file=sys.stderr, leave=False) as bar,
    ):
        for _ in range(a.rounds):
            for name, _, arg, _ in ort_cands:
                r = json.loads(_run_child(_PROFILER, arg, a.reps, THREADS, Path(tmp) / "p")[-1])
                classes = {c: 0.0 for c in [*OP_CLASSES, other]}
                for op, ms in r["ops"].items():
                    classes[next((c for c, ops in OP_CLASSES.items() if op in ops), other)] += ms
                runs.setdefault(name, []).append({**r, "classes": classes})
                bar.update()
    rows = {}
    for name, rs in runs.items():
        classes = {c: min(r["classes"][c] for r in rs) for c in rs[0]["classes"]}
        fastest = min(rs, key=lambda r: r["wall_ms"])
        rows[name] = {
            "wall_ms": fastest["wall_ms"],
            "kernels_ms": min(sum(r["classes"].values()) for r in rs),
            "classes_ms": classes,
            "rounds": len(rs),
            "conv_macs": rs[0]["conv_macs"],
            "outside_kernels_ms": fastest["wall_ms"] - sum(fastest["classes"].values()),  # of the fastest round
        }
    macs = rows["ORT fp32"]["conv_macs"]  # the same convolutions in every candidate
    for r in rows.values():
        r["conv_gmacs_per_s"] = macs / r["classes_ms"]["convolution"] / 1e6
    return rows


# ---------------------------------------------------------------- memory
_CHILD = """
import json, resource, statistics, sys, time, numpy as np
from pathlib import Path
from edgediff.runtimes.groups import grouped_denoiser
import onnxruntime
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 1e6
mode, root, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
x = np.zeros((1, 3, 32, 32), np.float32); t = np.array([500.0], np.float32)
before = rss()
entry = json.loads((root / "groups.json").read_text()) if (root / "groups.json").exists() else None
# "bundle": as the runtime loads it (ONNX Runtime: one session for all groups);
# "sessions": one session per group, each with its own packed copy of the int8 weights;
# "openvino": the same ONNX files compiled by OpenVINO, one compiled model per group (as the C runtime does)
t0 = time.perf_counter()
if mode == "tflite":  # a compiled pixel-8 bundle: LiteRT, the groups as signatures of one flatbuffer
    from edgediff.runtimes.bundle import load_bundle
    from edgediff.runtimes.runner import bundle_denoiser
    b = load_bundle(root)
    entry = b.scheduler.get("timestep_groups")
    d = bundle_denoiser(b, threads=2)
else:
    d = grouped_denoiser(root, entry, list(range(n)), model_file=next(root.glob("denoiser*.onnx")), threads=2,
                         one_session=mode == "bundle", fmt="openvino" if mode == "openvino" else "onnx")
load_s = time.perf_counter() - t0
call = lambda s: d(x, t, None, step=(s, entry["step_group"][s], False)) if entry else d(x, t, None)
for s in range(n):  # every step once, so every group has run
    call(s)
added = rss() - before
ms = []
for s in range(n):
    t0 = time.perf_counter(); call(s); ms.append((time.perf_counter() - t0) * 1e3)
print(added, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, load_s, statistics.median(ms))
"""


def _child_rss(mode: str, root: Path, n: int) -> tuple[float, float, float, float]:
    """Resident MB added, peak MB, load seconds, median ms per call of a fresh process."""
    return tuple(float(v) for v in _run_child(_CHILD, mode, root, n)[-4:])


def _run_child(code: str, *args) -> list[str]:
    """Run `code` in a fresh Python process with `args` as argv; its stdout, split into words."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], check=True, capture_output=True, text=True
    ).stdout.split()


def memory_rows(spec, fp32: Path, calib, plan, d: Path) -> list[dict]:
    rows = []
    tflite = importlib.util.find_spec("ai_edge_quantizer") is not None
    calib_path = calib.save(d / "calib_speed.npz") if tflite else None  # for the pixel-8 compiles
    for g in (1, 4):
        gd = d / f"mem_g{g}"
        gd.mkdir(exist_ok=True)
        shutil.copy(fp32, gd / "denoiser.onnx")
        q = quantize(spec, calib, onnx_path=gd / "denoiser.onnx", plan=plan, groups=g, target_features=HOST_FEATURES)
        if g > 1:
            (gd / "groups.json").write_text(
                json.dumps(
                    {"files": [f.name for f in q.files], "step_group": q.step_group, "shared_weights": q.shared.name}
                )
            )
        disk = size_mb(gd) - (size_mb(gd / "groups.json") if g > 1 else 0)
        modes = [("bundle", f"G={g}" + (", as loaded: one ONNX Runtime session for all groups" if g > 1 else ""))]
        if g > 1:
            modes.append(("sessions", f"G={g}, one session per group (each packs its own weights)"))
        if importlib.util.find_spec("openvino"):
            modes.append(("openvino", f"G={g}, OpenVINO CPU" + (", one compiled model per group" if g > 1 else "")))
        if tflite:  # the same recipe compiled for pixel-8 (TFLite)
            from edgediff.compiler.pipeline import compile_model
            from edgediff.compiler.recipe import Recipe

            compile_model(
                spec,
                d / f"tflite_g{g}",
                target="pixel-8",
                recipe=Recipe(
                    sampler="dpmpp-2m",
                    steps=len(plan),
                    guidance=1.0,
                    quantize="w8a8",
                    groups=g,
                    calib=str(calib_path),
                ),
            )
            modes.append(("tflite", f"G={g}, LiteRT (pixel-8 bundle)" + (", one flatbuffer" if g > 1 else "")))
        for mode, label in modes:
            added, peak, load_s, ms = _child_rss(mode, d / f"tflite_g{g}" if mode == "tflite" else gd, len(plan))
            disk_mb = disk if mode == "bundle" else size_mb(d / f"tflite_g{g}" / "model") if mode == "tflite" else None
            rows.append(
                {
                    "model": label,
                    "disk_mb": disk_mb,
                    "rss_added_mb": added,
                    "peak_rss_mb": peak,
                    "load_s": load_s,
                    "ms_per_call": ms,
                }
            )
            print(
                f"  memory {label:55} +{added:7.1f} MB resident (peak {peak:.0f} MB), load {load_s:.2f} s, "
                f"{ms:.1f} ms/call",
                file=sys.stderr,
            )
    return rows


# ---------------------------------------------------------------- output
def print_tables(result):
    if result.get("quality"):
        print(
            "builtin:digits, DPM-Solver++ (2M), guidance 3, "
            f"{result['num_samples']} samples, seed 0; calibration {result['calib_samples']} trajectories x steps"
        )
        print(
            "FD - FP32: the row's FD-digits minus FP32's, +- its paired-bootstrap std (same seeds); "
            "FD to FP32: Frechet distance to FP32's images"
        )
        print(
            f"{'steps':>5}  {'model':40} {'PSNR dB':>8} {'FD-digits':>9} {'FD - FP32':>16} {'FD to FP32':>10} "
            f"{'accuracy':>9} {'MB':>6}  note"
        )
        for r in result["quality"]:
            psnr = "ref" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
            fd = f"{r['fd_digits']:.3f}"
            diff = "" if r.get("fd_minus_fp32") is None else f"{r['fd_minus_fp32']:+.3f} +-{r['fd_minus_fp32_std']:.3f}"
            to = "" if r.get("fd_to_fp32") is None else f"{r['fd_to_fp32']:.3f}"
            print(
                f"{r['steps']:>5}  {r['model']:40} {psnr:>8} {fd:>9} {diff:>16} {to:>10} {r['class_accuracy']:9.3f} "
                f"{r['size_mb']:6.2f}  {r['note']}"
            )
    if result.get("speed"):
        print(f"\nbuiltin:cifar-arch, batch 1, {THREADS} threads ({result['cpu']})")
        print(f"{'runtime':62} {'ms/call':>8} {'vs ORT fp32':>12} {'vs torch':>9} {'MB':>8}")
        for r in result["speed"]:
            mb = f"{r['size_mb']:8.1f}" if r.get("size_mb") else f"{'':8}"
            print(
                f"{r['runtime']:62} {r['ms_per_call']:8.1f} {r['vs_ort_fp32']:11.2f}x {r['vs_torch_fp32']:8.2f}x {mb}"
            )
    if result.get("kernels"):
        names = list(result["kernels"])
        base = result["kernels"]["ORT fp32"]
        print(
            "\nONNX Runtime profiler, cifar-arch: kernel ms per call by op class, the least over the rounds "
            "(x: the fp32 class's ms over this one's)"
        )
        short = {n: n.replace("ORT ", "").split(" (")[0][:26] for n in names}
        print(f"{'op class':46}" + "".join(f" {short[n]:>26}" for n in names))
        for c in base["classes_ms"]:
            cells = []
            for n in names:
                ms = result["kernels"][n]["classes_ms"][c]
                ratio = (
                    f" ({base['classes_ms'][c] / ms:.2f}x)"
                    if min(ms, base["classes_ms"][c]) > 0.05 and n != "ORT fp32"
                    else ""
                )
                cells.append(f"{ms:.2f}{ratio}")
            print(f"{c:46}" + "".join(f" {v:>26}" for v in cells))
        for key, label in (
            ("outside_kernels_ms", "outside kernels (wall - kernels)"),
            ("wall_ms", "wall ms/call (profiled)"),
        ):
            print(f"{label:46}" + "".join(f" {result['kernels'][n][key]:26.2f}" for n in names))
        print(
            f"{'convolution GMAC/s':46}" + "".join(f" {result['kernels'][n]['conv_gmacs_per_s']:26.1f}" for n in names)
        )
        ceiling = {
            n: max(base["classes_ms"][c] / ms for c, ms in result["kernels"][n]["classes_ms"].items() if ms > 0.05)
            for n in names
            if n != "ORT fp32"
        }
        print(
            f"{'ceiling: the largest class ratio':46}" + f" {'':26}" + "".join(f" {v:25.2f}x" for v in ceiling.values())
        )
        print("(a whole-model ratio is a weighted mean of the class ratios, so it cannot exceed the largest one)")
    if result.get("memory"):
        print("\nbuiltin:cifar-arch W8A8, memory a fresh process adds to load and run every group once")
        print(f"{'model':60} {'disk MB':>8} {'resident +MB':>13} {'load s':>7} {'ms/call':>8}")
        for r in result["memory"]:
            disk = f"{r['disk_mb']:8.1f}" if r["disk_mb"] is not None else f"{'':8}"
            print(f"{r['model']:60} {disk} {r['rss_added_mb']:13.1f} {r['load_s']:7.2f} {r['ms_per_call']:8.1f}")


def plot(result, path: Path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in result.get("quality", []) if r["psnr_db"] is not None]
    if not rows:
        return
    fig = Figure(figsize=(9, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
    steps = sorted({r["steps"] for r in rows}, reverse=True)
    w = 0.8 / len(steps)
    for k, s in enumerate(steps):
        vals = [next((r["psnr_db"] for r in rows if r["model"] == n and r["steps"] == s), 0) for n in names]
        ax.bar(np.arange(len(names)) + k * w, vals, w, label=f"{s} steps")
    ax.axhline(30, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)) + w / 2, names, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("PSNR vs FP32 (dB)")
    ax.set_title("builtin:digits W8A8, DPM-Solver++ guidance 3", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-samples", type=int, default=256)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 4])
    ap.add_argument("--reps", type=int, default=20, help="timed calls per runtime (per round with --timing isolated)")
    ap.add_argument(
        "--timing",
        choices=("isolated", "interleaved"),
        default="isolated",
        help="isolated: each runtime alone in a fresh process, --rounds rounds (an idle machine); "
        "interleaved: all in this process, alternating call by call (a loaded machine)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--out", default="out/bench_quantize")
    a = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "num_samples": a.num_samples,
        "calib_samples": a.calib_samples,
        "threads": THREADS,
        "cpu": HOST_DESC,
        "quality": [],
        "speed": [],
    }
    with tempfile.TemporaryDirectory(prefix="edgediff-bench-") as tmp:
        work = Path(tmp)
        if not a.skip_quality:
            judge = DigitsJudge()
            for steps in a.steps:
                result["quality"] += quality_rows(steps, a, work, judge)
                Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
        if not a.skip_speed:
            result["speed"], result["kernels"], result["memory"] = speed_rows(a, work)
    Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, Path(f"{out}.png"))
    print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
