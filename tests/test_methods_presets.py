"""Every method preset's encoder is built from the pretraining bundle config, loads its own checkpoints only, and
plugs into the transfer networks (classification features, U-Net segmentation)."""

from __future__ import annotations

import pytest
import torch

from dissect_monai.networks import PretrainedWeightsError
from dissect_monai.networks.mlvicx import ContextResNetFeaturePyramid
from dissect_monai.networks.presets import build_method_embedder, method_encoder, method_names
from dissect_monai.networks.segmentation import FeaturePyramidUNet
from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid

SIZE = 32


def test_every_shipped_method_has_a_preset():
    assert method_names() == ["byol", "coboom", "dino", "dissect", "dissect_vit", "ijepa", "mae", "mlvicx", "vicreg"]


@pytest.mark.parametrize("method", method_names())
def test_method_encoder_is_a_pyramid_the_unet_decodes(method):
    torch.manual_seed(0)
    encoder = method_encoder(method, SIZE).eval()
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        maps = encoder(x)
        logits = FeaturePyramidUNet(encoder=encoder, out_channels=2).eval()(x)
    assert [m.shape[1] for m in maps] == list(encoder.out_channels)
    assert logits.shape == (2, 2, SIZE, SIZE)


def test_checkpoint_roundtrip_and_refusal_of_another_methods_encoder(tmp_path):
    torch.manual_seed(0)
    mlvicx = build_method_embedder("mlvicx", SIZE)
    assert isinstance(mlvicx.encoder, ContextResNetFeaturePyramid)
    path = tmp_path / "model.pt"
    torch.save(mlvicx.state_dict(), path)
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        loaded = build_method_embedder("mlvicx", SIZE, path)
        assert torch.equal(loaded(x), mlvicx.eval()(x))
    # MLVICX's context bottlenecks are part of its encoder: a plain ResNet pyramid must not take the weights
    with pytest.raises(PretrainedWeightsError, match=str(path)):
        build_method_embedder("byol", SIZE, path)


def test_vit_methods_embed_with_their_token_and_segment_through_a_token_pyramid(tmp_path):
    mae = build_method_embedder("mae", SIZE)
    assert isinstance(mae.encoder, ViTEncoder) and mae.encoder.num_prefix_tokens == 1
    assert mae(torch.rand(3, 1, SIZE, SIZE)).shape == (3, mae.encoder.feature_dim)
    pyramid = method_encoder("mae", SIZE)
    assert isinstance(pyramid, ViTTokenPyramid) and pyramid.stage_names == ("block2", "block4", "block6")
    assert method_encoder("mae", SIZE, pyramid=False).__class__ is ViTEncoder


def test_unknown_method_names_the_known_presets():
    with pytest.raises(FileNotFoundError, match="known: .*'dissect'"):
        build_method_embedder("simclr", SIZE)


def test_dissect_checkpoint_restores_the_quantizer_too(tmp_path):
    torch.manual_seed(0)
    trained = build_method_embedder("dissect", SIZE)
    for codebook in trained.quantizer.codebooks:
        codebook.codebook.copy_(torch.nn.functional.normalize(torch.randn_like(codebook.codebook), dim=1))
    path = tmp_path / "model.pt"
    torch.save(trained.state_dict(), path)
    torch.manual_seed(1)
    loaded = build_method_embedder("dissect", SIZE, path)
    for ours, theirs in zip(loaded.quantizer.codebooks, trained.quantizer.codebooks):
        assert torch.equal(ours.codebook, theirs.codebook)
