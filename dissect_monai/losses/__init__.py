"""Self-supervised losses (computed in fp32 whatever the autocast dtype)."""

from .byol import BYOLLoss
from .code_consistency import CodeConsistencyLoss
from .dino import DINOLoss
from .jepa import LatentPredictionLoss
from .mae import MaskedPatchLoss
from .vicreg import VICRegLoss

__all__ = ["BYOLLoss", "CodeConsistencyLoss", "DINOLoss", "LatentPredictionLoss", "MaskedPatchLoss", "VICRegLoss"]
