"""Losses: nn.Modules taking (outputs, target, ...) with pure functional twins in `losses.functional`."""

from llmkit.vision.losses.distill import DISTILL_MODES, BinaryKLNormLoss, DualHeadDistillLoss, LossParts
from llmkit.vision.losses.evidential import CrossEntropy, DPCLoss
from llmkit.vision.losses.multilabel import L2DLoss
from llmkit.vision.losses.openset import EnergyDetectorLoss, TemperatureDetectorLoss

__all__ = [
    "BinaryKLNormLoss",
    "CrossEntropy",
    "DISTILL_MODES",
    "DPCLoss",
    "DualHeadDistillLoss",
    "EnergyDetectorLoss",
    "L2DLoss",
    "LossParts",
    "TemperatureDetectorLoss",
]
