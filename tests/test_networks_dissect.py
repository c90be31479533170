"""DiSSECT model: BYOL equivalence with VQ off, target EMA, options, embedder export and encoder loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dissect_monai.networks import (
    DiSSECT,
    DiSSECTEmbedder,
    PretrainedWeightsError,
    QuantisedDescriptor,
    ResNetFeaturePyramid,
    load_pretrained_encoder,
    load_pretrained_quantizer,
)

SMALL_QUANTIZER = {"num_codes": 8, "code_dims": 4}


def _embedder(use_quantizer: bool = True, scales: tuple[int, ...] = (1, 2, 3)) -> DiSSECTEmbedder:
    """ResNet-10 pyramid + (8 codes x 4 dims per scale) quantizer."""
    return DiSSECTEmbedder(
        ResNetFeaturePyramid(depth=10), use_quantizer, scales, SMALL_QUANTIZER if use_quantizer else None
    )


def _model(use_quantizer: bool = True, scales: tuple[int, ...] = (1, 2, 3), **options) -> DiSSECT:
    return DiSSECT(_embedder(use_quantizer, scales), hidden_dim=32, projection_dim=16, **options)


def _views(batch: int = 4, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, size, size, generator=g), torch.randn(batch, 1, size, size, generator=g)


def _textbook_byol(model: DiSSECT, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """BYOL as in the paper, one view at a time: mean of 2 - 2 cos(q(g(f(v))), g'(f'(v'))) over both directions."""

    def online(v):
        return model.predictor(model.projector(model.encoder(v)[-1].mean(dim=(2, 3))))

    def target(v):
        with torch.no_grad():
            return model.target_projector(model.target_encoder(v)[-1].mean(dim=(2, 3)))

    def loss(p, z):
        return (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean()

    return 0.5 * (loss(online(v1), target(v2)) + loss(online(v2), target(v1)))


def test_vq_off_is_byol() -> None:
    torch.manual_seed(0)
    model = _model(use_quantizer=False)
    assert model.quantizer is None and not any("quantizer" in k or "discrete" in k for k in model.state_dict())
    v1, v2 = _views()
    # BN on running statistics: the joint two-view batch must equal the per-view textbook computation
    model.eval()
    out = model(v1, v2)
    assert set(out) == {"loss", "continuous_loss"}
    torch.testing.assert_close(out["loss"], _textbook_byol(model, v1, v2))
    # in training mode (batch statistics over both views) the same with the views passed as one batch
    model.train()
    out = model(v1, v2)
    x = torch.cat([v1, v2])
    p = model.predictor(model.projector(model.encoder(x)[-1].mean(dim=(2, 3))))
    z = model.target_projector(model.target_encoder(x)[-1].mean(dim=(2, 3))).detach()
    ref = 0.5 * ((2 - 2 * F.cosine_similarity(p[:4], z[4:])).mean()
                 + (2 - 2 * F.cosine_similarity(p[4:], z[:4])).mean())
    torch.testing.assert_close(out["loss"], ref)


def test_vq_on_continuous_term_equals_byol_with_same_weights() -> None:
    torch.manual_seed(0)
    dissect = _model().train()
    byol = _model(use_quantizer=False).train()
    shared = {k: v for k, v in dissect.state_dict().items() if k in byol.state_dict()}
    assert set(shared) == set(byol.state_dict())
    byol.load_state_dict(shared)
    v1, v2 = _views()
    out_d, out_b = dissect(v1, v2), byol(v1, v2)
    torch.testing.assert_close(out_d["continuous_loss"], out_b["loss"])
    out_d["continuous_loss"].backward()
    out_b["loss"].backward()
    for (name, pd), pb in zip(dissect.encoder.named_parameters(), byol.encoder.parameters()):
        torch.testing.assert_close(pd.grad, pb.grad, msg=name)


@pytest.mark.parametrize(
    "options,terms",
    [
        ({}, {"continuous_loss", "discrete_loss", "commitment_loss"}),
        ({"discrete_only": True, "scales": (2, 3, 4)}, {"discrete_loss", "commitment_loss"}),
        ({"discrete_only": True, "fusion": "concat"}, {"discrete_loss", "commitment_loss"}),
        ({"consistency_weight": 0.5}, {"continuous_loss", "discrete_loss", "commitment_loss", "consistency_loss"}),
        ({"fusion": "concat"}, {"continuous_loss", "discrete_loss", "commitment_loss"}),
        ({"fusion": "cross_attention", "fusion_dim": 8, "fusion_heads": 2, "scales": (2, 3)},
         {"continuous_loss", "discrete_loss", "commitment_loss"}),
    ],
)
def test_options_train_every_online_parameter(options: dict, terms: set) -> None:
    torch.manual_seed(0)
    model = _model(**options).train()
    out = model(*_views())
    assert set(out) == terms | {"loss"}
    expected = (
        out.get("continuous_loss", 0) + out["discrete_loss"] + out["commitment_loss"]
        + options.get("consistency_weight", 0) * out.get("consistency_loss", 0)
    )
    torch.testing.assert_close(out["loss"], expected)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())
    out["loss"].backward()
    online = {id(p) for p in model.online_parameters()}
    for name, p in model.named_parameters():
        if name.startswith("target_"):
            assert id(p) not in online and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} receives no gradient"
    assert ("projector.layers.0.weight" in dict(model.named_parameters())) != options.get("discrete_only", False)


def test_update_target_cosine_ema() -> None:
    torch.manual_seed(0)
    model = _model()
    with torch.no_grad():
        for p in model.online_parameters():
            p.add_(torch.randn_like(p))
    pairs = [("encoder", "target_encoder"), ("projector", "target_projector"),
             ("quantizer.projections", "target_projections"), ("descriptor", "target_descriptor"),
             ("discrete_projector", "target_discrete_projector")]

    def params(prefix):
        module = model.embedder if prefix.startswith(("encoder", "quantizer")) else model
        return [p.detach().clone() for p in module.get_submodule(prefix).parameters()]

    before = {t: params(t) for _, t in pairs}
    online = {o: params(o) for o, _ in pairs}
    assert model.update_target(0.0) == pytest.approx(0.996)
    for o, t in pairs:
        for pt, p0, po in zip(params(t), before[t], online[o]):
            torch.testing.assert_close(pt, 0.996 * p0 + 0.004 * po)
    after = {t: params(t) for _, t in pairs}
    assert model.update_target(1.0) == 1.0
    for _, t in pairs:
        for a, b in zip(params(t), after[t]):
            torch.testing.assert_close(a, b)


def test_bf16_autocast_keeps_losses_and_codebooks_fp32() -> None:
    torch.manual_seed(0)
    model = _model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*_views())
    assert all(v.dtype == torch.float32 for v in out.values())
    assert all(cb.codebook.dtype == torch.float32 for cb in model.quantizer.codebooks)
    stats = model.codebook_statistics()
    assert set(stats) == {f"{s}_{k}" for s in ("c2", "c3", "c4") for k in ("perplexity", "usage", "dead_codes")}
    assert 1.0 <= stats["c2_perplexity"] <= 8.0


@pytest.mark.parametrize("use_quantizer", [True, False])
def test_embedder_torchscript_and_codes(use_quantizer: bool) -> None:
    torch.manual_seed(0)
    model = _model(use_quantizer=use_quantizer).train()
    model(*_views())
    embedder = model.embedder.eval()
    x = torch.randn(2, 1, 64, 64)
    scripted = torch.jit.script(embedder)
    torch.testing.assert_close(scripted(x), embedder(x))
    encoded, reference = scripted.encode(x), embedder.encode(x)
    assert set(encoded) == set(reference)
    for key in encoded:
        assert torch.equal(encoded[key], reference[key]), key
    assert tuple(encoded["embedding"].shape) == (2, 512)
    if use_quantizer:
        assert {k: tuple(v.shape) for k, v in encoded.items() if k != "embedding"} == {
            "codes_c2": (2, 16, 16), "codes_c3": (2, 8, 8), "codes_c4": (2, 4, 4)}
        assert int(encoded["codes_c2"].max()) < 8
    # a fresh embedder built from config loads the bundle's state dict
    rebuilt = _embedder(use_quantizer)
    rebuilt.load_state_dict(embedder.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x), embedder(x))


def test_encoder_loads_from_bundle_model_and_training_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    model = _model()
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.add_(1.0)  # make the target copy differ from the online encoder
    torch.save(model.embedder.state_dict(), tmp_path / "model.pt")
    torch.save({"network": model.state_dict(), "iteration": 3}, tmp_path / "checkpoint.pt")
    for name in ("model.pt", "checkpoint.pt"):
        encoder = load_pretrained_encoder(tmp_path / name, ResNetFeaturePyramid(depth=10))
        for (k, a), b in zip(encoder.state_dict().items(), model.encoder.state_dict().values()):
            torch.testing.assert_close(a, b, msg=f"{name}: {k}")


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="discrete_only"):
        _model(use_quantizer=False, discrete_only=True)
    with pytest.raises(ValueError, match="fusion"):
        _model(fusion="sum")
    with pytest.raises(ValueError, match="need a quantizer"):
        _model(use_quantizer=False, consistency_weight=1.0)
    with pytest.raises(ValueError, match="scales"):
        _embedder(scales=(5,))
    with pytest.raises(ValueError, match="quantizer_args"):
        DiSSECTEmbedder(ResNetFeaturePyramid(depth=10), use_quantizer=False, quantizer_args={"num_codes": 8})
    with pytest.raises(ValueError, match="deepest map"):
        _model(discrete_only=True)
    with pytest.raises(ValueError, match="same shape"):
        _model()(torch.randn(2, 1, 32, 32), torch.randn(2, 1, 64, 64))


@pytest.mark.parametrize("scales", [(1, 2, 3), (2, 4)])
def test_quantizer_settings_are_read_from_the_checkpoint(tmp_path, scales) -> None:
    """Sizes and scales of any quantizer come back from model.pt / a training checkpoint, not from defaults."""
    torch.manual_seed(0)
    model = DiSSECT(DiSSECTEmbedder(ResNetFeaturePyramid(depth=10), scales=scales,
                                    quantizer_args={"num_codes": [8, 16, 8][: len(scales)], "code_dims": 4}),
                    hidden_dim=32, projection_dim=16).train()
    model(*_views())  # initialises the codebooks from data
    torch.save(model.embedder.state_dict(), tmp_path / "model.pt")
    torch.save({"network": model.state_dict(), "iteration": 3}, tmp_path / "checkpoint.pt")
    maps = model.encoder.eval()(torch.randn(2, 1, 32, 32))
    for name in ("model.pt", "checkpoint.pt"):
        quantizer, read_scales = load_pretrained_quantizer(tmp_path / name)
        assert read_scales == list(scales)
        assert quantizer.num_codes == model.quantizer.num_codes and quantizer.code_dims == model.quantizer.code_dims
        for key, value in model.quantizer.state_dict().items():
            assert torch.equal(quantizer.state_dict()[key], value), key
        descriptor = QuantisedDescriptor.from_checkpoint(tmp_path / name)
        expected = model.descriptor.eval()(model.quantizer.quantize(model.quantizer.project(
            [maps[s] for s in scales]))[0], maps[-1])
        torch.testing.assert_close(descriptor(maps), expected)


def test_a_checkpoint_without_quantizer_is_a_clear_error(tmp_path) -> None:
    torch.save(_embedder(use_quantizer=False).state_dict(), tmp_path / "byol.pt")
    with pytest.raises(PretrainedWeightsError, match="byol.pt.*MultiScaleQuantizer"):
        load_pretrained_quantizer(tmp_path / "byol.pt")
    with pytest.raises(ValueError, match="no checkpoint"):
        QuantisedDescriptor.from_checkpoint(None)


def test_embedder_quantises_a_3d_vit_token_pyramid_with_3d_projections() -> None:
    from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid

    vit = ViTEncoder(img_size=16, patch_size=8, hidden_size=24, mlp_dim=32, num_layers=3, num_heads=2,
                     spatial_dims=3, class_token=False)
    embedder = DiSSECTEmbedder(ViTTokenPyramid(vit), scales=(0, 2), quantizer_args=SMALL_QUANTIZER).eval()
    assert all(isinstance(p, torch.nn.Conv3d) for p in embedder.quantizer.projections)
    codes = embedder.encode(torch.rand(2, 1, 16, 16, 16))
    assert codes["codes_block1"].shape == (2, 2, 2, 2) and codes["codes_block3"].shape == (2, 2, 2, 2)
