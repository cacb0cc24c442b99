"""Per-layer quantization sensitivity: which layers to keep in higher precision.

    for each Conv/Linear layer L (one at a time, all others FP32):
        weight  -> fake-quantized per output channel, int8 symmetric (min-max)
        input   -> fake-quantized per tensor, int8, range from the chosen observer over `calib`
        run every calibration row; relative error of the model output vs FP32
                   = ||y_q - y|| / ||y||   per plan step and over all rows
    rank layers by the overall error  ──► SensitivityTable ──► .json, top-k bar plot .png

This is simulation (torch's fake_quantize ops) and serves only to rank layers; the int8
kernels that ship come from the compiler's quantize pass.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgediff.core.errors import EdgediffError
from edgediff.quantize.calibration.activations import WEIGHT_AXIS, collect_activations, match_layers
from edgediff.quantize.calibration.observers import QuantRange, observe
from edgediff.quantize.calibration.record import CalibrationSet


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    type: str
    params: int
    rel_error: float  # over all rows
    per_step: dict[int, float]  # plan step -> relative error over that step's rows


@dataclass(frozen=True)
class SensitivityTable:
    """Layers, most sensitive first, with how they were quantized."""

    layers: tuple[LayerSensitivity, ...]
    observer: str
    bits: int
    timesteps: tuple[float, ...]  # the t of each plan step, for reading per_step
    num_rows: int

    def top(self, k: int) -> list[LayerSensitivity]:
        return list(self.layers[:k])

    def to_dict(self) -> dict:
        return {
            "observer": self.observer,
            "bits": self.bits,
            "timesteps": list(self.timesteps),
            "num_rows": self.num_rows,
            "layers": [{**asdict(r), "per_step": {str(k): v for k, v in r.per_step.items()}} for r in self.layers],
        }

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        try:
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        except OSError as e:
            raise EdgediffError(f"{path}: cannot write the sensitivity table ({e.strerror})") from None
        return path

    def plot(self, path: str | Path, *, top_k: int = 20) -> Path:
        """Horizontal bar plot of the top_k layers' relative error (PNG, Agg, no global state)."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise EdgediffError("the sensitivity plot needs matplotlib: pip install 'edgediff[plots]'") from None
        rows = self.top(top_k)[::-1]  # largest at the top
        fig = Figure(figsize=(8, 0.3 * len(rows) + 1.2))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.barh([r.name for r in rows], [r.rel_error for r in rows], color="#c0504d")
        ax.set_xscale("log")
        ax.set_xlabel("relative output error, this layer alone in int8 (W per-channel, A per-tensor)")
        ax.set_title(
            f"quantization sensitivity: top {len(rows)} of {len(self.layers)} layers "
            f"({self.observer}, {self.num_rows} rows)",
            fontsize=9,
        )
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        path = Path(path)
        try:
            fig.savefig(path, format="png", dpi=110)
        except OSError as e:
            raise EdgediffError(f"{path}: cannot write the plot ({e.strerror})") from None
        return path


def _fake_weight(w: torch.Tensor, axis: int, bits: int) -> torch.Tensor:
    r = observe(w.detach().float().cpu().numpy(), "minmax", axis=axis, bits=bits, symmetric=True)
    return torch.fake_quantize_per_channel_affine(
        w.detach().float(), torch.from_numpy(r.scale), torch.from_numpy(r.zero_point), axis, r.qmin, r.qmax
    ).to(w.dtype)


def _fake_input_hook(r: QuantRange):
    scale, zp = float(r.scale), int(r.zero_point)

    def pre_hook(mod, inputs):
        x = inputs[0]
        xq = torch.fake_quantize_per_tensor_affine(x.float(), scale, zp, r.qmin, r.qmax).to(x.dtype)
        return (xq, *inputs[1:])

    return pre_hook


def layer_sensitivity(
    model,
    calib: CalibrationSet,
    *,
    observer: str = "minmax",
    layers: list[str] | None = None,
    bits: int = 8,
    act_symmetric: bool = False,
    batch_size: int = 64,
    progress=None,
    **observer_options,
) -> SensitivityTable:
    """Rank the Conv/Linear layers of `model` (ModelSpec or torch module) by the output error
    that quantizing each one alone causes over the rows of `calib`.

    `layers`: glob patterns (see activations.match_layers); `progress(name)` is called before
    each layer is measured.
    """
    module: nn.Module = getattr(model, "module", model)
    names = match_layers(module, layers)
    if not names:
        raise EdgediffError("the model has no Conv/Linear layers to rank")
    ranges = collect_activations(
        module,
        calib,
        kind=observer,
        layers=names,
        which=("input",),
        bits=bits,
        symmetric=act_symmetric,
        batch_size=batch_size,
        **observer_options,
    )
    batches = [np.arange(s, min(len(calib), s + batch_size)) for s in range(0, len(calib), batch_size)]
    with torch.inference_mode():
        reference = [module(*calib.model_args(b)).float() for b in batches]
    steps = calib.step
    ref_sq = np.zeros(calib.num_steps)
    for b, y in zip(batches, reference):
        np.add.at(ref_sq, steps[b], y.reshape(y.shape[0], -1).pow(2).sum(1).double().numpy())
    visited = [int(s) for s in calib.visited_steps]

    subs = dict(module.named_modules())
    results = []
    for name in names:
        if progress is not None:
            progress(name)
        layer = subs[name]
        axis = next(a for t, a in WEIGHT_AXIS.items() if isinstance(layer, t))
        weight = layer.weight
        original = weight.detach().clone()
        handle = layer.register_forward_pre_hook(_fake_input_hook(ranges[f"{name}:input"][0].result()))
        err_sq = np.zeros(calib.num_steps)
        try:
            with torch.no_grad():
                weight.copy_(_fake_weight(original, axis, bits))
            with torch.inference_mode():
                for b, y in zip(batches, reference):
                    d = (module(*calib.model_args(b)).float() - y).reshape(len(b), -1).pow(2).sum(1)
                    np.add.at(err_sq, steps[b], d.double().numpy())
        finally:
            handle.remove()
            with torch.no_grad():
                weight.copy_(original)
        per_step = {s: float(np.sqrt(err_sq[s] / max(ref_sq[s], 1e-30))) for s in visited}
        total = float(np.sqrt(err_sq.sum() / max(ref_sq.sum(), 1e-30)))
        results.append(
            LayerSensitivity(
                name=name,
                type=type(layer).__name__,
                params=sum(p.numel() for p in layer.parameters(recurse=False)),
                rel_error=total,
                per_step=per_step,
            )
        )
    results.sort(key=lambda r: r.rel_error, reverse=True)
    return SensitivityTable(
        layers=tuple(results),
        observer=observer,
        bits=bits,
        timesteps=tuple(float(t) for t in calib.timesteps),
        num_rows=len(calib),
    )
