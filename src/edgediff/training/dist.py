"""The process group the trainer runs in: one process, or many under torchrun.

    python -m torch.distributed.run --nproc-per-node 2 -m edgediff.cli.main prune ...
        -> RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the environment
        -> DistContext.from_env() joins the group: gloo on CPU, nccl on CUDA

Nothing here is CPU-specific: with GPUs the same code picks nccl and the local device, and
torchrun's multi-node options (--nnodes, --rdzv-endpoint) need no change here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from edgediff.core.errors import EdgediffError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: single process, no group
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> DistContext:
        """Join the process group torchrun describes in the environment, or run alone."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            backend, device = "nccl", torch.device("cuda", local)
            torch.cuda.set_device(device)
        else:
            backend, device = "gloo", torch.device("cpu")
        owns = False
        if not tdist.is_initialized():
            tdist.init_process_group(backend=backend)
            owns = True
        return cls(rank=rank, world_size=world, local_rank=local, device=device, backend=backend, owns_group=owns)

    def barrier(self) -> None:
        if self.distributed:
            tdist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()
            self.owns_group = False


def relaunch_under_torchrun(nproc: int, argv: list[str] | None = None) -> int:
    """Run this CLI again as `nproc` processes under torchrun (one machine); returns the exit code.

    For many machines, call torchrun yourself with its multi-node options and the same
    edgediff command line (without --nproc).
    """
    import subprocess

    if nproc < 1:
        raise EdgediffError(f"--nproc must be at least 1, got {nproc}")
    args = list(sys.argv[1:] if argv is None else argv)
    # drop our own --nproc so the children do not relaunch again
    clean, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        clean.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "edgediff.cli.main",
        *clean,
    ]
    return subprocess.call(cmd)
