"""ResNetFeaturePyramid shapes / TorchScript, and load_pretrained_encoder's formats and errors."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import ResNet

from dissect_monai.networks import PretrainedWeightsError, ResNetFeaturePyramid, load_pretrained_encoder


@pytest.mark.parametrize("depth,channels", [(10, 512), (18, 512), (34, 512), (50, 2048)])
def test_pyramid_2d_shapes(depth: int, channels: int) -> None:
    net = ResNetFeaturePyramid(spatial_dims=2, in_channels=1, depth=depth)
    maps = net(torch.randn(2, 1, 64, 96))
    assert len(maps) == 5
    assert net.strides == (2, 4, 8, 16, 32)
    for m, c, s in zip(maps, net.out_channels, net.strides):
        assert tuple(m.shape) == (2, c, 64 // s, 96 // s)
    assert net.feature_dim == channels == net.out_channels[-1]
    assert tuple(net.pooled(torch.randn(2, 1, 64, 64)).shape) == (2, channels)


def test_pyramid_3d_shapes() -> None:
    net = ResNetFeaturePyramid(spatial_dims=3, in_channels=1, depth=10)
    maps = net(torch.randn(2, 1, 32, 32, 64))
    assert [tuple(m.shape[2:]) for m in maps] == [(16, 16, 32), (8, 8, 16), (4, 4, 8), (2, 2, 4), (1, 1, 2)]
    assert net.out_channels == (64, 64, 128, 256, 512)


def test_pyramid_matches_monai_resnet_keys_and_torchscript() -> None:
    net = ResNetFeaturePyramid(depth=18).eval()
    monai_resnet = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=1,
                          conv1_t_stride=2, feed_forward=False)
    assert set(net.state_dict()) == set(monai_resnet.state_dict())
    net.load_state_dict(monai_resnet.state_dict())
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 64, 64)
    for a, b in zip(scripted(x), net(x)):
        torch.testing.assert_close(a, b)


def test_bad_depth() -> None:
    with pytest.raises(ValueError, match="depth"):
        ResNetFeaturePyramid(depth=20)


def _different_copy(net: ResNetFeaturePyramid) -> ResNetFeaturePyramid:
    other = ResNetFeaturePyramid(depth=net.depth)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    return other


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        torch.testing.assert_close(va, vb)


def test_load_plain_state_dict(tmp_path) -> None:
    src = ResNetFeaturePyramid(depth=10)
    torch.save(src.state_dict(), tmp_path / "enc.pt")
    dst = load_pretrained_encoder(tmp_path / "enc.pt", ResNetFeaturePyramid(depth=10))
    _assert_same(src, dst)


def test_load_training_checkpoint_prefers_online_encoder(tmp_path) -> None:
    online = ResNetFeaturePyramid(depth=10)
    target = _different_copy(online)
    model_sd = {f"target_encoder.{k}": v for k, v in target.state_dict().items()}
    model_sd.update({f"module.encoder.{k}": v for k, v in online.state_dict().items()})
    model_sd["projector.0.weight"] = torch.zeros(3, 3)
    torch.save({"model": model_sd, "iteration": 7}, tmp_path / "ckpt.pt")
    dst = load_pretrained_encoder(tmp_path / "ckpt.pt", ResNetFeaturePyramid(depth=10))
    _assert_same(online, dst)
    # an explicit prefix selects the other copy
    dst2 = load_pretrained_encoder(tmp_path / "ckpt.pt", ResNetFeaturePyramid(depth=10), prefix="target_encoder.")
    _assert_same(target, dst2)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_pretrained_encoder(tmp_path / "nope.pt", ResNetFeaturePyramid(depth=10))


def test_architecture_mismatch_names_file_and_keys(tmp_path) -> None:
    torch.save(ResNetFeaturePyramid(depth=10).state_dict(), tmp_path / "r10.pt")
    with pytest.raises(PretrainedWeightsError, match=r"r10\.pt.*ResNet-18.*missing keys \(e\.g\. layer1\.1\."):
        load_pretrained_encoder(tmp_path / "r10.pt", ResNetFeaturePyramid(depth=18))


def test_deeper_checkpoint_is_refused_not_silently_truncated(tmp_path) -> None:
    """A ResNet-34 checkpoint holds every ResNet-18 key; its extra blocks must not be dropped in silence."""
    torch.save({"encoder." + k: v for k, v in ResNetFeaturePyramid(depth=34).state_dict().items()}, tmp_path / "r34.pt")
    with pytest.raises(PretrainedWeightsError, match=r"r34\.pt.*ResNet-18.*unexpected keys \(e\.g\. layer1\.2\."):
        load_pretrained_encoder(tmp_path / "r34.pt", ResNetFeaturePyramid(depth=18))


def test_shape_mismatch_names_shapes(tmp_path) -> None:
    torch.save(ResNetFeaturePyramid(depth=10, in_channels=3).state_dict(), tmp_path / "rgb.pt")
    with pytest.raises(PretrainedWeightsError, match=r"rgb\.pt.*conv1\.weight: checkpoint \(64, 3, 7, 7\) vs encoder "
                                                     r"\(64, 1, 7, 7\)"):
        load_pretrained_encoder(tmp_path / "rgb.pt", ResNetFeaturePyramid(depth=10))


def test_unrelated_and_unsafe_files(tmp_path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(PretrainedWeightsError, match="other.pt.*no encoder key"):
        load_pretrained_encoder(tmp_path / "other.pt", ResNetFeaturePyramid(depth=10))
    torch.save({"state": ResNetFeaturePyramid(depth=10)}, tmp_path / "pickled_module.pt")  # not weights-only
    with pytest.raises(PretrainedWeightsError, match="pickled_module.pt"):
        load_pretrained_encoder(tmp_path / "pickled_module.pt", ResNetFeaturePyramid(depth=10))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="garbage.pt"):
        load_pretrained_encoder(tmp_path / "garbage.pt", ResNetFeaturePyramid(depth=10))
