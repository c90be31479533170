"""Ignite engines for SSL pretraining (two-view step, checkpoints with resume, monitoring) and embedding inference."""

from .checkpoint import SSLCheckpointer, atomic_save, atomic_write, load_checkpoint
from .embedding import EmbeddingIteration, EmbeddingWriter
from .handlers import EpochSeeder, ProgressBarHandler, SSLMetricsLogger, is_main_process
from .ssl_iteration import NonFiniteTrainingError, SSLIteration, unwrap_module

__all__ = [
    "EmbeddingIteration",
    "EmbeddingWriter",
    "EpochSeeder",
    "NonFiniteTrainingError",
    "ProgressBarHandler",
    "SSLCheckpointer",
    "SSLIteration",
    "SSLMetricsLogger",
    "atomic_save",
    "atomic_write",
    "is_main_process",
    "load_checkpoint",
    "unwrap_module",
]
