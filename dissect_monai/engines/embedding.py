"""Inference for pretrained SSL encoders: image -> embedding (+ code indices per scale), written per image."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import convert_to_tensor

from dissect_monai.engines.handlers import is_main_process
from dissect_monai.engines.ssl_iteration import unwrap_module
from dissect_monai.utils.precision import PrecisionPolicy, resolve_precision

__all__ = ["EmbeddingIteration", "EmbeddingWriter"]

logger = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class EmbeddingIteration:
    """Evaluator step (``SupervisedEvaluator(iteration_update=...)``) running the network's ``encode``.

    The network (e.g. :class:`dissect_monai.networks.dissect.DiSSECTEmbedder`) must provide
    ``encode(x) -> {"embedding": (B, D), "codes_<scale>": (B, *S_i), ...}``; a network without ``encode``
    is called directly and its output taken as the embedding.

    Args:
        image_key: batch key of the images ``(B, C, H, W)`` or ``(B, C, H, W, D)``.
        precision: ``"auto"``, ``"bf16"``, ``"fp32"`` or a policy (see :func:`dissect_monai.utils.resolve_precision`).

    Returns (per call): ``{"image": images, "pred": embedding (B, D) fp32, "codes_<scale>": int64 maps}``.
    """

    def __init__(self, image_key: str = "image", precision: str | PrecisionPolicy = "auto") -> None:
        self.image_key = image_key
        self.precision = precision

    def __call__(self, engine: Any, batchdata: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if self.image_key not in batchdata:
            raise KeyError(f"batch has no {self.image_key!r}; keys present: {sorted(batchdata)}")
        policy = resolve_precision(self.precision, engine.state.device)
        images = convert_to_tensor(batchdata[self.image_key], track_meta=False).to(engine.state.device)
        network = unwrap_module(engine.network)
        network.eval()
        with torch.no_grad(), policy.autocast():
            x = policy.format_input(images)
            out = network.encode(x) if hasattr(network, "encode") else {"embedding": network(x)}
        result = {name: value for name, value in out.items() if name != "embedding"}
        result["pred"] = out["embedding"].float()
        result["image"] = images
        return result


def _output_name(source: str) -> str:
    """File-system-safe, unique name for an input path: sanitised stem + short hash of the full path."""
    stem = Path(str(source).rstrip("/")).name
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = _UNSAFE.sub("_", stem).strip("._")[:64] or "image"
    return f"{stem}_{hashlib.sha1(str(source).encode('utf-8')).hexdigest()[:8]}"


class EmbeddingWriter:
    """Write each image's embedding and code indices to ``output_dir/<name>.npz`` (rank 0 only).

    ``<name>`` is the sanitised source file name plus a hash of its path (never a DICOM tag value). Each
    ``.npz`` holds ``embedding`` (D,) float32 and ``codes_<scale>`` int32 index maps; ``index.jsonl`` lists
    ``{"source": path, "output": file, "embedding_dim": D, "codes": {scale: shape}}`` per image.

    Args:
        output_dir: destination folder (created).
        image_key: batch key whose ``meta["filename_or_obj"]`` names the source of each image.
    """

    def __init__(self, output_dir: str | os.PathLike, image_key: str = "image") -> None:
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _sources(self, engine: Engine, n: int) -> list[str]:
        image = engine.state.batch.get(self.image_key) if isinstance(engine.state.batch, dict) else None
        meta = getattr(image, "meta", None) or {}
        sources = meta.get("filename_or_obj")
        if isinstance(sources, (list, tuple)) and len(sources) == n:
            return [str(s) for s in sources]
        return [f"iteration{engine.state.iteration}_item{i}" for i in range(n)]

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        output = engine.state.output
        embeddings = output["pred"].detach().cpu().float().numpy()
        codes = {k: v.detach().cpu().numpy().astype(np.int32) for k, v in output.items() if k.startswith("codes_")}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "index.jsonl", "a", encoding="utf-8") as index:
            for i, source in enumerate(self._sources(engine, len(embeddings))):
                name = _output_name(source) + ".npz"
                arrays = {"embedding": embeddings[i], **{k: v[i] for k, v in codes.items()}}
                np.savez(self.output_dir / name, **arrays)
                record = {
                    "source": source,
                    "output": name,
                    "embedding_dim": int(embeddings.shape[1]),
                    "codes": {k[len("codes_"):]: list(v.shape[1:]) for k, v in codes.items()},
                }
                index.write(json.dumps(record) + "\n")
                self.count += 1

    def completed(self, engine: Engine) -> None:
        if is_main_process():
            logger.info(f"wrote {self.count} embeddings to {self.output_dir}")
