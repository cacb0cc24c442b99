"""Run a bundle (or the FP32 reference): the C runtime's loop by default, the Python one on request.

    scheduler.json --Plan.from_dict--> plan ─┐
    manifest.json  --backend-----------> denoise(x, t, cond) ─┼─> loop -> images [-1, 1]
    seed, labels   --noise streams-----> noise ─┘

loop="c" runs edgediff.runtimes._cruntime.sample (the C library's loop, the denoiser called
back in Python); loop="python" runs sampling.sample, the reference the C code mirrors and
the oracle of the tests. Both draw the same noise bit for bit and agree to 1e-5.
Image k of a run always uses noise stream k, so the same seed gives the same images in
any batch size, and the bundle and the reference see identical noise.

Per-step hints (scheduler.json timestep_groups / cache_schedule, src/edgediff/runtimes/steps.py) go to a
denoiser that declares `takes_step = True` (GroupedDenoiser) as denoise(x, t, cond,
step=StepCall(i, group, cached)), from either loop; other denoisers (the PyTorch reference)
are called as before and run the full model at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.backends import Graph, load_tokenizer, open_denoiser, tokenize
from edgediff.runtimes.bundle import Bundle
from edgediff.runtimes.groups import GroupedDenoiser
from edgediff.runtimes.rng import NoiseSource
from edgediff.runtimes.samplers.base import Plan
from edgediff.runtimes.sampling import sample
from edgediff.runtimes.steps import StepCall, StepTable


@dataclass(frozen=True)
class SamplingSetup:
    """Everything a run needs besides the denoiser; read from a bundle's scheduler.json."""

    plan: Plan
    guidance: float
    conditioning: dict  # {"kind", "num_classes", "null_label", "shape"}
    sample_shape: tuple[int, ...]
    steps: StepTable | None = None  # timestep groups / cache schedule of the plan's steps

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> SamplingSetup:
        sched = bundle.scheduler
        try:
            plan = Plan.from_dict(sched["plan"])
            guidance = float(sched["guidance_scale"])
        except KeyError as e:
            raise EdgediffError(f"{bundle.root / 'scheduler.json'}: missing field {e.args[0]!r}") from None
        steps = StepTable.from_scheduler(sched, len(plan.model_timesteps), where=str(bundle.root / "scheduler.json"))
        return cls(
            plan=plan,
            guidance=guidance,
            conditioning=bundle.conditioning,
            sample_shape=bundle.sample_shape,
            steps=steps,
        )


MAX_IMAGES = 1 << 20  # images per call, as edgediff-run's -n (csrc/tools/edgediff_run.c)


def default_labels(setup: SamplingSetup, n: int, label: int | None = None) -> np.ndarray | None:
    c = setup.conditioning
    if c["kind"] != "class":
        if label is not None:
            raise EdgediffError("--label given, but this model takes no class label")
        return None
    k = c["num_classes"]
    if label is not None:
        if not 0 <= label < k:
            raise EdgediffError(f"label {label} out of range: this model has classes 0..{k - 1}")
        return np.full((n,), label, np.int64)
    return (np.arange(n) % k).astype(np.int64)


Loop = Literal["c", "python"]
LOOPS = ("c", "python")


def _c_sample(denoise, plan, noise, *, labels, guidance, null_label, sample_shape, callback, steps=None):
    """sampling.sample's signature over the C loop."""
    try:  # deferred: the Python loop (loop="python") works without the compiled extension
        from edgediff.runtimes import _cruntime
    except ImportError as e:  # built by `pip install` (setup.py); never a silent fallback
        raise EdgediffError(
            f"the C runtime extension is not built ({e}); reinstall edgediff or use loop='python'"
        ) from None
    tables = {}
    if steps is not None:
        if steps.num_steps != len(plan.model_timesteps):
            raise EdgediffError(
                f"the step table has {steps.num_steps} entries but the plan has {len(plan.model_timesteps)} steps"
            )
        inner = denoise

        def denoise(x, t, cond, step):  # noqa: F811 - the C loop passes a plain tuple
            return inner(x, t, cond, step=StepCall(*step))

        tables = dict(
            step_group=steps.groups,
            num_groups=steps.num_groups,
            cache_flags=None if steps.cached is None else [int(c) for c in steps.cached],
        )
    return _cruntime.sample(
        plan,
        denoise,
        noise.seed,
        noise.streams,
        labels=labels,
        guidance=guidance,
        null_label=null_label,
        sample_shape=sample_shape,
        callback=callback,
        **tables,
    )


def generate(
    denoise,
    setup: SamplingSetup,
    *,
    n: int,
    seed: int,
    labels: np.ndarray | None = None,
    batch_size: int = 256,
    progress=None,
    on_call=None,
    loop: Loop = "c",
) -> np.ndarray:
    """Sample `n` images with `denoise`; returns float32 (n, C, H, W), clipped to [-1, 1].

    progress(k) is called once per denoiser step with the number of images it advanced.
    on_call(x, t, cond, eps) sees every denoiser call (used to measure trajectory error).
    """
    if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise EdgediffError(f"number of images must be an integer in 1..{MAX_IMAGES} (got {n!r})")
    if loop not in LOOPS:
        raise EdgediffError(f"unknown sampling loop {loop!r}; choose one of {', '.join(LOOPS)}")
    run = _c_sample if loop == "c" else sample
    steps = setup.steps if getattr(denoise, "takes_step", False) else None
    c = setup.conditioning
    if c["kind"] == "text":
        raise EdgediffError("a text-to-image bundle samples from prompts: use generate_text (generate(prompt=...))")
    if c["kind"] == "embedding":  # no text encoder here: the null (all-zero) condition
        shape = tuple(c["shape"])
        inner = denoise

        def denoise(x, t, cond, **step):  # noqa: F811 - wraps the outer denoiser
            return inner(x, t, np.zeros((x.shape[0], *shape), np.float32), **step)

    if on_call is not None:
        inner_call = denoise

        def denoise(x, t, cond, **step):  # noqa: F811
            eps = inner_call(x, t, cond, **step)
            on_call(x, t, cond, eps)
            return eps

    guidance = setup.guidance if c["kind"] == "class" else 1.0
    out = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        noise = NoiseSource(seed=seed, streams=tuple(range(start, stop)))
        batch_labels = None if labels is None else labels[start:stop]
        cb = (lambda i, t, x, eps, _k=stop - start: progress(_k)) if progress else None
        x = run(
            denoise,
            setup.plan,
            noise,
            labels=batch_labels,
            guidance=guidance,
            null_label=c.get("null_label"),
            sample_shape=setup.sample_shape,
            callback=cb,
            steps=steps,
        )
        out.append(x)
    images = np.concatenate(out).astype(np.float32)
    if not np.isfinite(images).all():
        raise EdgediffError("the denoiser produced non-finite values (NaN or inf)")
    return np.clip(images, -1.0, 1.0)


def bundle_denoiser(bundle: Bundle, *, threads: int = 0):
    if bundle.manifest.get("cache"):  # a full and a shallow graph, one per step (src/edgediff/runtimes/cache.py)
        from edgediff.runtimes.cache import cached_denoiser

        return cached_denoiser(bundle.root, bundle.manifest, threads=threads)
    groups = bundle.scheduler.get("timestep_groups")
    if groups:  # one graph per group of steps (quantized bundles; src/edgediff/runtimes/groups.py)
        plan = Plan.from_dict(bundle.scheduler["plan"])
        return GroupedDenoiser(bundle.root, groups, plan.model_timesteps, fmt=bundle.model_format, threads=threads)
    return open_denoiser(bundle.model_path, bundle.model_format, threads=threads)


# ---- text-to-image: prompts -> tokenizer -> text encoder -> sampler loop -> VAE decoder -> images ----
#
# The loop (C or Python) runs unchanged over integer labels: image k of a call has label k, the
# negative prompt the null label n; the denoiser closure looks each label up in a table of text
# embeddings made once per call (the n prompts and the negative prompt: n + 1 text-encoder rows,
# never one per step). Guidance mixes the two halves of one batch as for class labels.


@dataclass(frozen=True)
class TextPipeline:
    """What a text-to-image run needs besides the SamplingSetup."""

    tokenizer: object
    max_length: int
    encode: object  # input_ids int64 (B, L) -> float32 (B, L, D)
    denoise: object  # denoise(x, t, encoder_hidden_states[, step=]) -> float32 like x
    decode: object  # latents float32 (B, *latent) -> image float32 (B, 3, H, W) in [-1, 1]


def text_pipeline(bundle: Bundle, *, threads: int = 0) -> TextPipeline:
    comps = bundle.manifest["components"]
    return TextPipeline(
        tokenizer=load_tokenizer(bundle.root / comps["tokenizer"]["folder"]),
        max_length=int(bundle.conditioning["shape"][0]),
        encode=Graph(bundle.root / comps["text_encoder"]["file"], comps["text_encoder"]["format"], threads=threads),
        denoise=bundle_denoiser(bundle, threads=threads),
        decode=Graph(bundle.root / comps["vae_decoder"]["file"], comps["vae_decoder"]["format"], threads=threads),
    )


class _GivenLatents:
    """A NoiseSource whose call 0 (x_T) is the caller's latents (diffusers' `latents=`)."""

    def __init__(self, noise: NoiseSource, latents: np.ndarray):
        self.seed, self.streams, self.inner, self.latents = noise.seed, noise.streams, noise, latents

    def draw(self, call: int, shape: tuple) -> np.ndarray:
        return self.latents.copy() if call == 0 else self.inner.draw(call, shape)


def check_latents(latents, n: int, shape: tuple, where: str = "latents") -> np.ndarray:
    a = np.asarray(latents)
    if a.shape != (n, *shape):
        raise EdgediffError(f"{where}: shape {list(a.shape)}; this bundle needs [{n}, {', '.join(map(str, shape))}]")
    if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
        raise EdgediffError(f"{where}: must be finite floating-point values (got dtype {a.dtype})")
    return a.astype(np.float32)


def generate_text(
    pipe: TextPipeline,
    setup: SamplingSetup,
    *,
    prompts: list[str],
    negative_prompt: str = "",
    guidance: float | None = None,
    seed: int = 0,
    latents: np.ndarray | None = None,
    loop: Loop = "c",
    batch_size: int = 64,
    progress=None,
    warn=None,
) -> np.ndarray:
    """Images for `prompts` (image k: prompt k, noise stream k of `seed`, or latents[k]); float32
    (n, 3, H, W) in [-1, 1]. `guidance` None is the bundle's scale; 1 is no guidance (one pass a step)."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise EdgediffError("prompts must be a non-empty list of strings")
    n = len(prompts)
    if n > MAX_IMAGES:
        raise EdgediffError(f"number of images must be at most {MAX_IMAGES} (got {n})")
    if not isinstance(negative_prompt, str):
        raise EdgediffError("negative_prompt must be a string")
    if loop not in LOOPS:
        raise EdgediffError(f"unknown sampling loop {loop!r}; choose one of {', '.join(LOOPS)}")
    g = setup.guidance if guidance is None else guidance
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
        raise EdgediffError(f"guidance must be a finite number >= 0 (got {g!r})")
    if latents is not None:
        if loop == "c":
            raise EdgediffError("latents= sets x_T, which the C loop draws itself; pass loop='python'")
        latents = check_latents(latents, n, tuple(setup.sample_shape))
    ids = tokenize(pipe.tokenizer, [*prompts, negative_prompt], pipe.max_length, warn=warn)
    table = np.concatenate([pipe.encode(ids[i : i + batch_size]) for i in range(0, n + 1, batch_size)])
    run = _c_sample if loop == "c" else sample
    inner = pipe.denoise
    steps = setup.steps if getattr(inner, "takes_step", False) else None

    def denoise(x, t, labels, **step):
        return inner(x, t, table[np.asarray(labels, np.int64)], **step)

    out = []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        noise = NoiseSource(seed=seed, streams=tuple(range(start, stop)))
        if latents is not None:
            noise = _GivenLatents(noise, latents[start:stop])
        cb = (lambda i, t, x, eps, _k=stop - start: progress(_k)) if progress else None
        x = run(
            denoise,
            setup.plan,
            noise,
            labels=np.arange(start, stop, dtype=np.int64),
            guidance=float(g),
            null_label=n,
            sample_shape=setup.sample_shape,
            callback=cb,
            steps=steps,
        )
        if not np.isfinite(x).all():
            raise EdgediffError("the denoiser produced non-finite latents (NaN or inf)")
        out.append(np.asarray(pipe.decode(np.asarray(x, np.float32)), np.float32))
    images = np.concatenate(out)
    if not np.isfinite(images).all():
        raise EdgediffError("the VAE decoder produced non-finite values (NaN or inf)")
    return np.clip(images, -1.0, 1.0)
