"""`edgediff eval BUNDLE --prompts FILE` on text-to-image bundles (tools/evaluate.py evaluate_text).

Fast: the digits-sd judge (digit named by a prompt, the classifier's input from decoded RGB images,
class accuracy over labeled prompts only), text-only flags refused on a class-label bundle.
Slow only through the shared session bundle (conftest.sd1_text_bundle, one compile of ~45 s on
2 shared cores): the bundle against diffusers' pipeline, the --json output, the fallback reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgediff.cli.main import main
from edgediff.runtimes.images import to_unit
from edgediff.tools.evaluate import DigitsJudge, evaluate_text
from edgediff.zoo.digits_sd import classifier_input, digit_named

PROMPTS = ["a handwritten 7", "the digit one in thin strokes", "seven", "thick strokes"]


def test_digit_named_by_a_prompt():
    assert digit_named("a handwritten 7") == 7
    assert digit_named("The digit SEVEN in thick strokes") == 7
    assert digit_named("number 0 written by hand") == 0
    assert digit_named("a drawing of a nine") == 9
    assert digit_named("a 3 or a five") is None  # two digits: no label
    assert digit_named("thick strokes") is None
    assert digit_named("someone") is None  # "one" inside a word is not a digit
    assert digit_named("17") is None


def test_judge_scores_real_digits_as_decoded_rgb_images():
    """Real held-out digits, enlarged to 32x32 RGB in [0, 1] as digits-sd's decoder writes them, go
    through classifier_input to the committed classifier: high accuracy; unlabeled prompts do not count."""
    import torch
    import torch.nn.functional as F

    from edgediff.training.data import digits_splits

    x, y = digits_splits()["heldout"]
    x, y = x[:200], np.asarray(y[:200])
    big = F.interpolate(torch.from_numpy(x), size=(32, 32), mode="bilinear", align_corners=False)
    rgb = ((big.repeat(1, 3, 1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    inp = classifier_input(rgb)
    assert inp.shape == (200, 1, 16, 16) and inp.dtype == np.float32
    assert np.abs(inp - x).max() < 0.5  # down-up-sampled, not another image
    judge = DigitsJudge()
    s = judge.score(inp, y)
    assert s["class_accuracy"] >= 0.9 and s["fd_digits"] < 5
    assert judge.score(inp, (y + 1) % 10)["class_accuracy"] <= 0.1
    wrong_odd = np.where(np.arange(200) % 2 == 0, y, -1)  # the odd rows unlabeled: they do not count
    assert judge.score(inp, wrong_odd)["class_accuracy"] == pytest.approx(s["class_accuracy"], abs=0.06)
    assert judge.score(inp, np.full(200, -1))["class_accuracy"] is None
    noise = np.random.default_rng(0).uniform(-1, 1, inp.shape).astype(np.float32)
    assert judge.score(noise, y)["fd_digits"] > 5 * s["fd_digits"]


def test_prompt_flags_on_a_class_bundle_refused_by_name(tiny_bundle, tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("seven\n")
    out = tmp_path / "e.json"
    for extra in (["--prompts", str(f)], ["--negative-prompt", "x"], ["--guidance", "2"]):
        assert main(["eval", str(tiny_bundle.root), *extra, "--json", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{extra[0]}: " in err and "not a text-to-image bundle" in err
    assert not out.exists()


# ---- the shared tiny SD 1.x bundle (slow through its session compile) ---------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "content, expect",
    [
        (b"", "p.txt: no prompts (one a line)"),
        (b"seven\n\xff\n", "p.txt: not UTF-8 text: invalid byte at offset 6"),
        (None, "p.txt: cannot read the prompts file"),
    ],
)
def test_text_bundle_bad_prompt_file(sd1_text_bundle, tmp_path, capsys, content, expect):
    f = tmp_path / "p.txt"
    if content is not None:
        f.write_bytes(content)
    out = tmp_path / "e.json"
    assert main(["eval", str(sd1_text_bundle.root), "--prompts", str(f), "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.slow
def test_text_bundle_needs_prompts_and_takes_no_n(sd1_text_bundle, tmp_path, capsys):
    assert main(["eval", str(sd1_text_bundle.root)]) == 2
    assert "give --prompts FILE" in capsys.readouterr().err
    f = tmp_path / "p.txt"
    f.write_text("seven\n")
    assert main(["eval", str(sd1_text_bundle.root), "--prompts", str(f), "-n", "3"]) == 2
    assert "-n 3: a text-to-image bundle makes one image per line" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_json_against_diffusers_pipeline(sd1_text_bundle, tmp_path, capsys):
    f = tmp_path / "p.txt"
    f.write_text("\n".join(PROMPTS) + "\n")
    out, grid = tmp_path / "e.json", tmp_path / "g.png"
    args = ["eval", str(sd1_text_bundle.root), "--prompts", str(f), "--negative-prompt", "thick"]
    assert main(args + ["--json", str(out), "--grid", str(grid)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["num_samples"] == 4 and r["guidance"] == 7.5 and r["negative_prompt"] == "thick"
    assert r["reference"]["runtime"] == "diffusers StableDiffusionPipeline (PyTorch fp32)"
    assert r["max_abs_error"] <= 1e-3 and r["psnr_db"] > 60 and r["ssim"] > 0.999
    assert r["fd_digits"] is None and r["class_accuracy"] is None  # not builtin:digits-sd
    assert "max abs error [0, 1]" in printed and grid.is_file()
    assert main(["eval", str(sd1_text_bundle.root), "--prompts", str(f), "--json", "-"]) == 0
    r2 = json.loads(capsys.readouterr().out.split("\nddim")[0])
    assert r2["negative_prompt"] == "" and r2["psnr_db"] != r["psnr_db"]  # the negative prompt reached both


@pytest.mark.slow
def test_eval_images_are_the_bundles_and_differ_from_other_noise(sd1_text_bundle):
    """The comparison can fail: another seed's reference is far from the bundle's images."""
    import edgediff

    r, images, ref = evaluate_text(sd1_text_bundle, PROMPTS[:2], seed=4)
    np.testing.assert_array_equal(images, edgediff.generate(sd1_text_bundle, prompt=PROMPTS[:2], seed=4))
    _, _, other = evaluate_text(sd1_text_bundle, PROMPTS[:2], seed=5)
    assert np.abs(to_unit(other) - to_unit(images)).max() > 0.05 > r["max_abs_error"]


@pytest.mark.slow
def test_guidance_below_one_uses_the_pytorch_loop(sd1_text_bundle):
    """diffusers applies no guidance at 0 < g < 1; the reference is then the runtime's Python loop
    over the source's PyTorch modules, and the record says so."""
    r, _, _ = evaluate_text(sd1_text_bundle, PROMPTS[:2], guidance=0.5)
    assert r["guidance"] == 0.5
    assert r["reference"]["runtime"].startswith("edgediff Python loop") and "<= 1" in r["reference"]["why"]
    assert r["max_abs_error"] <= 1e-3
