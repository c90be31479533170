"""Losses and building blocks of the baseline SSL methods on cases whose answer is known in advance."""

from __future__ import annotations

import math

import pytest
import torch

from dissect_monai.losses.dino import DINOLoss
from dissect_monai.losses.jepa import LatentPredictionLoss
from dissect_monai.losses.mae import MaskedPatchLoss
from dissect_monai.losses.vicreg import VICRegLoss
from dissect_monai.networks.coboom import CoBooM
from dissect_monai.networks import ResNetFeaturePyramid
from dissect_monai.networks.dino import DINO
from dissect_monai.networks.ijepa import IJEPA
from dissect_monai.networks.mae import MAE
from dissect_monai.networks.mlvicx import MLVICX, ContextResNetFeaturePyramid
from dissect_monai.networks.vit import ViTEncoder, ViTTokenPyramid, patchify
from dissect_monai.transforms.batched import BlockMaskGenerator, random_patch_mask, random_resized_crops


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- VICReg
def test_vicreg_invariance_zero_for_identical_views():
    z = torch.randn(16, 8)
    terms = VICRegLoss()(z, z.clone())
    assert terms["invariance"].item() == 0.0


def test_vicreg_variance_hinge_on_constant_batch():
    z = torch.full((10, 6), 3.0)
    terms = VICRegLoss(eps=1e-4)(z, z)
    assert terms["variance"].item() == pytest.approx(1.0 - math.sqrt(1e-4), abs=1e-6)  # std 0 -> hinge 1 - sqrt(eps)
    assert terms["covariance"].item() == 0.0


def test_vicreg_covariance_and_total_on_hand_computed_case():
    # two perfectly correlated dimensions, batch 2: cov = [[2, 2], [2, 2]] -> off-diagonal squares 8, / D=2 -> 4
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    terms = VICRegLoss(invariance_weight=25, variance_weight=25, covariance_weight=1)(z, z)
    assert terms["covariance"].item() == pytest.approx(8.0)  # 4 per branch, two branches
    std = math.sqrt(2.0 + 1e-4)
    assert terms["variance"].item() == pytest.approx(max(0.0, 1.0 - std))
    assert terms["loss"].item() == pytest.approx(25 * 0.0 + 25 * terms["variance"].item() + 8.0)


def test_vicreg_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        VICRegLoss()(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        VICRegLoss()(torch.zeros(1, 3), torch.zeros(1, 3))


# ---------------------------------------------------------------- DINO
def test_dino_loss_known_values():
    k = 3
    loss_fn = DINOLoss(out_dim=k, student_temp=0.1, teacher_temp=0.07, warmup_fraction=0.0)
    p = torch.tensor([0.5, 0.25, 0.25])
    student = 0.1 * torch.log(p).expand(4, k)  # log_softmax(student / 0.1) = log p
    sharp_teacher = torch.tensor([10.0, 0.0, 0.0]).expand(4, k)  # softmax(./0.07) ~ one-hot on class 0
    loss = loss_fn([student, student], [sharp_teacher, sharp_teacher], progress=1.0)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-4)  # -log p[0]
    uniform_student = torch.zeros(4, k)  # log_softmax = -log K whatever the teacher
    loss = loss_fn([uniform_student, uniform_student, uniform_student], [torch.randn(4, k), torch.randn(4, k)], 1.0)
    assert loss.item() == pytest.approx(math.log(k), rel=1e-5)


def test_dino_loss_skips_same_view_pairs():
    loss_fn = DINOLoss(out_dim=2, warmup_fraction=0.0)
    good = 0.1 * torch.log(torch.tensor([[0.9, 0.1]]))
    bad = 0.1 * torch.log(torch.tensor([[0.1, 0.9]]))
    teacher = torch.tensor([[10.0, 0.0]])
    # student view 0 is paired only with teacher view 1 and vice versa: their own pair is never scored
    loss = loss_fn([good, good], [teacher, teacher], 1.0)
    loss_bad_self = loss_fn([good, good, bad], [teacher], 1.0)  # teacher 0 vs students 1 and 2
    assert loss.item() == pytest.approx(-math.log(0.9), rel=1e-4)
    assert loss_bad_self.item() == pytest.approx(0.5 * (-math.log(0.9) - math.log(0.1)), rel=1e-4)


def test_dino_centering_and_temperature_warmup():
    loss_fn = DINOLoss(out_dim=2, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_fraction=0.5,
                       center_momentum=0.9)
    assert loss_fn.teacher_temperature(0.0) == pytest.approx(0.04)
    assert loss_fn.teacher_temperature(0.25) == pytest.approx(0.055)
    assert loss_fn.teacher_temperature(0.9) == pytest.approx(0.07)
    loss_fn.update_center([torch.tensor([[2.0, 0.0], [4.0, 0.0]]), torch.tensor([[0.0, 6.0], [0.0, 6.0]])])
    assert torch.allclose(loss_fn.center, torch.tensor([[0.15, 0.3]]))  # 0.1 * batch mean [1.5, 3]
    # centring subtracts the centre: a teacher equal to the centre is uniform -> CE = mean of -log_softmax
    student = torch.log(torch.tensor([[0.8, 0.2]])) * 0.1
    loss = loss_fn([student, student], [loss_fn.center.clone(), loss_fn.center.clone()], 1.0)
    assert loss.item() == pytest.approx(-0.5 * (math.log(0.8) + math.log(0.2)), rel=1e-4)


def test_dino_student_sees_global_and_local_crops():
    model = DINO(ViTEncoder(img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2),
                 out_dim=64, hidden_dim=32, bottleneck_dim=16, num_local_crops=3, local_size=16)
    seen = []
    model.encoder.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    out = model(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    assert seen == [(4, 1, 32, 32), (6, 1, 16, 16)]  # 2 global views, 3 local crops, batched
    assert torch.isfinite(out["loss"])
    crops = random_resized_crops(torch.rand(5, 1, 32, 32), 16, (0.05, 0.4))
    assert crops.shape == (5, 1, 16, 16)


# ---------------------------------------------------------------- MAE
def test_mae_loss_only_counts_masked_patches():
    target = torch.randn(2, 6, 16)
    pred = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float)
    loss_fn = MaskedPatchLoss(norm_pix=True)
    base = loss_fn(pred, target, mask)
    changed = pred.clone()
    changed[mask == 0] += 100.0  # visible patches: any prediction
    assert loss_fn(changed, target, mask).item() == pytest.approx(base.item())
    changed[0, 0] += 1.0  # a masked patch: the loss moves
    assert loss_fn(changed, target, mask).item() != pytest.approx(base.item())


def test_mae_loss_normalised_pixel_value():
    target = torch.randn(3, 4, 64) * 5 + 2
    mask = torch.ones(3, 4)
    loss = MaskedPatchLoss(norm_pix=True)(torch.zeros_like(target), target, mask)
    assert loss.item() == pytest.approx(63 / 64, rel=1e-3)  # mean square of a unit-(unbiased)-variance patch
    raw = MaskedPatchLoss(norm_pix=False)(target.clone(), target, mask)
    assert raw.item() == 0.0
    with pytest.raises(ValueError, match="hides no patch"):
        MaskedPatchLoss()(target, target, torch.zeros(3, 4))


def test_random_patch_mask_is_consistent():
    keep, mask, restore = random_patch_mask(3, 16, 0.75)
    assert keep.shape == (3, 4) and mask.shape == (3, 16)
    assert torch.all(mask.sum(1) == 12)
    assert torch.all(torch.gather(mask, 1, keep) == 0)  # kept patches are the unmasked ones
    assert torch.equal(torch.sort(restore, 1).values, torch.arange(16).expand(3, -1))  # a permutation
    kept_then_masked = torch.cat([torch.zeros(3, 4), torch.ones(3, 12)], 1)
    assert torch.equal(torch.gather(kept_then_masked, 1, restore), mask)  # restore puts them back on the grid


def test_patchify_matches_vit_patch_embedding():
    enc = ViTEncoder(img_size=32, patch_size=8, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2)
    x = torch.rand(2, 1, 32, 32)
    conv = enc.patch_embedding.patch_embeddings
    tokens = conv(x).flatten(2).transpose(1, 2)
    via_patches = patchify(x, 8) @ conv.weight.reshape(conv.weight.shape[0], -1).T + conv.bias
    assert torch.allclose(tokens, via_patches, atol=1e-5)


def test_mae_reconstruction_uses_masked_fraction():
    model = MAE(ViTEncoder(img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2),
                decoder_dim=16, decoder_depth=1, decoder_heads=2)
    out = model(torch.rand(2, 1, 32, 32))
    assert out["masked_fraction"].item() == pytest.approx(0.75)
    assert torch.isfinite(out["loss"])


# ---------------------------------------------------------------- I-JEPA
def test_jepa_loss_known_values():
    target = torch.randn(2, 5, 8) * 3 + 1
    loss_fn = LatentPredictionLoss(normalize_targets=True)
    normalised = torch.nn.functional.layer_norm(target, (8,))
    assert loss_fn([normalised], [target]).item() == pytest.approx(0.0, abs=1e-10)
    assert loss_fn([torch.zeros_like(target)], [target]).item() == pytest.approx(1.0, rel=1e-3)
    target.requires_grad_(True)
    pred = torch.zeros(2, 5, 8, requires_grad=True)
    loss_fn([pred], [target]).backward()
    assert target.grad is None and pred.grad is not None  # no gradient into the target encoder's output


def test_block_masks_disjoint_and_in_range():
    gen = BlockMaskGenerator((8, 8), num_targets=4)
    context, targets = gen(6)
    assert len(targets) == 4 and context.shape[0] == 6
    for b in range(6):
        ctx = set(context[b].tolist())
        tgt = set(torch.cat([t[b] for t in targets]).tolist())
        assert not ctx & tgt
        assert all(0 <= i < 64 for i in ctx | tgt)
        assert len(ctx) >= 4
    assert len({t.shape[1] for t in targets}) == 1  # one target block size per batch


def test_ijepa_target_encoder_is_ema_only():
    model = IJEPA(ViTEncoder(img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2,
                             class_token=False), predictor_dim=16, predictor_depth=1, predictor_heads=2, num_targets=2,
                  target_scale=(0.1, 0.2), context_scale=(0.9, 1.0))
    out = model(torch.rand(3, 1, 32, 32))
    out["loss"].backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
    with torch.no_grad():
        next(model.encoder.parameters()).add_(1.0)
    before = next(model.target_encoder.parameters()).clone()
    m = model.update_target(0.0)
    after = next(model.target_encoder.parameters())
    assert m == pytest.approx(0.996)
    assert torch.allclose(after, before * m + next(model.encoder.parameters()) * (1 - m))


# ---------------------------------------------------------------- CoBooM
def _small_coboom() -> CoBooM:
    return CoBooM(ResNetFeaturePyramid(depth=10), hidden_dim=64, projection_dim=32, num_codes=16, code_dim=32,
                  fusion_dim=32, fuse_hidden=64)


def test_coboom_diversifuse_tokens_are_spatial_positions():
    """Attention over tokens = positions is permutation-equivariant, so pooling makes the fused target invariant
    to a spatial flip of both maps; a reshape that mixes channels and positions (the official bug) is not."""
    model = _small_coboom().eval()
    target_map = torch.randn(2, 512, 4, 4)
    fused, _ = model.codebook_target(target_map)
    flipped, _ = model.codebook_target(target_map.flip(-1).flip(-2))
    assert torch.allclose(fused, flipped, atol=1e-5)
    # and it does depend on which channel vector sits at a position (not on a channel/position mix)
    swapped = target_map.clone()
    swapped[:, :, 0, 0] = target_map[:, :, 3, 3] * 2
    changed, _ = model.codebook_target(swapped)
    assert not torch.allclose(fused, changed, atol=1e-5)


def test_coboom_commitment_has_a_gradient_path_and_target_gets_none():
    model = _small_coboom().train()
    x1, x2 = torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64)
    model(x1, x2)  # first batch initialises the codebook from its own vectors
    out = model(torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64))
    assert out["commitment_loss"].item() > 0
    out["commitment_loss"].backward()
    projection = model.quantizer.projections[0].weight
    assert projection.grad is not None and projection.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.target_encoder.parameters())


def test_coboom_loss_weights_four_terms_and_trains_diversifuse():
    model = _small_coboom().train()
    out = model(torch.rand(4, 1, 64, 64), torch.rand(4, 1, 64, 64))
    expected = 10.0 * 0.5 * (out["byol_loss"] + out["codebook_loss"]) + out["commitment_loss"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.diversifuse.parameters())
    assert all(p.grad is not None for p in model.fuse_mlp.parameters())


# ---------------------------------------------------------------- MLVICX
def test_mlvicx_context_bottlenecks_in_encoder_and_projections_trained():
    model = MLVICX(ContextResNetFeaturePyramid(depth=10), global_expander_dims=(64, 64),
                   multilevel_expander_dims=(64, 64), level_size=8, level_channels=16, pooled_size=2)
    encoder_keys = model.embedder.state_dict().keys()
    assert any(k.startswith("encoder.context.4.") for k in encoder_keys)  # shipped with the encoder
    assert isinstance(model.encoder, ContextResNetFeaturePyramid)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # created before any forward, like the engine's
    before = [p.detach().clone() for p in model.level_projections.parameters()]
    out = model(torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32))
    out["loss"].backward()
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.level_projections.parameters()))
    assert out["loss"].item() == pytest.approx(out["global_loss"].item() + out["multilevel_loss"].item(), rel=1e-6)


# ---------------------------------------------------------------- ViT
def test_vit_pyramid_and_attention_shapes():
    enc = ViTEncoder(img_size=32, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=3, num_heads=4)
    pyramid = ViTTokenPyramid(enc)
    maps = pyramid(torch.rand(2, 1, 32, 32))
    assert pyramid.depths == (1, 2, 3) and pyramid.stage_names == ("block1", "block2", "block3")
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 4)] * 3
    attention = enc.last_attention(torch.rand(2, 1, 32, 32))
    assert attention.shape == (2, 4, 17, 17)
    assert torch.allclose(attention.sum(-1), torch.ones(2, 4, 17), atol=1e-4)
    assert not enc.blocks[-1].attn.save_attn  # switched back off
    with pytest.raises(ValueError, match="divisible"):
        enc(torch.rand(2, 1, 30, 30))
    assert not any("cross_attn" in k for k in enc.state_dict())  # same keys under monai 1.4 and 1.6
