"""Every method preset's encoder is built from the pretraining bundle config, loads its own checkpoints only, and
plugs into the transfer networks (classification features, U-Net segmentation)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import partial
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

import dissect_monai.networks
from dissect_monai.networks import PretrainedWeightsError
from dissect_monai.networks.mlvicx import ContextResNetFeaturePyramid
from dissect_monai.networks.presets import method_names
from dissect_monai.networks.presets import build_method_embedder as _build_method_embedder
from dissect_monai.networks.presets import method_encoder as _method_encoder
from dissect_monai.networks.segmentation import FeaturePyramidUNet
from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid

REPO = Path(__file__).resolve().parents[1]
METHODS_DIR = REPO / "configs" / "methods"
PRETRAIN = REPO / "bundles" / "dissect_cxr_pretrain"
SIZE = 32
build_method_embedder = partial(_build_method_embedder, methods_dir=METHODS_DIR, bundle_root=PRETRAIN)
method_encoder = partial(_method_encoder, methods_dir=METHODS_DIR, bundle_root=PRETRAIN)


def test_every_ssl_model_in_the_package_has_a_preset():
    """Each SSL model class (one with an ``update_target`` step) is the network of some preset in configs/methods."""
    models = set()
    for info in pkgutil.iter_modules(dissect_monai.networks.__path__):
        module = importlib.import_module(f"dissect_monai.networks.{info.name}")
        models |= {f"{c.__module__}.{c.__name__}" for _, c in inspect.getmembers(module, inspect.isclass)
                   if c.__module__ == module.__name__ and hasattr(c, "update_target")}
    targets = set()
    for method in method_names(METHODS_DIR):
        parser = ConfigParser()
        parser.read_config([str(PRETRAIN / "configs" / "train.yaml"), str(METHODS_DIR / f"{method}.yaml")])
        targets.add(parser["network_def"]["_target_"])
    assert len(models) >= 7 and models <= targets, sorted(models - targets)


def test_method_list_comes_from_the_presets_folder(tmp_path):
    for name in ("b", "a"):
        (tmp_path / f"{name}.yaml").write_text("quantizer: false\n")
    (tmp_path / "README.md").write_text("not a preset")
    assert method_names(tmp_path) == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="no method presets"):
        method_names(tmp_path / "missing")


@pytest.mark.parametrize("method", method_names(METHODS_DIR))
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
        loaded = build_method_embedder("mlvicx", SIZE, checkpoint=path)
        assert torch.equal(loaded(x), mlvicx.eval()(x))
    # MLVICX's context bottlenecks are part of its encoder: a plain ResNet pyramid must not take the weights
    with pytest.raises(PretrainedWeightsError, match=str(path)):
        build_method_embedder("byol", SIZE, checkpoint=path)


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
    loaded = build_method_embedder("dissect", SIZE, checkpoint=path)
    for ours, theirs in zip(loaded.quantizer.codebooks, trained.quantizer.codebooks):
        assert torch.equal(ours.codebook, theirs.codebook)


def test_dissect_checkpoint_of_other_quantizer_settings_loads_without_repeating_them(tmp_path):
    """The preset builds the checkpoint's quantizer (sizes, scales) rather than its own defaults."""
    torch.manual_seed(0)
    trained = build_method_embedder("dissect", SIZE, overrides={
        "network_def#embedder#scales": [2, 4], "network_def#embedder#quantizer_args": {"num_codes": 16}})
    path = tmp_path / "model.pt"
    torch.save(trained.state_dict(), path)
    loaded = build_method_embedder("dissect", SIZE, checkpoint=path)
    assert loaded.scales == [2, 4] and loaded.quantizer.num_codes == (16, 16)
    x = torch.rand(2, 1, SIZE, SIZE)
    for key, value in trained.encode(x).items():
        assert torch.equal(loaded.encode(x)[key], value), key
