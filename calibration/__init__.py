"""edgediff.calibration: calibration data from the deployment sampler's own trajectory.

Holds (as the quantization work lands) trajectory recording, timestep selection strategies,
observers and per-layer sensitivity. See calibration/README.md.
"""
