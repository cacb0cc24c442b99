"""Builtin models: `builtin:NAME` sources, weights shipped inside the package.

load_builtin("digits")     -> BuiltinModel (trained UNet2DModel, weights/digits_unet.safetensors)
load_builtin("cifar-arch") -> BuiltinModel (DDPM CIFAR-10 architecture, seeded random weights)
load_builtin("digits-pruned") -> BuiltinModel (digits pruned + fine-tuned, weights/digits_pruned/,
                              a pruned folder of src/edgediff/prune/store.py written by `edgediff prune`)
load_classifier()          -> DigitsClassifier (weights/digits_classifier.safetensors)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from edgediff.core.errors import EdgediffError
from edgediff.distill.distill import STUDENT_FILE
from edgediff.prune.store import load_pruned
from edgediff.zoo.models import (
    CIFAR_SCHEDULER_CONFIG,
    DIGITS_SCHEDULER_CONFIG,
    NUM_DIGIT_CLASSES,
    DigitsClassifier,
    build_cifar_arch,
    build_classifier,
    build_digits_unet,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    unet: nn.Module  # eval mode; eps = unet(x, t, class_labels=y).sample
    scheduler_config: dict  # diffusers scheduler_config.json form
    sample_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int | None  # real classes; the null (unconditional) label is num_classes
    weights_sha256: str | None  # sha256 of the weight file; None for seeded random weights
    description: str
    trained: bool
    pruning: dict | None = None  # pruned_shapes.json "record" of a pruned builtin


def _digits() -> BuiltinModel:
    path = WEIGHTS_DIR / "digits_unet.safetensors"
    unet = build_digits_unet()
    _load_into(unet, path, "edgediff zoo train digits")
    return BuiltinModel(
        name="digits",
        unet=unet.eval(),
        scheduler_config=dict(DIGITS_SCHEDULER_CONFIG),
        sample_shape=(1, 16, 16),
        num_classes=NUM_DIGIT_CLASSES,
        weights_sha256=sha256_file(path),
        description="class-conditional UNet2DModel (1.11 M params) trained on scikit-learn digits, "
        "16x16 grayscale in [-1, 1], labels 0-9, null label 10 for classifier-free guidance",
        trained=True,
    )


def _cifar_arch() -> BuiltinModel:
    return BuiltinModel(
        name="cifar-arch",
        unet=build_cifar_arch(seed=0).eval(),
        scheduler_config=dict(CIFAR_SCHEDULER_CONFIG),
        sample_shape=(3, 32, 32),
        num_classes=None,
        weights_sha256=None,
        description="google/ddpm-cifar10-32 architecture (35.7 M params, 6.1 G MACs/step) with seeded "
        "random weights: for speed and size figures only, its images are noise",
        trained=False,
    )


def _digits_pruned() -> BuiltinModel:

    root = WEIGHTS_DIR / "digits_pruned"
    if not (root / "pruned_shapes.json").is_file():
        raise EdgediffError(
            f"{root}: pruned weights missing; create them with "
            "`edgediff prune builtin:digits --ratio 0.5 --layer-ratio 'down_blocks.0.*=0.25' "
            f"--layer-ratio 'up_blocks.2.*=0.25' --finetune-steps 700 -o {root}`"
        )
    unet, _, data = load_pruned(root)
    rec = data["record"]
    return BuiltinModel(
        name="digits-pruned",
        unet=unet,
        scheduler_config=dict(DIGITS_SCHEDULER_CONFIG),
        sample_shape=(1, 16, 16),
        num_classes=NUM_DIGIT_CLASSES,
        weights_sha256=sha256_file(root / "diffusion_pytorch_model.safetensors"),
        description=f"builtin:digits with {rec['ratio']:g} of its channels pruned"
        + "".join(f", {r:g} in {p}" for p, r in rec.get("layer_ratios") or ())
        + f" ({rec['importance']} importance, "
        f"-{100 * rec['macs_reduction']:.0f} % MACs) and a {rec.get('finetune', {}).get('steps', 0)}-step "
        "recovery fine-tune against the unpruned model",
        trained=True,
        pruning=rec,
    )


# To add a builtin, write a zero-argument factory returning BuiltinModel above and add it
# here (and, if it has trained weights, a train function in train.py and a line in README.md).
BUILTINS: dict[str, Callable[[], BuiltinModel]] = {
    "digits": _digits,
    "cifar-arch": _cifar_arch,
    "digits-pruned": _digits_pruned,
}


def load_builtin(name: str) -> BuiltinModel:
    if name not in BUILTINS:
        raise EdgediffError(f"builtin:{name}: no such builtin model; valid names: {', '.join(sorted(BUILTINS))}")
    return BUILTINS[name]()


def load_classifier() -> DigitsClassifier:
    """The committed digits classifier (eval mode); its .features() define FD-digits."""
    model = build_classifier()
    _load_into(model, WEIGHTS_DIR / "digits_classifier.safetensors", "edgediff zoo train classifier")
    return model.eval()


def _load_into(module: nn.Module, path: Path, command: str) -> None:
    if not path.is_file():
        raise EdgediffError(f"{path}: weight file missing; create it with `{command}`")
    state = load_file(str(path))
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise EdgediffError(
            f"{path}: does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"recreate it with `{command}`"
        )
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise EdgediffError(
            f"{path}: tensor {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, "
            f"expected {tuple(expected[bad[0]].shape)}; recreate it with `{command}`"
        )
    module.load_state_dict(state)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def builtin_student_folder(name: str) -> Path | None:
    """Committed students of builtin:digits (weights/students/<name>/), reachable as builtin:<name>."""

    folder = WEIGHTS_DIR / "students" / name
    return folder if (folder / STUDENT_FILE).is_file() else None
