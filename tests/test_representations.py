"""The classifier network of the classification bundle (linear-probe freezing, quantised descriptor, bf16 features,
collated batches) and the batched feature extraction the probes use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dissect_monai.evaluation import extract_features
from dissect_monai.networks import ResNetFeaturePyramid
from dissect_monai.networks.classification import EncoderClassifier
from dissect_monai.networks.dissect import DiSSECTEmbedder, QuantisedDescriptor
from dissect_monai.networks.heads import DiscreteDescriptor


def test_linear_probe_classifier_freezes_encoder_and_batchnorm():
    net = EncoderClassifier(ResNetFeaturePyramid(), num_classes=2, freeze_encoder=True)
    net.train()
    assert not net.encoder.training and net.head.training
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    opt = torch.optim.SGD([g for g in net.parameter_groups(0.1, 0.01)][0]["params"], lr=0.1)
    loss = net(torch.rand(4, 1, 64, 64)).sum()
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in net.encoder.state_dict().items())  # running stats too
    assert [len(g["params"]) for g in net.parameter_groups(0.1, 0.01)] == [2]


def test_quantised_descriptor_matches_dissect_discrete_descriptor():
    """The classifier's descriptor = DiSSECT's fusion='none' descriptor of the quantised maps (eval mode)."""
    torch.manual_seed(0)
    embedder = DiSSECTEmbedder(quantizer_args={"num_codes": 32}).eval()
    x = torch.rand(2, 1, 64, 64)
    maps = embedder.encoder(x)
    quantised, _, _ = embedder.quantizer([maps[s] for s in embedder.scales])
    expected = DiscreteDescriptor(embedder.quantizer.code_dims, 512, fusion="none")(quantised, maps[-1])
    got = QuantisedDescriptor(embedder.quantizer, embedder.scales)(maps)
    torch.testing.assert_close(got, expected)
    net = EncoderClassifier(embedder.encoder, 1, descriptor=QuantisedDescriptor(embedder.quantizer, embedder.scales))
    assert net.features(x).shape == (2, 512 + 3 * 64)
    with pytest.raises(ValueError, match="scales"):
        QuantisedDescriptor(embedder.quantizer, scales=(1, 2))


def test_classifier_bf16_features_close_to_fp32():
    torch.manual_seed(0)
    net = EncoderClassifier(ResNetFeaturePyramid(), num_classes=1).eval()
    x = torch.rand(4, 1, 64, 64)
    fp32 = net.features(x)
    net.precision = "bf16"
    bf16 = net.features(x)
    assert bf16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() > 0.99
    net.precision = "fp32"
    np.testing.assert_allclose(extract_features(net.features, x, batch_size=3, precision="fp32"), fp32.detach().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_classifier_accepts_a_collated_metatensor_batch():
    """Regression: a DataLoader batch of MetaTensors with per-image affines crashed the descriptor's slicing."""
    from monai.data import MetaTensor, list_data_collate

    from dissect_monai.networks.quantizer import MultiScaleQuantizer

    items = [{"image": MetaTensor(torch.rand(1, 64, 64), affine=torch.eye(4) * (i + 1))} for i in range(3)]
    batch = list_data_collate(items)["image"]
    descriptor = QuantisedDescriptor(MultiScaleQuantizer([64, 128, 256], num_codes=16), scales=(1, 2, 3))
    net = EncoderClassifier(ResNetFeaturePyramid(), 1, descriptor=descriptor).eval()
    out = net(batch)
    assert out.shape == (3, 1) and not isinstance(out, MetaTensor)
    torch.testing.assert_close(out, net(batch.as_tensor()))
