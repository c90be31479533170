"""The standard MONAI bundle checks, shared by every bundle's tests (model-zoo CI's checks, offline).

Usage from a test::

    from bundle_checks import BundleUnderTest
    bundle = BundleUnderTest(repo_root / "bundles" / "dissect_cxr_pretrain")
    bundle.check_metadata()
    bundle.check_net_in_out("inference.yaml")
    bundle.check_ckpt_export("inference.yaml", tmp_path)
    bundle.check_properties("train", "train.yaml", dataset_dir=..., bundle_root=...)

Nothing is written inside the bundle: exports and any checkpoint go to the caller's temporary directory.
The metadata schema is the copy shipped in ``bundles/`` (``verify_metadata --filepath``), so no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO_ROOT / "bundles" / "meta_schema_20240725.json"

__all__ = ["BundleUnderTest", "SCHEMA_FILE"]


class BundleUnderTest:
    """One bundle directory (``configs/metadata.json``, ``configs/<name>.yaml``, ``configs/logging.conf``)."""

    def __init__(self, bundle_root: str | Path) -> None:
        self.root = Path(bundle_root).resolve()
        self.configs = self.root / "configs"
        self.meta_file = self.configs / "metadata.json"
        self.logging_file = self.configs / "logging.conf"
        for required in (self.meta_file, self.root / "LICENSE"):
            if not required.is_file():
                raise FileNotFoundError(f"bundle {self.root} lacks {required.relative_to(self.root)}")

    def config(self, *names: str) -> list[str]:
        """Absolute paths of config files ``names`` (e.g. ``"train.yaml"``), each checked to exist."""
        paths = [self.configs / name for name in names]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"bundle config not found: {path}")
        return [str(p) for p in paths]

    def check_metadata(self) -> None:
        """``verify_metadata`` against the shipped schema file (raises on any schema violation)."""
        if not SCHEMA_FILE.is_file():
            raise FileNotFoundError(f"shipped metadata schema missing: {SCHEMA_FILE}")
        verify_metadata(meta_file=str(self.meta_file), filepath=str(SCHEMA_FILE))

    def check_net_in_out(self, config: str = "inference.yaml", net_id: str = "network_def", **override: Any) -> None:
        """``verify_net_in_out``: a random input of the metadata's ``image`` shape gives ``pred`` channels/dtype."""
        verify_net_in_out(
            net_id=net_id,
            meta_file=str(self.meta_file),
            config_file=self.config(config),
            device="cpu",
            bundle_root=str(self.root),
            **override,
        )

    def network(self, config: str = "inference.yaml", net_id: str = "network_def", **override: Any) -> Any:
        """The network ``net_id`` instantiated from ``config`` (with the metadata available as ``_meta_``)."""
        parser = ConfigParser()
        parser.read_config(self.config(config))
        parser.read_meta(str(self.meta_file))
        parser["bundle_root"] = str(self.root)
        for key, value in override.items():
            parser[key] = value
        return parser.get_parsed_content(net_id)

    def check_ckpt_export(
        self,
        config: str,
        out_dir: str | Path,
        ckpt_file: str | Path | None = None,
        net_id: str = "network_def",
        input_shape: tuple[int, ...] | None = None,
        **override: Any,
    ) -> Path:
        """``ckpt_export`` to TorchScript in ``out_dir``, reload it, and compare its output with the eager net.

        Args:
            config: inference config name holding ``net_id``.
            out_dir: where the TorchScript file (and, without ``ckpt_file``, a checkpoint) are written.
            ckpt_file: state dict to export; ``None`` saves the freshly built network's state dict first.
            input_shape: shape of the comparison input; default ``(1, C, *spatial)`` from the metadata with
                ``"*"`` dimensions set to 64.
        Returns:
            path of the exported ``.ts`` file.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        net = self.network(config, net_id, **override)
        if ckpt_file is None:
            ckpt_file = out_dir / "model.pt"
            torch.save(net.state_dict(), ckpt_file)
        net.load_state_dict(torch.load(ckpt_file, map_location="cpu", weights_only=True))
        ts_file = out_dir / "model.ts"
        ckpt_export(
            net_id=net_id,
            filepath=str(ts_file),
            ckpt_file=str(ckpt_file),
            meta_file=str(self.meta_file),
            config_file=self.config(config),
            bundle_root=str(self.root),
            **override,
        )
        extra = {"metadata.json": ""}
        scripted = torch.jit.load(str(ts_file), map_location="cpu", _extra_files=extra)
        if not extra["metadata.json"]:
            raise AssertionError(f"{ts_file} carries no metadata.json")
        if input_shape is None:
            meta = ConfigParser.load_config_file(self.meta_file)["network_data_format"]["inputs"]["image"]
            spatial = [64 if isinstance(s, str) else int(s) for s in meta["spatial_shape"]]
            input_shape = (1, int(meta["num_channels"]), *spatial)
        x = torch.rand(*input_shape)
        net.eval()
        with torch.no_grad():
            expected, got = net(x), scripted(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        return ts_file

    def check_properties(self, workflow_type: str, configs: str | list[str], **override: Any) -> ConfigWorkflow:
        """``ConfigWorkflow(...).check_properties() == []`` after ``initialize()``; returns the workflow."""
        names = [configs] if isinstance(configs, str) else list(configs)
        override.setdefault("bundle_root", str(self.root))
        workflow = ConfigWorkflow(
            config_file=self.config(*names),
            meta_file=str(self.meta_file),
            logging_file=str(self.logging_file) if self.logging_file.is_file() else None,
            workflow_type=workflow_type,
            **override,
        )
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            raise AssertionError(f"{self.root.name} {names} ({workflow_type}) misses properties: {missing}")
        return workflow
