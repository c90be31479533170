"""Typed rows and cells of the label-efficiency protocol, and the resumable store that keeps finished cells.

A row (:class:`EvaluationRow`) is one encoder evaluated one way (frozen probe or fine-tune); a cell
(:class:`CellResult`) is one benchmark x label fraction x seed of it. :class:`RowStore` keeps a row's cells in one
JSON file written through the project's one atomic writer (:func:`dissect_monai.engines.atomic_write`) after every
cell, so an interrupted run keeps every finished cell and a rerun computes only what is missing. The row's
``fingerprint`` (checkpoint contents, method, budget) is stored with it: a row whose fingerprint changed (e.g. a new
checkpoint under the same name) starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from dissect_monai.engines.checkpoint import atomic_write
from dissect_monai.utils.serialization import json_safe

__all__ = ["CellResult", "EvaluationRow", "RowStore", "file_fingerprint", "fraction_key", "read_json", "write_json"]

RowKind = Literal["raw", "random", "supervised", "checkpoint"]
RowMode = Literal["probe", "finetune"]


def file_fingerprint(path: str | os.PathLike) -> str:
    """First 16 hex digits of the SHA-1 of a file's bytes (a checkpoint's identity, whatever its path)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON of ``obj`` (NaN as ``null``) to ``path`` through :func:`atomic_write`: streamed into a temporary
    file, so a failure at any point (also while encoding) leaves the previous file as it was."""
    encoder = json.JSONEncoder(indent=1, allow_nan=False)

    def write(f) -> None:
        for chunk in encoder.iterencode(json_safe(obj)):
            f.write(chunk.encode("utf-8"))

    return atomic_write(path, write)


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; a clear error naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to recompute what it held") from e


def fraction_key(fraction: float) -> str:
    """The key of a label fraction in stores and reports: ``0.01 -> "0.01"``, ``1.0 -> "1"``."""
    return f"{float(fraction):g}"


@dataclass(frozen=True)
class EvaluationRow:
    """One encoder evaluated one way.

    Attributes:
        name: file-name-safe id (the store file is ``<name>.json``).
        label: display label in tables and plots.
        kind: ``raw`` (pixels), ``random`` (frozen random-init ResNet), ``supervised`` (fine-tuned from scratch) or
            ``checkpoint`` (a pretraining checkpoint).
        mode: ``probe`` (frozen features, logistic regression) or ``finetune`` (the classification bundle).
        method: method preset of ``configs/methods`` whose encoder the row holds.
        checkpoint: the pretraining checkpoint (``checkpoint`` rows only).
        descriptor: probe ``[pooled feature, DiSSECT quantised descriptor]`` instead of the embedding.
        fingerprint: what the cells depend on (checkpoint contents, method, size, budget); cells of another
            fingerprint are discarded.
    """

    name: str
    label: str
    kind: RowKind
    mode: RowMode
    method: str
    fingerprint: str
    checkpoint: str | None = None
    descriptor: bool = False


@dataclass
class CellResult:
    """One benchmark x label fraction x seed of a row: test ROC AUC (overall and per view), accuracy at 0.5, the
    validation AUC that picked the model (probe C or fine-tune checkpoint), the train sample and the time taken."""

    test_auc: float | None
    test_acc: float | None
    val_auc: float | None
    n_train: int
    n_train_patients: int
    seconds: float
    test_auc_by_view: dict[str, float | None] = field(default_factory=dict)
    c: float | None = None  #: probe: the inverse regularisation strength picked on val
    epochs: int | None = None  #: fine-tune: bundle epochs run
    steps: int | None = None  #: fine-tune: optimiser steps run
    same_as_seed: int | None = None  #: a deterministic cell copied from this seed's (same train set)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CellResult":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class RowStore:
    """A row's finished cells (and per-benchmark extras such as kNN accuracy) in ``<directory>/<row.name>.json``.

    Args:
        directory: folder of the row files.
        row: the row; a stored row of another ``fingerprint`` is discarded (its cells are recomputed).
    """

    def __init__(self, directory: str | os.PathLike, row: EvaluationRow) -> None:
        self.path = Path(directory) / f"{row.name}.json"
        self.row = row
        stored = read_json(self.path) if self.path.is_file() else {}
        same = stored.get("row", {}).get("fingerprint") == row.fingerprint
        self.discarded = bool(stored) and not same
        self._benchmarks: dict[str, dict[str, Any]] = stored.get("benchmarks", {}) if same else {}

    def _bench(self, benchmark: str) -> dict[str, Any]:
        return self._benchmarks.setdefault(benchmark, {"extras": {}, "cells": {}})

    def cell(self, benchmark: str, fraction: float, seed: int) -> CellResult | None:
        """The finished cell, or ``None``."""
        stored = self._bench(benchmark)["cells"].get(fraction_key(fraction), {}).get(str(seed))
        return None if stored is None else CellResult.from_dict(stored)

    def cells(self, benchmark: str, fraction: float) -> dict[int, CellResult]:
        """Finished cells of one benchmark and fraction, by seed."""
        stored = self._bench(benchmark)["cells"].get(fraction_key(fraction), {})
        return {int(seed): CellResult.from_dict(c) for seed, c in stored.items()}

    def put(self, benchmark: str, fraction: float, seed: int, cell: CellResult) -> None:
        """Record a finished cell and write the file at once."""
        self._bench(benchmark)["cells"].setdefault(fraction_key(fraction), {})[str(seed)] = asdict(cell)
        self.save()

    def extras(self, benchmark: str) -> dict[str, Any]:
        """Per-benchmark values that are not cells (kNN accuracy, view-probe AUC, feature seconds)."""
        return dict(self._bench(benchmark)["extras"])

    def put_extras(self, benchmark: str, **values: Any) -> None:
        self._bench(benchmark)["extras"].update(values)
        self.save()

    def save(self) -> None:
        write_json(self.path, {"row": asdict(self.row), "benchmarks": self._benchmarks})

    @staticmethod
    def load_all(directory: str | os.PathLike) -> list[tuple[EvaluationRow, dict[str, Any]]]:
        """Every stored row of ``directory`` (sorted by file name) with its ``benchmarks`` record."""
        out = []
        for path in sorted(Path(directory).glob("*.json")):
            stored = read_json(path)
            out.append((EvaluationRow(**stored["row"]), stored.get("benchmarks", {})))
        return out
