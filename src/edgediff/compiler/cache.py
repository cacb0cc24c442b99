"""Feature caching across steps: split a UNet at a skip branch into a full and a shallow graph.

    UNet2DModel | UNet2DConditionModel, --cache-depth d (1: the first down block + the last up block)

    full graph     sample, t[, cond] -> embed -> conv_in -> down[0..D) -> mid -> up[0..U-d) ─┬─ feature
                                                                                             └─ up[U-d..U) -> out -> eps
    shallow graph  sample, t[, cond], feature -> embed -> conv_in -> down[0..d) ──skips──┐
                                                              feature -> up[U-d..U) ─────┴─> out -> eps

The feature is the input the last d up blocks receive from the deeper blocks; the shallow path
recomputes only what those up blocks need besides it (the skip connections of conv_in and the
first d down blocks, and the time/class embedding). Both graphs are PyTorch modules around the
diffusers model's own submodules: only the routing of UNet2DModel.forward is written here
(the order the blocks are called in and which skips each up block takes), never a block's maths.

    lower_pair      ONNX: model/denoiser.onnx + model/shallow.onnx, every weight both read in ONE
                    model/weights.bin (external data, referenced by offset from both graphs);
                    OpenVINO: denoiser.xml/.bin + shallow.xml/.bin (an IR's weights live in its own .bin)
    choose_schedule --cache-schedule auto:K: the K full steps placed where reusing the deep feature
                    costs least, measured on the FP32 trajectory (below)
    verify_cached   the split against the unsplit model (feature and eps, 1e-4), and whole images
                    from the bundle's pair against the PyTorch pair on the same cache schedule;
                    PSNR of the cached images against the uncached FP32 ones
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import DiffusersAdapter, ModelSpec, torch_denoiser
from edgediff.core.stats import count_macs
from edgediff.lower.onnx import OPSET, fix_batch, to_fp16, torch_export
from edgediff.lower.registry import Lowered
from edgediff.runtimes.cache import FEATURE, CachedDenoiser, cached_denoiser
from edgediff.runtimes.quality import psnr_db
from edgediff.runtimes.runner import SamplingSetup, generate
from edgediff.runtimes.steps import StepTable

FORMATS = ("onnx", "openvino")  # the formats the pair is lowered to
SHARED_WEIGHTS = "weights.bin"
MIN_SHARED_BYTES = 1024  # smaller initializers (shapes, scalars) stay inside each graph


# ---------------------------------------------------------------- the split (the routing of UNet2DModel.forward)
def _unet_of(model: ModelSpec):
    from diffusers import UNet2DConditionModel, UNet2DModel

    m = model.module
    if not isinstance(m, DiffusersAdapter) or not isinstance(m.model, (UNet2DModel, UNet2DConditionModel)):
        inner = type(m.model).__name__ if isinstance(m, DiffusersAdapter) else type(m).__name__
        raise EdgediffError(
            f"--cache: {model.source}'s denoiser is a {inner}; the split is written for diffusers' "
            "UNet2DModel and UNet2DConditionModel"
        )
    return m, m.model


def _check_condition_unet(model: ModelSpec, unet) -> None:
    """The UNet2DConditionModel inputs the split routes: a timestep and encoder_hidden_states only."""
    c = unet.config
    extra = [
        name
        for name, on in (
            ("class_embed_type / num_class_embeds", unet.class_embedding is not None),
            ("addition_embed_type", c.addition_embed_type is not None),
            ("encoder_hid_dim_type", getattr(unet, "encoder_hid_proj", None) is not None),
        )
        if on
    ]
    if extra:
        raise EdgediffError(f"--cache: {model.source}'s UNet2DConditionModel sets {extra[0]}; the split takes none")
    factor = 2**unet.num_upsamplers
    if any(d % factor for d in model.sample_shape[1:]):
        raise EdgediffError(
            f"--cache: {model.source}'s sample {list(model.sample_shape[1:])} is not a multiple of {factor} "
            "(the up blocks would need explicit upsample sizes)"
        )


def _res_count(block) -> int:
    """Skip tensors a down block adds: one per resnet, one for its downsampler."""
    return len(block.resnets) + (1 if getattr(block, "downsamplers", None) else 0)


def check_depth(model: ModelSpec, depth: int) -> None:
    """The split at `depth` exists: the first `depth` down blocks' skips are exactly what the last
    `depth` up blocks take, and no block carries UNet2DModel's extra skip_sample path."""
    _, unet = _unet_of(model)
    if type(unet).__name__ == "UNet2DConditionModel":
        _check_condition_unet(model, unet)
    n = len(unet.down_blocks)
    if not 1 <= depth <= n:
        raise EdgediffError(f"--cache-depth {depth}: {model.source}'s UNet has {n} down blocks (choose 1..{n})")
    for b in [*unet.down_blocks, *unet.up_blocks]:
        if hasattr(b, "skip_conv"):
            raise EdgediffError(f"--cache: {model.source} has a {type(b).__name__} (a skip_sample path); not split")
    skips = 1 + sum(_res_count(b) for b in unet.down_blocks[:depth])
    if _takes(unet, depth) > skips:
        raise EdgediffError(
            f"--cache-depth {depth}: the last {depth} up blocks take {_takes(unet, depth)} skip tensors but "
            f"conv_in and the first {depth} down blocks give only {skips}; no split there"
        )


def _takes(unet, depth: int) -> int:
    """Skip tensors the last `depth` up blocks take: the first ones of the down path (conv_in's first)."""
    return sum(len(b.resnets) for b in unet.up_blocks[len(unet.up_blocks) - depth :])


class _Split(nn.Module):
    """What both graphs share: the adapter's timestep rule and the UNet's embedding and output head."""

    def __init__(self, adapter: DiffusersAdapter, depth: int, conditioned: bool):
        super().__init__()
        self.unet = adapter.model
        self.depth, self.conditioned = depth, conditioned
        self.integer_timesteps, self.out_channels = adapter.integer_timesteps, adapter.out_channels
        self.cross = adapter.kind == "UNet2DConditionModel"

    def _embed(self, sample, timestep, cond):
        """(sample, t, emb, the condition the cross-attention blocks read) as the model's forward makes them."""
        u = self.unet
        if self.integer_timesteps:
            timestep = timestep.round().long()
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        t = timestep * torch.ones(sample.shape[0], dtype=timestep.dtype, device=timestep.device)
        if self.cross:  # UNet2DConditionModel: its own helpers (the split refuses class / added embeddings)
            emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=t), None)
            if u.time_embed_act is not None:
                emb = u.time_embed_act(emb)
            return sample, t, emb, u.process_encoder_hidden_states(encoder_hidden_states=cond, added_cond_kwargs={})
        emb = u.time_embedding(u.time_proj(t).to(dtype=u.dtype))
        if u.class_embedding is not None:
            if u.config.class_embed_type == "timestep":
                cond = u.time_proj(cond)
            emb = emb + u.class_embedding(cond).to(dtype=u.dtype)
        return sample, t, emb, None

    @staticmethod
    def _run(block, text, **kw):
        if getattr(block, "has_cross_attention", False):
            kw["encoder_hidden_states"] = text
        return block(**kw)

    def _down(self, blocks, h, emb, text):
        res = (h,)
        for block in blocks:
            h, r = self._run(block, text, hidden_states=h, temb=emb)
            res += r
        return h, res

    def _up(self, blocks, h, res, emb, text):
        """Each up block takes the last skips left (as the model's forward); returns h and the skips left."""
        for block in blocks:
            n = len(block.resnets)
            h = self._run(block, text, hidden_states=h, res_hidden_states_tuple=res[-n:], temb=emb)
            res = res[:-n]
        return h, res

    def _out(self, h, t):
        u = self.unet
        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        h = u.conv_out(h)
        if getattr(u.config, "time_embedding_type", None) == "fourier":
            h = h / t.reshape((h.shape[0], *([1] * len(h.shape[1:]))))
        return h[:, : self.out_channels] if h.shape[1] != self.out_channels else h

    def _shallow_ups(self):
        return self.unet.up_blocks[len(self.unet.up_blocks) - self.depth :]


class FullGraph(_Split):
    """(sample, timestep[, cond]) -> (eps, feature): the whole UNet, the feature taken on the way."""

    def forward(self, sample, timestep, cond=None):
        u = self.unet
        sample, t, emb, text = self._embed(sample, timestep, cond)
        h, res = self._down(u.down_blocks, u.conv_in(sample), emb, text)
        if u.mid_block is not None:
            h = self._run(u.mid_block, text, hidden_states=h, temb=emb)
        feature, res = self._up(u.up_blocks[: len(u.up_blocks) - self.depth], h, res, emb, text)
        eps = self._out(self._up(self._shallow_ups(), feature, res, emb, text)[0], t)
        return eps, feature


class ShallowGraph(_Split):
    """(sample, timestep[, cond], feature) -> eps: the first `depth` down blocks and the last `depth` up blocks."""

    def forward(self, sample, timestep, a, b=None):
        cond, feature = (a, b) if self.conditioned else (None, a)
        u = self.unet
        sample, t, emb, text = self._embed(sample, timestep, cond)
        # the first depth down blocks run whole; the skips the last up blocks take are the first ones
        # (a downsampler output past them, which a deeper up block takes, goes unused)
        _, res = self._down(u.down_blocks[: self.depth], u.conv_in(sample), emb, text)
        return self._out(self._up(self._shallow_ups(), feature, res[: _takes(u, self.depth)], emb, text)[0], t)


@dataclass(frozen=True)
class Split:
    full: FullGraph
    shallow: ShallowGraph
    depth: int
    feature_shape: tuple[int, ...]  # without the batch axis
    conditioned: bool


def split(model: ModelSpec, depth: int = 1) -> Split:
    """The full / shallow pair of `model`'s UNet at `depth` (sharing the model's own modules)."""
    check_depth(model, depth)
    adapter, _ = _unet_of(model)
    conditioned = model.conditioning.kind != "none"
    full = FullGraph(adapter, depth, conditioned).eval()
    with torch.no_grad():
        _, feature = full(*model.example_inputs(batch=1))
    return Split(full, ShallowGraph(adapter, depth, conditioned).eval(), depth, tuple(feature.shape[1:]), conditioned)


def torch_pair(sp: Split, *, label: str = "PyTorch") -> CachedDenoiser:
    """The PyTorch pair as a CachedDenoiser: the reference a cached bundle is checked against."""

    def args(x, t, cond):
        a = [
            torch.from_numpy(np.ascontiguousarray(x, np.float32)),
            torch.from_numpy(np.ascontiguousarray(t, np.float32)),
        ]
        return a + ([torch.from_numpy(np.ascontiguousarray(cond))] if sp.conditioned else [])

    @torch.inference_mode()
    def full(x, t, cond):
        eps, feature = sp.full(*args(x, t, cond))
        return eps.numpy(), feature.numpy()

    @torch.inference_mode()
    def shallow(x, t, cond, feature):
        return sp.shallow(*args(x, t, cond), torch.from_numpy(np.ascontiguousarray(feature, np.float32))).numpy()

    return CachedDenoiser(full, shallow, label=label)


def macs_per_image(model: ModelSpec, sp: Split) -> dict:
    inputs = model.example_inputs(batch=1)
    with torch.no_grad():
        feature = sp.full(*inputs)[1]
    return {"full": count_macs(sp.full, inputs), "shallow": count_macs(sp.shallow, (*inputs, feature))}


# ---------------------------------------------------------------- schedules from the trajectory
AUTO_IMAGES = 8  # images of the FP32 trajectory the auto schedule is measured on
METRIC = "eps"  # what a reused feature costs: "eps" (the shallow graph's output error) or "feature"
_METHODS = {
    "eps": "least summed ||shallow(x_i, f_j) - eps_i||^2 / ||eps_i||^2 over the cached steps i (j: the last "
    "full step) on the FP32 trajectory; dynamic programming over the full steps, each serving at most max_gap",
    "feature": "least summed ||f_i - f_j||^2 / ||f_i||^2 of the reused deep feature on the FP32 trajectory; "
    "dynamic programming over the full steps, each serving at most max_gap",
}


def staleness(features: np.ndarray) -> np.ndarray:
    """S[j, i] for j < i: the relative squared change of the deep feature from step j to step i,
    ||f_i - f_j||^2 / ||f_i||^2 averaged over the rows (images and CFG halves); 0 elsewhere.
    `features`: (steps, rows, ...) the full graph's feature at each step of one trajectory."""
    n = features.shape[0]
    f = features.reshape(n, features.shape[1], -1).astype(np.float64)
    norm = np.maximum((f**2).sum(-1), 1e-30)  # (steps, rows)
    s = np.zeros((n, n))
    for j in range(n - 1):
        s[j, j + 1 :] = (((f[j + 1 :] - f[j]) ** 2).sum(-1) / norm[j + 1 :]).mean(-1)
    return s


def eps_staleness(
    sp: Split, inputs: list[list[torch.Tensor]], features: list[torch.Tensor], eps, *, gap: int
) -> np.ndarray:
    """S[j, i] for i - gap < j < i: the relative squared error of the model output when step i runs the shallow
    graph on step j's feature, ||shallow(x_i, f_j) - eps_i||^2 / ||eps_i||^2 averaged over the rows;
    what reusing the feature injects into the sampler at that step (farther pairs: not measured,
    best_schedule does not use them). `inputs[i]`: step i's graph
    inputs; `features[i]`, `eps[i]`: the full graph's outputs on them."""
    n = len(inputs)
    s = np.zeros((n, n))
    with torch.inference_mode():
        for i in range(1, n):
            ref = eps[i].double().flatten(1)
            norm = (ref**2).sum(1).clamp_min(1e-30)
            for j in range(max(0, i - gap + 1), i):
                got = sp.shallow(*inputs[i], features[j]).double().flatten(1)
                s[j, i] = float((((got - ref) ** 2).sum(1) / norm).mean())
    return s


def schedule_cost(s: np.ndarray, flags: tuple[bool, ...]) -> float:
    """The summed staleness of the cached steps of `flags` (each reuses the last full step's feature)."""
    total, last = 0.0, 0
    for i, cached in enumerate(flags):
        if cached:
            total += s[last, i]
        else:
            last = i
    return float(total)


def max_gap(steps: int, full: int) -> int:
    """The longest run a full step may serve (itself and its cached steps) in an auto schedule:
    twice the even spacing, so the search has room and never measures far-apart pairs."""
    return min(steps, 2 * -(-steps // full))


def best_schedule(s: np.ndarray, full: int, *, gap: int | None = None) -> tuple[bool, ...]:
    """The `full` full steps (step 0 among them) whose cached steps have the least summed staleness,
    each full step serving at most `gap` steps (itself included; None: any): exact, by dynamic
    programming over where each run of cached steps starts (O(full * steps * gap))."""
    n = s.shape[0]
    if not 1 <= full <= n:
        raise EdgediffError(f"--cache-schedule auto:{full}: the number of full steps must be 1 to {n} (--steps)")
    gap = n if gap is None else gap
    if full * gap < n:
        raise EdgediffError(f"--cache-schedule auto:{full}: {full} full steps serving {gap} each cannot cover {n}")
    # run[p, e]: full step p serving the cached steps p+1 .. e-1
    run = np.zeros((n, n + 1))
    for p in range(n):
        run[p, p + 2 :] = np.cumsum(s[p, p + 1 :])
    best = np.full((full + 1, n + 1), np.inf)  # best[k, p]: steps p.. with p full and k full steps in all
    nxt = np.zeros((full + 1, n), dtype=np.int64)
    for p in range(n - 1, -1, -1):
        best[1, p] = run[p, n] if n - p <= gap else np.inf
        for k in range(2, min(full, n - p) + 1):
            q = np.arange(p + 1, min(n - k + 2, p + gap + 1))  # the next full step, room left for k - 2 more
            if not len(q):
                continue
            c = run[p, q] + best[k - 1, q]
            m = int(np.argmin(c))
            best[k, p], nxt[k, p] = c[m], q[m]
    flags, p = [True] * n, 0
    for k in range(full, 0, -1):
        flags[p] = False
        if k > 1:
            p = int(nxt[k, p])
    return tuple(flags)


def even_schedule(steps: int, full: int) -> tuple[bool, ...]:
    """`full` full steps spread evenly (step floor(k * steps / full)): the uniform baseline for a budget."""
    on = {k * steps // full for k in range(full)}
    return tuple(i not in on for i in range(steps))


def choose_schedule(
    model: ModelSpec,
    sp: Split,
    *,
    sampler: str,
    steps: int,
    guidance: float,
    spacing: str,
    plan_options: dict,
    full: int,
    prompts: list[str] | None = None,
    images: int = AUTO_IMAGES,
    seed: int = 0,
) -> tuple[tuple[bool, ...], dict]:
    """--cache-schedule auto:FULL: record the uncached FP32 trajectory (the deployment sampler,
    `images` images, CFG as deployed), run the full graph on every step's inputs for its deep
    feature, and place the `full` full steps where reusing a feature costs least (best_schedule
    on staleness). Returns the flags and the record (the per-step feature change, the cost of the
    chosen schedule and of evenly spaced full steps on the same trajectory)."""
    from edgediff.quantize.calibration.record import record_trajectories

    calib = record_trajectories(
        model,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        spacing=spacing,
        num_samples=images,
        seed=seed,
        prompts=prompts,
        plan_options=plan_options,
    )
    kind = model.conditioning.kind
    inputs, feats, eps = [], [], []
    with torch.inference_mode():
        for i in range(steps):
            m = calib.step == i
            args = [torch.from_numpy(np.array(calib.x[m])), torch.from_numpy(np.array(calib.t[m]))]
            if sp.conditioned:
                if kind == "text":
                    cond = np.asarray(calib.emb)[np.asarray(calib.cond[m])]
                elif kind == "embedding":
                    cond = np.zeros((int(m.sum()), *model.conditioning.shape), np.float32)
                else:
                    cond = np.array(calib.cond[m])
                args.append(torch.from_numpy(cond))
            e, f = sp.full(*args)
            inputs.append(args)
            feats.append(f)
            eps.append(e)
    gap = max_gap(steps, full)
    change = staleness(torch.stack(feats).numpy())
    s = eps_staleness(sp, inputs, feats, eps, gap=gap) if METRIC == "eps" else change
    flags = best_schedule(s, full, gap=gap)
    even = even_schedule(steps, full)
    return flags, {
        "method": _METHODS[METRIC],
        "full_steps": full,
        "images": images,
        "seed": seed,
        **({"prompts": len(prompts)} if prompts is not None else {}),
        "feature_change": [round(float(change[i - 1, i]), 6) for i in range(1, steps)],
        "max_gap": gap,
        "staleness": round(schedule_cost(s, flags), 6),
        "even": {"steps": [i for i, c in enumerate(even) if not c], "staleness": round(schedule_cost(s, even), 6)},
    }


# ---------------------------------------------------------------- lowering
def check_format(fmt: str, target: str) -> None:
    if fmt not in FORMATS:
        raise EdgediffError(
            f"--cache: target {target} has format {fmt}; the full / shallow pair is lowered to "
            f"{', '.join(FORMATS)} only (not yet {fmt})"
        )


def _export_pair(model: ModelSpec, sp: Split, work: Path) -> tuple[Path, Path]:
    names = model.input_names()
    args = model.example_inputs(batch=2)
    with torch.no_grad():
        feature = sp.full(*args)[1]
    dyn = {0: "batch"}
    full_path, shallow_path = work / "full.onnx", work / "shallow.onnx"
    params = ["sample", "timestep", "cond"][: len(args)]
    torch_export(
        sp.full, args, full_path, names, ["eps", FEATURE], {p: dyn for p in params}, what=f"{model.source} (full graph)"
    )
    sparams = ["sample", "timestep", "a", "b"][: len(args) + 1]
    torch_export(
        sp.shallow,
        (*args, feature),
        shallow_path,
        [*names, FEATURE],
        ["eps"],
        {p: dyn for p in sparams},
        what=f"{model.source} (shallow graph)",
    )
    return full_path, shallow_path


def _share(protos: list[onnx.ModelProto], location: str) -> tuple[bytes, dict]:
    """Every initializer of `protos` of at least MIN_SHARED_BYTES into one blob, stored once per
    distinct content (the shallow graph's weights are the full graph's, under the same names or not);
    each graph references the blob by offset. Returns the blob and a record."""
    from onnx import TensorProto, numpy_helper

    blob, offsets = bytearray(), {}
    referenced = 0
    for p in protos:
        for init in p.graph.initializer:
            if init.data_location == TensorProto.EXTERNAL:
                continue
            raw = numpy_helper.to_array(init).tobytes()
            if len(raw) < MIN_SHARED_BYTES:
                continue
            if raw not in offsets:
                blob += b"\0" * ((-len(blob)) % 64)
                offsets[raw] = len(blob)
                blob += raw
            referenced += len(raw)
            init.ClearField("raw_data")
            for f in ("float_data", "int32_data", "int64_data", "double_data"):
                init.ClearField(f)
            init.data_location = TensorProto.EXTERNAL
            del init.external_data[:]
            for k, v in (("location", location), ("offset", str(offsets[raw])), ("length", str(len(raw)))):
                e = init.external_data.add()
                e.key, e.value = k, v
    return bytes(blob), {"bytes": len(blob), "bytes_referenced": referenced}


def lower_pair(model: ModelSpec, sp: Split, out_dir: Path, *, fmt: str, precision: str, static_batch: int | None):
    """The pair in `out_dir` (the bundle's model/): returns (Lowered of the full graph, shallow file, record)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = out_dir.parent / "ir" / "cache"
    scratch.mkdir(parents=True, exist_ok=True)
    full_onnx, shallow_onnx = _export_pair(model, sp, scratch)
    record = {"depth": sp.depth, "feature_shape": list(sp.feature_shape)}
    if fmt == "onnx":
        protos = []
        for src in (full_onnx, shallow_onnx):
            p = onnx.load(str(src))
            if static_batch is not None:
                p = fix_batch(p, static_batch)
            if precision == "fp16":
                p = to_fp16(p)
            p.producer_name = "edgediff"
            protos.append(p)
        blob, shared = _share(protos, SHARED_WEIGHTS)
        (out_dir / SHARED_WEIGHTS).write_bytes(blob)
        full, shallow = out_dir / "denoiser.onnx", out_dir / "shallow.onnx"
        onnx.save(protos[0], str(full))
        onnx.save(protos[1], str(shallow))
        record |= {"opset": OPSET, "shared_weights": f"model/{SHARED_WEIGHTS}", "weights": shared}
        runtime = {"static_batch": static_batch}
    else:
        from edgediff.lower.openvino import HINTS, convert_onnx, require

        ov = require("openvino", "openvino", "openvino")
        full, shallow = out_dir / "denoiser.xml", out_dir / "shallow.xml"
        for src, dst in ((full_onnx, full), (shallow_onnx, shallow)):
            m = convert_onnx(src, f"{model.source} ({src.stem} graph)", static_batch=static_batch)
            ov.save_model(m, str(dst), compress_to_fp16=precision == "fp16")
        record |= {
            "openvino": ov.__version__,
            "shared_weights": None,
            "weights": {"bytes": sum(p.with_suffix(".bin").stat().st_size for p in (full, shallow))},
        }
        runtime = {"static_batch": static_batch, "inference_precision_hint": HINTS[precision]}
    shutil.rmtree(scratch)
    return Lowered(file=full, record=record | {"static_batch": static_batch}, runtime=runtime), shallow, record


# ---------------------------------------------------------------- verification
def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


SPLIT_BOUND = 1e-4  # the split is exact in real arithmetic: fp32 reordering only
IMAGE_BOUNDS = {"fp32": 1e-4, "fp16": 5e-2}  # bundle images vs the PyTorch pair on the same schedule


def verify_split(model: ModelSpec, sp: Split, *, seed: int = 0) -> dict:
    """PyTorch alone: the full graph's eps equals the unsplit model's, and the shallow graph fed the
    full graph's own feature gives the same eps again."""
    g = torch.Generator().manual_seed(seed)
    worst = {"full_vs_model": 0.0, "shallow_vs_full": 0.0}
    T = model.schedule.num_train_timesteps
    for t in np.linspace(0, T - 1, 4).round():
        args = list(model.example_inputs(batch=4, generator=g))
        args[1] = torch.full((4,), float(t))
        with torch.no_grad():
            ref = model.module(*args)
            eps, feature = sp.full(*args)
            again = sp.shallow(*args, feature)
        worst["full_vs_model"] = max(worst["full_vs_model"], _rel(eps.numpy(), ref.numpy()))
        worst["shallow_vs_full"] = max(worst["shallow_vs_full"], _rel(again.numpy(), eps.numpy()))
    for k, v in worst.items():
        if not v <= SPLIT_BOUND:
            raise EdgediffError(f"--cache: the split's {k} error {v:.3g} > {SPLIT_BOUND:g}; nothing written")
    return {"bound": SPLIT_BOUND, **worst}


def verify_images(
    model: ModelSpec,
    sp: Split,
    root: Path,
    manifest: dict,
    setup: SamplingSetup,
    *,
    precision: str,
    n: int = 4,
    seed: int = 0,
    labels=None,
) -> dict:
    """Images of the lowered pair (in `root`) vs the PyTorch pair on the same cache schedule, and the
    quality cost: PSNR of each against the uncached FP32 PyTorch images (same seed, same noise)."""
    bound = IMAGE_BOUNDS.get(precision, 5e-2)
    lowered = cached_denoiser(root, manifest)
    reference = torch_pair(sp)
    ours = generate(lowered, setup, n=n, seed=seed, labels=labels, loop="python")
    theirs = generate(reference, setup, n=n, seed=seed, labels=labels, loop="python")
    uncached = generate(torch_denoiser(model), setup, n=n, seed=seed, labels=labels, loop="python")
    err = float(np.abs(ours - theirs).max())
    if not err <= bound:
        raise EdgediffError(
            f"{lowered.label}: cached images differ from the PyTorch pair on the same schedule by {err:.3g} "
            f"> {bound:g} ({precision}); nothing written"
        )
    cached = sum(setup.steps.cached)
    return {
        "against": "pytorch-fp32 split, same cache schedule",
        "images": n,
        "max_abs_error": err,
        "bound": bound,
        "full_steps": len(setup.steps.cached) - cached,
        "cached_steps": cached,
        "calls": dict(lowered.calls),
        "psnr_vs_uncached_db": _psnr(ours, uncached),
        "psnr_pytorch_pair_vs_uncached_db": _psnr(theirs, uncached),
    }


def verify_text_images(
    model: ModelSpec,
    sp: Split,
    root: Path,
    manifest: dict,
    setup: SamplingSetup,
    *,
    components: dict,
    precision: str,
    prompts: tuple[str, ...],
) -> dict:
    """verify_images for a text-to-image pipeline: the prompts through the bundle's tokenizer, text
    encoder and VAE decoder, the denoiser the lowered pair, the PyTorch pair, or the uncached model."""
    from edgediff.runtimes.backends import Graph, load_tokenizer
    from edgediff.runtimes.runner import TextPipeline, generate_text

    fmt = manifest["model"]["format"]
    t = model.text

    def pipe(denoise) -> TextPipeline:
        return TextPipeline(
            tokenizer=load_tokenizer(root / "tokenizer"),
            max_length=t.max_length,
            encode=Graph(components["text_encoder"].file, fmt),
            denoise=denoise,
            decode=Graph(components["vae_decoder"].file, fmt),
        )

    lowered, reference = cached_denoiser(root, manifest), torch_pair(sp)
    plain = torch_denoiser(model)
    runs = {
        name: generate_text(pipe(d), setup, prompts=list(prompts), seed=0, loop="python")
        for name, d in (("ours", lowered), ("theirs", reference), ("uncached", plain))
    }
    err = float(np.abs(runs["ours"] - runs["theirs"]).max())
    bound = IMAGE_BOUNDS.get(precision, 5e-2)
    if not err <= bound:
        raise EdgediffError(
            f"{lowered.label}: cached images differ from the PyTorch pair on the same schedule by {err:.3g} "
            f"> {bound:g} ({precision}); nothing written"
        )
    cached = sum(setup.steps.cached)
    return {
        "against": "pytorch-fp32 split, same cache schedule (the bundle's text encoder and VAE decoder)",
        "prompts": list(prompts),
        "max_abs_error": err,
        "bound": bound,
        "full_steps": len(setup.steps.cached) - cached,
        "cached_steps": cached,
        "calls": dict(lowered.calls),
        "psnr_vs_uncached_db": _psnr(runs["ours"], runs["uncached"]),
        "psnr_pytorch_pair_vs_uncached_db": _psnr(runs["theirs"], runs["uncached"]),
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    v = psnr_db(a, b)
    return None if math.isinf(v) else round(v, 2)


def step_table(flags: tuple[bool, ...]) -> StepTable:
    return StepTable(num_steps=len(flags), cached=flags)
