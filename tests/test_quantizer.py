"""EMACodebook / MultiScaleQuantizer: counts, gradients, restarts, statistics, fp32 under autocast, resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dissect_monai.networks import EMACodebook, MultiScaleQuantizer
from dissect_monai.networks.quantizer import _unit_rows


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
    cb.codebook[40] = cb.codebook[7]  # a tie: both must give the first code, as argmax does
    z = F.normalize(torch.randn(2500, 8), dim=1)  # not a multiple of the block size
    z[:10] = cb.codebook[7]
    assert cb.search_block < 2500
    expected = (z @ cb.codebook.t()).argmax(dim=1)
    assert (expected == 7).sum() >= 10 and not (expected == 40).any()
    assert torch.equal(cb.assign(z), expected)
    assert cb.assign(z[:0]).shape == (0,)


def _reference_step(
    q: MultiScaleQuantizer, features: list[torch.Tensor], bf16: bool
) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """One training step of ``q`` written out plainly: autograd ``F.normalize``, full ``(N, K)`` argmax, one-hot EMA."""
    quantised, indices = [], []
    loss = torch.zeros(())
    for conv, cb, f in zip(q.projections, q.codebooks, features):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            projected = conv(f)
        z = F.normalize(projected.float(), dim=1)
        flat = z.movedim(1, -1).reshape(-1, z.shape[1])
        idx = (flat @ cb.codebook.t()).argmax(dim=1)
        e = cb.codebook[idx].view(z.shape[0], *z.shape[2:], z.shape[1]).movedim(-1, 1)
        with torch.no_grad():
            one_hot = F.one_hot(idx, cb.num_codes).float()
            cb.ema_count.mul_(cb.decay).add_((1 - cb.decay) * one_hot.sum(0))
            cb.ema_sum.mul_(cb.decay).add_((1 - cb.decay) * one_hot.t() @ flat)
            n = cb.ema_count.sum()
            smoothed = (cb.ema_count + cb.eps) / (n + cb.num_codes * cb.eps) * n
            cb.codebook.copy_(F.normalize(cb.ema_sum / smoothed[:, None], dim=1))
        loss = loss + q.commitment_weight * F.mse_loss(z, e)
        quantised.append(z + (e - z).detach())
        indices.append(idx.view(z.shape[0], *z.shape[2:]))
    return quantised, loss, indices


@pytest.mark.parametrize("bf16", [False, True])
def test_optimised_step_equals_plain_reference_at_real_size(bf16: bool) -> None:
    """Real sizes (c2-c4 of a 64 px batch of 2 x 16 views, 512 codes x 64 dims), NCHW fp32 and channels_last bf16:
    the row-wise normalisation with its fused backward, the blockwise search and bincount/index_add EMA give the
    same indices, commitment loss, codebook update, outputs (bit for bit under channels_last) and gradients (to
    fp32 rounding) as the plain version."""
    torch.manual_seed(0)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    q = MultiScaleQuantizer([64, 128, 256]).train().to(memory_format=fmt)
    shapes = ((64, 16), (128, 8), (256, 4))
    features = [torch.randn(32, c, s, s).contiguous(memory_format=fmt).requires_grad_() for c, s in shapes]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        q(features)  # initialises the codebooks from the batch and makes one update
    reference = copy.deepcopy(q)
    torch.manual_seed(1)
    features = [torch.randn(32, c, s, s).contiguous(memory_format=fmt).requires_grad_() for c, s in shapes]
    weights = [torch.randn(32, 64, s, s) for _, s in shapes]

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        quantised, loss, indices = q(features)
    (sum((x * w).sum() for x, w in zip(quantised, weights)) + loss).backward()
    grads = [f.grad.clone() for f in features] + [p.weight.grad.clone() for p in q.projections]
    for f in features:
        f.grad = None

    ref_quantised, ref_loss, ref_indices = _reference_step(reference, features, bf16)
    (sum((x * w).sum() for x, w in zip(ref_quantised, weights)) + ref_loss).backward()
    ref_grads = [f.grad for f in features] + [p.weight.grad for p in reference.projections]

    for idx, ref_idx in zip(indices, ref_indices):
        assert torch.equal(idx, ref_idx)
    for x, ref_x in zip(quantised, ref_quantised):
        if bf16:  # channels_last: the rows are the map's own memory, every value is the same
            assert torch.equal(x, ref_x)
        else:  # NCHW: the norm is summed along rows instead of across the map's channel planes
            torch.testing.assert_close(x, ref_x, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0.0)
    for cb, ref_cb in zip(q.codebooks, reference.codebooks):
        assert int(cb.restarts) == 0
        torch.testing.assert_close(cb.ema_count, ref_cb.ema_count, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cb.ema_sum, ref_cb.ema_sum, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cb.codebook, ref_cb.codebook, rtol=1e-5, atol=1e-6)
    # fp32: the gradients differ by fp32 rounding only (relative to their scale: sums over 8192 positions
    # cancel); bf16: that difference may move a bf16 rounding of the convolution's backward by one step
    tol = 2e-2 if bf16 else 1e-5
    for g, ref_g in zip(grads, ref_grads):
        assert (g - ref_g).abs().max() <= tol * ref_g.abs().max()


def test_row_normalisation_gradient_equals_autograd_normalize() -> None:
    torch.manual_seed(0)
    v = torch.randn(300, 64)
    v[3] = 0.0  # norm clamped to eps: gradient g / eps
    v[7] *= 1e-14  # also under eps
    g = torch.randn_like(v)
    a = v.clone().requires_grad_()
    u = _unit_rows(a)
    u.backward(g)
    b = v.clone().requires_grad_()
    ref = F.normalize(b, dim=1)
    ref.backward(g)
    assert torch.equal(u, ref)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert a.grad[3].abs().max() > 1e6  # g / eps on the clamped rows, as autograd gives
