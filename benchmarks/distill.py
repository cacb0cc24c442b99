"""Step distillation of builtin:digits: students at 1/2/4/8 steps against the teacher's samplers.

    python benchmarks/distill.py train --method progressive [--train-steps 100]   # students -> out/distill/
    python benchmarks/distill.py train --method consistency [--train-steps 300]
    python benchmarks/distill.py eval  [--num-samples 200]                         # table, JSON, PNG

train: guidance-distilled students (w in [2, 4]) with the shared trainer, one process,
  progressive from a DDIM-16 teacher (stages 8, 4, 2, 1; every stage's student is kept) and
  consistency (LCM) on the 50-step grid (one student, sampled at 1, 2, 4, 8 steps).
eval: FD-digits (vs the real held-out split, in the committed classifier's feature space) and
  class accuracy of each student with guidance 3 bound in (one forward pass per step), and of the
  teacher with classifier-free guidance 3 (two passes per step) at DDIM 4/8/20/50 and
  DPM-Solver++ 2/4/8; labels 0..9 in turn, seed 0, Python reference sampler, FP32 PyTorch.
  Forward passes per image, ms per image (wall clock, this machine, shared), training time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

GUIDANCE = 3.0
TEACHER_ROWS = [
    ("ddim", 4, "leading"),
    ("ddim", 8, "leading"),
    ("ddim", 20, "leading"),
    ("ddim", 50, "leading"),
    ("dpmpp-2m", 2, "leading"),
    ("dpmpp-2m", 4, "leading"),
    ("dpmpp-2m", 8, "leading"),
]
STUDENT_STEPS = [1, 2, 4, 8]


def train(a) -> int:
    from edgediff.compiler.capture import load_source
    from edgediff.distill.distill import DistillOptions, distill, save_student

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    teacher = load_source("builtin:digits")
    load = os.getloadavg()
    opts = DistillOptions(
        train_steps=a.train_steps,
        batch_size=a.batch_size,
        lr=a.lr,
        warmup=20,
        ema_decay=a.ema_decay,
        seed=0,
        threads=a.threads,
        teacher_steps=16 if a.method == "progressive" else None,
        checkpoint_dir=str(out / f"ckpt-{a.method}"),
    )
    t0 = time.perf_counter()
    student = distill(
        teacher,
        method=a.method,
        steps=1 if a.method == "progressive" else 4,
        guidance=GUIDANCE,
        guidance_distill=True,
        options=opts,
    )
    seconds = time.perf_counter() - t0
    steps = [s.steps for s in student.stages] if a.method == "progressive" else [4]
    for n in steps:
        save_student(student, out / f"{a.method}-{n}", steps=n)
    record = {
        "method": a.method,
        "train_seconds": round(seconds, 1),
        "load_before": load,
        "load_after": os.getloadavg(),
        "stages": student.record["stages"],
        "options": student.record["options"],
    }
    (out / f"train-{a.method}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{a.method}: {seconds:.0f} s, load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}; wrote "
        + ", ".join(str(out / f"{a.method}-{n}") for n in steps)
    )
    return 0


def _rows(out: Path):
    """(name, kind, folder or None, sampler, steps, spacing, forward passes per step)."""
    rows = [(f"teacher {s} {n}", "teacher", None, s, n, sp, 2) for s, n, sp in TEACHER_ROWS]
    for n in STUDENT_STEPS:
        folder = out / f"progressive-{n}"
        if folder.is_dir():
            rows.append((f"progressive student {n}", "progressive", folder, "ddim", n, "trailing", 1))
    if (out / "consistency-4").is_dir():
        for n in STUDENT_STEPS:
            rows.append((f"consistency student {n}", "consistency", out / "consistency-4", "lcm", n, "lcm", 1))
    return rows


def evaluate(a) -> int:
    from tqdm import tqdm

    from edgediff.compiler.capture import load_source
    from edgediff.core.spec import torch_denoiser
    from edgediff.distill.distill import bind_guidance
    from edgediff.runtimes.images import save_grid
    from edgediff.runtimes.runner import SamplingSetup, default_labels, generate
    from edgediff.runtimes.samplers import get_solver
    from edgediff.tools.evaluate import DigitsJudge

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    judge = DigitsJudge()
    teacher = load_source("builtin:digits")
    cond = teacher.conditioning.to_dict()
    train_records = {
        m: json.loads((out / f"train-{m}.json").read_text())
        for m in ("progressive", "consistency")
        if (out / f"train-{m}.json").exists()
    }
    results, grids = [], []
    for name, kind, folder, solver, n, spacing, passes in _rows(out):
        if kind == "teacher":
            model, guidance = teacher, GUIDANCE
        else:
            model, guidance = bind_guidance(load_source(str(folder)), GUIDANCE), 1.0
        plan = get_solver(solver).plan(teacher.schedule, n, spacing=spacing)
        setup = SamplingSetup(plan=plan, guidance=guidance, conditioning=cond, sample_shape=teacher.sample_shape)
        labels = default_labels(setup, a.num_samples)
        bar = tqdm(total=a.num_samples * n, desc=name, unit="img·step", file=sys.stderr, leave=False)
        t0 = time.perf_counter()
        images = generate(
            torch_denoiser(model),
            setup,
            n=a.num_samples,
            seed=0,
            labels=labels,
            batch_size=a.num_samples,
            progress=bar.update,
            loop="python",
        )
        seconds = time.perf_counter() - t0
        bar.close()
        train_s = None
        if kind == "progressive":
            rec = train_records.get("progressive", {})
            train_s = sum(s["seconds"] for s in rec.get("stages", []) if s["student_steps"] >= n) or None
        elif kind == "consistency":
            train_s = train_records.get("consistency", {}).get("train_seconds")
        row = {
            "name": name,
            "kind": kind,
            "sampler": solver,
            "steps": n,
            "spacing": spacing,
            "forward_passes": passes * n,
            "num_samples": a.num_samples,
            **judge.score(images, labels),
            "ms_per_image": round(1000 * seconds / a.num_samples, 2),
            "train_seconds": train_s,
        }
        results.append(row)
        grids.append(images[:20])
        print(
            f"{name:28} FD-digits {row['fd_digits']:6.3f}  acc {row['class_accuracy']:.3f}  "
            f"passes {row['forward_passes']:3d}  {row['ms_per_image']:.1f} ms/img",
            file=sys.stderr,
            flush=True,
        )
    save_grid(np.concatenate(grids), out / "distill.png", ncols=20)
    summary = {
        "guidance": GUIDANCE,
        "seed": 0,
        "num_samples": a.num_samples,
        "load": os.getloadavg(),
        "train": train_records,
        "rows": results,
    }
    (out / "distill.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(results))
    print(
        f"\nwrote {out / 'distill.json'} and {out / 'distill.png'} (rows top to bottom as in the table, 20 images each)"
    )
    return 0


def table(rows: list[dict]) -> str:
    lines = [
        "| model | sampler | steps | forward passes / image | FD-digits | class accuracy | ms / image | training (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        train_s = "—" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        model = "teacher (CFG 3)" if r["kind"] == "teacher" else f"{r['kind']} student (w = 3)"
        lines.append(
            f"| {model} | {r['sampler']} | {r['steps']} | {r['forward_passes']} | {r['fd_digits']:.3f} | "
            f"{r['class_accuracy']:.3f} | {r['ms_per_image']:.1f} | {train_s} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="phase", required=True)
    t = sub.add_parser("train")
    t.add_argument("--method", required=True, choices=["progressive", "consistency"])
    t.add_argument("--train-steps", type=int, default=None, help="per stage (default progressive 100, consistency 300)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--ema-decay", type=float, default=0.995)
    e = sub.add_parser("eval")
    e.add_argument("--num-samples", type=int, default=200)
    for p in (t, e):
        p.add_argument("--out", default="out/distill")
        p.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.phase == "train":
        if a.train_steps is None:
            a.train_steps = 100 if a.method == "progressive" else 300
        return train(a)
    return evaluate(a)


if __name__ == "__main__":
    sys.exit(main())
