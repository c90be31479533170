"""Release weights of a bundle: a compact fp16 state dict that loads strictly into the fp32 network of the bundle's
``inference.yaml``, its ``large_files.yml`` (path, sha256; the url is the publisher's) and the check of both.

TorchScript is not tracked; it is rebuilt from the shipped state dict by MONAI's own command, e.g.::

    python -m monai.bundle ckpt_export network_def --filepath bundles/<name>/models/model.ts \\
        --ckpt_file bundles/<name>/models/model.pt --meta_file bundles/<name>/configs/metadata.json \\
        --config_file bundles/<name>/configs/inference.yaml --bundle_root bundles/<name>
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from monai.bundle import ConfigParser

from dissect_monai.engines.checkpoint import atomic_write

__all__ = [
    "MODEL_PATH",
    "compact_state_dict",
    "export_bundle_weights",
    "inference_network",
    "read_state_dict",
    "replace_readme_section",
    "sha256_of",
    "update_metadata",
    "verify_large_files",
]

#: where a bundle's release weights live, relative to the bundle root
MODEL_PATH = "models/model.pt"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compact_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every floating-point tensor as contiguous fp16 (integer buffers such as BatchNorm's
    ``num_batches_tracked`` unchanged); ``load_state_dict`` of an fp32 network casts them back.

    Raises:
        ValueError: a floating value outside fp16's range (it would load as inf).
    """
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            if value.numel() and value.abs().max() > torch.finfo(torch.float16).max:
                raise ValueError(f"state dict entry {key!r} exceeds the fp16 range; it cannot be shipped as fp16")
            value = value.detach().to(torch.float16).contiguous()
        out[key] = value
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network state dict in ``path``: a plain state dict, or a ``CheckpointSaver`` file ``{"model": state}``.

    Raises:
        FileNotFoundError / ValueError: naming the file when it is missing or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (nor a checkpoint with a 'model' state dict)")
    return dict(state)


def inference_network(bundle: str | os.PathLike) -> torch.nn.Module:
    """The fp32 ``network_def`` of ``<bundle>/configs/inference.yaml`` (built on CPU, no weights loaded)."""
    bundle = Path(bundle)
    parser = ConfigParser()
    parser.read_meta(bundle / "configs" / "metadata.json")
    parser.read_config(bundle / "configs" / "inference.yaml")
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def", instantiate=True).float().eval()


def export_bundle_weights(source: str | os.PathLike, bundle: str | os.PathLike) -> dict[str, Any]:
    """Write the compact fp16 state dict of ``source`` to ``<bundle>/models/model.pt`` (after a strict load into the
    bundle's inference network) and ``<bundle>/large_files.yml``; returns the ``large_files`` entry."""
    bundle = Path(bundle)
    state = compact_state_dict(read_state_dict(source))
    inference_network(bundle).load_state_dict(state, strict=True)
    target = bundle / MODEL_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda f: torch.save(state, f))
    entry = {"path": MODEL_PATH, "url": "", "hash_val": sha256_of(target), "hash_type": "sha256"}
    text = yaml.safe_dump({"large_files": [entry]}, sort_keys=False)
    atomic_write(bundle / "large_files.yml", lambda f: f.write(text.encode()))
    return entry


def verify_large_files(bundle: str | os.PathLike) -> list[str]:
    """Check every file ``<bundle>/large_files.yml`` lists: present, its sha256 as recorded and, for the weights,
    loading strictly into the inference network; returns the paths checked (none without a ``large_files.yml``).

    Raises:
        ValueError: naming the bundle and file on a missing file, another hash or a state dict that does not load.
    """
    bundle = Path(bundle)
    listing = bundle / "large_files.yml"
    if not listing.is_file():
        return []
    entries = (yaml.safe_load(listing.read_text()) or {}).get("large_files", [])
    for entry in entries:
        path = bundle / entry["path"]
        if not path.is_file():
            raise ValueError(f"{listing}: {entry['path']} is listed but missing")
        if entry.get("hash_type", "sha256") != "sha256" or sha256_of(path) != entry["hash_val"]:
            raise ValueError(f"{listing}: sha256 of {entry['path']} is {sha256_of(path)}, listed {entry['hash_val']}")
        if entry["path"] == MODEL_PATH:
            try:
                inference_network(bundle).load_state_dict(read_state_dict(path), strict=True)
            except RuntimeError as e:
                raise ValueError(f"{bundle}: {MODEL_PATH} does not load strictly into inference.yaml's network: {e}")
    return [entry["path"] for entry in entries]


def update_metadata(bundle: str | os.PathLike, eval_metrics: Mapping[str, Any], version: str, note: str) -> None:
    """Set ``eval_metrics``, ``version`` and a changelog entry (``{version: note}``, newest first) in
    ``<bundle>/configs/metadata.json``; exporting again at the same version replaces that version's entry."""
    path = Path(bundle) / "configs" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["version"] = version
    metadata["changelog"] = {version: note, **{k: v for k, v in metadata.get("changelog", {}).items() if k != version}}
    metadata["eval_metrics"] = dict(eval_metrics)
    text = json.dumps(metadata, indent=4) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def replace_readme_section(readme: str | os.PathLike, heading: str, body: str) -> None:
    """Replace what follows ``## <heading>`` up to the next ``## `` heading of a bundle's ``docs/README.md``.

    Raises:
        ValueError: naming the file when it has no such section.
    """
    path = Path(readme)
    lines = path.read_text().splitlines()
    try:
        start = lines.index(f"## {heading}")
    except ValueError as e:
        raise ValueError(f"{path}: no '## {heading}' section") from e
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    text = "\n".join([*lines[: start + 1], *body.strip("\n").splitlines(), "", *lines[end:]]) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
