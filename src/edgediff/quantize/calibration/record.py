"""Record calibration data from the deployment sampler's own trajectory.

    ModelSpec (FP32 torch) ─┐
    sampler, steps, spacing ┼─► Plan ─► runtimes.sampling.sample(recording denoiser)
    guidance, seed, n       ┘              │ every model call: (x_in, t, labels) + step index
                                           ▼
                                     CalibrationSet ◄──save / load──► calib.npz

The sampler is the reference loop the bundle's runtime mirrors, with the same plan, guidance
and noise (NoiseSource streams 0..n-1 of `seed`, as `edgediff generate` uses), so the
recorded inputs are exactly what the deployed denoiser will see. With classifier-free
guidance the model sees a batch of 2B per step, conditional half first, then the null-label
half; both halves are recorded.

A text-to-image pipeline (conditioning kind "text") is recorded from prompts: the pipeline's own
PyTorch text encoder embeds the P prompts and the negative prompt once (the table `emb`, P + 1
rows, the negative prompt last); image k uses prompt k mod P, the CFG half the negative prompt,
and `cond` holds each row's index into `emb`, as `edgediff generate --prompts` runs it.

Row order in a CalibrationSet (independent of batch_size): step, then CFG half
(conditional, null), then image index.

File format (.npz, no pickles): arrays x (N,C,H,W) float32, t (N,) float32, step (N,) int32,
cond (N,) int64 (class-conditional and text models), emb (P+1, L, D) float32 (text models only)
and meta, a JSON string (CalibrationMeta).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import MISSING, asdict, dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from edgediff.core.errors import EdgediffError
from edgediff.core.spec import ModelSpec, torch_denoiser
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.samplers import Plan, get_solver
from edgediff.runtimes.sampling import sample

FORMAT = "edgediff-calibration"
FORMAT_VERSION = 1
ARRAYS = ("x", "t", "step", "cond", "emb", "meta")


@dataclass(frozen=True)
class CalibrationMeta:
    """Where a calibration set came from; `plan` is the sampler section of scheduler.json."""

    source: str
    source_sha256: str
    sampler: str
    steps: int
    spacing: str
    guidance: float  # as run: 1.0 (no CFG batch) for models without class labels, as the compiler does
    seed: int
    num_samples: int
    sample_shape: tuple[int, ...]
    conditioning: dict  # Conditioning.to_dict()
    plan: dict
    selection: dict | None = None  # set by calibration.select: strategy, budget, seed, options
    prompts: list | None = None  # text models: the prompts embedded in `emb` (rows 0..P-1)
    negative_prompt: str | None = None  # text models: the CFG half's prompt (row P of `emb`)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        object.__setattr__(self, "sample_shape", tuple(int(s) for s in self.sample_shape))

    @classmethod
    def from_dict(cls, d) -> CalibrationMeta:
        if not isinstance(d, dict):
            raise EdgediffError(f"metadata must be a JSON object, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise EdgediffError(f"metadata has unknown field {unknown[0]!r}")
        for f in fields(cls):
            if f.name not in d and f.default is MISSING:
                raise EdgediffError(f"metadata field {f.name!r} is missing")
        if d.get("format", FORMAT) != FORMAT:
            raise EdgediffError(f"metadata field 'format' is {d['format']!r}, expected {FORMAT!r}")
        if d.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise EdgediffError(
                f"metadata field 'format_version' is {d['format_version']!r}; "
                f"this edgediff reads version {FORMAT_VERSION}"
            )
        kinds = {
            "source": str,
            "source_sha256": str,
            "sampler": str,
            "spacing": str,
            "steps": int,
            "seed": int,
            "num_samples": int,
            "guidance": (int, float),
            "plan": dict,
        }
        for name, kind in kinds.items():
            if not isinstance(d[name], kind) or isinstance(d[name], bool):
                raise EdgediffError(f"metadata field {name!r} has the wrong type ({type(d[name]).__name__})")
        if d["steps"] <= 0:
            raise EdgediffError(f"metadata field 'steps' must be positive, got {d['steps']}")
        if not isinstance(d["sample_shape"], (list, tuple)) or len(d["sample_shape"]) != 3:
            raise EdgediffError(f"metadata field 'sample_shape' must be [C, H, W], got {d['sample_shape']!r}")
        if not isinstance(d["conditioning"], dict) or "kind" not in d["conditioning"]:
            raise EdgediffError("metadata field 'conditioning' must be an object with a 'kind'")
        prompts = d.get("prompts")
        if prompts is not None and (not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts)):
            raise EdgediffError("metadata field 'prompts' must be a list of strings")
        if d.get("negative_prompt") is not None and not isinstance(d["negative_prompt"], str):
            raise EdgediffError("metadata field 'negative_prompt' must be a string")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sample_shape"] = list(self.sample_shape)
        return d


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Recorded denoiser inputs: row r is one image's input at step `step[r]` of the plan.

    x float32 (N, C, H, W) as the model sees it; t float32 (N,); cond int64 (N,) class labels
    (the null label in the CFG half), or for a text model each row's index into `emb`, or None
    for models without either; step int32 (N,); emb float32 (P + 1, L, D) the text encoder's
    states of the prompts and the negative prompt (text models only).
    Validated on construction; the arrays are read-only views.
    """

    x: np.ndarray
    t: np.ndarray
    cond: np.ndarray | None
    step: np.ndarray
    meta: CalibrationMeta
    emb: np.ndarray | None = None

    def __post_init__(self):
        try:
            _validate(self.x, self.t, self.cond, self.step, self.meta, self.emb)
        except EdgediffError as e:
            raise EdgediffError(f"calibration set: {e}") from None
        for name in ("x", "t", "cond", "step", "emb"):
            a = getattr(self, name)
            if a is not None:
                a = a.view()
                a.flags.writeable = False
                object.__setattr__(self, name, a)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    # ------------------------------------------------------------ views
    @cached_property
    def plan(self) -> Plan:
        return Plan.from_dict(self.meta.plan)

    @property
    def num_steps(self) -> int:
        return self.meta.steps

    @property
    def timesteps(self) -> np.ndarray:
        """The t fed to the model at each step of the plan (float32, len = steps)."""
        return self.plan.model_timesteps

    @property
    def visited_steps(self) -> np.ndarray:
        """The plan steps that have at least one row here (all of them unless selected)."""
        return np.unique(self.step)

    def subset(self, indices, *, selection: dict | None = None) -> CalibrationSet:
        """Rows `indices` (in that order) as a new set; `selection` is recorded in the metadata."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise EdgediffError(f"subset index out of range 0..{len(self) - 1}")
        meta = self.meta if selection is None else CalibrationMeta(**{**asdict(self.meta), "selection": selection})
        return CalibrationSet(
            self.x[idx], self.t[idx], None if self.cond is None else self.cond[idx], self.step[idx], meta, self.emb
        )

    def conditions(self, indices=None) -> np.ndarray | None:
        """The third model input of rows `indices` as the deployed denoiser gets it: class labels;
        a text model's prompt embeddings (emb[cond]); for an embedding-conditioned model the null
        (all-zero) condition, as `edgediff generate` runs; None for an unconditional model."""
        idx = slice(None) if indices is None else np.asarray(indices, dtype=np.int64)
        c = self.meta.conditioning
        if c["kind"] == "class":
            return np.ascontiguousarray(self.cond[idx])
        if c["kind"] == "text":
            return np.ascontiguousarray(self.emb[self.cond[idx]])
        if c["kind"] == "embedding":
            return np.zeros((self.x[idx].shape[0], *c["shape"]), np.float32)
        return None

    def model_args(self, indices=None) -> tuple[torch.Tensor, ...]:
        """Rows as the model's positional inputs (sample, timestep[, cond]) (`conditions`)."""
        idx = slice(None) if indices is None else np.asarray(indices, dtype=np.int64)
        args = [
            torch.from_numpy(np.ascontiguousarray(self.x[idx])),
            torch.from_numpy(np.ascontiguousarray(self.t[idx])),
        ]
        cond = self.conditions(indices)
        if cond is not None:
            args.append(torch.from_numpy(cond))
        return tuple(args)

    # ------------------------------------------------------------ checks against what consumes it
    def check_model(self, model: ModelSpec, *, where: str = "calibration set") -> None:
        """EdgediffError unless the rows fit `model`'s inputs (sample shape and conditioning)."""
        if tuple(model.sample_shape) != self.meta.sample_shape:
            raise EdgediffError(
                f"{where}: field 'sample_shape' is {list(self.meta.sample_shape)} but the model "
                f"{model.source} takes {list(model.sample_shape)}"
            )
        mine, theirs = self.meta.conditioning, model.conditioning.to_dict()
        same_null = mine["kind"] != "class" or mine.get("null_label") == theirs["null_label"]
        same_shape = mine["kind"] not in ("text", "embedding") or mine.get("shape") == theirs["shape"]
        if mine["kind"] != theirs["kind"] or not same_null or not same_shape:
            raise EdgediffError(f"{where}: field 'conditioning' is {mine} but the model {model.source} has {theirs}")

    def check_plan(self, plan: Plan, *, where: str = "calibration set") -> None:
        """EdgediffError unless this set was recorded with `plan` (solver and timesteps)."""
        if plan.solver != self.plan.solver:
            raise EdgediffError(f"{where}: recorded with solver {self.plan.solver!r}, the bundle runs {plan.solver!r}")
        if not np.array_equal(plan.model_timesteps, self.timesteps):
            raise EdgediffError(
                f"{where}: recorded at timesteps {self.timesteps.tolist()}, the bundle visits "
                f"{plan.model_timesteps.tolist()}"
            )

    # ------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the set as an .npz (atomically: a temporary file renamed into place)."""
        path = Path(path)
        if path.suffix != ".npz":
            raise EdgediffError(f"{path}: a calibration set is written as .npz")
        if not path.resolve().parent.is_dir():
            raise EdgediffError(f"{path}: folder {path.resolve().parent} does not exist")
        arrays = {"x": self.x, "t": self.t, "step": self.step, "meta": np.array(json.dumps(self.meta.to_dict()))}
        if self.cond is not None:
            arrays["cond"] = self.cond
        if self.emb is not None:
            arrays["emb"] = self.emb
        fd, tmp = tempfile.mkstemp(prefix=".calib-", suffix=".npz", dir=path.resolve().parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, *, model: ModelSpec | None = None) -> CalibrationSet:
        """Read and validate an .npz written by `save`; with `model`, also check that it fits it.

        Every problem is an EdgediffError naming the file and the array or field.
        """
        path = Path(path)
        if not path.exists():
            raise EdgediffError(f"{path}: missing (calibration set)")
        if path.is_dir():
            raise EdgediffError(f"{path}: a folder; expected a calibration .npz file")
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
            raise EdgediffError(f"{path}: not an .npz archive ({type(e).__name__})") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise EdgediffError(f"{path}: a single .npy array, not an .npz archive")
        with archive:
            names = set(archive.files)
            unknown = sorted(names - set(ARRAYS))
            if unknown:
                raise EdgediffError(
                    f"{path}: unknown array {unknown[0]!r}; a calibration set holds {', '.join(ARRAYS)}"
                )
            for name in ("meta", "x", "t", "step"):
                if name not in names:
                    raise EdgediffError(f"{path}: array {name!r} is missing")
            data = {}
            for name in names:
                try:
                    data[name] = archive[name]
                except (ValueError, OSError, zipfile.BadZipFile) as e:
                    raise EdgediffError(f"{path}: array {name!r} cannot be read ({e})") from None
        try:
            meta_text = data["meta"]
            if meta_text.dtype.kind != "U" or meta_text.ndim != 0:
                raise EdgediffError(f"array 'meta' must be a JSON string, got {meta_text.dtype} {meta_text.shape}")
            try:
                meta = CalibrationMeta.from_dict(json.loads(str(meta_text)))
            except json.JSONDecodeError as e:
                raise EdgediffError(f"array 'meta' is not valid JSON: {e.msg}") from None
            except TypeError as e:
                raise EdgediffError(f"metadata: {e}") from None
            _validate(data["x"], data["t"], data.get("cond"), data["step"], meta, data.get("emb"))
        except EdgediffError as e:
            raise EdgediffError(f"{path}: {e}") from None
        calib = cls(data["x"], data["t"], data.get("cond"), data["step"], meta, data.get("emb"))
        if model is not None:
            calib.check_model(model, where=str(path))
        return calib


def _validate(x, t, cond, step, meta: CalibrationMeta, emb=None) -> None:
    """Shapes, dtypes, finiteness and consistency with the plan; messages name the array."""
    if not isinstance(meta, CalibrationMeta):
        raise EdgediffError(f"meta must be a CalibrationMeta, got {type(meta).__name__}")
    for name, a in (("x", x), ("t", t), ("step", step)):
        if not isinstance(a, np.ndarray):
            raise EdgediffError(f"array {name!r} must be a numpy array, got {type(a).__name__}")
    if x.dtype != np.float32 or x.ndim != 4:
        raise EdgediffError(f"array 'x' must be float32 (N, C, H, W), got {x.dtype} with shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        raise EdgediffError("array 'x' is empty: the set has no rows")
    if tuple(x.shape[1:]) != meta.sample_shape:
        raise EdgediffError(
            f"array 'x' has samples of shape {list(x.shape[1:])}, but metadata field "
            f"'sample_shape' is {list(meta.sample_shape)}"
        )
    if t.dtype != np.float32 or t.shape != (n,):
        raise EdgediffError(f"array 't' must be float32 of shape ({n},), got {t.dtype} with shape {t.shape}")
    if step.dtype != np.int32 or step.shape != (n,):
        raise EdgediffError(f"array 'step' must be int32 of shape ({n},), got {step.dtype} with shape {step.shape}")
    kind = meta.conditioning.get("kind")
    if kind == "class":
        if cond is None:
            raise EdgediffError("array 'cond' is missing (the model takes class labels)")
        if not isinstance(cond, np.ndarray) or cond.dtype != np.int64 or cond.shape != (n,):
            got = getattr(cond, "dtype", type(cond).__name__)
            raise EdgediffError(
                f"array 'cond' must be int64 of shape ({n},), got {got} with shape {getattr(cond, 'shape', '?')}"
            )
        null = meta.conditioning.get("null_label")
        top = null if null is not None else (meta.conditioning.get("num_classes") or 1) - 1
        if cond.min() < 0 or cond.max() > top:
            raise EdgediffError(f"array 'cond' has labels outside 0..{top}")
    elif kind == "text":
        _validate_text(cond, emb, n, meta)
    elif cond is not None:
        raise EdgediffError(
            f"array 'cond' is present, but the metadata says the model takes no class labels "
            f"(conditioning kind {kind!r})"
        )
    if kind != "text" and emb is not None:
        raise EdgediffError(f"array 'emb' is present, but the model takes no text (conditioning kind {kind!r})")
    bad = ~np.isfinite(x).reshape(n, -1).all(axis=1)
    if bad.any():
        raise EdgediffError(
            f"array 'x' has non-finite values (NaN or inf) in {int(bad.sum())} rows, first row {int(np.argmax(bad))}"
        )
    if not np.isfinite(t).all():
        raise EdgediffError("array 't' has non-finite values (NaN or inf)")
    if step.min() < 0 or step.max() >= meta.steps:
        raise EdgediffError(f"array 'step' has values outside 0..{meta.steps - 1} (metadata field 'steps')")
    try:
        plan = Plan.from_dict(meta.plan)
    except EdgediffError as e:
        raise EdgediffError(f"metadata field 'plan': {e}") from None
    if len(plan) != meta.steps:
        raise EdgediffError(f"metadata field 'steps' is {meta.steps} but the plan has {len(plan)} steps")
    wrong = np.nonzero(t != plan.model_timesteps[step])[0]
    if wrong.size:
        r = int(wrong[0])
        raise EdgediffError(
            f"array 't' disagrees with the plan at row {r}: t={float(t[r])} at step {int(step[r])}, "
            f"the plan visits {float(plan.model_timesteps[step[r]])}"
        )


def _validate_text(cond, emb, n: int, meta: CalibrationMeta) -> None:
    """A text model's rows: cond (N,) int64 indices into emb (P + 1, *conditioning shape) float32."""
    if cond is None or emb is None:
        raise EdgediffError(f"array {'cond' if cond is None else 'emb'!r} is missing (the model takes text embeddings)")
    if not isinstance(cond, np.ndarray) or cond.dtype != np.int64 or cond.shape != (n,):
        got = getattr(cond, "dtype", type(cond).__name__)
        raise EdgediffError(f"array 'cond' must be int64 of shape ({n},), got {got} {getattr(cond, 'shape', '?')}")
    shape = tuple(meta.conditioning.get("shape") or ())
    if not isinstance(emb, np.ndarray) or emb.dtype != np.float32 or tuple(emb.shape[1:]) != shape:
        got = f"{getattr(emb, 'dtype', type(emb).__name__)} {list(getattr(emb, 'shape', []))}"
        raise EdgediffError(f"array 'emb' must be float32 (P + 1, {', '.join(map(str, shape))}), got {got}")
    if meta.prompts is None or len(meta.prompts) + 1 != emb.shape[0]:
        p = "none" if meta.prompts is None else len(meta.prompts)
        raise EdgediffError(f"array 'emb' has {emb.shape[0]} rows; metadata field 'prompts' has {p} (+ the negative)")
    if cond.min() < 0 or cond.max() >= emb.shape[0]:
        raise EdgediffError(f"array 'cond' has indices outside 0..{emb.shape[0] - 1} (the rows of 'emb')")
    if not np.isfinite(emb).all():
        raise EdgediffError("array 'emb' has non-finite values (NaN or inf)")


# ---------------------------------------------------------------- recording
def deployment_plan(
    model: ModelSpec, sampler: str, steps: int, spacing: str = "leading", options: dict | None = None
) -> Plan:
    """The plan the compiler builds for this recipe (src/edgediff/compiler/pipeline.py, stage `plan`);
    `options`: a pipeline scheduler's fields that move the timesteps (compiler.capture.plan_options)."""
    if not isinstance(steps, int) or steps <= 0:
        raise EdgediffError(f"steps must be a positive integer (got {steps!r})")
    if steps > model.schedule.num_train_timesteps:
        raise EdgediffError(
            f"steps {steps} exceeds the model's {model.schedule.num_train_timesteps} training timesteps"
        )
    return get_solver(sampler).plan(model.schedule, steps, spacing=spacing, **(options or {}))


def record_trajectories(
    model: ModelSpec,
    *,
    sampler: str,
    steps: int,
    guidance: float,
    spacing: str = "leading",
    num_samples: int,
    seed: int = 0,
    batch_size: int = 64,
    progress=None,
    prompts: list[str] | None = None,
    negative_prompt: str = "",
    warn=None,
    plan_options: dict | None = None,
) -> CalibrationSet:
    """Run the deployment sampler on the FP32 model and record every denoiser input.

    Image k uses noise stream k of `seed` and class label k mod num_classes (a text model:
    prompt k mod len(prompts), the CFG half `negative_prompt`), so the result depends on
    (model, sampler, steps, guidance, spacing, num_samples, seed, prompts) only, not on
    batch_size. `progress(k)`, if given, is called after each sampling step with the number
    of images it advanced (the CLI draws a bar with it). `warn(message)` hears of prompts
    truncated to the text encoder's length. `plan_options`: as `deployment_plan`'s `options`.
    """
    if not isinstance(model, ModelSpec):
        raise EdgediffError(
            f"record_trajectories takes a ModelSpec (load a source with edgediff.compiler.capture.load_source), got {type(model).__name__}"
        )
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise EdgediffError(f"num_samples must be a positive integer (got {num_samples!r})")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise EdgediffError(f"batch_size must be a positive integer (got {batch_size!r})")
    if not np.isfinite(guidance) or guidance < 0:
        raise EdgediffError(f"guidance must be a finite number >= 0 (got {guidance!r})")
    plan = deployment_plan(model, sampler, steps, spacing, plan_options)
    c = model.conditioning
    if c.kind not in ("class", "text"):
        guidance = 1.0  # no null condition to guide against; compile_model runs these unguided too
    if (prompts is not None) != (c.kind == "text"):
        raise EdgediffError(
            f"{model.source}: prompts are {'given' if prompts is not None else 'needed'} for calibrating a model "
            f"with conditioning {c.kind!r}"
        )
    guided = guidance != 1.0
    base = torch_denoiser(model)
    emb = None
    num_labels, null_label = c.num_classes, c.null_label
    if c.kind == "embedding":  # no text encoder here: the null (all-zero) condition, as `generate` does
        shape = tuple(c.shape)

        def base(x, t, cond, _inner=base):  # noqa: F811
            return _inner(x, t, np.zeros((x.shape[0], *shape), np.float32))

    elif c.kind == "text":  # label k -> row k of the prompts' embeddings; the negative prompt is the null row
        prompts = list(prompts)
        if not prompts or not all(isinstance(q, str) for q in prompts) or not isinstance(negative_prompt, str):
            raise EdgediffError(
                "calibration prompts must be a non-empty list of strings (and a string negative prompt)"
            )
        emb = text_embeddings(model, [*prompts, negative_prompt], warn=warn)
        num_labels, null_label = len(prompts), len(prompts)

        def base(x, t, cond, _inner=base):  # noqa: F811
            return _inner(x, t, emb[np.asarray(cond, np.int64)])

    halves = 2 if guided else 1
    # per step, per CFG half: the recorded (x, t, cond) blocks of each batch, in image order
    rows: list[list[list[tuple]]] = [[[] for _ in range(halves)] for _ in range(len(plan))]
    calls: list[tuple] = []

    def denoise(x, t, cond):
        calls.append((np.array(x, np.float32), np.array(t, np.float32), None if cond is None else np.array(cond)))
        return base(x, t, cond)

    with torch.inference_mode():
        for start in range(0, num_samples, batch_size):
            stop = min(num_samples, start + batch_size)
            b = stop - start
            labels = (np.arange(start, stop) % num_labels).astype(np.int64) if c.kind in ("class", "text") else None

            def on_step(i, t, x_in, eps, _b=b):
                if len(calls) != 1:  # sample() calls the denoiser exactly once per step
                    raise RuntimeError(f"expected one denoiser call at step {i}, saw {len(calls)}")
                x, tt, cond = calls.pop()
                for h in range(halves):
                    sl = slice(h * _b, (h + 1) * _b)
                    rows[i][h].append((x[sl], tt[sl], None if cond is None else cond[sl]))
                if progress is not None:
                    progress(_b)

            sample(
                denoise,
                plan,
                NoiseSource(seed=seed, streams=tuple(range(start, stop))),
                labels=labels,
                guidance=guidance,
                null_label=null_label,
                sample_shape=tuple(model.sample_shape),
                callback=on_step,
            )

    blocks = [blk for per_step in rows for per_half in per_step for blk in per_half]
    x = np.concatenate([blk[0] for blk in blocks])
    t = np.concatenate([blk[1] for blk in blocks])
    cond = np.concatenate([blk[2] for blk in blocks]).astype(np.int64) if c.kind in ("class", "text") else None
    per_step = num_samples * halves
    step = np.repeat(np.arange(len(plan), dtype=np.int32), per_step)
    meta = CalibrationMeta(
        source=model.source,
        source_sha256=model.source_sha256,
        sampler=sampler,
        steps=len(plan),
        spacing=spacing,
        guidance=float(guidance),
        seed=int(seed),
        num_samples=num_samples,
        sample_shape=tuple(model.sample_shape),
        conditioning=c.to_dict(),
        plan=plan.to_dict(),
        prompts=prompts,
        negative_prompt=negative_prompt if prompts is not None else None,
    )
    return CalibrationSet(x, t, cond, step, meta, emb)


def text_embeddings(model: ModelSpec, prompts: list[str], *, warn=None, batch_size: int = 64) -> np.ndarray:
    """float32 (len(prompts), max_length, hidden): the pipeline's PyTorch text encoder over its own
    tokenizer (padded and truncated as the bundle's runtime tokenizes, runtimes.backends.tokenize)."""
    from edgediff.runtimes.backends import load_tokenizer, tokenize

    t = model.text
    ids = tokenize(load_tokenizer(t.tokenizer_dir), list(prompts), t.max_length, warn=warn)
    with torch.inference_mode():
        out = [t.text_encoder(torch.from_numpy(ids[i : i + batch_size])) for i in range(0, len(ids), batch_size)]
    return torch.cat(out).float().numpy()


def load_calibration(path: str | Path, *, model: ModelSpec | None = None) -> CalibrationSet:
    """CalibrationSet.load as a function (the verb the quantize pass and the CLI use)."""
    return CalibrationSet.load(path, model=model)
