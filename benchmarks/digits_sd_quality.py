"""Class accuracy of builtin:digits-sd under diffusers' own StableDiffusionPipeline.

    .venv/bin/python benchmarks/digits_sd_quality.py [--n 200] [--steps 20] [--guidance 5 7.5] [--scheduler dpm|folder]

Prompts name each digit ("a handwritten 0" .. "a handwritten 9", "the digit zero", ...,
"number 0 written by hand", ...); decoded images -> gray -> 16x16 -> the committed digits
classifier (zoo/digits_sd.py quality()). Prints one line per guidance scale and the CPU.
"""

from __future__ import annotations

import argparse
import platform

from edgediff.zoo import digits_sd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=str(digits_sd.FOLDER))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0, 5.0, 7.5])
    p.add_argument("--scheduler", choices=["dpm", "folder"], default="dpm")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    flags = ", ".join(digits_sd.cpu_flags()) or "none of avx2/avx512f/vnni"
    print(f"cpu: {digits_sd.cpu_name()} ({platform.machine()}; {flags}), threads {digits_sd.THREADS}")
    for g in a.guidance:
        q = digits_sd.quality(a.folder, n=a.n, guidance=g, steps=a.steps, scheduler=a.scheduler, seed=a.seed)
        per = " ".join(f"{v:.2f}" for v in q["per_digit"])
        print(
            f"guidance {g:4.1f}  {q['scheduler']}  {q['steps']} steps  {q['images']} images  "
            f"accuracy {q['accuracy']:.3f}  per digit [{per}]  {q['seconds']:.0f} s"
        )


if __name__ == "__main__":
    main()
