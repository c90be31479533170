"""MedicalImageReader in MONAI's LoadImaged: PNG, its DICOM re-encoding and its MONOCHROME1 re-encoding give the same
array; 2D arrays follow MONAI's axis order (PILReader's) on a non-square real image."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from monai.data import PILReader
from monai.transforms import EnsureChannelFirstd, LoadImaged
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dissect_monai.data import MedicalImageReader
from dissect_monai.transforms import load_image_transforms

LUNG_IMAGE = "cxr-lung-seg/images/00870a9c.png"


def load(path) -> torch.Tensor:
    d = {"image": str(path)}
    for t in load_image_transforms("image"):
        d = t(d)
    return d["image"]


@pytest.fixture()
def non_square_png(data_root, tmp_path):
    """A real chest X-ray cropped to 256 rows x 200 columns (so a swapped axis changes the shape)."""
    path = tmp_path / "crop.png"
    Image.open(data_root / LUNG_IMAGE).convert("L").crop((28, 0, 228, 256)).save(path)
    return path


def dicom_copy(pixels: np.ndarray, path, photometric: str) -> None:
    """Write ``pixels`` (rows, columns; uint8) as a DICOM CR with pydicom, windowed over its 8 bits."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth = 127.5, 255  # LINEAR_EXACT: v -> v / 255, as an 8-bit PNG
    ds.VOILUTFunction = "LINEAR_EXACT"
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_png_dicom_and_monochrome1_give_the_same_array(non_square_png, tmp_path):
    pixels = np.asarray(Image.open(non_square_png))
    assert pixels.shape == (256, 200)
    dicom_copy(pixels, tmp_path / "mono2.dcm", "MONOCHROME2")
    dicom_copy(255 - pixels, tmp_path / "mono1.dcm", "MONOCHROME1")  # same image, inverted stored values
    png, mono2, mono1 = (load(p) for p in (non_square_png, tmp_path / "mono2.dcm", tmp_path / "mono1.dcm"))
    assert png.shape == mono2.shape == mono1.shape == (1, 200, 256)  # (1, W, H)
    assert mono1.meta["inverted"] and not mono2.meta["inverted"]
    np.testing.assert_allclose(mono2.numpy(), png.numpy(), atol=1e-6)
    np.testing.assert_allclose(mono1.numpy(), png.numpy(), atol=1e-6)
    np.testing.assert_allclose(png[0].numpy().T, pixels / 255.0, atol=1e-6)  # rows = axis 1


def test_axis_order_and_spatial_shape_match_pil_reader(non_square_png):
    ours = LoadImaged("image", reader=MedicalImageReader())({"image": str(non_square_png)})["image"]
    pil = LoadImaged("image", reader=PILReader())({"image": str(non_square_png)})["image"]
    assert ours.shape == pil.shape == (200, 256)
    np.testing.assert_array_equal(ours.numpy(), pil.numpy())
    np.testing.assert_array_equal(ours.meta["spatial_shape"], pil.meta["spatial_shape"])
    channel_first = EnsureChannelFirstd("image")({"image": ours})["image"]
    assert channel_first.shape == (1, 200, 256)


def test_dicom_spacing_follows_the_axes(data_root, tmp_path):
    """A 2D DICOM with different row and column spacing: axis 0 (columns) carries the column spacing."""
    pixels = np.asarray(Image.open(data_root / LUNG_IMAGE).convert("L").crop((28, 0, 228, 256)))
    path = tmp_path / "spaced.dcm"
    dicom_copy(pixels, path, "MONOCHROME2")
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [0.2, 0.1]  # row spacing (between rows), column spacing (between columns)
    ds.save_as(path)
    image = load(path)
    np.testing.assert_allclose(image.pixdim[:2].numpy(), [0.1, 0.2])


def test_verify_suffix(data_root, tmp_path):
    reader = MedicalImageReader()
    assert reader.verify_suffix(str(data_root / LUNG_IMAGE))
    assert reader.verify_suffix(str(data_root / "totalseg-ct/example_ct_sm.nii.gz"))
    assert reader.verify_suffix(str(data_root / "totalseg-ct/example_ct_dicom"))  # a series directory
    assert reader.verify_suffix([str(data_root / "dicom-samples/Fake_MONOHR1.dcm")])
    (tmp_path / "notes.txt").write_text("not an image")
    assert not reader.verify_suffix(str(tmp_path / "notes.txt"))
