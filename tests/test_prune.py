"""Structured pruning: smaller tensors that still run, GroupNorm-valid widths, protected layers,
Diff-Pruning's timestep threshold, the pruned folder round trip, compile of a pruned model, DiT
heads/MLP, and `edgediff prune` with a 2-process fine-tune under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_train_worker import tiny_data
from tiny_models import tiny_unet
from torch import nn

from edgediff.compiler.capture import load_source
from edgediff.core.errors import EdgediffError
from edgediff.core.schedule import make_schedule
from edgediff.core.spec import Conditioning, DiffusersAdapter, ModelSpec
from edgediff.prune.importance import accumulate_taylor_gradients
from edgediff.prune.prune import FinetuneOptions, PruneOptions, _inner, prune, scheduler_config
from edgediff.prune.store import save_pruned

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def tiny_dit() -> ModelSpec:
    from diffusers import DiTTransformer2DModel

    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        m = DiTTransformer2DModel(
            num_attention_heads=4,
            attention_head_dim=8,
            in_channels=2,
            out_channels=4,
            num_layers=2,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=5,
        )
    finally:
        torch.random.set_rng_state(state)
    return ModelSpec(
        module=DiffusersAdapter(m.eval(), "DiTTransformer2DModel", 2).eval(),
        schedule=make_schedule(100),
        sample_shape=(2, 8, 8),
        conditioning=Conditioning("class", num_classes=5, null_label=5),
    )


def _out(spec, batch=3):
    with torch.no_grad():
        return spec.module(*spec.example_inputs(batch))


def test_unet_channels_shrink_and_the_model_still_runs():
    spec = tiny_unet()
    r = prune(spec, ratio=0.4, options=PruneOptions(importance="magnitude"))
    net, orig = _inner(r.model)[0], _inner(spec)[0]
    assert r.record["params_after"] < 0.6 * r.record["params_before"]
    assert r.record["macs_after"] < r.record["macs_before"]
    assert _out(r.model).shape == _out(spec).shape
    assert net.conv_in.out_channels == orig.conv_in.out_channels  # protected by default
    assert net.time_embedding.linear_2.out_features == orig.time_embedding.linear_2.out_features
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert any(m.num_channels < 8 for m in norms)
    assert all(m.num_channels % m.num_groups == 0 for m in norms)
    assert sum(p.numel() for p in orig.parameters()) == r.record["params_before"]  # input left untouched


def test_protect_pattern_keeps_widths_and_unknown_pattern_is_named():
    spec = tiny_unet()
    r = prune(spec, ratio=0.4, options=PruneOptions(importance="magnitude", protect=("down_blocks.1.resnets.0.conv1",)))
    assert r.protected["down_blocks.1.resnets.0.conv1"] == ["down_blocks.1.resnets.0.conv1"]
    assert _inner(r.model)[0].down_blocks[1].resnets[0].conv1.out_channels == 16
    with pytest.raises(EdgediffError, match="'mid_blok.\\*' matches no layer"):
        prune(spec, ratio=0.4, options=PruneOptions(importance="magnitude", protect=("mid_blok.*",)))


def test_global_scope_prunes_unevenly_but_validly():
    spec = tiny_unet()
    r = prune(spec, ratio=0.4, options=PruneOptions(importance="magnitude", scope="global"))
    norms = [m for m in _inner(r.model)[0].modules() if isinstance(m, nn.GroupNorm)]
    assert all(m.num_channels % m.num_groups == 0 for m in norms)
    assert r.record["params_after"] < r.record["params_before"] and r.record["scope"] == "global"
    assert _out(r.model).shape == (3, 1, 8, 8)


def test_layer_ratio_overrides_the_ratio_where_its_pattern_matches():
    spec = tiny_unet()
    r = prune(spec, ratio=0.5, options=PruneOptions(importance="magnitude", layer_ratios=(("down_blocks.1.*", 0.25),)))
    net = _inner(r.model)[0]
    assert net.down_blocks[1].resnets[0].conv1.out_channels == 12  # 16 less 0.25, whole GroupNorm groups
    assert net.down_blocks[0].resnets[0].conv1.out_channels == 4  # 8 less 0.5
    assert all(m.num_channels % m.num_groups == 0 for m in net.modules() if isinstance(m, nn.GroupNorm))
    assert r.record["layer_ratios"] == [["down_blocks.1.*", 0.25]] and _out(r.model).shape == (3, 1, 8, 8)
    with pytest.raises(EdgediffError, match="'nothing.\\*' matches no layer"):
        prune(spec, ratio=0.5, options=PruneOptions(importance="magnitude", layer_ratios=(("nothing.*", 0.25),)))
    with pytest.raises(EdgediffError, match="ratio must lie strictly"):
        PruneOptions(layer_ratios=(("down_blocks.1.*", 1.0),))


@pytest.mark.parametrize("ratio", [0, 1, -0.2, 1.5])
def test_bad_ratio_is_a_clear_error(ratio):
    with pytest.raises(EdgediffError, match="ratio must lie strictly between 0 and 1"):
        prune(tiny_unet(), ratio=ratio, options=PruneOptions(importance="magnitude"))


def test_taylor_needs_data_and_stops_at_the_threshold():
    spec = tiny_unet()
    with pytest.raises(EdgediffError, match="needs training images"):
        prune(spec, ratio=0.3)
    rec = accumulate_taylor_gradients(spec, tiny_data(), threshold=0.9, batch=8, stride=7)
    running = np.maximum.accumulate(rec.losses)
    assert all(loss >= 0.9 * m for loss, m in zip(rec.losses, running))  # every summed step passed the test
    assert rec.stopped_at is None or rec.stopped_at == rec.timesteps[-1] + 7
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in spec.module.parameters())
    r = prune(spec, ratio=0.3, data=tiny_data(), options=PruneOptions(taylor_batch=8, taylor_stride=20))
    assert r.record["taylor"]["timesteps_used"] >= 1 and r.record["params_after"] < r.record["params_before"]


def test_dit_loses_heads_and_mlp_neurons_only():
    spec = tiny_dit()
    r = prune(spec, ratio=0.5, options=PruneOptions(importance="magnitude"))
    net = _inner(r.model)[0]
    blk = net.transformer_blocks[0]
    assert blk.attn1.heads == 2 and blk.attn1.to_q.out_features == 16  # whole heads of width 8
    assert blk.ff.net[0].proj.out_features == 64  # from 128
    assert net.proj_out_2.out_features == 2 * 2 * 4 and net.pos_embed.proj.out_channels == 32
    assert _out(r.model).shape == (3, 2, 8, 8)


@pytest.mark.parametrize("make", [tiny_unet, tiny_dit])
def test_pruned_folder_round_trip(tmp_path, make):
    spec = make()
    r = prune(spec, ratio=0.4, options=PruneOptions(importance="magnitude"))
    save_pruned(_inner(r.model)[0], _inner(spec)[0], scheduler_config(spec), tmp_path / "p", record=r.record)
    shapes = json.loads((tmp_path / "p" / "pruned_shapes.json").read_text())
    assert shapes["modules"] and shapes["record"]["ratio"] == 0.4
    loaded = load_source(str(tmp_path / "p"))
    assert sum(p.numel() for p in loaded.module.parameters()) == r.record["params_after"]
    assert torch.allclose(_out(loaded), _out(r.model), atol=1e-6)
    assert np.allclose(loaded.schedule.alphas_cumprod, spec.schedule.alphas_cumprod, rtol=1e-6)
    # the pruned folder (UNet or DiT) compiles to a verified bundle with its smaller tensors
    from edgediff.compiler.pipeline import compile_model
    from edgediff.compiler.recipe import Recipe

    b = compile_model(str(tmp_path / "p"), tmp_path / "b", recipe=Recipe(sampler="ddim", steps=2))
    assert b.report["verify"]["max_rel_error"] <= 1e-4 and b.manifest["pruning"]["ratio"] == 0.4
    assert b.report["model"]["params"] == r.record["params_after"]
    first = next(iter(shapes["modules"]))
    shapes["modules"][first]["type"] = "Embedding"  # a wrong layer type is named, not loaded
    (tmp_path / "p" / "pruned_shapes.json").write_text(json.dumps(shapes))
    with pytest.raises(EdgediffError, match="pruned_shapes.json: module"):
        load_source(str(tmp_path / "p"))


def _cli(*args, nproc_env=None, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    return subprocess.run(
        [sys.executable, "-m", "edgediff.cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_cli_errors_name_the_problem(tmp_path):
    r = _cli("prune", "tiny_models:tiny_unet", "--ratio", "1.2", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "ratio must lie strictly between 0 and 1" in r.stderr
    r = _cli(
        "prune",
        "tiny_models:tiny_unet",
        "--ratio",
        "0.3",
        "--importance",
        "magnitude",
        "--protect",
        "nonexistent*",
        "--finetune-steps",
        "0",
        "-o",
        str(tmp_path / "x"),
    )
    assert r.returncode == 2 and "'nonexistent*' matches no layer" in r.stderr
    r = _cli(
        "prune",
        "tiny_models:tiny_unet",
        "--ratio",
        "0.3",
        "--layer-ratio",
        "down_blocks.1.*",
        "-o",
        str(tmp_path / "x"),
    )
    assert r.returncode == 2 and "expected PATTERN=RATIO" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_prune_then_compile_verifies(tmp_path):
    from edgediff.compiler.pipeline import compile_model
    from edgediff.compiler.recipe import Recipe

    r = _cli(
        "prune",
        "tiny_models:tiny_unet",
        "--ratio",
        "0.4",
        "--importance",
        "magnitude",
        "--finetune-steps",
        "0",
        "-o",
        str(tmp_path / "p"),
    )
    assert r.returncode == 0, r.stderr
    assert "warning: no recovery fine-tune" in r.stderr  # --finetune-steps 0 says what it costs
    assert "protect conv_in" in r.stdout and "-> conv_in" in r.stdout
    b = compile_model(str(tmp_path / "p"), tmp_path / "bundle", target="host-cpu", recipe=Recipe(steps=4))
    v = b.report["verify"]
    assert v["max_rel_error"] < v["bound"]
    assert b.report["model"]["params"] < sum(p.numel() for p in tiny_unet().module.parameters())


@pytest.mark.slow
def test_prune_finetune_two_processes(tmp_path):
    d = tiny_data()
    np.savez(tmp_path / "data.npz", images=d["x0"].numpy(), labels=d["label"].numpy())
    out = tmp_path / "p"
    r = _cli(
        "prune",
        "tiny_models:tiny_unet",
        "--ratio",
        "0.3",
        "--importance",
        "taylor",
        "--taylor-stride",
        "25",
        "--finetune-steps",
        "4",
        "--batch-size",
        "8",
        "--data",
        str(tmp_path / "data.npz"),
        "--nproc",
        "2",
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "pruned_shapes.json").read_text())["record"]
    assert rec["finetune"]["world_size"] == 2 and rec["finetune"]["steps"] == 4
    assert rec["taylor"]["timesteps_used"] >= 1
    assert not (tmp_path / "p.checkpoints").exists() and not (tmp_path / ".p.tmp").exists()
    assert r.stdout.count("wrote ") == 1  # only rank 0 reports and writes
    spec = load_source(str(out))
    assert torch.isfinite(_out(spec)).all()


def test_leftover_checkpoints_resume_or_are_refused(tmp_path):
    import shutil

    from edgediff.compiler.jobs import prune_to_dir

    opts, none = PruneOptions(importance="magnitude"), FinetuneOptions(steps=0)
    prune_to_dir("tiny_models:tiny_unet", tmp_path / "a", ratio=0.4, options=opts, finetune=none, log=lambda *_: None)
    shutil.copytree(tmp_path / "a", tmp_path / "b.checkpoints" / "pruned-init")  # as an interrupted run leaves it
    with pytest.raises(EdgediffError, match="ratio=0.4"):
        prune_to_dir(
            "tiny_models:tiny_unet", tmp_path / "b", ratio=0.3, options=opts, finetune=none, log=lambda *_: None
        )
    said = []
    prune_to_dir("tiny_models:tiny_unet", tmp_path / "b", ratio=0.4, options=opts, finetune=none, log=said.append)
    assert any("resuming" in s for s in said) and not (tmp_path / "b.checkpoints").exists()
    assert torch.equal(_out(load_source(str(tmp_path / "a"))), _out(load_source(str(tmp_path / "b"))))


def test_builtin_digits_pruned_loads_smaller():
    spec = load_source("builtin:digits-pruned")
    rec = json.loads(
        (HERE.parent / "src" / "edgediff" / "zoo" / "weights" / "digits_pruned" / "pruned_shapes.json").read_text()
    )["record"]
    assert sum(p.numel() for p in spec.module.parameters()) == rec["params_after"] < rec["params_before"]
    assert spec.conditioning.null_label == 10 and torch.isfinite(_out(spec)).all()
