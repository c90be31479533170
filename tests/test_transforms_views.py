"""SSL view transforms (2D and 3D) on real images: shapes, ranges, seeding, asymmetry, crops, masks, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader
from monai.transforms import Compose, EnsureTyped, Resized

from dissect_monai.transforms import (
    MultiCropd,
    RandomView,
    RandPatchMaskd,
    TwoViewsd,
    load_image_transforms,
    load_transform_preset,
)
from dissect_monai.transforms.presets import PRESET_DIR


def _load(path, **intensity) -> torch.Tensor:
    return Compose(load_image_transforms("image", **intensity))({"image": str(path)})["image"].as_tensor()


@pytest.fixture(scope="module")
def cxr(data_root) -> torch.Tensor:
    return _load(data_root / "nih-cxr-pneumonia/images/00000061_012.png")


@pytest.fixture(scope="module")
def ct(data_root) -> torch.Tensor:
    return _load(data_root / "totalseg-ct/example_ct_sm.nii.gz", window=(40, 400))


def high_frequency(x: torch.Tensor) -> float:
    """Mean squared discrete Laplacian of a (C, H, W) image (blur lowers it strongly)."""
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return float((lap**2).mean())


def test_two_views_2d_shapes_range_seed_and_difference(cxr):
    t = TwoViewsd("image", spatial_size=(64, 64))
    out = t.set_random_state(0)({"image": cxr})
    assert out["image"].shape == out["image_2"].shape == (1, 64, 64)
    assert out["image"].dtype == torch.float32 and not hasattr(out["image"], "affine")
    for v in (out["image"], out["image_2"]):
        assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0
    assert not torch.allclose(out["image"], out["image_2"])
    again = TwoViewsd("image", spatial_size=(64, 64)).set_random_state(0)({"image": cxr})
    torch.testing.assert_close(out["image"], again["image"])
    torch.testing.assert_close(out["image_2"], again["image_2"])


def test_byol_asymmetry_view_1_always_blurred(cxr):
    same = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "jitter_prob": 0, "gamma_prob": 0}  # isolate the blur
    t = TwoViewsd("image", spatial_size=(64, 64), view_1=same,
                  view_2={**same, "noise_prob": 0, "solarize_prob": 0})
    t.set_random_state(1)
    hf1, hf2 = zip(*[(high_frequency(o["image"]), high_frequency(o["image_2"]))
                     for o in (t({"image": cxr}) for _ in range(40))])
    assert np.mean(hf1) < 0.6 * np.mean(hf2)


def test_random_resized_crop_area_within_scale(cxr, ct):
    for image, size in ((cxr, (32, 32)), (ct, (16, 16, 16))):
        view = RandomView(size, scale=(0.3, 0.5), ratio=(0.8, 1.25)).set_random_state(2)
        shape = image.shape[1:]
        for _ in range(50):
            start, crop = view.crop_box(shape)
            fraction = np.prod(crop) / np.prod(shape)
            assert 0.25 < fraction < 0.56  # rounding of integer sizes
            assert all(0 <= s and s + c <= n for s, c, n in zip(start, crop, shape))


def test_two_views_3d(ct):
    t = TwoViewsd("image", spatial_size=(32, 32, 16), view_1={"flip_axes": (0, 1, 2)}).set_random_state(0)
    out = t({"image": ct})
    assert out["image"].shape == out["image_2"].shape == (1, 32, 32, 16)
    assert 0 <= float(out["image"].min()) and float(out["image"].max()) <= 1
    with pytest.raises(ValueError, match="spatial dims"):
        TwoViewsd("image", spatial_size=(32, 32))({"image": ct})


def test_flip_is_left_right_for_2d(cxr):
    view = RandomView((256, 256), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0, jitter_prob=0, gamma_prob=0,
                      blur_prob=0)
    torch.testing.assert_close(view(cxr), torch.flip(cxr, dims=[2]), atol=1e-5, rtol=0)


def test_multicrop(cxr, ct):
    out = MultiCropd("image", global_size=(64, 64), local_size=(24, 24), n_global=2, n_local=5)({"image": cxr})
    assert out["image_global"].shape == (2, 1, 64, 64) and out["image_local"].shape == (5, 1, 24, 24)
    out = MultiCropd("image", (32, 32, 16), (16, 16, 8), n_local=3).set_random_state(0)({"image": ct})
    assert out["image_global"].shape == (2, 1, 32, 32, 16) and out["image_local"].shape == (3, 1, 16, 16, 8)
    out = MultiCropd("image", (32, 32), (16, 16), n_local=0)({"image": cxr})
    assert "image_local" not in out


def test_random_patch_mask_exact_ratio_and_zeroing(cxr):
    image = torch.nn.functional.interpolate(cxr[None], size=(64, 64), mode="area")[0]
    out = RandPatchMaskd("image", patch_size=8, mask_ratio=0.75, zero_masked=True).set_random_state(0)(
        {"image": image})
    mask = out["mask"]
    assert mask.shape == (8, 8) and mask.dtype == torch.bool and int(mask.sum()) == 48
    pixel_mask = mask.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert float(out["image"][0][pixel_mask].abs().max()) == 0.0
    torch.testing.assert_close(out["image"][0][~pixel_mask], image[0][~pixel_mask])
    out3d = RandPatchMaskd("image", patch_size=(16, 16, 8), mask_ratio=0.5)({"image": torch.rand(1, 64, 64, 32)})
    assert out3d["mask"].shape == (4, 4, 4) and int(out3d["mask"].sum()) == 32
    with pytest.raises(ValueError, match="does not tile"):
        RandPatchMaskd("image", patch_size=128)({"image": image})


def test_block_masks_for_ijepa():
    t = RandPatchMaskd("image", patch_size=4, mode="blocks", n_targets=4).set_random_state(0)
    for _ in range(20):
        out = t({"image": torch.rand(1, 64, 64)})
        targets, context = out["mask_targets"], out["mask_context"]
        assert targets.shape == (4, 16, 16) and context.shape == (16, 16)
        assert context.any() and not (context & targets.any(0)).any()
        sizes = targets.flatten(1).sum(1).float() / 256
        assert bool(((sizes > 0.08) & (sizes < 0.3)).all())


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_builds_and_runs(preset, cxr, ct):
    t = load_transform_preset(preset)
    three_d = preset.endswith("3d")
    if "mask" in preset:
        image = torch.rand(1, 64, 64, 64) if three_d else torch.rand(1, 64, 64)
    else:
        image = ct if three_d else cxr
    out = t({"image": image})
    produced = set(out) - {"image"}
    assert produced, f"{preset} wrote no output key"


def test_preset_overrides_and_unknown_name(cxr):
    t = load_transform_preset("byol_views_2d", spatial_size=[48, 48])
    assert t({"image": cxr})["image_2"].shape == (1, 48, 48)
    with pytest.raises(FileNotFoundError, match="known"):
        load_transform_preset("no_such_preset")


def test_views_after_cached_deterministic_part(data_root):
    """Deterministic load+resize cached once; views drawn fresh per epoch and batched by a DataLoader."""
    files = sorted((data_root / "nih-cxr-pneumonia/images").iterdir())[:8]
    pipeline = Compose([
        *load_image_transforms("image"),
        Resized("image", spatial_size=(96, 96), mode="area"),
        EnsureTyped("image", track_meta=False),
        load_transform_preset("byol_views_2d"),
    ])
    ds = CacheDataset([{"image": str(f)} for f in files], pipeline, progress=False)
    first = next(iter(DataLoader(ds, batch_size=8)))
    second = next(iter(DataLoader(ds, batch_size=8)))
    assert first["image"].shape == first["image_2"].shape == (8, 1, 64, 64)
    assert not torch.allclose(first["image"], second["image"])  # new random views each pass


def test_multicrop_per_global_view_settings(cxr):
    t = MultiCropd("image", (64, 64), (32, 32), n_local=0, global_scale=(1.0, 1.0),
                   global_views=[{"flip_prob": 0.0}, {"flip_prob": 1.0}],
                   view={"ratio": (1.0, 1.0), "jitter_prob": 0, "gamma_prob": 0, "blur_prob": 0})
    out = t({"image": cxr})["image_global"]
    torch.testing.assert_close(out[1], torch.flip(out[0], dims=[2]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="global_views has 1 entries"):
        MultiCropd("image", (64, 64), (32, 32), global_views=[{}])
