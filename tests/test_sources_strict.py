"""A diffusers folder must hold every tensor its config needs (and, unless allowed, no others)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

from edgediff.compiler.capture import load_source
from edgediff.core.errors import EdgediffError

SCHED = '{"_class_name": "DDPMScheduler", "num_train_timesteps": 100, "beta_schedule": "linear"}'


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
    )
    unet.save_pretrained(tmp_path / "m", safe_serialization=True)
    (tmp_path / "m" / "scheduler_config.json").write_text(SCHED)
    return tmp_path / "m"


def _edit(folder, fn):
    path = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))
    return path


def test_complete_folder_loads(folder):
    spec = load_source(str(folder))
    assert spec.sample_shape == (1, 8, 8)


@pytest.mark.parametrize("name", ["conv_out.weight", "down_blocks.0.resnets.0.conv1.bias"])
def test_missing_tensor_is_refused_naming_file_and_tensor(folder, name):
    path = _edit(folder, lambda t: t.pop(name))
    with pytest.raises(EdgediffError) as e:
        load_source(str(folder))
    msg = str(e.value)
    assert msg.startswith(f"{path}: 1 tensor(s)") and name in msg and "missing" in msg
    assert "\n" not in msg


def test_many_missing_tensors_are_listed_briefly(folder):
    _edit(folder, lambda t: [t.pop(k) for k in [k for k in t if k.startswith("up_blocks.")]])
    msg = str(pytest.raises(EdgediffError, load_source, str(folder)).value)
    assert " more;" in msg and len(msg) < 400


def test_extra_tensor_is_refused_unless_allowed(folder):
    _edit(folder, lambda t: t.update({"extra.weight": torch.zeros(3)}))
    with pytest.raises(EdgediffError, match=r"1 tensor\(s\) in the weights are not part of .*extra\.weight"):
        load_source(str(folder))
    spec = load_source(str(folder), allow_extra_tensors=True)
    assert spec.sample_shape == (1, 8, 8)


def test_non_finite_weights_are_refused_naming_the_tensor(folder):
    _edit(folder, lambda t: t["conv_out.weight"].view(-1)[:2].fill_(float("nan")))
    with pytest.raises(EdgediffError, match=r"weight 'model\.conv_out\.weight' has 2 non-finite value") as e:
        load_source(str(folder))
    assert "spacing" not in str(e.value)


def test_image_count_is_bounded_like_the_c_runner():
    from edgediff.runtimes.runner import MAX_IMAGES, generate

    for n in (0, -1, MAX_IMAGES + 1, 10**12, 2.5):
        with pytest.raises(EdgediffError, match=rf"integer in 1\.\.{MAX_IMAGES}"):
            generate(None, None, n=n, seed=0)
