"""Choose which recorded rows calibrate the quantizer.

    CalibrationSet (every step x image x CFG half) ──strategy, budget, seed──► indices ──► subset

    uniform  the same number of rows at every visited step, random within a step (Q-Diffusion's
             uniform timestep calibration)
    normal   steps drawn from a normal distribution over the trajectory position t/T (PTQ4DM's
             NDTC; its published setting is mean 0.4, std 0.4, i.e. centred a little towards
             the clean end t = 0), random within a step
    eda      the uniform per-step quota, filled with rows that are both representative (high
             density in a feature space) and diverse (density-weighted farthest-point / k-center
             greedy), after EDA-DM's density-and-diversity calibration sample selection

Each strategy is `fn(calib, budget, rng, **options) -> sorted int64 indices` and takes its
randomness from the numpy Generator it is given.

To add a strategy, write the function here and add it to SELECTORS; tests/test_calibration.py
runs every registered strategy through the common checks (budget, seed, range).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from edgediff.core.errors import EdgediffError
from edgediff.quantize.calibration.record import CalibrationSet


def _rows_by_step(calib: CalibrationSet) -> dict[int, np.ndarray]:
    return {int(s): np.nonzero(calib.step == s)[0] for s in calib.visited_steps}


def _equal_quota(steps: list[int], budget: int, rng: np.random.Generator) -> dict[int, int]:
    """budget // S per step, the remainder one each to steps chosen at random."""
    base, extra = divmod(budget, len(steps))
    quota = {s: base for s in steps}
    for k in rng.choice(len(steps), size=extra, replace=False):
        quota[steps[int(k)]] += 1
    return quota


# ---------------------------------------------------------------- uniform
def select_uniform(calib: CalibrationSet, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Equal count per visited step (counts differ by at most one when S does not divide budget)."""
    rows = _rows_by_step(calib)
    quota = _equal_quota(sorted(rows), budget, rng)
    for s, k in quota.items():
        if k > rows[s].size:
            raise EdgediffError(
                f"selection 'uniform': step {s} has {rows[s].size} rows, its share of the budget is {k}"
            )
    picked = [rng.choice(rows[s], size=k, replace=False) for s, k in quota.items()]
    return np.sort(np.concatenate(picked))


# ---------------------------------------------------------------- normal (PTQ4DM)
def step_probabilities(calib: CalibrationSet, mean: float, std: float) -> dict[int, float]:
    """Probability of each visited step: the mass of N(mean, std) (in units of t/T, truncated
    to [0, 1]) over the step's share of the trajectory, the interval of positions nearer to its
    t than to any other visited step's."""
    steps = [int(s) for s in calib.visited_steps]
    T = calib.plan.schedule.num_train_timesteps
    pos = np.array([float(calib.timesteps[s]) / T for s in steps])
    order = np.argsort(pos)
    p_sorted = pos[order]
    edges = np.concatenate([[0.0], (p_sorted[1:] + p_sorted[:-1]) / 2, [1.0]])
    cdf = np.array([0.5 * (1 + math.erf((e - mean) / (std * math.sqrt(2)))) for e in edges])
    mass = np.clip(np.diff(cdf), 0.0, None)
    if mass.sum() <= 0:  # the whole distribution lies far outside the trajectory: nearest step
        mass = np.zeros_like(mass)
        mass[np.argmin(np.abs(p_sorted - np.clip(mean, 0.0, 1.0)))] = 1.0
    prob = np.empty_like(mass)
    prob[order] = mass / mass.sum()
    return dict(zip(steps, prob.tolist()))


def select_normal(
    calib: CalibrationSet, budget: int, rng: np.random.Generator, *, mean: float = 0.4, std: float = 0.4
) -> np.ndarray:
    """Steps drawn from N(mean, std) over t/T (0 = clean end, 1 = pure noise), rows random within a step."""
    if not np.isfinite(mean) or not (np.isfinite(std) and std > 0):
        raise EdgediffError(f"selection 'normal': need a finite mean and std > 0, got mean={mean}, std={std}")
    rows = _rows_by_step(calib)
    probs = step_probabilities(calib, mean, std)
    steps = list(probs)
    p = np.array([probs[s] for s in steps])
    cap = np.array([rows[s].size for s in steps])
    counts = np.zeros(len(steps), np.int64)
    left = budget
    while left > 0:  # multinomial draws; a full step drops out and its probability is shared out
        open_ = counts < cap
        q = np.where(open_, p, 0.0)
        q = q / q.sum() if q.sum() > 0 else open_ / open_.sum()
        counts += np.minimum(rng.multinomial(left, q), cap - counts)
        left = budget - int(counts.sum())
    picked = [rng.choice(rows[s], size=int(k), replace=False) for s, k in zip(steps, counts) if k]
    return np.sort(np.concatenate(picked))


# ---------------------------------------------------------------- eda (density + diversity)
def _features(
    calib: CalibrationSet, idx: np.ndarray, features, model, layer: str | None, pool: int, batch_size: int = 256
) -> np.ndarray:
    if callable(features):
        return np.asarray(features(calib, idx), np.float64).reshape(idx.size, -1)
    if features == "x":
        x = torch.from_numpy(np.ascontiguousarray(calib.x[idx]))
        size = (min(pool, x.shape[-2]), min(pool, x.shape[-1]))
        return torch.nn.functional.adaptive_avg_pool2d(x, size).reshape(idx.size, -1).double().numpy()
    if features != "activations":
        raise EdgediffError(f"selection 'eda': features must be 'x', 'activations' or a callable, got {features!r}")
    if model is None:
        raise EdgediffError("selection 'eda': features='activations' needs model= (a ModelSpec or torch module)")
    module = getattr(model, "module", model)
    names = dict(module.named_modules())
    if layer is None:
        mids = [n for n in names if n.split(".")[-1] == "mid_block"]
        if not mids:
            raise EdgediffError(
                "selection 'eda': the model has no module named '*.mid_block'; pass layer= (one of its module names)"
            )
        layer = mids[0]
    if layer not in names:
        raise EdgediffError(f"selection 'eda': the model has no module {layer!r}")
    out: list[torch.Tensor] = []

    def hook(mod, inputs, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        h = h.float()
        if h.ndim == 4:
            h = torch.nn.functional.adaptive_avg_pool2d(h, (min(pool, h.shape[-2]), min(pool, h.shape[-1])))
        out.append(h.reshape(h.shape[0], -1).double())

    handle = names[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for start in range(0, idx.size, batch_size):
                module(*calib.model_args(idx[start : start + batch_size]))
    finally:
        handle.remove()
    return torch.cat(out).numpy()


def density_diversity(
    feats: np.ndarray, k: int, *, knn: int = 10, density_weight: float = 1.0, first: str = "density"
) -> np.ndarray:
    """Pick k rows of `feats` (n, d): the densest first, then repeatedly the row maximising
    (distance to the nearest picked row) * density^density_weight.

    density = 1 / mean distance to the `knn` nearest neighbours, scaled to max 1. density_weight
    0 is plain k-center greedy (most diverse, outliers first); larger values favour
    representative rows.
    """
    n = feats.shape[0]
    if k >= n:
        return np.arange(n)
    sq = (feats**2).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * feats @ feats.T, 0.0))
    kk = max(1, min(knn, n - 1))
    nearest = np.partition(dist, kk, axis=1)[:, 1 : kk + 1]  # column 0 is the row itself (distance 0)
    density = 1.0 / (nearest.mean(axis=1) + 1e-12 * (dist.max() + 1e-30))
    density = density / density.max()
    weight = density**density_weight
    picked = [int(np.argmax(density))]
    mind = dist[picked[0]].copy()
    taken = np.zeros(n, bool)
    taken[picked[0]] = True
    for _ in range(k - 1):
        score = np.where(taken, -np.inf, mind * weight)
        j = int(np.argmax(score))
        picked.append(j)
        taken[j] = True
        mind = np.minimum(mind, dist[j])
    return np.array(picked, np.int64)


def select_eda(
    calib: CalibrationSet,
    budget: int,
    rng: np.random.Generator,
    *,
    features="x",
    model=None,
    layer: str | None = None,
    pool: int = 8,
    knn: int = 10,
    density_weight: float = 1.0,
    max_candidates: int = 4096,
) -> np.ndarray:
    """Equal quota per visited step, filled by `density_diversity` in a feature space.

    features: "x" (the model input, average-pooled to at most pool x pool), "activations" (the
    output of `layer` of `model`, default its '*.mid_block', pooled the same way) or a callable
    (calib, indices) -> (n, d) array. Steps with more than `max_candidates` rows are first
    subsampled at random (the distance matrix is n^2).
    """
    if density_weight < 0 or knn < 1 or pool < 1 or max_candidates < 2:
        raise EdgediffError("selection 'eda': need density_weight >= 0, knn >= 1, pool >= 1, max_candidates >= 2")
    rows = _rows_by_step(calib)
    quota = _equal_quota(sorted(rows), budget, rng)
    picked = []
    for s, k in quota.items():
        cand = rows[s]
        if k > cand.size:
            raise EdgediffError(f"selection 'eda': step {s} has {cand.size} rows, its share of the budget is {k}")
        if k == 0:
            continue
        if cand.size > max_candidates:
            cand = np.sort(rng.choice(cand, size=max_candidates, replace=False))
        feats = _features(calib, cand, features, model, layer, pool)
        picked.append(cand[density_diversity(feats, k, knn=knn, density_weight=density_weight)])
    return np.sort(np.concatenate(picked))


SELECTORS = {
    "uniform": select_uniform,
    "normal": select_normal,
    "eda": select_eda,
}


def _json_safe(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if callable(v) and hasattr(v, "__name__"):
        return f"<{v.__name__}>"
    return f"<{type(v).__name__}>"


def select_indices(
    calib: CalibrationSet, strategy: str, budget: int, *, seed: int | np.random.Generator, **options
) -> np.ndarray:
    """The sorted row indices `strategy` picks (see SELECTORS)."""
    if strategy not in SELECTORS:
        raise EdgediffError(f"unknown selection strategy {strategy!r}; choose one of {', '.join(SELECTORS)}")
    fn = SELECTORS[strategy]
    allowed = list(inspect.signature(fn).parameters)[3:]
    for name in options:
        if name not in allowed:
            raise EdgediffError(
                f"selection {strategy!r} has no option {name!r}; options: {', '.join(allowed) or 'none'}"
            )
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise EdgediffError(f"selection budget must be a positive integer, got {budget!r}")
    if budget > len(calib):
        raise EdgediffError(f"selection budget {budget} exceeds the {len(calib)} recorded rows")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    idx = np.asarray(fn(calib, int(budget), rng, **options), dtype=np.int64)
    assert idx.size == budget and np.unique(idx).size == budget, f"{strategy} returned a wrong index set"
    return idx


def select(
    calib: CalibrationSet, strategy: str, budget: int, *, seed: int | np.random.Generator, **options
) -> CalibrationSet:
    """A `budget`-row subset of `calib` chosen by `strategy`; the choice is recorded in meta.selection."""
    idx = select_indices(calib, strategy, budget, seed=seed, **options)
    record = {
        "strategy": strategy,
        "budget": int(budget),
        "seed": seed if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None,
        "options": {k: _json_safe(v) for k, v in sorted(options.items())},
    }
    if record["seed"] is not None:
        record["seed"] = int(record["seed"])
    return calib.subset(idx, selection=record)
