"""Datalists of every dataset in ../shared/data, folder and DICOM trees, splits, label fractions, pretraining pool."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import AsDiscreted, Compose, EnsureTyped, Resized

from dissect_monai.data import (
    DATASETS,
    LABEL_FRACTIONS,
    csv_datalist,
    dataset_datalist,
    default_data_root,
    dicom_datalist,
    folder_datalist,
    pool_summary,
    pretraining_pool,
    sample_label_fraction,
    split_by_patient,
)
from dissect_monai.transforms import RandTwoViewsd, load_image_transforms

EXPECTED_SPLITS = {
    "nih-cxr-pneumonia": {"train": 682, "val": 112, "test": 206},
    "kermany-pneumonia": {"train": 4641, "val": 575, "test": 624},
    "cxr-lung-seg": {"train": 178, "val": 26, "test": 52},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SPLITS))
def test_dataset_splits_sizes_and_patient_disjointness(data_root, name):
    items = dataset_datalist(name, data_root=data_root)
    assert dict(Counter(it["split"] for it in items)) == EXPECTED_SPLITS[name]
    assert all(Path(it["image"]).is_absolute() and Path(it["image"]).is_file() for it in items[:50])
    patients = {s: {it["patient_id"] for it in items if it["split"] == s} for s in EXPECTED_SPLITS[name]}
    assert not patients["train"] & patients["val"]
    if name != "kermany-pneumonia":  # Kermany keeps the official test split, whose ids can repeat (README)
        assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]


def test_labels_masks_and_duplicates(data_root):
    nih = dataset_datalist("nih-cxr-pneumonia", "test", data_root)
    assert {it["label"] for it in nih} == {0, 1} and all(it["label"] == it["pneumonia"] for it in nih)
    assert {it["view"] for it in nih} == {"AP", "PA"}
    kermany = dataset_datalist("kermany-pneumonia", data_root=data_root)
    assert len(kermany) == 5840  # as published: the official test split keeps its 624 images
    assert Counter(it["label"] for it in kermany if it["split"] == "test") == {0: 234, 1: 390}
    deduplicated = dataset_datalist("kermany-pneumonia", data_root=data_root, drop_duplicates=True)
    assert len(deduplicated) == 5840 - 32 and not any(it["duplicate_of"] for it in deduplicated)
    seg = dataset_datalist("cxr-lung-seg", "train", data_root)
    assert all(Path(it["label"]).is_file() and "/masks/" in it["label"] for it in seg)
    hannover = dataset_datalist("hannover-cxr", data_root=data_root)
    assert len(hannover) == 243 and "label" not in hannover[0]
    with pytest.raises(ValueError, match="no splits"):
        dataset_datalist("hannover-cxr", "train", data_root)
    with pytest.raises(ValueError, match="missing columns"):
        csv_datalist(data_root / "hannover-cxr/labels.csv", label_column="pneumonia")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_loads_through_datalist_and_views(data_root, name):
    items = dataset_datalist(name, data_root=data_root)
    sample = [items[i] for i in np.random.default_rng(0).choice(len(items), 6, replace=False)]
    segmentation = DATASETS[name]["mask"] is not None
    keys = ["image", "label"] if segmentation else ["image"]
    steps = [*load_image_transforms("image", label_keys=keys[1:]),
             Resized(keys, spatial_size=(96, 96), mode=["area", "nearest"] if segmentation else "area")]
    if segmentation:
        steps.append(AsDiscreted("label", threshold=0.5))
    steps.append(EnsureTyped(keys, track_meta=False))
    batch = next(iter(DataLoader(Dataset(sample, Compose(steps)), batch_size=6)))
    assert 0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1
    batch = RandTwoViewsd("image", (64, 64)).set_random_state(0)(batch)
    assert batch["image"].shape == batch["image_2"].shape == (6, 1, 64, 64)
    assert torch.isfinite(batch["image"]).all() and float(batch["image"].std()) > 0.05
    if segmentation:
        assert set(torch.unique(batch["label"]).tolist()) == {0.0, 1.0}
    if DATASETS[name]["label"]:
        assert batch["label"].shape == (6,)


def test_pretraining_pool_never_holds_a_test_image(data_root):
    pool = pretraining_pool(data_root)
    summary = pool_summary(pool)
    assert 6200 <= summary["total"] <= 6450  # "about 6,400" less duplicates and leaked re-renderings
    assert summary["nih-cxr-pneumonia"] == 682 + 112 and summary["cxr-lung-seg"] == 178
    paths = [it["image"] for it in pool]
    assert len(set(paths)) == len(paths)
    excluded = set()
    for name in ("nih-cxr-pneumonia", "kermany-pneumonia", "cxr-lung-seg"):
        excluded |= {it["image"] for it in dataset_datalist(name, "test", data_root)}
    assert not excluded & set(paths)
    # Hannover re-renderings of lung-seg val/test radiographs (same file name) are left out too
    held_out = {Path(it["image"]).name for it in dataset_datalist("cxr-lung-seg", ("val", "test"), data_root)}
    hannover_names = {Path(it["image"]).name for it in pool if it["dataset"] == "hannover-cxr"}
    assert held_out and not hannover_names & held_out
    assert all(":" in it["patient_id"] for it in pool)


def test_label_fraction_sampling_by_patient(data_root):
    train = dataset_datalist("nih-cxr-pneumonia", "train", data_root)
    by_patient = Counter(it["patient_id"] for it in train)
    for fraction in LABEL_FRACTIONS:
        subset = sample_label_fraction(train, fraction, seed=3)
        assert subset == sample_label_fraction(train, fraction, seed=3)  # seeded
        if fraction < 1:
            assert subset != sample_label_fraction(train, fraction, seed=4)
        assert abs(len(subset) - fraction * len(train)) <= max(by_patient.values()) + 2
        chosen = Counter(it["patient_id"] for it in subset)
        assert all(chosen[p] == by_patient[p] for p in chosen), "patients are taken whole"
    for seed in range(30):  # 1 % = 7 images: both classes every time
        assert {it["label"] for it in sample_label_fraction(train, 0.01, seed=seed)} == {0, 1}
    with pytest.raises(ValueError, match="fraction"):
        sample_label_fraction(train, 0.0)


def test_split_by_patient(data_root):
    items = dataset_datalist("hannover-cxr", data_root=data_root)
    split = split_by_patient(items, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    assert split == split_by_patient(items, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    assert "split" not in items[0]  # input untouched
    sets = {s: {it["patient_id"] for it in split if it["split"] == s} for s in ("train", "val", "test")}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    counts = Counter(it["split"] for it in split)
    assert abs(counts["train"] / len(items) - 0.7) < 0.1 and counts["val"] > 0 and counts["test"] > 0


def test_folder_datalist(data_root, tmp_path):
    for cls, src in (("normal", "kermany-pneumonia/images/IM-0001-0001.jpeg"),
                     ("pneumonia", "nih-cxr-pneumonia/images/00000061_012.png")):
        (tmp_path / cls / "sub").mkdir(parents=True)
        shutil.copy(data_root / src, tmp_path / cls / "sub" / Path(src).name)
    shutil.copy(data_root / "totalseg-ct/example_ct_sm.nii.gz", tmp_path / "normal" / "ct.nii.gz")
    (tmp_path / "normal" / "readme.txt").write_text("ignored")
    items = folder_datalist(tmp_path, label_from_parent=True)
    assert [(Path(it["image"]).name, it["label"], it["class_name"]) for it in items] == [
        ("ct.nii.gz", 0, "normal"), ("IM-0001-0001.jpeg", 0, "normal"), ("00000061_012.png", 1, "pneumonia")]
    assert items[0]["patient_id"] == "ct"
    loaded = Compose(load_image_transforms("image"))
    assert [tuple(loaded(it)["image"].shape) for it in items] == [(1, 122, 101, 30), (1, 224, 224), (1, 256, 256)]


def test_dicom_datalist_groups_series_and_instances(data_root, tmp_path):
    tree = tmp_path / "incoming"
    shutil.copytree(data_root / "totalseg-ct/example_ct_dicom", tree / "ct")
    shutil.copy(data_root / "dicom-samples/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
                tree / "cr.dcm")
    (tree / "notes.txt").write_text("not DICOM")
    broken = tree / "broken.dcm"
    broken.write_bytes((data_root / "dicom-samples/Fake_MONOHR1.dcm").read_bytes()[:140])
    with pytest.warns(UserWarning, match="skipped 1 unreadable DICOM files"):
        items = dicom_datalist(tree)
    assert sorted(it["Modality"] for it in items) == ["CR", "CT"]  # the text file and broken.dcm are left out
    ct = next(it for it in items if it["Modality"] == "CT")
    cr = next(it for it in items if it["Modality"] == "CR")
    assert ct["n_instances"] == 20 and len(ct["image"]) == 20
    assert cr["StudyInstanceUID"] == str(pydicom.dcmread(cr["image"]).StudyInstanceUID)
    patient_id = str(pydicom.dcmread(cr["image"]).PatientID)
    assert cr["patient_id"] != patient_id and len(cr["patient_id"]) == 16  # pseudonym, not the identifier
    loaded = Compose(load_image_transforms("image"))
    assert loaded(ct)["image"].shape == (1, 512, 512, 20)
    assert loaded(cr)["image"].shape == (1, 1024, 1024)


def test_csv_ids_stay_text_and_numbers_are_parsed(data_root, tmp_path):
    image = data_root / "nih-cxr-pneumonia/images/00000061_012.png"
    (tmp_path / "list.csv").write_text(
        "image,patient_id,label,age,note\n"
        f"{image},007,1,41,a\n"
        f"{image},7,0,,b\n"
    )
    items = csv_datalist(tmp_path / "list.csv", label_column="label", split_column=None)
    assert [it["patient_id"] for it in items] == ["007", "7"]  # two patients, not one
    assert [it["label"] for it in items] == [1, 0]
    assert items[0]["age"] == 41.0 and np.isnan(items[1]["age"])
    assert items[0]["image"] == str(image)


def test_volume_and_dicom_datasets_load_through_datalists_and_views(data_root):
    """The non-CSV datasets: totalseg-ct (NIfTI volumes + a DICOM series) and dicom-samples (CR files)."""
    volumes = folder_datalist(data_root / "totalseg-ct")
    assert {Path(it["image"]).name for it in volumes} >= {"example_ct_sm.nii.gz", "example_mr_sm.nii.gz"}
    views_3d = RandTwoViewsd("image", (32, 32, 16), flip_axes=(0, 1, 2))
    small = [it for it in volumes if "_sm" in Path(it["image"]).name]
    pipeline = Compose([*load_image_transforms("image"), Resized("image", (48, 48, 24)),
                        EnsureTyped("image", track_meta=False)])
    batch = views_3d(next(iter(DataLoader(Dataset(small, pipeline), batch_size=len(small)))))
    assert batch["image"].shape == batch["image_2"].shape == (len(small), 1, 32, 32, 16)

    series = dicom_datalist(data_root / "totalseg-ct")
    volume = Compose([*load_image_transforms("image"), Resized("image", (64, 64, 16))])(series[0])["image"]
    out = views_3d({"image": volume[None]})
    assert out["image"].shape == (1, 1, 32, 32, 16) and float(out["image"].std()) > 0.01

    radiographs = dicom_datalist(data_root / "dicom-samples")
    assert len(radiographs) == 2 and {it["Modality"] for it in radiographs} == {"CR"}
    pipeline = Compose([*load_image_transforms("image"), Resized("image", (96, 96), mode="area"),
                        EnsureTyped("image", track_meta=False)])
    batch = RandTwoViewsd("image", (64, 64))(next(iter(DataLoader(Dataset(radiographs, pipeline), batch_size=2))))
    assert batch["image"].shape == (2, 1, 64, 64)


def test_default_data_root_from_the_variable_or_the_working_directory(data_root, tmp_path, monkeypatch):
    """One source of the data root: $DISSECT_DATA_DIR, else ../shared/data from the current directory (never a
    path found through the installed package), else an error that names the variable."""
    monkeypatch.setenv("DISSECT_DATA_DIR", str(data_root))
    assert default_data_root() == data_root.resolve()
    monkeypatch.delenv("DISSECT_DATA_DIR")
    repo = tmp_path / "checkout"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    repo.mkdir()
    monkeypatch.chdir(repo)
    assert default_data_root() == (tmp_path / "shared" / "data").resolve()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="DISSECT_DATA_DIR is not set.*set DISSECT_DATA_DIR"):
        default_data_root()
    monkeypatch.setenv("DISSECT_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere is not a directory"):
        default_data_root()
