"""FP32 quality of builtin:digits per sampler and step count (the README's quality table).

    python benchmarks/quality_table.py [--num-samples 500] [--json out/quality_table.json]

Runs the FP32 PyTorch model with the Python reference samplers (classifier-free guidance
3, labels 0..9 in turn, seed 0) and scores the images with the committed digits
classifier: FD-digits against the real held-out split and class accuracy. The first row
is real digits the diffusion model never saw (the classifier's training split): the
floor FD-digits can reach with this classifier and sample size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from edgediff.compiler.capture import load_source
from edgediff.core.spec import torch_denoiser
from edgediff.runtimes.runner import SamplingSetup, default_labels, generate
from edgediff.runtimes.samplers import get_solver
from edgediff.tools.evaluate import DigitsJudge
from edgediff.training.data import digits_splits

ROWS = [("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddim", 100), ("dpmpp-2m", 10), ("dpmpp-2m", 20), ("ddpm", 1000)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--ddpm-samples", type=int, default=200, help="DDPM-1000 is 1000 steps: fewer samples")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--json", default="out/quality_table.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)

    model = load_source("builtin:digits")
    denoise = torch_denoiser(model)
    judge = DigitsJudge()
    cond = model.conditioning.to_dict()
    rows = []
    real, real_labels = digits_splits()["classifier"]
    floor = judge.score(real[: a.num_samples], real_labels[: a.num_samples])
    rows.append(
        {
            "sampler": "real digits (unseen split)",
            "steps": 0,
            "num_samples": min(a.num_samples, len(real)),
            **floor,
            "seconds": 0.0,
        }
    )
    for solver, steps in ROWS:
        n = a.ddpm_samples if solver == "ddpm" else a.num_samples
        plan = get_solver(solver).plan(model.schedule, steps)
        setup = SamplingSetup(plan=plan, guidance=a.guidance, conditioning=cond, sample_shape=model.sample_shape)
        labels = default_labels(setup, n)
        bar = tqdm(total=n * steps, desc=f"{solver}-{steps}", unit="img·step", file=sys.stderr, leave=False)
        t0 = time.perf_counter()
        images = generate(denoise, setup, n=n, seed=0, labels=labels, batch_size=500, progress=bar.update)
        bar.close()
        rows.append(
            {
                "sampler": solver,
                "steps": steps,
                "num_samples": n,
                **judge.score(images, labels),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        r = rows[-1]
        print(
            f"{solver:>10} {steps:5d}  n={n:4d}  FD-digits {r['fd_digits']:7.2f}  "
            f"accuracy {r['class_accuracy']:.3f}  ({r['seconds']:.0f} s)",
            file=sys.stderr,
        )

    print("| sampler | steps | samples | FD-digits | class accuracy |\n|---|---:|---:|---:|---:|")
    for r in rows:
        steps = "—" if r["steps"] == 0 else r["steps"]
        print(f"| {r['sampler']} | {steps} | {r['num_samples']} | {r['fd_digits']:.2f} | {r['class_accuracy']:.3f} |")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"guidance": a.guidance, "seed": 0, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
