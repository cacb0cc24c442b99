"""Step distillation: a teacher denoiser in, a student model folder that needs 1-8 steps out.

    teacher (ModelSpec) ──[guidance: wrap the UNet, w -> sinusoid -> MLP added to its time embedding]
        │
        ├─ progressive (Salimans & Ho 2022): student <- teacher; for N = teacher_steps/2, /4, ..., steps:
        │      target = two teacher DDIM steps t -> (t+s)/2 -> s, as the x that one DDIM step from z_t
        │      must predict; loss max(SNR_t, 1) |x̂ - x̃|²; then teacher <- student
        └─ consistency (LCM, Luo et al. 2023): f(z_t, t) = c_skip z_t + c_out x̂(z_t, t) must equal
               stopgrad f(ẑ_s, s), ẑ_s one teacher DDIM step from z_t (s = t - T/50); pseudo-Huber loss
        │
        v
    student folder (diffusers layout, `edgediff compile` reads it):
        unet/config.json + diffusion_pytorch_model.safetensors   UNet2DModel
        scheduler/scheduler_config.json                          the teacher's schedule (trained_betas)
        guidance_embedding.safetensors                            w-embedding (guidance-distilled only)
        edgediff_student.json                                     sampler, steps, spacing, guidance handling,
                                                                  teacher, training record (STUDENT_FILE)

Guidance handling of a student ("guidance.mode" in edgediff_student.json):
    "distilled"  the student takes w and matches the classifier-free-guided teacher in one forward
                 pass (Meng et al. 2023). At compile time w is folded into the time embedding's last
                 bias (`bind_guidance`): the exported graph keeps sample/timestep/class_labels, and
                 scheduler.json gets guidance_scale 1 (one pass per step) plus "distilled".
    "cfg"        the student matches the unguided teacher (labels dropped to the null label 10% of
                 the time, as in training); the runtime applies guidance with two passes per step.

Both methods train with the shared trainer (edgediff.training): EMA, seeded, resumable, DDP.
Choices that deviate from the papers, and why:
- Progressive runs on the runtime's own DDIM grid ("trailing" spacing, s = t - T//N), so the
  student is trained on exactly the steps the compiled bundle takes; the teacher's midpoint is
  (t + s) // 2. With --guidance-distill the first stage's teacher is the CFG teacher itself (Meng
  et al. distil guidance in a separate stage first; merging it into stage one saves a stage).
- Consistency uses the student itself (no EMA) as the target network, as in improved consistency
  training (Song & Dhariwal 2023): the target is a pure function of the weights, so a resumed run
  continues exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from edgediff.core.errors import EdgediffError
from edgediff.core.files import staging, swap_into_place
from edgediff.core.options import nonneg_int, number_range, option, positive_float, positive_int
from edgediff.core.readers import read_json
from edgediff.core.spec import DiffusersAdapter, ModelSpec
from edgediff.prune.store import FORMAT, SHAPES_FILE, changed_shapes
from edgediff.runtimes.samplers import get_solver
from edgediff.training import DistContext, TrainConfig, Trainer
from edgediff.training.diffusion import alphas_cumprod, drop_labels, training_data

Method = Literal["progressive", "consistency"]
METHODS = ("progressive", "consistency")
STUDENT_FILE = "edgediff_student.json"
GUIDANCE_FILE = "guidance_embedding.safetensors"
STUDENT_FORMAT = "edgediff-student"
LCM_ORIGINAL_STEPS = 50  # the consistency grid: t = 19, 39, ..., 999 for T = 1000
LCM_TIMESTEP_SCALING = 10.0
SIGMA_DATA = 0.5  # as src/edgediff/runtimes/samplers/lcm.py


@dataclass(frozen=True)
class DistillOptions:
    """Rare knobs of `distill`; every field has a working default."""

    train_steps: int = option(
        500, parse=positive_int, help="training steps per progressive stage (consistency: in all)"
    )
    batch_size: int = option(64, parse=positive_int, help="global batch (split over processes)")
    lr: float = option(1e-4, parse=positive_float, help="learning rate")
    warmup: int = option(50, parse=nonneg_int, help="learning-rate warm-up steps")
    ema_decay: float = option(0.999, help="decay of the student weights' moving average")
    seed: int = option(0, parse=nonneg_int, help="seed of the training noise, timesteps and batches")
    # progressive: the teacher's DDIM steps (default 4 x steps, at least 8)
    teacher_steps: int | None = option(
        None,
        parse=positive_int,
        help="progressive: the teacher's DDIM steps, steps x a power of two (default 4 x steps)",
    )
    # w drawn uniformly in it (default guidance ± 1, >= 1)
    guidance_range: tuple[float, float] | None = option(
        None,
        parse=number_range,
        metavar="LO,HI",
        help="guidance distillation: w drawn from this range in training (default guidance-1,guidance+1)",
    )
    label_dropout: float = option(
        0.1, help='guidance "cfg": fraction of labels dropped, to train the unconditional output'
    )
    # consistency pseudo-Huber constant (default 0.00054 sqrt(pixels), iCT)
    huber_c: float | None = option(None, help="consistency: pseudo-Huber constant (default 0.00054 sqrt(pixels))")
    threads: int | None = option(None, parse=positive_int, help="torch threads per process")
    checkpoint_dir: str | None = option(None, help="resumable: checkpoints per stage here")
    progress: bool = option(True, switch=("quiet", False), help="no progress bars")

    def __post_init__(self):
        for name in ("train_steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise EdgediffError(f"distill: {name} must be a positive integer, got {v!r}")
        if self.teacher_steps is not None and (not isinstance(self.teacher_steps, int) or self.teacher_steps < 2):
            raise EdgediffError(f"distill: teacher_steps must be an integer >= 2, got {self.teacher_steps!r}")
        if self.guidance_range is not None:
            lo, hi = self.guidance_range
            if not (1.0 <= lo <= hi) or not math.isfinite(hi):
                raise EdgediffError(
                    f"distill: guidance_range must be (lo, hi) with 1 <= lo <= hi, got {self.guidance_range!r}"
                )
        if not 0 <= self.label_dropout < 1:
            raise EdgediffError(f"distill: label_dropout must lie in [0, 1), got {self.label_dropout}")


# ---------------------------------------------------------------- the w-conditioned student
class GuidanceEmbedding(nn.Module):
    """w -> sinusoidal features -> MLP, added to the UNet's time embedding. The last layer starts
    at zero, so a fresh student equals its teacher."""

    def __init__(self, dim: int, freq_dim: int = 64, scale: float = 100.0):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.linear_1.weight.normal_(0, 1 / math.sqrt(freq_dim), generator=g)
            self.linear_1.bias.zero_()
            self.linear_2.weight.zero_()
            self.linear_2.bias.zero_()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=w.device) / half)
        args = (w.float() * self.scale)[:, None] * freqs[None]
        return self.linear_2(self.act(self.linear_1(torch.cat([torch.cos(args), torch.sin(args)], dim=1))))


class GuidedStudent(nn.Module):
    """eps = unet(sample, timestep, class_labels) with embed(w) added to the time embedding.

    The addition is a forward hook on unet.time_embedding that reads the embedding of the
    current call only (set and cleared inside forward), so the UNet's own weights and
    state-dict keys stay those of a plain diffusers UNet2DModel.
    """

    def __init__(self, unet: nn.Module, embedding: GuidanceEmbedding):
        super().__init__()
        self.unet, self.w_embedding = unet, embedding
        self._current: list = [None]
        unet.time_embedding.register_forward_hook(self._add_w)

    def _add_w(self, module, inputs, output):
        emb = self._current[0]
        return output if emb is None else output + emb.to(output.dtype)

    def forward(self, sample, timestep, class_labels, w):
        self._current[0] = self.w_embedding(w.reshape(-1).expand(sample.shape[0]))
        try:
            return self.unet(sample, timestep, class_labels=class_labels).sample
        finally:
            self._current[0] = None


class BoundGuidance(nn.Module):
    """A GuidedStudent with w fixed: the three-input calling convention of a ModelSpec."""

    def __init__(self, student: GuidedStudent, w: float):
        super().__init__()
        self.student, self.w = student, float(w)

    def forward(self, sample, timestep, class_labels):
        return self.student(sample, timestep, class_labels, torch.full((1,), self.w))


def _unet_of(spec: ModelSpec) -> nn.Module:
    m = spec.module
    if isinstance(m, BoundGuidance):
        return m.student.unet
    if isinstance(m, DiffusersAdapter) and m.kind == "UNet2DModel":
        return m.model
    raise EdgediffError(
        f"distill: source {spec.source!r} is a {type(m).__name__}"
        f"{' (' + m.kind + ')' if isinstance(m, DiffusersAdapter) else ''}; step distillation "
        "writes diffusers UNet2DModel students, so the teacher must be one"
    )


def fold_guidance(student: GuidedStudent, w: float) -> nn.Module:
    """A plain UNet2DModel equal to `student` at guidance `w` (embed(w) added to the last time bias)."""
    unet = copy.deepcopy(student.unet)  # a copy, not from_config: a pruned student keeps its layer widths
    with torch.no_grad():
        unet.time_embedding.linear_2.bias += student.w_embedding(torch.tensor([float(w)]))[0]
    return unet.eval()


def bind_guidance(spec: ModelSpec, w: float) -> ModelSpec:
    """The ModelSpec of a guidance-distilled student with w folded in (what compile exports)."""
    m = spec.module
    if not isinstance(m, BoundGuidance):
        raise EdgediffError(f"source {spec.source!r}: not a guidance-distilled student")
    unet = fold_guidance(m.student, w)
    return dataclasses.replace(
        spec,
        module=DiffusersAdapter(unet, "UNet2DModel", unet.config.out_channels).eval(),
        student={**(spec.student or {}), "bound_guidance": float(w)},
    )


# ---------------------------------------------------------------- schedule helpers (torch, float32)
def _abar_ext(spec: ModelSpec, device) -> torch.Tensor:
    """alphas_cumprod with abar(-1) = 1 appended at index T (the final DDIM step to x0)."""
    return torch.cat([alphas_cumprod(spec), torch.ones(1)]).to(device)


def _at(abar_ext: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    T = abar_ext.numel() - 1
    return abar_ext[torch.where(t < 0, torch.full_like(t, T), t)].view(-1, 1, 1, 1)


def _ddim(z, eps, a_t, a_s):
    """One DDIM (eta 0) step for eps-prediction; returns (z_s, x0)."""
    x0 = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps, x0


def _x0(z, eps, a_t):
    return (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def _lcm_boundary(t: torch.Tensor):
    scaled = t.float().view(-1, 1, 1, 1) * LCM_TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip, c_out


# ---------------------------------------------------------------- denoiser calls
@dataclass
class _Calls:
    """How to call teacher and student: guidance mode, null label, w."""

    spec: ModelSpec
    mode: str  # "distilled" | "cfg"

    def student(self, module, z, t, label, w):
        if self.mode == "distilled":
            return module(z, t.float(), label, w)
        if self.spec.conditioning.kind == "none":
            return module(z, t.float())
        return module(z, t.float(), label)

    @torch.no_grad()
    def teacher(self, module, z, t, label, w, *, guided_teacher: bool):
        """The teacher's eps at (z, t): CFG at per-row w when the teacher is the original guided
        model, the w-input student when it is an earlier stage, the plain output in "cfg" mode."""
        if self.mode != "distilled":
            return self.student(module, z, t, label, None)
        if not guided_teacher:
            return module(z, t.float(), label, w)
        null = torch.full_like(label, self.spec.conditioning.null_label)
        out = module(torch.cat([z, z]), torch.cat([t, t]).float(), torch.cat([label, null]))
        e_c, e_u = out.chunk(2)
        return e_u + w.view(-1, 1, 1, 1) * (e_c - e_u)


def _draw_w(rng, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * rng.rand()


def progressive_loss(
    spec: ModelSpec,
    teacher: nn.Module,
    *,
    steps: int,
    mode: str,
    guided_teacher: bool,
    w_range: tuple[float, float],
    label_dropout: float,
):
    """loss_fn for one progressive stage: the student's N-step DDIM grid against two teacher steps."""
    plan = get_solver("ddim").plan(spec.schedule, steps, spacing="trailing")
    ts = torch.tensor(np.array(plan.timesteps), dtype=torch.long)
    ss = torch.as_tensor(plan.params["prev_timesteps"], dtype=torch.long)
    calls = _Calls(spec, mode)
    teacher = teacher.eval().requires_grad_(False)

    def loss_fn(module, batch, rng):
        x0 = batch["x0"]
        dev = x0.device
        abar = _abar_ext(spec, dev)
        i = rng.randint(0, steps).to(dev)
        eps = rng.randn(*x0.shape[1:]).to(dev)
        w = _draw_w(rng, *w_range).to(dev) if mode == "distilled" else None
        label = batch.get("label")
        if label is not None and mode == "cfg":
            label = drop_labels(label, spec, rng, label_dropout)
        t, s = ts.to(dev)[i], ss.to(dev)[i]
        m = torch.div(t + s, 2, rounding_mode="floor")
        a_t, a_m, a_s = _at(abar, t), _at(abar, m), _at(abar, s)
        z_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
        with torch.no_grad():
            z_m, _ = _ddim(z_t, calls.teacher(teacher, z_t, t, label, w, guided_teacher=guided_teacher), a_t, a_m)
            z_s, _ = _ddim(z_m, calls.teacher(teacher, z_m, m, label, w, guided_teacher=guided_teacher), a_m, a_s)
            # the x0 that takes z_t to z_s in one DDIM step (Salimans & Ho, Algorithm 2)
            ratio = ((1 - a_s) / (1 - a_t)).sqrt()
            x_target = (z_s - ratio * z_t) / (a_s.sqrt() - ratio * a_t.sqrt())
        x_pred = _x0(z_t, calls.student(module, z_t, t, label, w), a_t)
        weight = torch.clamp(a_t / (1 - a_t), min=1.0).view(-1)  # truncated SNR weighting
        per_row = ((x_pred - x_target) ** 2).flatten(1).mean(1)
        return (weight * per_row).mean()

    return loss_fn


def consistency_loss(
    spec: ModelSpec,
    teacher: nn.Module,
    *,
    mode: str,
    w_range: tuple[float, float],
    label_dropout: float,
    huber_c: float | None,
    guided_teacher: bool = True,
):
    """loss_fn for consistency distillation on the LCM grid t_n = n T/50 - 1 (n = 1..50)."""
    T = spec.schedule.num_train_timesteps
    k = T // LCM_ORIGINAL_STEPS
    if k < 1:
        raise EdgediffError(
            f"distill: consistency needs at least {LCM_ORIGINAL_STEPS} training timesteps, the model has {T}"
        )
    calls = _Calls(spec, mode)
    teacher = teacher.eval().requires_grad_(False)
    pixels = int(np.prod(spec.sample_shape))
    c = huber_c if huber_c is not None else 0.00054 * math.sqrt(pixels)

    def f(module, z, t, label, w, a_t):
        c_skip, c_out = _lcm_boundary(t)
        return c_skip * z + c_out * _x0(z, calls.student(module, z, t, label, w), a_t)

    def loss_fn(module, batch, rng):
        x0 = batch["x0"]
        dev = x0.device
        abar = _abar_ext(spec, dev)
        n = rng.randint(1, LCM_ORIGINAL_STEPS + 1).to(dev)
        eps = rng.randn(*x0.shape[1:]).to(dev)
        w = _draw_w(rng, *w_range).to(dev) if mode == "distilled" else None
        label = batch.get("label")
        if label is not None and mode == "cfg":
            label = drop_labels(label, spec, rng, label_dropout)
        t = n * k - 1
        s = t - k
        a_t, a_s = _at(abar, t), _at(abar, s)
        z_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
        inner = module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
        with torch.no_grad():
            z_s, x0_hat = _ddim(z_t, calls.teacher(teacher, z_t, t, label, w, guided_teacher=guided_teacher), a_t, a_s)
            target = f(inner, z_s, s.clamp(min=0), label, w, _at(abar, s.clamp(min=0)))
            target = torch.where((s < 0).view(-1, 1, 1, 1), x0_hat, target)  # boundary: f(x, -1) = x0
        pred = f(module, z_t, t, label, w, a_t)
        d2 = ((pred - target) ** 2).flatten(1).sum(1)
        return ((d2 + c * c).sqrt() - c).mean()  # pseudo-Huber (iCT)

    return loss_fn


# ---------------------------------------------------------------- the pass
@dataclass
class Stage:
    steps: int  # the student's steps after this stage
    train: dict  # TrainResult.to_dict()
    state: dict = field(repr=False)  # the student's weights after the stage (CPU copies)


@dataclass
class Student:
    """What `distill` returns: the student module, its record, and every stage's weights."""

    module: nn.Module  # GuidedStudent (mode "distilled") or DiffusersAdapter
    teacher: ModelSpec
    record: dict  # becomes edgediff_student.json
    stages: list[Stage]

    def spec(self, steps: int | None = None) -> ModelSpec:
        """The student (at a given stage's step count, default the last) as a ModelSpec."""
        module = copy.deepcopy(self.module)
        if steps is not None:
            stage = next((s for s in self.stages if s.steps == steps), None)
            if stage is None:
                raise EdgediffError(
                    f"distill: no stage with {steps} steps (have {', '.join(str(s.steps) for s in self.stages)})"
                )
            module.load_state_dict(stage.state)
        g = self.record["guidance"]
        if g["mode"] == "distilled":
            module = BoundGuidance(module, g["scale"])
        t = self.teacher
        return ModelSpec(
            module=module.eval(),
            schedule=t.schedule,
            sample_shape=t.sample_shape,
            conditioning=t.conditioning,
            source=f"student of {t.source}",
            description=f"{self.record['method']} student",
            student=self.record,
            pruning=t.pruning,
        )


def _stages(method: str, steps: int, teacher_steps: int | None) -> list[int]:
    if method == "consistency":
        return [steps]
    start = teacher_steps if teacher_steps is not None else max(8, 4 * steps)
    out, n = [], start
    while n > steps:
        if n % 2:
            raise EdgediffError(f"distill: teacher_steps {start} must be steps ({steps}) times a power of two")
        n //= 2
        out.append(n)
    if not out or out[-1] != steps:
        raise EdgediffError(f"distill: teacher_steps {start} must be steps ({steps}) times a power of two (>= 2x)")
    return out


def distill(
    model: ModelSpec,
    *,
    method: Method = "progressive",
    steps: int = 4,
    guidance: float = 3.0,
    guidance_distill: bool = False,
    data: str | Path | None = None,
    options: DistillOptions = DistillOptions(),
    dist: DistContext | None = None,
) -> Student:
    """Distil `model` into a student sampled in `steps` steps; see the module docstring."""
    if method not in METHODS:
        raise EdgediffError(f"distill: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise EdgediffError(f"distill: steps must be a positive integer, got {steps!r}")
    if method == "consistency" and steps > LCM_ORIGINAL_STEPS:
        raise EdgediffError(f"distill: consistency students take 1..{LCM_ORIGINAL_STEPS} steps, got {steps}")
    if model.schedule.prediction_type != "epsilon":
        raise EdgediffError(
            f"distill: the teacher predicts {model.schedule.prediction_type}; only epsilon teachers are supported"
        )
    if not math.isfinite(guidance) or guidance < 1:
        raise EdgediffError(f"distill: guidance must be a number >= 1, got {guidance!r}")
    cond = model.conditioning
    if guidance_distill and (cond.kind != "class" or cond.null_label is None):
        raise EdgediffError(
            f"distill: --guidance-distill needs a class-conditional teacher with a null label "
            f"(source {model.source!r} has conditioning {cond.kind!r})"
        )
    unet = _unet_of(model)
    plan_steps = _stages(method, steps, options.teacher_steps)
    dist = dist or DistContext()
    train_data = training_data(model, data)
    mode = "distilled" if guidance_distill else "cfg"
    w_range = options.guidance_range or (max(1.0, guidance - 1.0), guidance + 1.0)

    base = DiffusersAdapter(copy.deepcopy(unet), "UNet2DModel", unet.config.out_channels)
    w_input_teacher = isinstance(model.module, BoundGuidance)  # a guidance-distilled student, distilled further
    if mode == "distilled":
        emb = (
            copy.deepcopy(model.module.student.w_embedding)
            if w_input_teacher
            else GuidanceEmbedding(unet.time_embedding.linear_2.out_features)
        )
        student: nn.Module = GuidedStudent(base.model, emb)
    else:
        student = base
    if w_input_teacher and mode == "distilled":
        teacher: nn.Module = copy.deepcopy(model.module.student)
    else:  # in "cfg" mode a w-input teacher runs at its bound w
        teacher = copy.deepcopy(model.module)
    # the original teacher is run with CFG; a w-input teacher (later stages) takes w directly
    guided_teacher = not (w_input_teacher and mode == "distilled")
    stages: list[Stage] = []
    t0 = time.perf_counter()
    for k, n in enumerate(plan_steps):
        if method == "progressive":
            loss = progressive_loss(
                model,
                teacher,
                steps=n,
                mode=mode,
                guided_teacher=guided_teacher,
                w_range=w_range,
                label_dropout=options.label_dropout,
            )
        else:
            loss = consistency_loss(
                model,
                teacher,
                mode=mode,
                w_range=w_range,
                guided_teacher=guided_teacher,
                label_dropout=options.label_dropout,
                huber_c=options.huber_c,
            )
        ckpt = str(Path(options.checkpoint_dir) / f"stage-{k}-{n}") if options.checkpoint_dir else None
        cfg = TrainConfig(
            steps=options.train_steps,
            batch_size=options.batch_size,
            lr=options.lr,
            warmup=options.warmup,
            ema_decay=options.ema_decay,
            seed=options.seed + k,
            checkpoint_dir=ckpt,
            threads=options.threads,
            progress=options.progress,
            desc=f"{method} {n} steps",
            checkpoint_every=max(50, options.train_steps // 5),
        )
        result = Trainer(student, loss, train_data, cfg, dist=dist).run()
        stages.append(
            Stage(
                steps=n,
                train=result.to_dict(),
                state={k2: v.detach().cpu().clone() for k2, v in student.state_dict().items()},
            )
        )
        if method == "progressive":
            teacher = copy.deepcopy(student)
            guided_teacher = mode != "distilled"
    record = {
        "format": STUDENT_FORMAT,
        "version": 1,
        "method": method,
        "steps": steps,
        "sampler": "ddim" if method == "progressive" else "lcm",
        "spacing": "trailing" if method == "progressive" else "lcm",
        "guidance": {"mode": mode, "scale": float(guidance), "range": list(w_range) if mode == "distilled" else None},
        "teacher": {"source": model.source, "sha256": model.source_sha256},
        "stages": [
            {
                "student_steps": s.steps,
                "train_steps": s.train["steps"],
                **{k2: v for k2, v in s.train.items() if k2 != "steps"},
            }
            for s in stages
        ],
        "options": {
            k2: (list(v) if isinstance(v, tuple) else v)
            for k2, v in asdict(options).items()
            if k2 not in ("progress", "checkpoint_dir", "threads")
        },
        "world_size": dist.world_size,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    return Student(module=student.eval(), teacher=model, record=record, stages=stages)


# ---------------------------------------------------------------- the student folder
def _scheduler_config(spec: ModelSpec) -> dict:
    """A diffusers scheduler config that rebuilds the teacher's schedule (as trained betas)."""
    ac = np.asarray(spec.schedule.alphas_cumprod, np.float64)
    betas = 1.0 - ac / np.concatenate([[1.0], ac[:-1]])
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": int(ac.size),
        "trained_betas": betas.tolist(),
        "prediction_type": spec.schedule.prediction_type,
        "clip_sample": False,
    }


def save_student(student: Student, out: str | Path, *, steps: int | None = None) -> Path:
    """Write the student (a stage's, default the last) as a model folder `edgediff compile` reads.

    Staged in a hidden sibling folder and renamed into place when complete.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / STUDENT_FILE).exists())):
        raise EdgediffError(f"{out}: exists and is not a student folder; refusing to replace it")
    module = copy.deepcopy(student.module)
    record = dict(student.record)
    if steps is not None and steps != record["steps"]:
        stage = next((s for s in student.stages if s.steps == steps), None)
        if stage is None:
            raise EdgediffError(f"distill: no stage with {steps} steps")
        module.load_state_dict(stage.state)
        record["steps"] = steps
        record["stages"] = [s for s in record["stages"] if s["student_steps"] >= steps]
    with staging(out) as tmp:
        unet = module.unet if isinstance(module, GuidedStudent) else module.model
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        _save_pruned_shapes(unet, tmp / "unet", student.teacher)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(_scheduler_config(student.teacher)) + "\n")
        if isinstance(module, GuidedStudent):
            emb = module.w_embedding
            save_file({k: v.contiguous() for k, v in emb.state_dict().items()}, str(tmp / GUIDANCE_FILE))
            embedding = {
                "file": GUIDANCE_FILE,
                "dim": emb.linear_2.out_features,
                "freq_dim": emb.freq_dim,
                "scale": emb.scale,
            }
            record["guidance"] = {**record["guidance"], "embedding": embedding}
        (tmp / STUDENT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        swap_into_place(tmp, out)
    return out


def _save_pruned_shapes(unet: nn.Module, unet_dir: Path, teacher: ModelSpec) -> None:
    """A student of a pruned teacher keeps its narrower layers: diffusers' config.json cannot say so,
    so the folder gets the pruned_shapes.json the source loader applies (src/edgediff/prune/store.py)."""

    state = torch.random.get_rng_state()
    try:
        with torch.device("meta"):
            original = type(unet).from_config(unet.config)
    finally:
        torch.random.set_rng_state(state)
    changed = changed_shapes(original, unet)
    if changed:
        record = {**(teacher.pruning or {}), "note": f"student of the pruned teacher {teacher.source}"}
        (unet_dir / SHAPES_FILE).write_text(
            json.dumps({"format": FORMAT, "modules": changed, "record": record}, indent=2) + "\n"
        )


def read_student_record(folder: str | Path) -> dict | None:
    """edgediff_student.json of a student folder (None when `folder` is not one)."""
    path = Path(folder) / STUDENT_FILE
    if not path.is_file():
        return None
    record = read_json(path, "the student record")
    if record.get("format") != STUDENT_FORMAT:
        raise EdgediffError(f"{path}: field format must be {STUDENT_FORMAT!r}")
    for key in ("method", "steps", "sampler", "spacing", "guidance"):
        if key not in record:
            raise EdgediffError(f"{path}: missing field {key!r}")
    if record["guidance"].get("mode") not in ("distilled", "cfg"):
        raise EdgediffError(f"{path}: field guidance.mode must be 'distilled' or 'cfg'")
    return record


def attach_student(spec: ModelSpec, folder: Path) -> ModelSpec:
    """Called by the diffusers-folder loader: a student folder's record (and w-embedding) on top of
    the plain UNet it loaded. A guidance-distilled student is bound at its recorded scale; compile
    rebinds it to the recipe's guidance (`bind_guidance`)."""
    record = read_student_record(folder)
    if record is None:
        return spec
    module = spec.module
    if record["guidance"]["mode"] == "distilled":
        from safetensors.torch import load_file

        e = record["guidance"].get("embedding") or {}
        path = folder / e.get("file", GUIDANCE_FILE)
        if not path.is_file():
            raise EdgediffError(f"{path}: missing (the guidance embedding of a guidance-distilled student)")
        emb = GuidanceEmbedding(int(e.get("dim", 0)), int(e.get("freq_dim", 64)), float(e.get("scale", 100.0)))
        try:
            emb.load_state_dict(load_file(str(path)))
        except RuntimeError as err:
            raise EdgediffError(
                f"{path}: does not match edgediff_student.json guidance.embedding: {str(err).splitlines()[0]}"
            ) from None
        module = BoundGuidance(GuidedStudent(module.model, emb), record["guidance"]["scale"]).eval()
    return dataclasses.replace(
        spec,
        module=module,
        student=record,
        description=f"{record['method']} distilled student ({record['steps']} steps) of "
        f"{record.get('teacher', {}).get('source')}",
    )
