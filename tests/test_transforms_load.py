"""Loading real files through LoadImaged(reader=MedicalImageReader()) + EnsureChannelFirstd + MedicalIntensityd:
PNG/JPEG, DICOM CR (polarity, window, spacing), multi-frame, CT series, NIfTI."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientation, Orientationd
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from dissect_monai.data import ImageLoadError, MedicalImageReader
from dissect_monai.transforms import MedicalIntensityd, load_image_transforms

SIIM = "dicom-samples/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
FAKE_MONO1 = "dicom-samples/Fake_MONOHR1.dcm"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # explicit: monai 1.4 and 1.6 differ in Orientation's default


def load(path, mode: str = "unit", **kwargs) -> MetaTensor:
    """Channel-first image through the bundles' loading section (reader, channel, intensity), called one by one
    so that errors arrive unwrapped (``Compose`` wraps them in a ``RuntimeError``)."""
    d = {"image": str(path)}
    for t in load_image_transforms("image", mode=mode, **kwargs):
        d = t(d)
    return d["image"]


def read(path) -> MetaTensor:
    """Channel-first image as the reader gives it (modality values; label maps are loaded like this)."""
    d = LoadImaged("image", reader=MedicalImageReader())({"image": str(path)})
    return EnsureChannelFirstd("image")(d)["image"]


def centre_vs_lungs(image: torch.Tensor) -> tuple[float, float]:
    """Mean of the central vertical strip (mediastinum/spine) and of both lateral lung strips, mid-height."""
    x = image[0].numpy().T  # (W, H) -> rows first
    h, w = x.shape
    rows = slice(int(0.4 * h), int(0.6 * h))
    centre = x[rows, int(0.45 * w):int(0.55 * w)].mean()
    lungs = (x[rows, int(0.2 * w):int(0.3 * w)].mean() + x[rows, int(0.7 * w):int(0.8 * w)].mean()) / 2
    return float(centre), float(lungs)


def test_png_and_jpeg_load_as_one_channel_unit(data_root):
    png = data_root / "nih-cxr-pneumonia/images/00000061_012.png"
    img = load(png)
    assert isinstance(img, MetaTensor) and img.dtype == torch.float32
    assert img.shape == (1, 256, 256)
    expected = np.asarray(Image.open(png), dtype=np.float32) / 255.0
    np.testing.assert_allclose(img[0].numpy().T, expected, atol=1e-6)  # MONAI's axis order: first axis = column
    assert img.meta["filename_or_obj"] == str(png)

    jpeg = data_root / "kermany-pneumonia/images/IM-0001-0001.jpeg"
    rgb = np.asarray(Image.open(jpeg))
    assert rgb.ndim == 3 and rgb.shape[2] == 3  # Kermany's JPEGs carry 3 identical channels
    img = load(jpeg)
    assert img.shape == (1, 224, 224)
    np.testing.assert_allclose(img[0].numpy().T, rgb[..., 0] / 255.0, atol=1.5 / 255)


def test_siim_cr_dicom_spacing_window_and_deidentified_meta(data_root):
    path = data_root / SIIM
    ds = pydicom.dcmread(path)
    img = load(path)
    assert img.shape == (1, 1024, 1024)
    np.testing.assert_allclose(img.pixdim[:2].numpy(), [0.168, 0.168])
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    # no stored window -> percentile window: about 0.5 % of pixels at each end
    assert img.meta["voi_source"] == "percentile"
    assert 0.001 < float((img == 0).float().mean()) < 0.02 and 0.001 < float((img == 1).float().mean()) < 0.02
    # references kept, identifiers gone (the file's PatientName/PatientID are a UUID string)
    assert img.meta["SOPInstanceUID"] == ds.SOPInstanceUID
    assert img.meta["StudyInstanceUID"] == ds.StudyInstanceUID
    assert img.meta["SeriesInstanceUID"] == ds.SeriesInstanceUID
    flat = " ".join(str(v) for v in img.meta.values())
    assert str(ds.PatientID) not in flat and str(ds.PatientName) not in flat
    assert not any("Patient" in str(k) for k in img.meta)
    centre, lungs = centre_vs_lungs(img)
    assert centre > lungs + 0.2  # MONOCHROME2: mediastinum/spine bright, lungs dark


def test_monochrome1_inverted_to_match_monochrome2(data_root, tmp_path):
    """A real CR re-encoded as MONOCHROME1 (inverted stored values) loads identically to the original."""
    siim = data_root / SIIM
    ds = pydicom.dcmread(siim)
    pixels = ds.pixel_array
    ds.PixelData = (255 - pixels).astype(np.uint8).tobytes()
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    mono1 = tmp_path / "mono1.dcm"
    ds.save_as(mono1)
    original, inverted = load(siim), load(mono1)
    assert inverted.meta["inverted"] and not original.meta["inverted"]
    np.testing.assert_allclose(inverted.numpy(), original.numpy(), atol=1e-5)

    # the shipped Fake_MONOHR1.dcm holds the same stored values as the SIIM file but declares MONOCHROME1,
    # so a correct reader must display it as the negative of the SIIM image
    fake = load(data_root / FAKE_MONO1)
    np.testing.assert_allclose(fake.numpy(), 1.0 - original.numpy(), atol=1e-5)


def test_pydicom_data_chest_cr_monochrome1_bright_bones_and_stored_window():
    path = get_testdata_file("RG1_UNCI.dcm")  # 1955x1841 chest CR, MONOCHROME1, window 15000/30000
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "CR"
    img = load(path)
    assert img.shape == (1, 1841, 1955)  # (Columns, Rows)
    assert img.meta["voi_source"] == "WindowCenterWidth"
    assert img.meta["window_center"] == 15000 and img.meta["window_width"] == 30000
    assert img.meta["spacing_source"] == "none"  # the file's PixelSpacing is 0.0: not used as spacing
    centre, lungs = centre_vs_lungs(img)
    assert centre > lungs + 0.1, "MONOCHROME1 must come out with bright bones"
    raw_centre, raw_lungs = centre_vs_lungs(read(path))
    assert raw_centre < raw_lungs  # stored MONOCHROME1 values: dense tissue is low


def test_window_override_and_hu_mode():
    ct = get_testdata_file("CT_small.dcm")
    hu = load(ct, "hu")
    ds = pydicom.dcmread(ct)
    np.testing.assert_allclose(hu[0].numpy().T, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    windowed = load(ct, window=(40, 400))
    inside = (hu > -160) & (hu < 240)
    expected = (hu[inside] - (40 - 0.5)) / 399 + 0.5
    np.testing.assert_allclose(windowed[inside].numpy(), expected.numpy(), atol=1e-5)
    assert float(windowed[hu < -200].max()) == 0.0 and float(windowed[hu > 300].min()) == 1.0
    with pytest.raises(ImageLoadError, match="MR_small.dcm: mode='hu' needs a CT image, this is Modality MR"):
        load(get_testdata_file("MR_small.dcm"), "hu")


def test_enhanced_multiframe_ct_is_a_volume_with_functional_group_geometry():
    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    img = load(path, "hu")
    assert img.shape == (1, ds.Columns, ds.Rows, int(ds.NumberOfFrames))
    spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    np.testing.assert_allclose(img.pixdim[:2].numpy(), [float(spacing[1]), float(spacing[0])], rtol=1e-6)
    positions = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float)
                 for f in ds.PerFrameFunctionalGroupsSequence]
    np.testing.assert_allclose(float(img.pixdim[2]), np.linalg.norm(positions[1] - positions[0]), rtol=1e-5)


def test_ct_series_matches_totalsegmentator_label_map(data_root):
    series = data_root / "totalseg-ct/example_ct_dicom"
    seg_path = data_root / "totalseg-ct/example_seg_dicom.nii.gz"
    ct = load(series, "hu")
    seg = read(seg_path)
    assert ct.shape == seg.shape == (1, 512, 512, 20)
    np.testing.assert_allclose(ct.pixdim.numpy(), [0.9765625, 0.9765625, 2.0], rtol=1e-6)
    assert len(ct.meta["SOPInstanceUID"].split("\\")) == 20
    # same physical grid: reoriented to the label map's axis codes, the affines agree
    ct_like_seg = Orientation(axcodes="LAS", labels=RAS_LABELS)(ct)
    np.testing.assert_allclose(ct_like_seg.affine.numpy(), seg.affine.numpy(), atol=1e-3)
    # and the labels land on tissue: organ voxels are soft tissue, the liver (TotalSegmentator label 5) too
    hu, labels = ct_like_seg[0].numpy(), seg[0].numpy()
    assert 0 < hu[labels == 5].mean() < 200
    assert hu[labels > 0].mean() > hu[labels == 0].mean() + 500
    # Orientationd after loading does the same, for both (as the CT bundle's configs)
    t = Compose([*load_image_transforms("image", mode="hu", label_keys="label"),
                 Orientationd(["image", "label"], axcodes="RAS", labels=RAS_LABELS)])
    ras = t({"image": str(series), "label": str(seg_path)})
    np.testing.assert_allclose(ras["image"].affine.numpy(), ras["label"].affine.numpy(), atol=1e-3)


def test_nifti_keeps_affine_and_values(data_root):
    import nibabel as nib

    for name in ("example_ct_sm.nii.gz", "example_mr_sm.nii.gz"):
        path = data_root / "totalseg-ct" / name
        ref = nib.load(path)
        img = read(path)
        assert img.shape == (1, *ref.shape)
        np.testing.assert_allclose(img.affine.numpy(), ref.affine, atol=1e-5)
        np.testing.assert_allclose(img[0].numpy(), ref.get_fdata(dtype=np.float32), atol=1e-4)
        unit = load(path)
        assert unit.meta["voi_source"] == "percentile" and 0 <= float(unit.min()) <= float(unit.max()) <= 1


def test_dict_transform_per_key_modes_and_missing_keys(data_root):
    t = Compose(load_image_transforms("image", label_keys="label", allow_missing_keys=True))
    item = {"image": str(data_root / "cxr-lung-seg/images/00870a9c.png"),
            "label": str(data_root / "cxr-lung-seg/masks/00870a9c.png")}
    out = t(item)
    assert out["image"].shape == out["label"].shape == (1, 256, 256)
    assert set(np.unique(out["label"].numpy())) <= {0.0, 255.0} and float(out["image"].max()) <= 1.0
    assert "label" not in t({"image": item["image"]})
    with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps the transform's KeyError
        Compose(load_image_transforms("image", label_keys="label"))({"image": item["image"]})
    assert isinstance(info.value.__cause__, KeyError)


def test_modality_and_voi_lut_sequences_match_pydicom():
    """LUT-sequence paths (pydicom-data's real LUT test images) agree with pydicom's reference functions."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    mlut = get_testdata_file("mlut_18.dcm")
    ds = pydicom.dcmread(mlut)
    assert "ModalityLUTSequence" in ds
    raw = read(mlut)
    np.testing.assert_allclose(raw[0].numpy().T, apply_modality_lut(ds.pixel_array, ds))

    vlut = get_testdata_file("vlut_04.dcm")
    ds = pydicom.dcmread(vlut)
    assert "VOILUTSequence" in ds
    unit = load(vlut)
    assert unit.meta["voi_source"] == "VOILUTSequence"
    assert "voi_lut" not in unit.meta  # the table is consumed, so batches of images collate
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    expected = apply_voi_lut(ds.pixel_array, ds, index=0) / (2**bits - 1)
    np.testing.assert_allclose(unit[0].numpy().T, expected, atol=1e-6)


def test_window_per_key():
    ct = get_testdata_file("CT_small.dcm")
    loaded = Compose([LoadImaged(["a", "b"], reader=MedicalImageReader()), EnsureChannelFirstd(["a", "b"])])
    out = MedicalIntensityd(["a", "b"], window=[None, (40, 400)])(loaded({"a": ct, "b": ct}))
    assert out["a"].meta["voi_source"] == "percentile" and out["b"].meta["voi_source"] == "override"
    both = MedicalIntensityd(["a", "b"], window=(40, 400))(loaded({"a": ct, "b": ct}))
    assert both["a"].meta["window_width"] == both["b"].meta["window_width"] == 400


def test_16_bit_and_float_rasters(data_root, tmp_path):
    png = data_root / "nih-cxr-pneumonia/images/00000061_012.png"
    pixels = np.asarray(Image.open(png), dtype=np.uint16)
    deep = tmp_path / "deep.png"
    Image.fromarray(pixels * 257).save(deep)  # 8 -> 16 bit, same intensities
    assert Image.open(deep).mode.startswith("I;16")
    np.testing.assert_allclose(load(deep).numpy(), load(png).numpy(), atol=1e-6)
    floating = tmp_path / "float.tiff"
    Image.fromarray(pixels.astype(np.float32) * 10.0 - 300.0).save(floating)
    raw = read(floating)
    np.testing.assert_allclose(raw[0].numpy().T, pixels * 10.0 - 300.0)
    unit = load(floating)
    assert unit.meta["voi_source"] == "percentile" and float(unit.min()) == 0.0 and float(unit.max()) == 1.0


def test_ct_series_equals_monai_itk_reader(data_root):
    """Same voxels and affine as MONAI's ITKReader (GDCM) on the real CT series."""
    from monai.transforms import LoadImage

    series = data_root / "totalseg-ct/example_ct_dicom"
    ours = load(series, "hu")
    itk = LoadImage(reader="ITKReader", image_only=True)(str(series))
    assert ours.shape[1:] == itk.shape
    np.testing.assert_allclose(ours.affine.numpy(), itk.affine.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours[0].numpy(), itk.numpy(), atol=1e-3)


def test_rt_dose_grid_frame_offsets_give_the_slice_positions():
    path = get_testdata_file("rtdose.dcm")  # 15 frames located by GridFrameOffsetVector, not per-frame groups
    ds = pydicom.dcmread(path)
    dose = read(path)
    assert dose.shape == (1, ds.Columns, ds.Rows, 15)
    np.testing.assert_allclose(float(dose.pixdim[2]), float(ds.GridFrameOffsetVector[1]), rtol=1e-6)
    lps_origin = np.asarray(ds.ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(dose.affine[:3, 3].numpy(), lps_origin * [-1, -1, 1], atol=1e-4)
