"""The view recipe (the pretraining bundle's ``train#views`` on its own ``train#preprocessing``) and the batched
crops, filters and block masks of ``dissect_monai.transforms.batched``, on real chest X-rays where images matter
(the MAE mask and the masks' use by their methods are tested in ``test_methods_losses.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import AdjustContrast
from scipy.ndimage import gaussian_filter

from dissect_monai.transforms import RandTwoViewsd, apply_view
from dissect_monai.transforms.batched import (
    BlockMaskGenerator,
    adjust_gamma,
    gaussian_blur,
    random_resized_crops,
    resample_affine,
    supersampling_factor,
)

IDENTITY = {"crop_scale": (1.0, 1.0), "flip_prob": 0.0, "rotate_prob": 0.0, "gamma_prob": 0.0, "scale_prob": 0.0,
            "shift_prob": 0.0, "blur_prob": 0.0, "noise_prob": 0.0}


@pytest.fixture(scope="module")
def bundle_parts(repo_root, data_root):
    """The pretraining bundle's own ``train#preprocessing`` and ``train#views`` at 64 px, on 8 real radiographs."""
    parser = ConfigParser()
    parser.read_config(str(repo_root / "bundles/dissect_cxr_pretrain/configs/train.yaml"))
    parser["bundle_root"] = str(repo_root / "bundles/dissect_cxr_pretrain")
    parser["image_size"] = 64
    images = sorted((data_root / "nih-cxr-pneumonia/images").glob("*.png"))[:8]
    parser["train#datalist"] = [{"image": str(p)} for p in images]
    preprocessing = parser.get_parsed_content("train#preprocessing")
    views = parser.get_parsed_content("train#views")
    batch = next(iter(DataLoader(Dataset(parser["train#datalist"], preprocessing), batch_size=8)))
    return batch, views


def high_frequency(x: torch.Tensor) -> float:
    """Mean squared discrete Laplacian of (..., W, H) images (blur lowers it strongly)."""
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return float((lap**2).mean())


def test_bundle_views_shapes_dtype_seed_and_difference(bundle_parts):
    batch, views = bundle_parts
    assert batch["image"].shape == (8, 1, 96, 96)  # cached at 1.5x the training size
    out = views.set_random_state(0)(batch)
    assert out["image"].shape == out["image_2"].shape == (8, 1, 64, 64)
    assert out["image"].dtype == out["image_2"].dtype == torch.float32
    assert type(out["image"]) is torch.Tensor and out["image"].is_contiguous()
    assert torch.isfinite(out["image"]).all() and float(out["image"].std()) > 0.05
    assert not torch.allclose(out["image"], out["image_2"])
    again = views.set_random_state(0)(batch)
    assert torch.equal(out["image"], again["image"]) and torch.equal(out["image_2"], again["image_2"])
    assert not torch.allclose(views(batch)["image"], out["image"])  # the next draw differs


def test_batched_views_equal_per_sample_application(bundle_parts):
    batch, views = bundle_parts
    images = batch["image"]
    views.set_random_state(3).randomize(len(images))
    view_1, view_2 = views.params  # every step of the recipe is drawn for some sample
    assert bool(view_1.blur_on.any()) and bool(view_1.gamma_on.any()) and bool((view_2.noise_std > 0).any())
    for params in views.params:
        noise = torch.randn(len(images), 1, 64, 64)
        sub = supersampling_factor(images.shape[2:], (64, 64))
        batched = apply_view(images, params, (64, 64), sub, views.blur_radius, noise)
        one_by_one = torch.cat([
            apply_view(images[i: i + 1], params.select(slice(i, i + 1)), (64, 64), sub, views.blur_radius,
                       noise[i: i + 1])
            for i in range(len(images))
        ])
        torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)


def test_identity_settings_reproduce_the_image_and_flip_flips(bundle_parts):
    batch, _ = bundle_parts
    images = batch["image"][:, :, :64, :64].contiguous()
    same = RandTwoViewsd("image", (64, 64), **IDENTITY)({"image": images})
    torch.testing.assert_close(same["image"], images, atol=1e-5, rtol=0)
    torch.testing.assert_close(same["image_2"], images, atol=1e-5, rtol=0)
    flipped = RandTwoViewsd("image", (64, 64), **{**IDENTITY, "flip_prob": 1.0})({"image": images})
    # (B, C, W, H): the default flip is left-right, along the width axis
    torch.testing.assert_close(flipped["image"], torch.flip(images, dims=[2]), atol=1e-5, rtol=0)


def test_blur_and_noise_asymmetry_between_views(bundle_parts):
    """View 1 is always blurred (view 2 with p=0.1); only view 2 gets noise (p=0.2)."""
    batch, _ = bundle_parts
    isolate = {k: v for k, v in IDENTITY.items() if k not in ("blur_prob", "noise_prob")}
    t = RandTwoViewsd("image", (64, 64), **isolate).set_random_state(1)
    hf1, hf2 = zip(*[(high_frequency(o["image"]), high_frequency(o["image_2"]))
                     for o in (t(batch) for _ in range(10))])
    assert np.mean(hf1) < 0.6 * np.mean(hf2)
    t.randomize(4000)
    view_1, view_2 = t.params
    assert float(view_1.blur_on.float().mean()) == 1.0 and abs(float(view_2.blur_on.float().mean()) - 0.1) < 0.02
    assert not bool((view_1.noise_std > 0).any()) and abs(float((view_2.noise_std > 0).float().mean()) - 0.2) < 0.02


def test_drawn_parameters_follow_the_documented_ranges():
    t = RandTwoViewsd("image", (64, 64)).set_random_state(0)
    t.randomize(4000)
    for p in t.params:
        side = torch.linalg.matrix_norm(p.matrix, ord=2)  # rotation and flips keep the crop's largest side
        assert 0.4 - 1e-5 <= float(side.min()) and float(side.max()) <= 1.0 + 1e-5
        assert float(p.offset.abs().max()) <= 0.6
        flipped = (p.matrix[:, :, 0].sum(dim=1) < 0).float().mean()  # the width axis' (0) column points backwards
        assert abs(float(flipped) - 0.5) < 0.05
        assert 0.7 <= float(p.gamma.min()) and float(p.gamma.max()) <= 1.5
        assert abs(float(p.gamma_on.float().mean()) - 0.8) < 0.03
        assert float((p.intensity_scale - 1).abs().max()) <= 0.3 and float(p.intensity_shift.abs().max()) <= 0.1


def test_three_dimensional_views_and_bad_input():
    volumes = torch.rand(2, 1, 24, 24, 12)
    out = RandTwoViewsd("image", (16, 16, 8), flip_axes=(0, 1, 2)).set_random_state(0)({"image": volumes})
    assert out["image"].shape == out["image_2"].shape == (2, 1, 16, 16, 8)
    with pytest.raises(ValueError, match="collated batches"):
        RandTwoViewsd("image", (16, 16))({"image": torch.rand(1, 24, 24)})
    with pytest.raises(ValueError, match="blur_prob"):
        RandTwoViewsd("image", (16, 16), blur_prob=(1.0, 0.1, 0.0))
    with pytest.raises(ValueError, match="crop_scale"):
        RandTwoViewsd("image", (16, 16), crop_scale=(0.0, 1.0))


def test_resample_affine_crops_exactly_and_matches_affine_grid():
    images = torch.rand(3, 2, 32, 32)
    quarter = resample_affine(images, torch.eye(2).repeat(3, 1, 1) * 0.5, torch.full((3, 2), -0.5), (16, 16))
    torch.testing.assert_close(quarter, images[:, :, :16, :16], atol=1e-6, rtol=0)  # the top-left quadrant
    matrix, offset = torch.randn(3, 2, 2) * 0.5, torch.randn(3, 2) * 0.2
    theta = torch.cat([matrix.flip(1, 2), offset.flip(1)[..., None]], dim=2)
    grid = torch.nn.functional.affine_grid(theta, [3, 2, 20, 12], align_corners=False)
    expected = torch.nn.functional.grid_sample(images, grid, align_corners=False)
    torch.testing.assert_close(resample_affine(images, matrix, offset, (20, 12)), expected, atol=1e-5, rtol=0)
    # supersampling 2x is the mean of the four sub-pixel samples: a 2x downscale becomes an exact 2x2 average
    half = resample_affine(images, torch.eye(2).repeat(3, 1, 1), torch.zeros(3, 2), (16, 16), supersample=2)
    torch.testing.assert_close(half, torch.nn.functional.avg_pool2d(images, 2), atol=1e-6, rtol=0)


def test_gaussian_blur_matches_scipy_per_sample_sigma():
    images = torch.rand(3, 1, 20, 24)
    sigma = torch.tensor([[0.5, 1.5], [1.0, 0.3], [2.0, 2.0]])
    out = gaussian_blur(images, sigma, radius=16)
    for i in range(3):
        ref = gaussian_filter(images[i, 0].double().numpy(), sigma[i].tolist(), mode="nearest", truncate=8.0)
        np.testing.assert_allclose(out[i, 0].numpy(), ref, atol=1e-5)


def test_adjust_gamma_matches_monai_per_sample():
    images = torch.rand(3, 1, 8, 8) * torch.tensor([1.0, 0.5, 2.0]).view(3, 1, 1, 1)
    gamma = torch.tensor([0.7, 1.0, 1.5])
    out = adjust_gamma(images, gamma)
    for i in range(3):
        expected = torch.as_tensor(AdjustContrast(float(gamma[i]))(images[i]))
        torch.testing.assert_close(out[i], expected, atol=1e-6, rtol=0)


def test_random_resized_crops_cover_the_drawn_area():
    ramp = torch.linspace(0, 1, 64).expand(64, 64)  # value = horizontal position
    images = torch.stack([ramp, ramp.T])[None].repeat(200, 1, 1, 1)  # channel 0: x, channel 1: y
    torch.manual_seed(0)
    crops = random_resized_crops(images, 16, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert crops.shape == (200, 2, 16, 16)
    width = crops[:, 0].amax(dim=(1, 2)) - crops[:, 0].amin(dim=(1, 2))
    height = crops[:, 1].amax(dim=(1, 2)) - crops[:, 1].amin(dim=(1, 2))
    torch.testing.assert_close(width, torch.full_like(width, 0.5), atol=0.05, rtol=0)  # side sqrt(0.25)
    torch.testing.assert_close(height, width, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_resized_crops(torch.rand(1, 8, 8), 4, (0.5, 1.0))


def test_block_masks_are_rectangles_reproducible_and_fail_clearly():
    generator = BlockMaskGenerator((8, 8), num_targets=4)
    context, targets = generator(32, generator=torch.Generator().manual_seed(0))
    again, targets_again = generator(32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(context, again) and all(torch.equal(a, b) for a, b in zip(targets, targets_again))
    for target in targets:
        rows, cols = target // 8, target % 8
        height = rows.amax(dim=1) - rows.amin(dim=1) + 1
        width = cols.amax(dim=1) - cols.amin(dim=1) + 1
        assert torch.equal(height * width, torch.full((32,), target.shape[1]))  # one full rectangle per sample
        assert 0.1 <= target.shape[1] / 64 <= 0.3
    assert bool((context[:, 1:] > context[:, :-1]).all())  # sorted, distinct grid positions
    with pytest.raises(RuntimeError, match="no context"):
        BlockMaskGenerator((4, 4), num_targets=1, target_scale=(1.0, 1.0), target_aspect=(1.0, 1.0))(2)
