"""The shared trainer: resumable bit for bit, and a 2-process torchrun (DDP, gloo) run equal to
a 1-process run up to all-reduce rounding."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_train_worker import tiny_data
from tiny_models import tiny_unet

from edgediff.core.errors import EdgediffError
from edgediff.training import TrainConfig, Trainer
from edgediff.training.diffusion import diffusion_loss, training_data
from edgediff.training.trainer import batch_indices

HERE = Path(__file__).parent


def _cfg(tmp_path=None, **kw):
    base = dict(
        steps=6,
        batch_size=8,
        lr=1e-3,
        warmup=2,
        ema_decay=0.9,
        seed=3,
        progress=False,
        threads=1,
        checkpoint_every=2,
        checkpoint_dir=str(tmp_path) if tmp_path else None,
    )
    return TrainConfig(**{**base, **kw})


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_batches_cover_each_epoch_once():
    seen = torch.cat([batch_indices(0, k, 32, 8) for k in range(4)])
    assert sorted(seen.tolist()) == list(range(32))
    assert not torch.equal(batch_indices(0, 0, 32, 8), batch_indices(0, 4, 32, 8))  # a new epoch reshuffles


def test_resume_continues_bit_for_bit(tmp_path):
    a = tiny_unet()
    ra = Trainer(a.module, diffusion_loss(a), tiny_data(), _cfg()).run()
    b = tiny_unet()
    Trainer(b.module, diffusion_loss(b), tiny_data(), _cfg(tmp_path)).run(stop_after=3)  # "interrupted"
    assert (tmp_path / "last.pt").exists()
    c = tiny_unet()
    rc = Trainer(c.module, diffusion_loss(c), tiny_data(), _cfg(tmp_path)).run()
    assert rc.resumed_from == 3 and rc.steps == 6 and len(rc.losses) == 3
    assert rc.losses == ra.losses[3:]
    for k, v in _state(a.module).items():
        assert torch.equal(v, c.module.state_dict()[k]), k


def test_training_lowers_the_loss():
    spec = tiny_unet()
    r = Trainer(spec.module, diffusion_loss(spec), tiny_data(), _cfg(steps=40, lr=3e-3, ema_decay=0)).run()
    assert sum(r.losses[-5:]) < sum(r.losses[:5])


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    spec = tiny_unet()
    Trainer(spec.module, diffusion_loss(spec), tiny_data(), _cfg(tmp_path)).run(stop_after=2)
    with pytest.raises(EdgediffError, match="batch_size"):
        Trainer(spec.module, diffusion_loss(spec), tiny_data(), _cfg(tmp_path, batch_size=16)).run()


def test_bad_settings_are_clear_errors():
    spec = tiny_unet()
    with pytest.raises(EdgediffError, match="batch_size 64 exceeds"):
        Trainer(spec.module, diffusion_loss(spec), tiny_data(), _cfg(batch_size=64))
    with pytest.raises(EdgediffError, match="steps must be at least 1"):
        _cfg(steps=0)


def test_training_data_file_is_checked(tmp_path):
    import numpy as np

    spec = tiny_unet()
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(EdgediffError, match="bad.npz: field images has shape"):
        training_data(spec, bad)
    nolab = tmp_path / "nolab.npz"
    np.savez(nolab, images=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(EdgediffError, match="labels"):
        training_data(spec, nolab)
    with pytest.raises(EdgediffError, match="--data"):
        training_data(spec, None)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    worker = str(HERE / "ddp_train_worker.py")
    subprocess.run([sys.executable, worker, str(tmp_path / "single"), "6"], check=True, env=env, timeout=300)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            worker,
            str(tmp_path / "ddp"),
            "6",
        ],
        check=True,
        env=env,
        timeout=600,
    )
    single = torch.load(tmp_path / "single.rank0.pt")
    r0, r1 = torch.load(tmp_path / "ddp.rank0.pt"), torch.load(tmp_path / "ddp.rank1.pt")
    for k in single:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"
    # Compare what the models compute, not every parameter: a key bias has a zero gradient in
    # exact arithmetic (softmax ignores it), so Adam turns rounding noise there into +-lr steps
    # that differ between runs yet change no output.
    x, t, y = tiny_unet().example_inputs(4)
    outs = []
    for state in (single, r0):
        m = tiny_unet().module
        m.load_state_dict(state)
        with torch.no_grad():
            outs.append(m(x, t, y))
    err = (outs[0] - outs[1]).abs().max() / outs[0].abs().max()
    assert err < 1e-4, f"2-process DDP output differs from 1 process by {err:.2e} (relative)"
