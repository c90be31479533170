"""Encoder maps (attention, anchor similarity, PCA, DiSSECT codes) on known cases; the maps report on real images;
the result plots (ROC curves, label-efficiency curves)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dissect_monai.networks.dissect import DiSSECTEmbedder
from dissect_monai.networks.embedder import EncoderEmbedder
from dissect_monai.networks.encoders import ResNetFeaturePyramid
from dissect_monai.networks.presets import build_method_embedder
from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid
from dissect_monai.viz import (
    anchor_similarity,
    code_index_maps,
    code_palette,
    grid_anchor,
    last_layer_attention,
    patch_feature_map,
    pca_rgb,
    typical_patches,
)
from dissect_monai.viz import label_efficiency_plot, panels, roc_curves_plot
from dissect_monai.viz.maps_report import write_encoder_maps


def _small_vit(class_token: bool = True) -> ViTEncoder:
    return ViTEncoder(img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4,
                      class_token=class_token)


def test_anchor_similarity_known_values():
    features = torch.zeros(1, 2, 2, 2)
    features[0, :, 0, 0] = torch.tensor([1.0, 0.0])  # the anchor
    features[0, :, 0, 1] = torch.tensor([3.0, 0.0])  # same direction, longer
    features[0, :, 1, 0] = torch.tensor([0.0, 2.0])  # orthogonal
    features[0, :, 1, 1] = torch.tensor([-1.0, 0.0])  # opposite
    sim = anchor_similarity(features, (0, 0))
    assert torch.allclose(sim[0], torch.tensor([[1.0, 1.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="outside"):
        anchor_similarity(features, (2, 0))


def test_pca_rgb_follows_the_main_direction():
    ramp = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    features = torch.cat([ramp * 10, ramp * 0 + 0.01 * torch.randn(1, 1, 4, 4), 0.01 * torch.randn(1, 1, 4, 4)], 1)
    rgb = pca_rgb(features)
    assert rgb.shape == (1, 4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    first = rgb[0, :, :, 0].flatten()
    corr = np.corrcoef(first, ramp.flatten().numpy())[0, 1]
    assert abs(corr) > 0.99  # first component = the ramp (sign is arbitrary)


def test_last_layer_attention_rows_and_errors():
    images = torch.rand(2, 1, 32, 32)
    for class_token in (True, False):
        embedder = EncoderEmbedder(_small_vit(class_token)).eval()
        attention = last_layer_attention(embedder, images)
        assert attention.shape == (2, 4, 4, 4)
        assert torch.allclose(attention.sum(dim=(-1, -2)), torch.ones(2, 4), atol=1e-5)
    with pytest.raises(ValueError, match="no ViT"):
        last_layer_attention(EncoderEmbedder(ResNetFeaturePyramid(depth=10)), images)


def test_last_layer_attention_is_the_class_token_row():
    vit = _small_vit(True).eval()
    images = torch.rand(1, 1, 32, 32)
    raw = vit.last_attention(images)
    maps = last_layer_attention(EncoderEmbedder(vit), images)
    expected = raw[0, :, 0, 1:] / raw[0, :, 0, 1:].sum(-1, keepdim=True)
    assert torch.allclose(maps[0].flatten(1), expected, atol=1e-6)


def test_patch_feature_map_grid_choice():
    images = torch.rand(2, 1, 64, 64)
    resnet = EncoderEmbedder(ResNetFeaturePyramid(depth=10)).eval()
    assert patch_feature_map(resnet, images).shape == (2, 128, 8, 8)  # C3 at 1/8
    vit = EncoderEmbedder(ViTEncoder(img_size=64, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=4)).eval()
    assert patch_feature_map(vit, images).shape == (2, 32, 8, 8)
    assert grid_anchor((8, 8)) == (2, 3)  # (column, row): MONAI axis order


def test_code_maps_and_typical_patches_of_dissect_vit():
    pyramid = ViTTokenPyramid(_small_vit(False), depths=(1, 2))
    embedder = DiSSECTEmbedder(pyramid, scales=(0, 1), quantizer_args={"num_codes": 8, "code_dims": 8}).eval()
    images = torch.rand(3, 1, 32, 32)
    codes = code_index_maps(embedder, images)
    assert list(codes) == ["block1", "block2"] and codes["block1"].shape == (3, 4, 4)
    typical = typical_patches(embedder, images, scale=1, num_codes=3, per_code=2, patch_px=12)
    counts = [t["count"] for t in typical]
    assert counts == sorted(counts, reverse=True) and counts[0] == np.bincount(codes["block2"].flatten()).max()
    for entry in typical:
        assert entry["patches"].shape[1:] == (12, 12)
        assert np.all(np.diff(entry["similarity"]) <= 1e-6)  # most typical first
    with pytest.raises(ValueError, match="no quantizer"):
        code_index_maps(DiSSECTEmbedder(ResNetFeaturePyramid(depth=10), use_quantizer=False), images)


def test_palette_and_panel_files(tmp_path):
    palette = code_palette(64)
    assert palette.shape == (64, 3) and palette.min() >= 0 and palette.max() <= 1
    assert len({tuple(np.round(c, 3)) for c in palette}) == 64
    images = np.random.rand(2, 32, 32)
    fig = panels.method_panel("t", images, np.random.rand(2, 4, 4), np.random.rand(2, 4, 4, 3), (1, 1),
                              np.random.rand(2, 3, 4, 4))
    path = panels.save(fig, tmp_path / "m.png")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="kind"):
        panels.comparison_panel("t", images, {"a": np.random.rand(2, 4, 4)}, "histogram")


@pytest.mark.timeout(300)
def test_maps_report_on_real_images(repo_root, data_root, tmp_path):
    torch.set_num_threads(1)
    checkpoint = tmp_path / "model.pt"
    embedder = build_method_embedder("dissect_vit", 64, repo_root / "configs" / "methods",
                                     repo_root / "bundles" / "dissect_cxr_pretrain")
    torch.save(embedder.state_dict(), checkpoint)
    out = tmp_path / "maps"
    run = {"name": "untrained", "method": "dissect_vit", "image_size": 64, "checkpoint": str(checkpoint)}
    record = write_encoder_maps([run], data_root, out, images=2, source="the `--run` arguments",
                                methods_dir=repo_root / "configs" / "methods",
                                pretrain_bundle=repo_root / "bundles" / "dissect_cxr_pretrain")
    names = {p.name for p in out.glob("*.png")}
    assert {"untrained.png", "untrained_codes.png", "untrained_typical_block6.png", "compare_similarity_64.png",
            "compare_pca_64.png", "compare_attention_64.png"} <= names
    assert json.loads((out / "maps.json").read_text()) == json.loads(json.dumps(record))
    assert [i["pneumonia"] for i in record["images"][64]] == [1, 0]
    assert record["runs"]["untrained"]["budget"] == "budget unknown"
    assert "untrained" in (out / "README.md").read_text()


def test_result_plots_write_pngs(tmp_path):
    y = np.array([[0, 1], [1, 0], [0, 1], [1, 1]])
    scores = np.array([[0.2, 0.9], [0.8, 0.1], [0.3, 0.7], [0.6, 0.4]])
    assert roc_curves_plot(y, scores, {"a": 1.0, "b": float("nan")}, tmp_path / "roc.png").stat().st_size > 1000
    panels_ = {"NIH": {"byol": [(0.01, 0.6, 0.02), (1.0, 0.8, 0.0)], "random": [(0.1, 0.55, 0.01)]}}
    path = label_efficiency_plot(panels_, tmp_path / "le.png", references={"NIH": ("published", 0.9)},
                                 dashed=["random"])
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="no panels"):
        label_efficiency_plot({}, tmp_path / "empty.png")
