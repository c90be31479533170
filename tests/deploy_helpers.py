"""Helpers for the deploy tests: tiny real MONAI bundles, node configs, real DICOM copies (the Orthanc server
harness is :mod:`harness.orthanc`, re-exported here).

The tiny bundles are complete MONAI bundles (metadata, YAML inference config with ``network_def``,
``preprocessing`` through ``LoadImaged(reader=MedicalImageReader)`` + ``MedicalIntensityd``, ``inferer``,
``postprocessing`` with ``Invertd``, and a randomly initialised real MONAI network saved as ``models/model.pt``).
They exercise the generic bundle contract the node relies on; they are not trained.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import torch
import yaml
from monai.bundle import ConfigParser

from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt

from harness.bundles import untrained_copy
from harness.orthanc import LocalOrthanc as Orthanc
from harness.orthanc import free_port, orthanc_available, wait_for

from dissect_monai.dicom.uids import assign_missing_uids

__all__ = ["Orthanc", "free_port", "orthanc_available", "wait_for", "make_tiny_bundle", "node_config_file",
           "ct_series_copy", "project_bundle", "ResultStore", "serve_node", "CR_RULES", "CT_RULES", "SIIM_CR",
           "CT_SERIES"]

SIIM_CR = "dicom-samples/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
CT_SERIES = "totalseg-ct/example_ct_dicom"

_READ = [{"_target_": "LoadImaged", "keys": "image", "reader": {"_target_": "dissect_monai.data.MedicalImageReader"}},
         {"_target_": "EnsureChannelFirstd", "keys": "image"}]
_LOAD_2D = [*_READ, {"_target_": "dissect_monai.transforms.MedicalIntensityd", "keys": "image"}]
_LOAD_CT = [*_READ, {"_target_": "dissect_monai.transforms.MedicalIntensityd", "keys": "image", "mode": "hu"}]


def _bundle_configs(kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    if kind == "cxr_classification":
        network = {
            "_target_": "monai.networks.nets.Classifier", "in_shape": [1, 64, 64], "classes": 2,
            "channels": [4, 8], "strides": [2, 2],
        }
        pre = [*_LOAD_2D, {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64]}]
        post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True}]
        return {"network_def": network, "pre": pre, "post": post}, {"0": "no finding", "1": "pneumonia"}
    invert = {
        "_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
        "nearest_interp": True,
    }
    if kind == "cxr_lung_segmentation":
        network = {
            "_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
            "channels": [4, 8], "strides": [2], "num_res_units": 0,
        }
        pre = [*_LOAD_2D, {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64]}]
        writer = {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"}
        post = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}, invert, writer]
        return {"network_def": network, "pre": pre, "post": post}, {"0": "background", "1": "lung"}
    if kind == "ct_segmentation":
        network = {
            "_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
            "channels": [4, 8], "strides": [2], "num_res_units": 0,
        }
        pre = [
            *_LOAD_CT,
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000, "b_min": 0.0,
             "b_max": 1.0, "clip": True},
            {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64, 16]},
        ]
        post = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}, invert]
        return {"network_def": network, "pre": pre, "post": post}, {"0": "background", "1": "liver", "2": "spleen"}
    raise ValueError(kind)


def make_tiny_bundle(root: Path, kind: str, seed: int = 0) -> Path:
    """Write a tiny but complete MONAI bundle of ``kind`` (cxr_classification, cxr_lung_segmentation,
    ct_segmentation) under ``root/<kind>`` with a randomly initialised network; returns the bundle folder."""
    parts, channel_def = _bundle_configs(kind)
    bundle = root / kind
    (bundle / "configs").mkdir(parents=True, exist_ok=True)
    (bundle / "models").mkdir(exist_ok=True)
    inference = {
        "imports": ["$import torch"],
        "bundle_root": str(bundle),
        "device": "$torch.device('cpu')",
        "network_def": parts["network_def"],
        "preprocessing": {"_target_": "Compose", "transforms": parts["pre"]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": parts["post"]},
    }
    (bundle / "configs" / "inference.yaml").write_text(yaml.safe_dump(inference, sort_keys=False))
    metadata = {
        "name": f"tiny_{kind}", "version": "0.0.1", "monai_version": "1.4.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1}},
            "outputs": {"pred": {"type": "probabilities" if kind.endswith("classification") else "image",
                                 "num_channels": len(channel_def), "channel_def": channel_def}},
        },
    }
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    torch.manual_seed(seed)
    parser = ConfigParser(inference)
    network = parser.get_parsed_content("network_def")
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    return bundle


def node_config_file(
    path: Path, spool: Path, pipelines: list[dict[str, Any]], destination: dict[str, Any] | None = None, **extra: Any
) -> Path:
    """Write a node YAML config for tests (port 0 = any free port; short stable time)."""
    config = {
        "spool_dir": str(spool), "ae_title": "DISSECT_AI", "host": "127.0.0.1", "port": 0,
        "allowed_calling_aets": ["ORTHANC", "TESTSCU"], "stable_seconds": 1.0, "poll_seconds": 0.2,
        "health_port": 0, "torch_threads": 1, "destination": destination or {"ae_title": "NOBODY", "port": 9},
        "retry": {"initial_seconds": 0.5, "max_seconds": 4.0}, "pipelines": pipelines, **extra,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


CR_RULES = {"Modality": "CR|DX", "BodyPartExamined": "CHEST|"}


def cr_pipelines(bundles: dict[str, Path]) -> list[dict]:
    """The node's two chest-radiograph pipelines (SR from the classifier, SEG from the lung bundle) on ``bundles``
    (``{"cxr_classification": ..., "cxr_lung_segmentation": ...}``), one instance per job."""
    return [
        {"name": "cls", "bundle": str(bundles["cxr_classification"]), "output": "sr", "rules": CR_RULES,
         "single_instance": True},
        {"name": "lung", "bundle": str(bundles["cxr_lung_segmentation"]), "output": "seg", "rules": CR_RULES,
         "single_instance": True},
    ]


CT_RULES = {"Modality": "CT", "ImageType": ["!LOCALIZER"]}


def ct_series_copy(data_root: Path, target: Path) -> list[Path]:
    """The real 20-slice CT series with its blanked UIDs filled in (pixels untouched), written to ``target``."""
    folder = data_root / CT_SERIES
    datasets = assign_missing_uids([pydicom.dcmread(p) for p in sorted(folder.iterdir())], folder.name)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = target / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


REAL_BUNDLES = {
    "cxr_classification": "dissect_cxr_classification",
    "cxr_lung_segmentation": "dissect_cxr_lung_segmentation",
    "ct_segmentation": "dissect_ct_segmentation",
}


def project_bundle(repo_root: Path, kind: str, scratch: Path) -> tuple[Path, bool]:
    """A copy in ``scratch`` of the project's bundle for ``kind`` and whether its trained weights are used.

    With the shipped ``models/model.pt`` the copy holds the bundle's configs, docs and that file only (nothing
    generated locally, e.g. a ``quality_gate.pt``), so a test may add files to it; otherwise
    :func:`harness.bundles.untrained_copy` (real configs, random weights).
    """
    bundle = repo_root / "bundles" / REAL_BUNDLES[kind]
    if not (bundle / "models" / "model.pt").is_file():
        return untrained_copy(bundle, scratch), False

    def generated(folder: str, names: list[str]) -> list[str]:
        if Path(folder).name == "models":
            return [n for n in names if n != "model.pt"]
        return [n for n in names if n in ("eval", "runs", "__pycache__")]

    return Path(shutil.copytree(bundle, scratch / bundle.name, ignore=generated)), True


class ResultStore:
    """A real C-STORE SCP on 127.0.0.1 standing in for the PACS; keeps what it receives."""

    def __init__(self, port: int | None = None) -> None:
        self.received: list[pydicom.Dataset] = []
        self.port = port or free_port()
        ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(pydicom.dcmread(io.BytesIO(event.encoded_dataset())))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def serve_node(config: Path, log: Path) -> subprocess.Popen:
    """``python -m dissect_monai.deploy serve --config`` as a child process (its own interpreter and GIL)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "dissect_monai.deploy", "serve", "--config", str(config)],
            stdout=handle, stderr=subprocess.STDOUT, env=env,
        )
