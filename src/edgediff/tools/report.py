"""`edgediff report BUNDLE... -o DIR`: speed and fidelity of several bundles side by side.

    each BUNDLE ──bench (host, a fresh worker process; or a given `edgediff bench --json`)──┐
                └─eval: bundle and its FP32 PyTorch reference, same seeds (evaluate.py) ─┤
                         PSNR vs reference, FD-digits + class accuracy (builtin:digits)   │
    DIR/report.md    table + the figures below                                    <───────┘
        report.json  every bench result and quality figure
        quality_latency.png   PSNR (and FD-digits) vs end-to-end latency, Pareto front
        step_latency.png      per-step latency histogram of every measured bundle
        size.png              size on disk per bundle
        images.png            per bundle: its FP32 reference row, then its own row, same seeds

Estimated latencies (bench results with measured false) are drawn hollow and marked
"estimated" in the table; they never share a Pareto front with measured ones.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from edgediff.core.errors import EdgediffError
from edgediff.core.files import write_file_atomic
from edgediff.runtimes.bundle import load_bundle
from edgediff.runtimes.images import grid
from edgediff.runtimes.quality import psnr_db


def pareto_front(latency: list[float], quality: list[float], *, higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both axes (lower latency, better quality),
    ordered by latency."""
    q = [v if higher_is_better else -v for v in quality]
    order = sorted(range(len(latency)), key=lambda i: (latency[i], -q[i]))
    front, best = [], -math.inf
    for i in order:
        if q[i] > best:
            front.append(i)
            best = q[i]
    return front


def _latency(bench: dict) -> float | None:
    e = bench["e2e_ms"]
    return e["p50"] if bench["measured"] else e.get("estimate")


def _load_bench_jsons(paths) -> dict[Path, dict]:
    out = {}
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except OSError as e:
            raise EdgediffError(f"{p}: cannot read ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise EdgediffError(f"{p}: not JSON ({e.msg}, line {e.lineno})") from None
        for key in ("bundle", "measured", "e2e_ms", "step_ms", "size_mb"):
            if key not in data:
                raise EdgediffError(f"{p}: missing field {key!r} (expected the output of `edgediff bench --json`)")
        out[Path(data["bundle"]).resolve()] = data
    return out


def make_report(
    bundles: list[str],
    out_dir: str | Path,
    *,
    num_samples: int = 64,
    seed: int = 0,
    bench_json=(),
    warmup_runs: int = 1,
    num_runs: int = 5,
) -> dict:
    from tqdm import tqdm

    from edgediff.tools.bench import bench
    from edgediff.tools.evaluate import evaluate

    try:
        import matplotlib
    except ImportError:
        raise EdgediffError("edgediff report needs matplotlib: pip install 'edgediff[plots]'") from None
    matplotlib.use("Agg")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EdgediffError(f"{out}: exists and is not a folder")
    given = _load_bench_jsons(bench_json)
    loaded = [load_bundle(b) for b in bundles]
    try:  # only once every input has loaded: a bad bundle leaves no empty folder behind
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgediffError(f"{out}: cannot create folder ({e.strerror})") from None
    names = _names(loaded)
    total = sum(2 * num_samples * len(b.scheduler["plan"]["timesteps"]) for b in loaded)
    rows = []
    with tqdm(total=total, desc="report", unit="img·step", file=sys.stderr, leave=False, disable=None) as bar:
        for name, b in zip(names, loaded):
            bar.set_postfix_str(f"{name}: bench")
            result = given.get(b.root.resolve())
            if result is None:
                try:
                    result = bench(b.root, device="host", warmup_runs=warmup_runs, num_runs=num_runs)
                except EdgediffError as e:
                    raise EdgediffError(
                        f"{e}; to report a bundle this host cannot run, give its "
                        "`edgediff bench BUNDLE --device PROFILE --json` result with --bench-json"
                    ) from None
            bar.set_postfix_str(f"{name}: eval")
            quality, images, ref_images = evaluate(b, num_samples=num_samples, seed=seed, progress=bar.update)
            rows.append(
                {
                    "name": name,
                    "bench": result,
                    "quality": quality,
                    "images": images,
                    "ref": ref_images,
                    "source": b.manifest["source"]["spec"],
                }
            )
    _common_reference(rows)
    figures = {
        "quality_latency": _plot_quality(rows, out / "quality_latency.png"),
        "step_latency": _plot_steps(rows, out / "step_latency.png"),
        "size": _plot_size(rows, out / "size.png"),
        "images": _plot_images(rows, out / "images.png"),
    }
    figures = {k: v for k, v in figures.items() if v is not None}
    data = [{"name": r["name"], "bench": r["bench"], "quality": r["quality"]} for r in rows]
    write_file_atomic(out / "report.json", json.dumps(data, indent=2) + "\n")
    md = out / "report.md"
    write_file_atomic(md, _markdown(rows, figures, num_samples=num_samples, seed=seed))
    return {"markdown": str(md), "figures": [str(p) for p in figures.values()], "rows": data}


def _save(fig, path: Path) -> None:
    """A figure rendered in memory, then written atomically (a full disk leaves no partial PNG)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_file_atomic(path, buf.getvalue())


def _names(bundles) -> list[str]:
    names = [b.root.name for b in bundles]
    if len(set(names)) < len(names):  # same folder name in different places
        names = [str(b.root) for b in bundles]
    return names


def _common_reference(rows) -> None:
    """PSNR of every bundle against one reference, the first bundle's FP32 images: a bundle's own
    reference shares its step count, so fewer steps would not show there; this column shows it."""

    first = rows[0]
    for r in rows:
        same = r["images"].shape == first["ref"].shape and r["quality"]["seed"] == first["quality"]["seed"]
        v = psnr_db(r["images"], first["ref"]) if same else None
        r["quality"]["psnr_db_vs_first_reference"] = v if v is None or np.isfinite(v) else None
        r["quality"]["first_reference"] = (
            f"{first['name']}: FP32, {first['quality']['sampler']} {first['quality']['steps']} steps"
        )


def _plot_quality(rows, path: Path) -> Path:
    import matplotlib.pyplot as plt

    has_fd = any(r["quality"]["fd_digits"] is not None for r in rows)
    ref = rows[0]["quality"]["first_reference"]
    panels = [("psnr_db_vs_first_reference", f"PSNR vs {ref} (dB, higher is better)", True)]
    if has_fd:
        panels.append(("fd_digits", "FD-digits (lower is better)", False))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (key, label, higher) in zip(axes[0], panels):
        for measured in (True, False):
            pts = [
                (r["name"], _latency(r["bench"]), r["quality"][key])
                for r in rows
                if r["bench"]["measured"] is measured
                and _latency(r["bench"]) is not None
                and r["quality"][key] is not None
            ]
            if not pts:
                continue
            xs, ys = [p[1] for p in pts], [p[2] for p in pts]
            ax.scatter(
                xs,
                ys,
                s=50,
                facecolors="C0" if measured else "none",
                edgecolors="C0" if measured else "C1",
                label="measured" if measured else "estimated (roofline, not measured)",
                zorder=3,
            )
            for n, x, y in pts:
                ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
            front = pareto_front(xs, ys, higher_is_better=higher)
            if len(front) > 1:
                ax.plot(
                    [xs[i] for i in front],
                    [ys[i] for i in front],
                    "--",
                    color="C0" if measured else "C1",
                    label="Pareto front" + ("" if measured else " (estimated)"),
                    zorder=2,
                )
        ax.set_xlabel("end-to-end latency per image (ms, p50)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("quality vs latency (every bundle on the same seeds)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _plot_steps(rows, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r["bench"]["measured"] and r["bench"].get("step_ms_samples")]
    if not measured:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    allv = np.concatenate([np.asarray(r["bench"]["step_ms_samples"]) for r in measured])
    bins = np.linspace(allv.min(), np.percentile(allv, 99.5), 40) if allv.max() > allv.min() else 10
    for r in measured:
        st = r["bench"]["step_ms"]
        v = r["bench"]["step_ms_samples"]
        ax.hist(
            v,
            bins=bins,
            alpha=0.55,
            weights=np.full(len(v), 1 / len(v)),
            label=f"{r['name']} (p50 {st['p50']:.2f}, p99 {st['p99']:.2f} ms)",
        )
    ax.set_xlabel("step latency (ms)")
    ax.set_ylabel("fraction of steps")
    ax.set_title("per-step latency, measured (tail beyond p99.5 clipped)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _plot_size(rows, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 4))
    names = [r["name"] for r in rows]
    sizes = [r["bench"]["size_mb"] for r in rows]
    bars = ax.bar(names, sizes, color="C2")
    for bar_, s in zip(bars, sizes):
        ax.annotate(f"{s:.2f}", (bar_.get_x() + bar_.get_width() / 2, s), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("size on disk (MB)")
    ax.set_title("bundle size")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _plot_images(rows, path: Path, *, k: int = 10) -> Path:
    import matplotlib.pyplot as plt

    panels, shown = [], set()
    for r in rows:  # a reference row once per model source and recipe (sampler, steps, guidance)
        q = r["quality"]
        key = (r["source"], q["sampler"], q["steps"], q["guidance"], r["images"].shape)
        if key not in shown:
            shown.add(key)
            panels.append((r["ref"], f"FP32 reference ({q['sampler']}, {q['steps']} steps, guidance {q['guidance']})"))
        panels.append((r["images"], r["name"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(min(12, 1.0 * k + 2), 1.3 * len(panels) + 0.3), squeeze=False)
    for (imgs, label), row in zip(panels, axes):
        ax = row[0]
        g = grid(imgs[:k], ncols=k)
        ax.imshow(g[..., 0] if g.shape[2] == 1 else g, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=9, loc="left")
    fig.suptitle(f"same seeds, first {min(k, len(rows[0]['images']))} images", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def _markdown(rows, figures: dict, *, num_samples: int, seed: int) -> str:
    lines = [
        "# edgediff report",
        "",
        f"Quality: every bundle and its own FP32 PyTorch reference (same sampler, steps, guidance) on the "
        f"same {num_samples} seeds starting at {seed}. Latency: `edgediff bench` on the device named in "
        "the table; *estimated* rows are roofline lower bounds, not measurements.",
        "",
        f"PSNR (own) is against the bundle's own FP32 reference; PSNR (common) against "
        f"{rows[0]['quality']['first_reference']} for every bundle, so that fewer steps show too.",
        "",
        "| bundle | device | format | precision | steps | size MB | step p50 ms | step p99 ms | e2e ms/image "
        "| peak RSS MB | PSNR (own) dB | PSNR (common) dB | FD-digits | FD-digits (own FP32 ref) | accuracy |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        b, q = r["bench"], r["quality"]
        st = b["step_ms"]
        if b["measured"]:
            p50, p99, e2e = _fmt(st["p50"], ".3f"), _fmt(st["p99"], ".3f"), _fmt(b["e2e_ms"]["p50"], ".2f")
        else:
            p50, p99, e2e = f"{st['estimate']:.3f} *estimated*", "—", f"{b['e2e_ms']['estimate']:.2f} *estimated*"
        lines.append(
            f"| {r['name']} | {b['device']} | {b['model']['format']} | {b['model']['precision']} | "
            f"{b['sampler']['steps']} | {b['size_mb']:.2f} | {p50} | {p99} | {e2e} | "
            f"{_fmt(b['peak_rss_mb'], '.1f')} | {_fmt(q['psnr_db'], '.2f')} | "
            f"{_fmt(q['psnr_db_vs_first_reference'], '.2f')} | {_fmt(q['fd_digits'], '.3f')} | "
            f"{_fmt(q['reference']['fd_digits'], '.3f')} | {_fmt(q['class_accuracy'], '.3f')} |"
        )
    hosts = {}
    for r in rows:
        if r["bench"]["measured"]:
            h = r["bench"]["host"]
            desc = (
                f"{h.get('cpu_model', h.get('machine', '?'))}, {h.get('cores', '?')} cores, "
                f"{', '.join(h.get('features', []))} ({h.get('os', '')})"
            )
            hosts.setdefault(desc, []).append(f"{r['name']} ({r['bench']['device']})")
    if hosts:
        lines += ["", "Measured on:"]
        lines += [f"- {desc}: {', '.join(names)}" for desc, names in hosts.items()]
    for r in rows:
        if not r["bench"]["measured"]:
            lines += ["", f"Assumptions of the estimate for {r['name']} on {r['bench']['device']}:"]
            lines += [f"- {a}" for a in r["bench"]["assumptions"]]
    titles = {
        "quality_latency": "Quality vs latency",
        "step_latency": "Per-step latency",
        "size": "Size on disk",
        "images": "Images: FP32 reference and bundle, same seeds",
    }
    for key, p in figures.items():
        lines += ["", f"## {titles[key]}", "", f"![{key}]({Path(p).name})"]
    lines += [
        "",
        "FD-digits is biased upward at small sample counts: compare a bundle with its own FP32 "
        "reference column, computed on the same number of images.",
        "",
    ]
    return "\n".join(lines)
