"""Step distillation on the tiny UNet: the targets are right, a student folder compiles into a
bundle whose runtimes run it (one forward pass per step when guidance is distilled), the CLI
runs under torchrun with 2 processes, and bad arguments are one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_unet

from edgediff.cli.main import main
from edgediff.compiler.capture import load_source
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.core.spec import torch_denoiser
from edgediff.distill.distill import (
    DistillOptions,
    GuidanceEmbedding,
    GuidedStudent,
    _ddim,
    bind_guidance,
    distill,
    save_student,
)
from edgediff.runtimes.bundle import load_bundle
from edgediff.runtimes.runner import SamplingSetup, bundle_denoiser, default_labels, generate

HERE = Path(__file__).parent
FAST = dict(train_steps=3, batch_size=8, lr=1e-3, warmup=1, ema_decay=0.9, threads=1, progress=False)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    g = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path, images=g.uniform(-1, 1, (32, 1, 8, 8)).astype(np.float32), labels=g.integers(0, 4, 32).astype(np.int64)
    )
    return path


@pytest.fixture(scope="module")
def progressive_student(tiny_npz):
    return distill(
        tiny_unet(),
        method="progressive",
        steps=2,
        guidance=2.0,
        guidance_distill=True,
        data=tiny_npz,
        options=DistillOptions(teacher_steps=8, **FAST),
    )


def test_x_target_reproduces_two_teacher_steps():
    """The x-space target: one DDIM step from z_t with the eps it implies lands on z_s exactly."""
    g = torch.Generator().manual_seed(0)
    z_t, x = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    a_t, a_s = torch.tensor(0.3).view(1, 1, 1, 1), torch.tensor(0.7).view(1, 1, 1, 1)
    z_s = a_s.sqrt() * x + (1 - a_s).sqrt() * torch.randn(4, 1, 8, 8, generator=g)  # any point at s
    ratio = ((1 - a_s) / (1 - a_t)).sqrt()
    x_target = (z_s - ratio * z_t) / (a_s.sqrt() - ratio * a_t.sqrt())
    eps = (z_t - a_t.sqrt() * x_target) / (1 - a_t).sqrt()
    assert torch.allclose(_ddim(z_t, eps, a_t, a_s)[0], z_s, atol=1e-5)


def test_fresh_guided_student_equals_teacher_and_folds_exactly():
    spec = tiny_unet()
    unet = spec.module.model
    import copy

    student = GuidedStudent(copy.deepcopy(unet), GuidanceEmbedding(unet.time_embedding.linear_2.out_features))
    x, t, y = spec.example_inputs(3)
    with torch.no_grad():
        assert torch.allclose(student(x, t, y, torch.tensor([2.5])), spec.module(x, t, y), atol=1e-6)
        torch.nn.init.normal_(student.w_embedding.linear_2.weight, std=0.1)  # a trained embedding
        a, b = student(x, t, y, torch.tensor([2.5])), student(x, t, y, torch.tensor([1.0]))
        assert (a - b).abs().max() > 1e-3  # w changes the output
        from edgediff.distill.distill import fold_guidance

        folded = fold_guidance(student, 2.5)(x, t, class_labels=y).sample
    assert torch.allclose(folded, a, atol=1e-5)


def test_progressive_student_compiles_to_one_pass_per_step(progressive_student, tmp_path, capsys):
    st = progressive_student
    assert [s["student_steps"] for s in st.record["stages"]] == [4, 2]
    assert all(np.isfinite(s["final_loss"]) for s in st.record["stages"])
    folder = save_student(st, tmp_path / "student")
    assert {p.name for p in folder.iterdir()} >= {
        "unet",
        "scheduler",
        "edgediff_student.json",
        "guidance_embedding.safetensors",
    }
    spec = load_source(str(folder))
    assert spec.student["sampler"] == "ddim" and spec.student["guidance"]["mode"] == "distilled"
    x, t, y = spec.example_inputs(2)
    with torch.no_grad():  # the folder reloads to the same function as the trained module
        assert torch.allclose(spec.module(x, t, y), st.spec().module(x, t, y), atol=1e-5)

    # `edgediff compile` with no sampler options takes the student's own
    assert main(["compile", str(folder), "--json", "-o", str(tmp_path / "bundle")]) == 0
    rec = json.loads(capsys.readouterr().out)["manifest"]["recipe"]
    assert (rec["sampler"], rec["steps"], rec["spacing"], rec["guidance"]) == ("ddim", 2, "trailing", 2.0)
    b = load_bundle(tmp_path / "bundle")
    sch = b.scheduler
    assert sch["guidance_scale"] == 1.0 and sch["distilled"]["guidance"] == 2.0
    assert sch["distilled"]["guidance_mode"] == "distilled" and sch["plan"]["timesteps"] == [99, 49]
    assert b.report["model"]["forward_passes_per_step"] == 1
    assert [i["name"] for i in b.manifest["model"]["inputs"]] == ["sample", "timestep", "class_labels"]

    setup = SamplingSetup.from_bundle(b)
    labels = default_labels(setup, 4)
    calls = []
    ref_denoise = torch_denoiser(bind_guidance(spec, 2.0))
    py = generate(
        ref_denoise, setup, n=4, seed=0, labels=labels, loop="python", on_call=lambda x, t, c, e: calls.append(len(x))
    )
    assert calls == [4, 4]  # one pass of the batch per step: no unconditional half
    c_calls = []
    c_loop = generate(
        bundle_denoiser(b),
        setup,
        n=4,
        seed=0,
        labels=labels,
        loop="c",
        on_call=lambda x, t, c, e: c_calls.append(len(x)),
    )
    assert c_calls == [4, 4]  # the C loop too
    assert np.abs(c_loop - py).max() < 1e-4


def test_consistency_student_runs_with_lcm(tiny_npz, tmp_path):
    """The LCM student's plan comes from its record; (compile + C loop are covered by the progressive
    test above and the LCM solver's C/Python conformance in test_c_runtime.py.)"""
    from edgediff.compiler.pipeline import _bind_student
    from edgediff.runtimes.samplers import get_solver

    st = distill(
        tiny_unet(),
        method="consistency",
        steps=2,
        guidance=2.0,
        guidance_distill=True,
        data=tiny_npz,
        options=DistillOptions(**FAST),
    )
    assert st.record["sampler"] == "lcm" and st.record["spacing"] == "lcm"
    spec = load_source(str(save_student(st, tmp_path / "lcm")))
    recipe = Recipe(
        sampler=spec.student["sampler"], steps=spec.student["steps"], spacing=spec.student["spacing"], guidance=2.0
    )
    bound, run, distilled = _bind_student(spec, recipe)
    assert run.guidance == 1.0 and distilled["method"] == "consistency" and distilled["guidance"] == 2.0
    plan = get_solver("lcm").plan(spec.schedule, 2, spacing="lcm")
    setup = SamplingSetup(
        plan=plan, guidance=run.guidance, conditioning=spec.conditioning.to_dict(), sample_shape=spec.sample_shape
    )
    labels = default_labels(setup, 3)
    calls = []
    images = generate(
        torch_denoiser(bound),
        setup,
        n=3,
        seed=1,
        labels=labels,
        loop="c",
        on_call=lambda x, t, c, e: calls.append(len(x)),
    )
    assert calls == [3, 3] and np.isfinite(images).all()
    with torch.no_grad():  # folding w = 2 equals running the w-input student at w = 2
        x, t, y = spec.example_inputs(2)
        assert torch.allclose(bound.module(x, t, y), st.module(x, t, y, torch.tensor([2.0])), atol=1e-5)


def test_cfg_mode_student_keeps_two_passes(tiny_npz, tmp_path):
    from edgediff.compiler.pipeline import _bind_student

    st = distill(
        tiny_unet(),
        method="progressive",
        steps=2,
        guidance=2.0,
        data=tiny_npz,
        options=DistillOptions(teacher_steps=4, **FAST),
    )
    assert st.record["guidance"]["mode"] == "cfg"
    spec = load_source(str(save_student(st, tmp_path / "s")))
    model, run, distilled = _bind_student(spec, Recipe(sampler="ddim", steps=2, spacing="trailing", guidance=2.0))
    assert run.guidance == 2.0 and distilled == {
        "method": "progressive",
        "steps": 2,
        "guidance_mode": "cfg",
        "guidance": None,
    }
    assert model is spec  # nothing folded: the runtime guides with two passes


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(method="annealing"), "unknown method"),
        (dict(method="consistency", steps=60), "1..50 steps"),
        (dict(method="progressive", steps=4, options=DistillOptions(teacher_steps=12)), "power of two"),
        (dict(method="progressive", steps=0), "positive integer"),
        (dict(guidance=0.5), "guidance must be"),
    ],
)
def test_bad_arguments(kw, match, tiny_npz):
    with pytest.raises(EdgediffError, match=match):
        distill(tiny_unet(), data=tiny_npz, **kw)


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [
        (["--method", "progressive", "-o", str(tmp_path / "file")], "is a file"),
        (["--method", "progressive", "--guidance-range", "1,4", "-o", str(tmp_path / "o")], "--guidance-distill"),
        (["--method", "progressive", "--data", str(tmp_path / "none.npz"), "-o", str(tmp_path / "o")], "no such file"),
    ]
    for args, match in cases:
        assert main(["distill", "tiny_models:tiny_unet", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_distill_two_processes(tiny_npz, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    exe = Path(sys.executable).parent / "edgediff"
    out = tmp_path / "student"
    r = subprocess.run(
        [
            str(exe),
            "distill",
            "tiny_models:tiny_unet",
            "--method",
            "progressive",
            "--steps",
            "2",
            "--teacher-steps",
            "4",
            "--guidance-distill",
            "--guidance",
            "2",
            "--train-steps",
            "2",
            "--batch-size",
            "8",
            "--data",
            str(tiny_npz),
            "--nproc",
            "2",
            "--threads",
            "1",
            "--quiet",
            "-o",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 process(es)" in r.stdout
    record = json.loads((out / "edgediff_student.json").read_text())
    assert record["world_size"] == 2 and record["steps"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    spec = load_source(str(out))
    x, t, y = spec.example_inputs(2)
    with torch.no_grad():
        assert torch.isfinite(spec.module(x, t, y)).all()


def test_a_student_distils_further(progressive_student, tiny_npz, tmp_path):
    """A guidance-distilled student as the teacher: its w-input is used directly (no CFG pass)."""
    spec = load_source(str(save_student(progressive_student, tmp_path / "s2")))
    st = distill(
        spec,
        method="progressive",
        steps=1,
        guidance=2.0,
        guidance_distill=True,
        data=tiny_npz,
        options=DistillOptions(teacher_steps=2, **FAST),
    )
    assert st.record["steps"] == 1 and np.isfinite(st.record["stages"][0]["final_loss"])
    x, t, y = spec.example_inputs(2)
    with torch.no_grad():
        assert torch.isfinite(st.spec().module(x, t, y)).all()


def test_rerun_with_checkpoints_resumes_every_stage(tiny_npz, tmp_path):
    opts = DistillOptions(teacher_steps=4, checkpoint_dir=str(tmp_path / "ckpt"), **FAST)
    a = distill(
        tiny_unet(), method="progressive", steps=1, guidance=2.0, guidance_distill=True, data=tiny_npz, options=opts
    )
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["stage-0-2", "stage-1-1"]
    b = distill(
        tiny_unet(), method="progressive", steps=1, guidance=2.0, guidance_distill=True, data=tiny_npz, options=opts
    )
    assert [s["resumed_from"] for s in b.record["stages"]] == [FAST["train_steps"]] * 2
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k]), k
