"""Ignite engines for SSL pretraining: the two-view step, checkpointing with resume, monitoring handlers."""

from .checkpoint import SSLCheckpointer, atomic_save, load_checkpoint
from .handlers import EpochSeeder, ProgressBarHandler, SSLMetricsLogger, is_main_process
from .ssl_iteration import NonFiniteTrainingError, SSLIteration, unwrap_module

__all__ = [
    "EpochSeeder",
    "NonFiniteTrainingError",
    "ProgressBarHandler",
    "SSLCheckpointer",
    "SSLIteration",
    "SSLMetricsLogger",
    "atomic_save",
    "is_main_process",
    "load_checkpoint",
    "unwrap_module",
]
