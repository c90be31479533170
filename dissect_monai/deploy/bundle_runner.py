"""Run a MONAI bundle's inference config in-process, with the model loaded once.

The contract is the generic bundle inference config (the one MONAI Label and the Deploy App SDK use):
``network_def``, ``preprocessing`` (a dictionary transform whose first step loads the path under ``image``),
``inferer``, ``postprocessing`` (producing ``pred``; its ``Save*`` writer steps are dropped), weights in
``models/model.pt`` (a state dict), and ``configs/metadata.json`` whose
``network_data_format.outputs.pred.channel_def`` names the output channels.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from dissect_monai.networks.quality_gate import EmbeddingGate

__all__ = ["BundleRunner", "BundleError", "Prediction"]

_CONFIG_NAMES = ("configs/inference.yaml", "configs/inference.yml", "configs/inference.json")


def _without_writers(postprocessing: Any) -> Any:
    """The bundle's postprocessing without its ``Save*`` steps (file writers), as the MONAI Deploy App SDK does:
    the node writes DICOM itself and must not leave NIfTI / PNG / SEG files in the bundle folder."""
    if isinstance(postprocessing, Compose):
        kept = [t for t in postprocessing.transforms if not type(t).__name__.startswith("Save")]
        return Compose(kept, map_items=postprocessing.map_items, unpack_items=postprocessing.unpack_items)
    return postprocessing


class BundleError(RuntimeError):
    """A bundle that cannot be loaded or run; the message names the bundle and the problem."""


@dataclass(frozen=True)
class Prediction:
    """A bundle's post-processed output and, with a quality gate, whether its input was out of distribution.

    Attributes:
        pred: the prediction (channel first, no batch dimension).
        out_of_distribution: the gate's verdict (``None`` without a gate).
        distance: the input embedding's Mahalanobis distance (``None`` without a gate).
    """

    pred: MetaTensor
    out_of_distribution: bool | None = None
    distance: float | None = None


class BundleRunner:
    """One bundle, parsed and with weights loaded, ready to predict on image paths.

    Args:
        bundle_dir: the bundle folder.
        config_file: inference config relative to the bundle (default: ``configs/inference.{yaml,yml,json}``).
        model_file: weights relative to the bundle.
        image_key: key of the input in the bundle's transforms.
        pred_key: key of the output in the bundle's postprocessing.
        quality_gate_file: an :class:`~dissect_monai.networks.quality_gate.EmbeddingGate` state dict relative to
            the bundle, fitted on the embeddings ``network_def.features(x)`` of in-distribution images.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike,
        config_file: str | None = None,
        model_file: str = "models/model.pt",
        image_key: str = "image",
        pred_key: str = "pred",
        quality_gate_file: str | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.image_key, self.pred_key = image_key, pred_key
        candidates = [config_file] if config_file else list(_CONFIG_NAMES)
        config_path = next((self.bundle_dir / c for c in candidates if (self.bundle_dir / c).is_file()), None)
        if config_path is None:
            raise BundleError(f"bundle {self.bundle_dir}: no inference config ({', '.join(candidates)})")
        meta_path = self.bundle_dir / "configs" / "metadata.json"
        try:
            self.metadata: dict[str, Any] = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise BundleError(f"bundle {self.bundle_dir}: cannot read {meta_path.name}: {err}") from err
        parser = ConfigParser()
        parser.read_meta(str(meta_path))  # `_meta_`, as `monai.bundle run` provides it to the config
        parser.read_config(str(config_path))
        parser["bundle_root"] = str(self.bundle_dir)
        if "device" in parser:
            parser["device"] = "$torch.device('cpu')"
        try:
            self.network: torch.nn.Module = parser.get_parsed_content("network_def", instantiate=True)
            self.preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
            self.postprocessing = _without_writers(parser.get_parsed_content("postprocessing", instantiate=True))
            self.inferer = parser.get_parsed_content("inferer", instantiate=True)
        except Exception as err:  # noqa: BLE001 - any config error is reported with the bundle's name
            raise BundleError(f"bundle {self.bundle_dir}: cannot parse {config_path.name}: {err}") from err
        weights = self.bundle_dir / model_file
        if not weights.is_file():
            raise BundleError(f"bundle {self.bundle_dir}: weights {model_file} not found")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        try:
            self.network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise BundleError(f"bundle {self.bundle_dir}: {model_file} does not fit network_def: {err}") from err
        self.network.eval()
        self.quality_gate: EmbeddingGate | None = None
        if quality_gate_file is not None:
            if not callable(getattr(self.network, "features", None)):
                raise BundleError(f"bundle {self.bundle_dir}: a quality gate needs a network_def with features(x)")
            try:
                self.quality_gate = EmbeddingGate.load(self.bundle_dir / quality_gate_file)
            except (OSError, ValueError, RuntimeError) as err:
                raise BundleError(
                    f"bundle {self.bundle_dir}: cannot load quality gate {quality_gate_file}: {err}"
                ) from err
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The bundle's identifier (its folder name, e.g. ``dissect_cxr_lung_segmentation``), written as the
        algorithm name, as the bundles' own SEG writers do; metadata ``name`` is a display title."""
        return self.bundle_dir.name

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    def channel_names(self) -> dict[int, str]:
        """Output channel index -> name from ``network_data_format.outputs.pred.channel_def`` (may be empty)."""
        outputs = self.metadata.get("network_data_format", {}).get("outputs", {})
        channel_def = (outputs.get(self.pred_key) or next(iter(outputs.values()), {})).get("channel_def", {})
        return {int(k): str(v) for k, v in channel_def.items()}

    def run(self, source: str | os.PathLike) -> Prediction:
        """Run preprocessing -> inferer -> postprocessing on one image path (a file or a DICOM series folder),
        and the quality gate on the same preprocessed image when the runner has one."""
        data = self.preprocessing({self.image_key: str(source)})
        batch = data[self.image_key][None]
        distance = None
        with self._lock, torch.inference_mode():
            data[self.pred_key] = self.inferer(batch, self.network)[0]
            if self.quality_gate is not None:
                distance = float(self.quality_gate(self.network.features(batch))[0])
        data = self.postprocessing(data)
        if distance is None:
            return Prediction(data[self.pred_key])
        return Prediction(data[self.pred_key], distance > float(self.quality_gate.threshold), distance)

    def predict(self, source: str | os.PathLike) -> MetaTensor:
        """The post-processed prediction on one image path (see :meth:`run`), channel first, no batch dimension:
        e.g. ``(C,)`` probabilities for a classifier or a ``(1, H, W)`` / ``(1, X, Y, Z)`` label map on the
        input grid for segmentation."""
        return self.run(source).pred
