"""edgediff.zoo: data splits, builtin loading, the committed weights, MAC counting, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from edgediff.core.errors import EdgediffError
from edgediff.training import data
from edgediff.zoo import builtin, models, train
from edgediff.zoo.macs import count_macs, unet_macs

# --- data ------------------------------------------------------------------------------


def test_splits_are_disjoint_cover_everything_and_are_stratified():
    idx = data.split_indices(seed=0)
    all_idx = np.concatenate(list(idx.values()))
    assert len(np.unique(all_idx)) == len(all_idx) == 1797
    y = data.digits_images(8)[1]
    total = np.bincount(y, minlength=10)
    for name, frac in [("diffusion", 0.55), ("classifier", 0.25), ("heldout", 0.20)]:
        counts = np.bincount(y[idx[name]], minlength=10)
        assert abs(len(idx[name]) / 1797 - frac) < 0.01, name
        # every class within 2 images of its share
        assert np.all(np.abs(counts - total * len(idx[name]) / 1797) <= 2), (name, counts)


def test_splits_images_and_labels():
    s = data.digits_splits(size=16, seed=0)
    x, y = s["heldout"]
    assert x.dtype == np.float32 and x.shape == (len(y), 1, 16, 16) and y.dtype == np.int64
    assert x.min() == -1.0 and x.max() == 1.0
    # the split is seeded: same seed same split, another seed another split
    assert np.array_equal(data.split_indices(0)["heldout"], data.split_indices(0)["heldout"])
    assert not np.array_equal(data.split_indices(0)["heldout"], data.split_indices(1)["heldout"])
    # labels follow the images: mean image of each class differs from the others
    means = np.stack([x[y == c].mean(0).ravel() for c in range(10)])
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert d[~np.eye(10, dtype=bool)].min() > 1.0


# --- builtin registry ------------------------------------------------------------------


def test_load_builtin_digits():
    b = builtin.load_builtin("digits")
    assert b.trained and not b.unet.training
    assert b.sample_shape == (1, 16, 16) and b.num_classes == 10
    record = json.loads((builtin.WEIGHTS_DIR / "digits_unet.json").read_text())
    assert (
        b.weights_sha256
        == record["weights_sha256"]
        == builtin.sha256_file(builtin.WEIGHTS_DIR / "digits_unet.safetensors")
    )
    assert b.scheduler_config["num_train_timesteps"] == 1000
    assert models.param_count(b.unet) == 1_114_209


def test_unknown_builtin_names_the_valid_ones():
    with pytest.raises(EdgediffError, match=r"builtin:nope.*cifar-arch, digits"):
        builtin.load_builtin("nope")


def test_missing_weights_name_file_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(EdgediffError, match=r"digits_unet\.safetensors.*edgediff zoo train digits"):
        builtin.load_builtin("digits")
    with pytest.raises(EdgediffError, match=r"digits_classifier\.safetensors.*edgediff zoo train classifier"):
        builtin.load_classifier()


def test_mismatched_weights_are_refused(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    save_file({"head.weight": torch.zeros(3, 3)}, str(tmp_path / "digits_classifier.safetensors"))
    monkeypatch.setattr(builtin, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(EdgediffError, match="does not match the model"):
        builtin.load_classifier()


# --- committed weights -----------------------------------------------------------------


def test_classifier_heldout_accuracy():
    x, y = data.digits_splits()["heldout"]
    clf = builtin.load_classifier()
    assert not clf.training
    assert train.accuracy(clf, x, y) >= 0.95
    assert clf.features(torch.from_numpy(x[:4])).shape == (4, models.DigitsClassifier.FEATURE_DIM)


def test_trained_unet_is_not_random_init():
    b = builtin.load_builtin("digits")
    rand = models.build_digits_unet().eval()
    g = torch.Generator().manual_seed(0)
    x0 = torch.from_numpy(data.digits_splits()["heldout"][0][:8])
    eps = torch.randn(x0.shape, generator=g)
    t = torch.full((8,), 500)
    a = train._alphas_cumprod(models.DIGITS_SCHEDULER_CONFIG)[500]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    y = torch.arange(8)
    with torch.no_grad():
        trained_err = torch.mean((b.unet(xt, t, class_labels=y).sample - eps) ** 2).item()
        random_err = torch.mean((rand(xt, t, class_labels=y).sample - eps) ** 2).item()
    # the trained model predicts the noise; a random one does not
    assert trained_err < 0.2 < random_err


# --- architectures and MACs ------------------------------------------------------------


def test_mac_counter_on_known_layers():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    c = count_macs(net, torch.zeros(2, 3, 4, 4))
    assert c.conv == 2 * 8 * 4 * 4 * 3 * 9
    assert c.linear == 2 * 5 * 128
    assert c.attention == 0 and c.total == c.conv + c.linear

    from diffusers.models.attention_processor import Attention

    attn = Attention(16, heads=2, dim_head=8)
    c = count_macs(attn, torch.zeros(3, 10, 16))
    assert c.attention == 2 * 3 * 10 * 10 * 16  # QK^T and AV
    assert c.linear == 4 * 3 * 10 * 16 * 16  # q, k, v, out projections


def test_cifar_arch_params_and_macs():
    unet = models.build_cifar_arch(seed=0)
    assert abs(models.param_count(unet) / 1e6 - 35.7) < 0.1
    c = unet_macs(unet, batch=1)
    # 6.1 G as published (conv + linear); attention matmuls add 0.17 G
    assert abs(c.layers / 1e9 - 6.1) < 0.1
    assert abs(c.total / 1e9 - 6.22) < 0.01
    b = builtin.load_builtin("cifar-arch")
    assert not b.trained and b.num_classes is None and b.sample_shape == (3, 32, 32)
    assert torch.equal(b.unet.conv_in.weight, unet.conv_in.weight)  # seeded, not global RNG
    assert not torch.equal(models.build_cifar_arch(seed=1).conv_in.weight, unet.conv_in.weight)


def test_init_refuses_unknown_parameters():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    with pytest.raises(TypeError, match="scale"):
        models.init_(Odd(), torch.Generator().manual_seed(0))


def test_init_does_not_touch_global_rng():
    state = torch.random.get_rng_state()
    models.build_digits_unet(torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.random.get_rng_state())


# --- training --------------------------------------------------------------------------


def test_tiny_unet_training_is_deterministic_and_learns(tmp_path):
    kw = dict(steps=40, batch_size=16, seed=7, progress=False, lr=2e-3, warmup=5)
    r1 = train.train_digits_unet(out_path=tmp_path / "a.safetensors", **kw)
    r2 = train.train_digits_unet(out_path=tmp_path / "b.safetensors", **kw)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the files themselves are identical too (metadata order included)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert r1.losses == r2.losses
    assert np.mean(r1.losses[-10:]) < 0.5 * np.mean(r1.losses[:5])
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["training"]["seed"] == 7 and record["weights_sha256"] == builtin.sha256_file(
        tmp_path / "a.safetensors"
    )


def test_tiny_classifier_training_is_deterministic_and_learns():
    kw = dict(steps=30, batch_size=32, seed=3, out_path=None, progress=False, warmup=3)
    r1 = train.train_digits_classifier(**kw)
    r2 = train.train_digits_classifier(**kw)
    assert r1.losses == r2.losses and r1.heldout_accuracy == r2.heldout_accuracy
    assert np.mean(r1.losses[-5:]) < np.mean(r1.losses[:5])
    assert r1.heldout_accuracy > 0.3  # well above chance after 30 steps
