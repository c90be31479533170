"""Self-supervised losses (computed in fp32 whatever the autocast dtype)."""

from .byol import BYOLLoss
from .code_consistency import CodeConsistencyLoss

__all__ = ["BYOLLoss", "CodeConsistencyLoss"]
