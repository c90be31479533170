"""Every bad-input case, with real files copied to tmp_path and damaged there: a clear ImageLoadError naming the
file and the problem (never a decoder traceback), raised through MONAI's own ``LoadImaged`` unchanged (not hidden
behind its "cannot find a suitable reader")."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from monai.transforms import EnsureChannelFirstd, LoadImaged

from dissect_monai.data import ImageLoadError, MedicalImageReader
from dissect_monai.transforms import MedicalIntensityd

SIIM = "dicom-samples/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def truncated_copy(src: Path, dst: Path, fraction: float) -> Path:
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def read(path, series_uid: str | None = None):
    """``LoadImaged(reader=MedicalImageReader())`` + ``EnsureChannelFirstd``: modality values, as label maps load."""
    d = {"image": [str(p) for p in path] if isinstance(path, (list, tuple)) else str(path)}
    d = LoadImaged("image", reader=MedicalImageReader(series_uid=series_uid))(d)
    return EnsureChannelFirstd("image")(d)["image"]


def load(path, mode: str = "unit", series_uid: str | None = None):
    """:func:`read` then ``MedicalIntensityd`` (the bundles' loading section)."""
    return MedicalIntensityd("image", mode=mode)({"image": read(path, series_uid)})["image"]


def expect_error(path, match: str, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError, match=match) as info:
        load(path, **kwargs)
    shown = path if not isinstance(path, (list, tuple)) else path[0]
    assert str(shown) in str(info.value), "the error must name the file"
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize("name", ["x.png", "x.dcm", "x.nii.gz", "x.jpeg"])
def test_missing_file(tmp_path, name):
    expect_error(tmp_path / name, "file not found")


def test_truncated_png_and_jpeg(data_root, tmp_path):
    png = truncated_copy(data_root / "nih-cxr-pneumonia/images/00000061_012.png", tmp_path / "cut.png", 0.4)
    expect_error(png, "cannot decode image.*truncated")
    jpeg = truncated_copy(data_root / "kermany-pneumonia/images/IM-0001-0001.jpeg", tmp_path / "cut.jpeg", 0.5)
    expect_error(jpeg, "cannot decode image")


def test_not_an_image(tmp_path, data_root):
    fake_png = tmp_path / "labels.png"
    shutil.copy(data_root / "nih-cxr-pneumonia/labels.csv", fake_png)
    expect_error(fake_png, "not a readable image")
    fake_dcm = tmp_path / "labels.dcm"
    shutil.copy(data_root / "nih-cxr-pneumonia/labels.csv", fake_dcm)
    expect_error(fake_dcm, "not a DICOM file")
    other = tmp_path / "labels.csv"
    shutil.copy(data_root / "nih-cxr-pneumonia/labels.csv", other)
    expect_error(other, "unsupported file type '.csv'")


def test_truncated_dicom(data_root, tmp_path):
    # JPEG-compressed CR cut inside its encapsulated pixel data, and inside the header
    expect_error(truncated_copy(data_root / SIIM, tmp_path / "cut.dcm", 0.6), "truncated")
    expect_error(truncated_copy(data_root / SIIM, tmp_path / "header.dcm", 0.001), "truncated|unreadable")
    # uncompressed CR cut in half: the decoder finds too few pixel bytes
    expect_error(truncated_copy(get_testdata_file("RG1_UNCI.dcm"), tmp_path / "half.dcm", 0.5),
                 "cannot decode pixel data")


def test_dicom_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / "nopixels.dcm"
    ds.save_as(path)
    expect_error(path, "no pixel data")


def test_unsupported_photometric_interpretation(tmp_path):
    expect_error(get_testdata_file("US1_UNCI.dcm"), "unsupported PhotometricInterpretation RGB")  # real RGB US
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    path = tmp_path / "palette.dcm"
    ds.save_as(path)
    expect_error(path, "unsupported PhotometricInterpretation PALETTE COLOR")


def test_constant_images(data_root, tmp_path):
    pixels = np.asarray(Image.open(data_root / "nih-cxr-pneumonia/images/00000061_012.png"))
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full_like(pixels, int(pixels.mean()))).save(flat)
    expect_error(flat, "constant image")
    mask = read(flat)  # masks may be constant (an empty mask is valid)
    assert float(mask.min()) == float(mask.max())

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = np.zeros_like(ds.pixel_array).tobytes()
    path = tmp_path / "zeros.dcm"
    ds.save_as(path)
    expect_error(path, "constant image", mode="hu")


def test_inf_after_rescale(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope = "1e38"  # stored values up to ~1000: overflow float32
    path = tmp_path / "overflow.dcm"
    ds.save_as(path)
    expect_error(path, "NaN/Inf after the Modality LUT")


def test_nan_in_nifti_and_truncated_nifti(data_root, tmp_path):
    src = nib.load(data_root / "totalseg-ct/example_ct_sm.nii.gz")
    data = src.get_fdata(dtype=np.float32)
    data[10:20, 10:20, 5] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, src.affine), path)
    expect_error(path, "100 NaN/Inf values")
    expect_error(truncated_copy(data_root / "totalseg-ct/example_ct_sm.nii.gz", tmp_path / "cut.nii.gz", 0.5),
                 "cannot read NIfTI")
    # a gzip stream that is not a NIfTI at all
    bogus = tmp_path / "bogus.nii.gz"
    bogus.write_bytes(gzip.compress(b"not a nifti header" * 40))
    expect_error(bogus, "cannot read NIfTI")


def test_series_problems(data_root, tmp_path):
    files = sorted((data_root / "totalseg-ct/example_ct_dicom").iterdir())[:3]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if i == 0:
            ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.save_as(mixed / f"{i}.dcm")
    expect_error(mixed, "2 series mixed")
    one = load(mixed, "hu", series_uid="1.2.826.0.1.3680043.8.498.1")
    assert one.shape == (1, 512, 512)

    duplicated = tmp_path / "duplicated"
    duplicated.mkdir()
    for f in files:
        shutil.copy(f, duplicated / f.name)
    shutil.copy(files[1], duplicated / "copy.dcm")  # 4 slices, one position twice: the median gap stays > 0
    expect_error(duplicated, "1 slices share the same position")

    # non-image objects beside the slices (a DICOMDIR and an SR) are not slices and do not split the series
    with_extras = tmp_path / "with_extras"
    shutil.copytree(duplicated, with_extras)
    (with_extras / "copy.dcm").unlink()
    shutil.copy(get_testdata_file("DICOMDIR"), with_extras / "DICOMDIR")
    shutil.copy(get_testdata_file("test-SR.dcm"), with_extras / "report.dcm")
    assert load(with_extras, "hu").shape == (1, 512, 512, 3)
    only_reports = tmp_path / "only_reports"
    only_reports.mkdir()
    shutil.copy(get_testdata_file("DICOMDIR"), only_reports / "DICOMDIR")
    shutil.copy(get_testdata_file("test-SR.dcm"), only_reports / "report.dcm")
    expect_error(only_reports, "no image instances")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    expect_error(empty, "no DICOM Part 10 files")


def test_error_survives_pickling():
    """DataLoader workers send errors to the main process by pickling."""
    import pickle

    err = ImageLoadError("/data/x.dcm", "no pixel data")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.filename == "/data/x.dcm" and copy.problem == "no pixel data"
