"""EMACodebook / MultiScaleQuantizer: counts, gradients, restarts, statistics, fp32 under autocast, resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dissect_monai.networks import EMACodebook, MultiScaleQuantizer


def _initialised(num_codes: int = 8, dim: int = 4, **kwargs) -> EMACodebook:
    cb = EMACodebook(num_codes, dim, **kwargs)
    cb.initialized.fill_(True)
    return cb


def test_ema_counts_equal_one_hot_counts() -> None:
    torch.manual_seed(0)
    cb = _initialised(decay=0.9)
    before_count = cb.ema_count.clone()
    before_sum = cb.ema_sum.clone()
    # many vectors on few codes: 5 on code 6, 3 on code 1, 1 on code 2 (sum of indices would be 35 on one entry)
    indices = torch.tensor([6, 6, 1, 6, 2, 1, 6, 1, 6])
    z = F.normalize(cb.codebook[indices] + 0.01 * torch.randn(len(indices), 4), dim=1)
    cb.update(z, indices)
    one_hot = F.one_hot(indices, 8).float()
    torch.testing.assert_close(cb.ema_count, 0.9 * before_count + 0.1 * one_hot.sum(0))
    torch.testing.assert_close(cb.ema_sum, 0.9 * before_sum + 0.1 * one_hot.t() @ z)
    # Laplace-smoothed centroid, L2-normalised
    n = cb.ema_count.sum()
    smoothed = (cb.ema_count + cb.eps) / (n + 8 * cb.eps) * n
    torch.testing.assert_close(cb.codebook, F.normalize(cb.ema_sum / smoothed[:, None], dim=1))


def test_quantizer_counts_follow_its_own_assignments() -> None:
    torch.manual_seed(0)
    q = MultiScaleQuantizer([3, 5], num_codes=[16, 8], code_dims=[4, 6], decay=0.5, dead_code_threshold=0.0).train()
    feats = [torch.randn(2, 3, 6, 6), torch.randn(2, 5, 3, 3)]
    q(feats)  # first batch initialises the codebooks
    counts_before = [cb.ema_count.clone() for cb in q.codebooks]
    _, _, indices = q(feats)
    for cb, idx, before, k in zip(q.codebooks, indices, counts_before, (16, 8)):
        expected = 0.5 * before + 0.5 * F.one_hot(idx.flatten(), k).float().sum(0)
        torch.testing.assert_close(cb.ema_count, expected)
    assert [tuple(i.shape) for i in indices] == [(2, 6, 6), (2, 3, 3)]


def test_straight_through_and_commitment_reach_the_encoder() -> None:
    torch.manual_seed(0)
    encoder = torch.nn.Conv2d(1, 8, 3, padding=1)
    q = MultiScaleQuantizer([8], num_codes=16, code_dims=4).train()
    x = torch.randn(2, 1, 8, 8)
    q([encoder(x)])  # initialises the codebook from the batch
    codebook = q.codebooks[0].codebook.clone()  # the codes the next step assigns (updated after assignment)
    quantised, commitment, indices = q([encoder(x)])
    # forward value is the code, gradient is the identity towards z
    codes = codebook[indices[0]].movedim(-1, 1)
    torch.testing.assert_close(quantised[0], codes)
    weight = torch.randn_like(quantised[0])
    (quantised[0] * weight).sum().backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert q.projections[0].weight.grad.abs().sum() > 0
    encoder.zero_grad()
    q.zero_grad()
    _, commitment, _ = q([encoder(x)])
    assert commitment.item() > 0
    commitment.backward()
    assert encoder.weight.grad.abs().sum() > 0, "commitment loss must train the encoder"


def test_dead_code_is_restarted_from_batch_vectors() -> None:
    torch.manual_seed(0)
    cb = _initialised(num_codes=8, dim=4, dead_code_threshold=0.1)
    direction = F.normalize(torch.tensor([1.0, 1.0, 0.0, 0.0]), dim=0)
    cb.codebook[3] = -direction  # opposite to every batch vector: never assigned
    cb.ema_sum[3] = -direction
    cb.ema_count[3] = 0.05  # below the threshold after the decay
    z = F.normalize(direction + 0.3 * torch.randn(32, 4), dim=1)
    z = z[(z @ direction) > 0.5]
    indices = cb.assign(z)
    assert 3 not in indices.tolist()
    cb.update(z, indices)
    assert cb.dead_codes.item() == 1 and cb.restarts.item() == 1
    distances = (z - cb.codebook[3]).norm(dim=1)
    assert distances.min().item() < 1e-6, "restarted code must be one of the batch vectors"
    assert cb.ema_count[3].item() == 1.0
    torch.testing.assert_close(cb.ema_sum[3], cb.codebook[3])


def test_perplexity_of_uniform_assignment_equals_codebook_size() -> None:
    torch.manual_seed(0)
    k, d = 32, 8
    q = MultiScaleQuantizer([d], num_codes=k, code_dims=d).train()
    with torch.no_grad():
        q.projections[0].weight.copy_(torch.eye(d).view(d, d, 1, 1))
        q.projections[0].bias.zero_()
    q.codebooks[0].initialized.fill_(True)
    codes = q.codebooks[0].codebook.clone()
    feature = codes.t().reshape(1, d, k, 1)  # every code exactly once
    _, _, indices = q([feature])
    assert sorted(indices[0].flatten().tolist()) == list(range(k))
    stats = q.statistics()
    assert stats["scale0_perplexity"] == pytest.approx(k, rel=1e-5)
    assert stats["scale0_usage"] == 1.0
    # half the positions on one code: perplexity = exp(entropy) of that histogram
    skewed = torch.cat([codes[:1].repeat(k, 1), codes], 0).t().reshape(1, d, 2 * k, 1)
    q([skewed])
    p = torch.tensor([(k + 1) / (2 * k)] + [1 / (2 * k)] * (k - 1))
    assert q.statistics()["scale0_perplexity"] == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)


def test_search_is_fp32_inside_bf16_autocast() -> None:
    torch.manual_seed(0)
    d = 64
    v, u = torch.randn(d), torch.randn(d)
    u = u - (u @ v) / (v @ v) * v
    cb = _initialised(num_codes=2, dim=d)
    cb.codebook.copy_(F.normalize(torch.stack([v, v + 1e-3 * u]), dim=1))
    z = F.normalize(v + 2e-3 * u, dim=0)[None]  # nearer code 1 by ~1e-6 in cosine: a tie in bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.matmul(z, cb.codebook.t()).dtype == torch.bfloat16  # autocast is really active
        assert cb.similarity(z).dtype == torch.float32
        assert cb.assign(z).item() == 1
        q = MultiScaleQuantizer([d], num_codes=4, code_dims=8).train()
        quantised, commitment, _ = q([torch.randn(2, d, 4, 4)])
    assert quantised[0].dtype == torch.float32 and commitment.dtype == torch.float32
    assert q.codebooks[0].codebook.dtype == torch.float32 and q.codebooks[0].ema_sum.dtype == torch.float32


def test_state_dict_restores_codebooks() -> None:
    torch.manual_seed(0)
    q = MultiScaleQuantizer([8], num_codes=16, code_dims=4).train()
    feats = [torch.randn(2, 8, 6, 6)]
    for _ in range(3):
        q(feats)
    restored = MultiScaleQuantizer([8], num_codes=16, code_dims=4)
    restored.load_state_dict(q.state_dict())
    for name, value in q.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value)
    assert bool(restored.codebooks[0].initialized)
    assert torch.equal(q.eval().code_indices(feats)[0], restored.eval().code_indices(feats)[0])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dead_code_threshold"):
        EMACodebook(8, 4, dead_code_threshold=1.5)
    with pytest.raises(ValueError, match="names"):
        MultiScaleQuantizer([8, 8], names=["a"])
    with pytest.raises(ValueError, match="expected 1 feature maps"):
        MultiScaleQuantizer([8]).project([torch.randn(1, 8, 2, 2)] * 2)


def test_no_gradient_path_returns_codes_and_zero_loss() -> None:
    torch.manual_seed(0)
    q = MultiScaleQuantizer([8], num_codes=16, code_dims=4).train()
    feats = [torch.randn(2, 8, 6, 6)]
    q(feats)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    with torch.no_grad():
        quantised, loss, indices = q.quantize(q.project(feats), update=False)
    assert loss.item() == 0.0
    torch.testing.assert_close(quantised[0], q.codebooks[0].codebook[indices[0]].movedim(-1, 1))
    assert torch.equal(indices[0], q.code_indices(feats)[0])
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed without update"


def test_blockwise_search_equals_full_argmax() -> None:
    torch.manual_seed(0)
    cb = _initialised(num_codes=64, dim=8)
    z = F.normalize(torch.randn(1000, 8), dim=1)  # not a multiple of the block size
    assert cb.search_block < 1000
    assert torch.equal(cb.assign(z), (z @ cb.codebook.t()).argmax(dim=1))
    assert cb.assign(z[:0]).shape == (0,)
