"""Every method preset trains a few steps in the pretraining bundle on real chest X-rays, through the shared engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from dissect_monai.networks import load_pretrained_encoder
from dissect_monai.networks.presets import method_names
from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid

METHODS = method_names(Path(__file__).resolve().parents[1] / "configs" / "methods")


def _real_images(data_root: Path, n: int) -> list[dict]:
    images = sorted((data_root / "nih-cxr-pneumonia" / "images").glob("*.png"))[:n]
    assert len(images) == n, f"expected {n} NIH images under {data_root}"
    return [{"image": str(p)} for p in images]


@pytest.mark.parametrize("method", METHODS)
def test_method_preset_trains_in_pretraining_bundle(method, repo_root, data_root, tmp_path):
    torch.set_num_threads(1)
    bundle = repo_root / "bundles" / "dissect_cxr_pretrain"
    workflow = ConfigWorkflow(
        config_file=[str(bundle / "configs" / "train.yaml"), str(repo_root / "configs" / "methods" / f"{method}.yaml")],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=str(bundle),
        output_dir=str(tmp_path / "models"),
        log_dir=str(tmp_path / "logs"),
        image_size=64,
        batch_size=4,
        epochs=1,
        progress_bar=False,
        seed=0,
    )
    workflow.parser["train#datalist"] = _real_images(data_root, 8)  # 2 iterations of 4 real images
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    trained = {n: p.detach().clone() for n, p in network.named_parameters() if p.requires_grad}
    workflow.run()

    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2
    output = trainer.state.output
    assert "loss" in output and all(math.isfinite(float(v)) for v in output.values()), output
    changed = [n for n, p in network.named_parameters() if n in trained and not torch.equal(trained[n], p)]
    assert len(changed) > 0.9 * len(trained), f"{method}: only {len(changed)} of {len(trained)} parameters moved"

    model_file = tmp_path / "models" / "model.pt"
    assert model_file.is_file()
    embedder = workflow.parser.get_parsed_content("embedder")
    fresh = _rebuild(embedder.encoder)
    load_pretrained_encoder(model_file, fresh)
    for (name, a), b in zip(embedder.encoder.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), f"{method}: {name} not restored from model.pt"


def _rebuild(encoder: torch.nn.Module) -> torch.nn.Module:
    """A freshly initialised encoder of the same architecture as ``encoder``."""
    if isinstance(encoder, ViTTokenPyramid):
        return ViTTokenPyramid(_rebuild(encoder.encoder), encoder.depths)
    if isinstance(encoder, ViTEncoder):
        return ViTEncoder(
            in_channels=encoder.in_channels, img_size=encoder.img_size, patch_size=encoder.patch_size,
            hidden_size=encoder.feature_dim, mlp_dim=encoder.blocks[0].mlp.linear1.out_features,
            num_layers=encoder.num_layers, num_heads=encoder.num_heads, class_token=encoder.cls_token is not None,
        )
    return type(encoder)(spatial_dims=encoder.spatial_dims, in_channels=encoder.in_channels, depth=encoder.depth)
