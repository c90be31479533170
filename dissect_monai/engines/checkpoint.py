"""Crash-safe training checkpoints: atomic writes, resume from the latest, final exports for the bundle."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from ignite.engine import Engine, Events

from dissect_monai.engines.ssl_iteration import NonFiniteTrainingError, unwrap_module

__all__ = ["atomic_save", "atomic_write", "load_checkpoint", "SSLCheckpointer"]

logger = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a binary file that replaces ``path`` only once complete: a crash (or an exception
    raised by ``write``) at any moment leaves either the old file or the new one, never a partial file.

    Writes a temporary file in the same directory, flushes and fsyncs it, ``os.replace``-s it over ``path``
    and fsyncs the directory (so the rename itself survives a power loss). The project's one atomic writer:
    checkpoints, result stores and caches all go through it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write` (the old file or the new, never a partial one)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :class:`SSLCheckpointer` with ``weights_only=True``.

    Raises:
        FileNotFoundError: naming the file when it does not exist.
        ValueError: naming the file when it cannot be read as a weights-only checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e


def _all_finite(state: Mapping[str, Any]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


class SSLCheckpointer:
    """Periodic + final training checkpoints with resume, for an Ignite/MONAI trainer.

    The checkpoint ``save_dir/filename`` holds ``{name: obj.state_dict() for name in save_dict}`` (a network
    wrapped in DDP is saved unwrapped, so keys carry no ``module.`` prefix) plus ``"iteration"`` and
    ``"epoch_length"``: tensors and primitives only, so it loads with ``torch.load(weights_only=True)``.
    For a DiSSECT model the network state dict already holds the online and target branches and the
    codebooks (and their EMA statistics).

    Events:
        - ``STARTED``: when ``resume`` and the checkpoint exists, restores every object and the iteration
          (and so the epoch), so Ignite continues where the run stopped.
        - ``ITERATION_COMPLETED(every=save_interval)``: writes the checkpoint atomically (rank 0 only).
          Attach after the LR-scheduler handler so the saved scheduler state matches the saved iteration.
        - ``COMPLETED``: writes the checkpoint, then each of ``final_exports`` (``filename -> module``) as a
          plain state dict (e.g. the inference network as ``model.pt``). With ``export_on_save`` the exports
          are also refreshed at every periodic save, so a usable ``model.pt`` exists while a long run goes on.
        - ``EXCEPTION_RAISED``: writes nothing (the last good checkpoint stays), logs where it is, re-raises.

    Before each write the floating-point tensors of the network are checked: a NaN/Inf state is never
    written over a good checkpoint (:class:`NonFiniteTrainingError`).

    Args:
        save_dir: directory of the checkpoint and the final exports.
        save_dict: objects with ``state_dict``/``load_state_dict``; must contain the network under
            ``network_key``; typically also ``optimizer`` and ``lr_scheduler``.
        save_interval: checkpoint every this many iterations (0: only at the end).
        filename: checkpoint file name inside ``save_dir``.
        final_exports: ``{filename: module}`` written at the end as ``module.state_dict()``.
        export_on_save: also write ``final_exports`` at every periodic save.
        resume: restore from the checkpoint at start when it exists.
        network_key: the key of the network in ``save_dict`` (checked for finiteness before saving).
        map_location: where to load tensors on resume.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 0,
        filename: str = "checkpoint.pt",
        final_exports: Mapping[str, torch.nn.Module] | None = None,
        export_on_save: bool = True,
        resume: bool = True,
        network_key: str = "network",
        map_location: str | torch.device = "cpu",
    ) -> None:
        if network_key not in save_dict:
            raise ValueError(f"save_dict must contain the network under {network_key!r}; got {sorted(save_dict)}")
        if save_interval < 0:
            raise ValueError(f"save_interval must be >= 0, got {save_interval}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.filename = filename
        self.final_exports = dict(final_exports or {})
        self.export_on_save = export_on_save
        self.resume = resume
        self.network_key = network_key
        self.map_location = map_location
        self.last_saved_iteration: int | None = None

    @property
    def path(self) -> Path:
        return self.save_dir / self.filename

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.load)
        if self.save_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.finalize)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)

    @staticmethod
    def _is_writer() -> bool:
        return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
            torch.distributed.get_rank() == 0
        )

    def _state(self, engine: Engine) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for name, obj in self.save_dict.items():
            obj = unwrap_module(obj) if isinstance(obj, torch.nn.Module) else obj
            state[name] = obj.state_dict()
        if not _all_finite(state[self.network_key]):
            raise NonFiniteTrainingError(
                f"network state has NaN/Inf at iteration {engine.state.iteration}; not overwriting the last "
                f"good checkpoint {self.path} (iteration {self.last_saved_iteration})"
            )
        state["iteration"] = int(engine.state.iteration)
        state["epoch_length"] = int(engine.state.epoch_length)
        return state

    def load(self, engine: Engine) -> None:
        """Restore objects and iteration from the checkpoint, if ``resume`` and it exists."""
        if not self.resume or not self.path.is_file():
            return
        checkpoint = load_checkpoint(self.path, self.map_location)
        missing = [name for name in self.save_dict if name not in checkpoint]
        if missing:
            raise ValueError(f"checkpoint {self.path} lacks {missing}; it holds {sorted(checkpoint)}")
        if checkpoint["epoch_length"] != engine.state.epoch_length:
            raise ValueError(
                f"checkpoint {self.path} was written with epoch_length {checkpoint['epoch_length']}, this run has "
                f"{engine.state.epoch_length} (batch size or data changed); use a new save_dir or resume=False"
            )
        for name, obj in self.save_dict.items():
            obj = unwrap_module(obj) if isinstance(obj, torch.nn.Module) else obj
            obj.load_state_dict(checkpoint[name])
        engine.state.iteration = checkpoint["iteration"]
        engine.state.epoch = checkpoint["iteration"] // checkpoint["epoch_length"]
        self.last_saved_iteration = checkpoint["iteration"]
        logger.info(f"resumed from {self.path} at iteration {engine.state.iteration} (epoch {engine.state.epoch})")

    def save(self, engine: Engine) -> None:
        """Write the checkpoint atomically (rank 0 only)."""
        if not self._is_writer():
            return
        atomic_save(self._state(engine), self.path)
        self.last_saved_iteration = engine.state.iteration
        logger.info(f"checkpoint written: {self.path} (iteration {engine.state.iteration})")
        if self.export_on_save:
            self._export(engine)

    def _export(self, engine: Engine) -> None:
        for filename, module in self.final_exports.items():
            path = atomic_save(unwrap_module(module).state_dict(), self.save_dir / filename)
            logger.info(f"exported {path} (iteration {engine.state.iteration})")

    def finalize(self, engine: Engine) -> None:
        """Write the final checkpoint and the final exports (rank 0 only)."""
        if not self._is_writer():
            return
        if self.last_saved_iteration != engine.state.iteration or not self.path.is_file():
            atomic_save(self._state(engine), self.path)
            self.last_saved_iteration = engine.state.iteration
            logger.info(f"checkpoint written: {self.path} (iteration {engine.state.iteration})")
        self._export(engine)

    def exception_raised(self, engine: Engine, e: Exception) -> None:
        """Leave the last good checkpoint in place, say where it is, and re-raise ``e``."""
        where = f"{self.path} (iteration {self.last_saved_iteration})" if self.path.is_file() else "none written"
        logger.error(f"training stopped at iteration {engine.state.iteration}: {e}; last good checkpoint: {where}")
        raise e
