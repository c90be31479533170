"""FeaturePyramidUNet: shapes in 2D/3D, frozen vs fine-tuned encoder, extra skips, pretrained encoder, TorchScript."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dissect_monai.networks import ResNetFeaturePyramid
from dissect_monai.networks.segmentation import FeaturePyramidUNet


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(
    "spatial_dims,shape",
    [(2, (2, 1, 64, 64)), (2, (1, 1, 50, 70)), (3, (1, 1, 32, 40, 16))],
)
def test_output_shape_matches_input(spatial_dims, shape):
    encoder = ResNetFeaturePyramid(spatial_dims=spatial_dims, depth=10)
    net = FeaturePyramidUNet(spatial_dims=spatial_dims, out_channels=3, encoder=encoder).eval()
    with torch.no_grad():
        y = net(torch.rand(*shape))
    assert y.shape == (shape[0], 3, *shape[2:])
    assert y.dtype == torch.float32


def test_frozen_encoder_keeps_weights_and_statistics():
    net = FeaturePyramidUNet(spatial_dims=2, depth=10, freeze_encoder=True)
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    net.train()
    assert not net.encoder.training and net.decoder.training
    loss = net(torch.rand(2, 1, 64, 64)).square().mean()
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in net.encoder.parameters())
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, before[k]), f"frozen encoder changed {k}"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.decoder.parameters())


def test_fine_tuned_encoder_gets_gradients():
    net = FeaturePyramidUNet(spatial_dims=2, depth=10).train()
    net(torch.rand(2, 1, 64, 64)).square().mean().backward()
    assert net.encoder.conv1.weight.grad is not None and net.encoder.conv1.weight.grad.abs().sum() > 0


class _CodeMaps(nn.Module):
    """Extra skips at the two deepest stages (a stand-in for quantised code maps of the same size)."""

    def __init__(self) -> None:
        super().__init__()
        self.out_channels = (0, 0, 0, 4, 8)
        self.proj3 = nn.Conv2d(256, 4, 1)
        self.proj4 = nn.Conv2d(512, 8, 1)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor | None]:
        return [None, None, None, self.proj3(feats[3]), self.proj4(feats[4])]


def test_extra_skips_are_concatenated_and_used():
    extra = _CodeMaps()
    net = FeaturePyramidUNet(spatial_dims=2, out_channels=2, extra_skips=extra)
    assert net.decoder[0].convs[0].conv.in_channels == 512 + 8 + 256 + 4
    net(torch.rand(1, 1, 64, 64)).sum().backward()
    assert extra.proj4.weight.grad is not None and extra.proj4.weight.grad.abs().sum() > 0


def test_pretrained_encoder_is_loaded(tmp_path):
    source = ResNetFeaturePyramid(spatial_dims=2, depth=10)
    path = tmp_path / "model.pt"
    torch.save({"encoder." + k: v for k, v in source.state_dict().items()}, path)
    net = FeaturePyramidUNet(spatial_dims=2, depth=10, encoder_checkpoint=str(path))
    for k, v in source.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        FeaturePyramidUNet(spatial_dims=2, depth=10, encoder_checkpoint=str(tmp_path / "missing.pt"))


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="decoder_channels"):
        FeaturePyramidUNet(spatial_dims=2, depth=10, decoder_channels=(64, 32))
    with pytest.raises(ValueError, match="spatial_dims"):
        FeaturePyramidUNet(spatial_dims=1)
    with pytest.raises(ValueError, match="precision"):
        FeaturePyramidUNet(spatial_dims=2, depth=10, precision="fp8")


def test_bf16_path_close_to_fp32_and_scriptable():
    net = FeaturePyramidUNet(spatial_dims=2, depth=10, precision="bf16").eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        y_bf16 = net(x)
        net.precision = "fp32"
        y_fp32 = net(x)
        scripted = torch.jit.script(net)
        assert torch.allclose(scripted(x), y_fp32, atol=1e-5)
    assert y_bf16.dtype == torch.float32
    assert (y_bf16 - y_fp32).abs().max() < 0.1 * y_fp32.abs().max()


def test_quantized_skips_from_a_dissect_checkpoint(tmp_path):
    from dissect_monai.networks.dissect import DiSSECTEmbedder
    from dissect_monai.networks.segmentation import QuantizedSkips

    pretrained = DiSSECTEmbedder(ResNetFeaturePyramid(spatial_dims=2, depth=10),
                                 quantizer_args={"num_codes": 16, "code_dims": 8})
    path = tmp_path / "model.pt"
    torch.save(pretrained.state_dict(), path)
    encoder = ResNetFeaturePyramid(spatial_dims=2, depth=10)
    skips = QuantizedSkips.from_checkpoint(str(path))
    assert skips.stages == [1, 2, 3] and skips.out_channels == (0, 8, 8, 8, 0)
    for k, v in pretrained.quantizer.state_dict().items():
        assert torch.equal(skips.quantizer.state_dict()[k], v), k
    codebook = {k: v.clone() for k, v in skips.quantizer.state_dict().items()}
    net = FeaturePyramidUNet(spatial_dims=2, encoder=encoder, encoder_checkpoint=str(path), extra_skips=skips).train()
    assert skips.out_channels == (0, 8, 8, 8, 0)
    net(torch.rand(2, 1, 64, 64)).square().mean().backward()
    assert skips.quantizer.projections[0].weight.grad is not None  # straight-through reaches the projection
    for k, v in skips.quantizer.state_dict().items():
        if "codebook" in k:
            assert torch.equal(v, codebook[k]), f"{k} changed: the transfer must not EMA-update codebooks"
