"""Reference samplers: one solver per file, registered by name.

To add a solver, write runtimes/samplers/<name>.py (one class, see base.Solver: its
param_kinds, plan, check and step) and add it to SOLVERS below. Its C twin is
csrc/src/solvers/<name>.c plus one name in the registry list of csrc/src/plan.c. Tests:
tests/test_samplers.py runs it through the common battery once it has a diffusers twin in
REFERENCES there; tests/test_plan_check.py feeds every bad plan to both sides (the generic
rows come from param_kinds; rows for its own check go in SOLVER_ROWS).
"""

from __future__ import annotations

from edgediff.core.errors import EdgediffError
from edgediff.runtimes.samplers.base import Plan, Solver
from edgediff.runtimes.samplers.ddim import DDIM
from edgediff.runtimes.samplers.ddpm import DDPM
from edgediff.runtimes.samplers.dpmpp_2m import DPMSolverPP2M
from edgediff.runtimes.samplers.euler import Euler
from edgediff.runtimes.samplers.lcm import LCM

SOLVERS: dict[str, type] = {
    "ddpm": DDPM,
    "ddim": DDIM,
    "dpmpp-2m": DPMSolverPP2M,
    "euler": Euler,
    "lcm": LCM,
}


def get_solver(name: str) -> Solver:
    if name not in SOLVERS:
        raise EdgediffError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVERS[name]()


__all__ = ["SOLVERS", "Plan", "Solver", "get_solver"]
