"""`edgediff prune` as a job: a source in, a pruned (and recovered) model folder out.

    source --load_source--> teacher --prune (edgediff.prune)--> OUT.checkpoints/pruned-init
                                          --finetune (edgediff.prune.recover, DDP)--> OUT/

The pass itself (edgediff.prune.prune) is a pure function of a ModelSpec; this module adds
what a command needs around it: loading, checkpoints to resume from, torchrun ranks, and
the folder written through a temporary sibling renamed into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgediff.compiler.capture import load_source
from edgediff.core.errors import EdgediffError
from edgediff.core.files import staging
from edgediff.core.spec import ModelSpec
from edgediff.prune.prune import (
    FinetuneOptions,
    PruneOptions,
    _inner,
    check_ratio,
    format_protected,
    prune,
    scheduler_config,
)
from edgediff.prune.recover import finetune as run_finetune
from edgediff.prune.store import publish_dir, read_shapes, save_pruned
from edgediff.training import DistContext, TrainConfig
from edgediff.training.diffusion import training_data


def prune_to_dir(
    source: str | ModelSpec,
    out: str | Path,
    *,
    ratio: float,
    options: PruneOptions = PruneOptions(),
    finetune: FinetuneOptions = FinetuneOptions(),
    data: str | None = None,
    dist=None,
    log=print,
) -> dict:
    """Prune `source`, optionally fine-tune, and write the pruned folder `out`; returns its record.

    Under torchrun every process calls this: rank 0 prunes and saves the pruned (not yet tuned)
    model into `OUT.checkpoints/pruned-init`, every rank loads it from there (so all ranks train
    the very same architecture), the shared trainer runs DDP, and rank 0 writes `out` through a
    temporary folder renamed into place. An interrupted fine-tune resumes from OUT.checkpoints
    when the same command is run again; the folder is removed once `out` is written.
    """
    dist = dist or DistContext()
    out = Path(out)
    ratio = check_ratio(ratio)
    if out.exists():
        raise EdgediffError(f"{out}: already exists; choose a new output folder")
    if not out.resolve().parent.is_dir():
        raise EdgediffError(f"{out}: folder {out.resolve().parent} does not exist")
    ckpt = out.parent / f"{out.name}.checkpoints"
    init_dir = ckpt / "pruned-init"
    teacher = load_source(source)
    need_data = options.importance == "taylor" or finetune.steps > 0
    train_data = training_data(teacher, data) if need_data else None
    settings = {
        "ratio": ratio,
        "importance": options.importance,
        "scope": options.scope,
        "source_sha256": teacher.source_sha256,
        "layer_ratios": [list(x) for x in options.layer_ratios] or None,
    }
    if dist.is_main:
        if init_dir.exists():
            rec = read_shapes(init_dir)["record"]
            diff = [k for k, v in settings.items() if rec.get(k) != v]
            if diff:
                raise EdgediffError(
                    f"{ckpt}: an earlier run with {diff[0]}={rec.get(diff[0])!r} left it here "
                    f"(this run: {settings[diff[0]]!r}); remove it or change -o"
                )
            log(f"resuming from {ckpt}")
        else:
            result = prune(teacher, ratio=ratio, options=options, data=train_data, progress=finetune.progress)
            log(format_protected(result.protected))
            tmp = ckpt / "pruned-init.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            ckpt.mkdir(parents=True, exist_ok=True)
            save_pruned(
                _inner(result.model)[0], _inner(teacher)[0], scheduler_config(teacher), tmp, record=result.record
            )
            tmp.rename(init_dir)
    dist.barrier()
    student = load_source(str(init_dir))
    record = read_shapes(init_dir)["record"]
    r = record
    log(
        f"pruned {r['model_class']} by {r['ratio']:g} ({r['scope']}, {r['importance']}): params "
        f"{r['params_before']:,} -> {r['params_after']:,}, MACs/call {r['macs_before']:,} -> {r['macs_after']:,} "
        f"(-{100 * r['macs_reduction']:.1f} %)"
    )
    if finetune.steps > 0:
        cfg = TrainConfig(
            steps=finetune.steps,
            batch_size=finetune.batch_size,
            lr=finetune.lr,
            warmup=min(finetune.warmup, finetune.steps - 1),
            ema_decay=finetune.ema_decay,
            seed=options.seed,
            checkpoint_dir=str(ckpt),
            threads=finetune.threads,
            progress=finetune.progress,
            desc="prune finetune",
        )
        res = run_finetune(student, teacher, train_data, cfg, distill_weight=finetune.distill_weight, dist=dist)
        record["finetune"] = {
            **res.to_dict(),
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "warmup": cfg.warmup,
            "ema_decay": cfg.ema_decay,
            "distill_weight": finetune.distill_weight,
            "loss": "MSE(eps) + distill_weight * MSE(student, teacher)",
        }
        log(
            f"fine-tuned {res.steps} steps on {res.world_size} process(es) in {res.seconds:.0f} s, "
            f"final loss {res.final_loss:.4f}"
        )
    if dist.is_main:
        with staging(out) as work:
            save_pruned(_inner(student)[0], _inner(teacher)[0], scheduler_config(teacher), work / "m", record=record)
            publish_dir(work / "m", out)
        shutil.rmtree(ckpt, ignore_errors=True)
    dist.barrier()
    return record
