"""Training shared by pruning recovery and step distillation (see trainer.py)."""

from edgediff.training.dist import DistContext, relaunch_under_torchrun
from edgediff.training.trainer import StepRandom, TrainConfig, Trainer, TrainResult, train

__all__ = ["DistContext", "relaunch_under_torchrun", "StepRandom", "TrainConfig", "Trainer", "TrainResult", "train"]
