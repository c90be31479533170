"""Datasets skip, count and report unreadable items (real files damaged in tmp_path), or fail fast."""

from __future__ import annotations

import warnings

import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Compose, EnsureTyped, Lambdad, RandFlipd, Resized
from PIL import Image

from dissect_monai.data import (
    ImageLoadError,
    RobustCacheDataset,
    RobustDataset,
    RobustPersistentDataset,
    find_image_load_error,
)
from dissect_monai.transforms import load_image_transforms


@pytest.fixture()
def mixed_datalist(data_root, tmp_path):
    """6 real NIH images and 3 broken ones: a truncated copy, a missing file, a constant image."""
    images = sorted((data_root / "nih-cxr-pneumonia/images").iterdir())[:6]
    good = [{"image": str(p)} for p in images]
    cut = tmp_path / "cut.png"
    cut.write_bytes(images[0].read_bytes()[:2000])
    flat = tmp_path / "flat.png"
    Image.new("L", (256, 256), 17).save(flat)
    bad = [{"image": str(cut)}, {"image": str(tmp_path / "missing.png")}, {"image": str(flat)}]
    return good[:2] + [bad[0]] + good[2:4] + [bad[1], bad[2]] + good[4:]


def transforms():
    return Compose([
        *load_image_transforms("image"),
        Resized("image", spatial_size=(32, 32)),
        EnsureTyped("image", track_meta=False),
        RandFlipd("image", prob=0.5, spatial_axis=1),
    ])


def test_dataset_skips_counts_and_warns(mixed_datalist):
    ds = RobustDataset(mixed_datalist, transforms())
    with pytest.warns(UserWarning, match="skipping unreadable item 2 .*cut.png: cannot decode image"):
        items = [ds[i] for i in range(len(ds))]
    assert all(it["image"].shape == (1, 32, 32) for it in items)
    assert sorted(ds.bad_items) == [2, 5, 6] and ds.skipped_count == 3
    assert "file not found" in ds.bad_items[5] and "constant image" in ds.bad_items[6]
    assert "missing.png" in ds.skipped_summary()
    # an unreadable item is replaced by the next readable one
    torch.testing.assert_close(ds[2]["image"].abs().sum(), ds[3]["image"].abs().sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already reported: no second warning
        ds[2]


def test_dataset_fail_fast(mixed_datalist):
    ds = RobustDataset(mixed_datalist, transforms(), on_error="raise")
    ds[0]
    with pytest.raises(ImageLoadError, match="cut.png: cannot decode image"):
        ds[2]


def test_non_load_errors_propagate(mixed_datalist):
    """A bug in a later transform is not an unreadable image: it must surface, not be skipped."""
    broken = Compose([*load_image_transforms("image"), Lambdad("image", func=lambda x: x.view(3, 5))])
    with pytest.raises(RuntimeError) as info:
        RobustDataset(mixed_datalist, broken)[0]
    assert find_image_load_error(info.value) is None


def test_cache_dataset_drops_bad_items_up_front(mixed_datalist):
    with pytest.warns(UserWarning, match="skipped 3 unreadable of 9 items"):
        ds = RobustCacheDataset(mixed_datalist, transforms(), num_workers=2)
    assert len(ds) == 6 and sorted(ds.bad_items) == [2, 5, 6] and ds.skipped_count == 3
    batch = next(iter(DataLoader(ds, batch_size=6, num_workers=0)))
    assert batch["image"].shape == (6, 1, 32, 32)
    with pytest.raises(ImageLoadError, match="cut.png"):
        RobustCacheDataset(mixed_datalist, transforms(), on_error="raise")
    # new data for the next epochs (MONAI's set_data) is screened the same way
    with pytest.warns(UserWarning, match="skipped 1 unreadable of 3 items"):
        ds.set_data(mixed_datalist[:3])
    assert len(ds) == 2 and list(ds.bad_items) == [2]


def test_persistent_dataset_with_worker_processes(mixed_datalist, tmp_path):
    ds = RobustPersistentDataset(mixed_datalist, transforms(), cache_dir=tmp_path / "cache")
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    shapes = [b["image"].shape for b in loader]  # no traceback mid-epoch despite 3 bad items
    assert shapes == [(3, 1, 32, 32)] * 3
    assert ds.skipped_count == 3 and ds.bad_items == {}  # counted across the worker processes
    cached = list((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 6  # only readable items are cached
    fail_fast = RobustPersistentDataset(mixed_datalist[4:6], transforms(), cache_dir=tmp_path / "c2",
                                        on_error="raise")
    # the worker's error reaches the training loop as an ImageLoadError (not a RuntimeError)
    with pytest.raises(ImageLoadError, match="missing.png: file not found"):
        list(DataLoader(fail_fast, batch_size=1, num_workers=1))


def test_all_items_unreadable(tmp_path):
    ds = RobustDataset([{"image": str(tmp_path / "a.png")}, {"image": str(tmp_path / "b.png")}], transforms())
    with pytest.warns(UserWarning), pytest.raises(ImageLoadError, match="every item is unreadable"):
        ds[0]
