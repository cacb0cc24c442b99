"""edgediff.quantize.calibration: calibration data from the deployment sampler's own trajectory.

    record.py       record_trajectories() -> CalibrationSet (.npz save/load, validated)
    select.py       select(calib, "uniform" | "normal" | "eda", budget, seed=...) -> CalibrationSet
    observers.py    observe() / Observer: "minmax" | "percentile" | "mse" -> QuantRange
    activations.py  collect_activations(): {"<layer>:input|output": {timestep group: Observer}}
    sensitivity.py  layer_sensitivity() -> SensitivityTable (JSON, bar plot)
    cli.py          `edgediff calibrate` (add_calibrate_parser, cmd_calibrate)

See src/edgediff/quantize/calibration/README.md. This package imports edgediff.compiler.capture (not the pipeline),
so the compiler's quantize pass can import it without a cycle.
"""

from edgediff.quantize.calibration.activations import collect_activations, match_layers, step_groups
from edgediff.quantize.calibration.observers import OBSERVERS, Observer, QuantRange, make_range, observe
from edgediff.quantize.calibration.record import (
    CalibrationMeta,
    CalibrationSet,
    deployment_plan,
    load_calibration,
    record_trajectories,
)
from edgediff.quantize.calibration.select import (
    SELECTORS,
    select,  # after the module import: the name is the function
    select_indices,
)
from edgediff.quantize.calibration.sensitivity import SensitivityTable, layer_sensitivity

__all__ = [
    "OBSERVERS",
    "SELECTORS",
    "CalibrationMeta",
    "CalibrationSet",
    "Observer",
    "QuantRange",
    "SensitivityTable",
    "collect_activations",
    "deployment_plan",
    "layer_sensitivity",
    "load_calibration",
    "make_range",
    "match_layers",
    "observe",
    "record_trajectories",
    "select",
    "select_indices",
    "step_groups",
]
