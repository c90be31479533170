"""Helpers of the tests that use a shipped bundle as a newcomer would: the command its README gives, run verbatim,
and chest X-ray files turned into the DICOM CR a PACS would send."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def readme_command(bundle: Path, comment: str) -> list[str]:
    """argv of the first ``python -m monai.bundle run ...`` command (line continuations joined) that follows the line
    starting with ``# <comment>`` in ``bundle/docs/README.md``."""
    text = (bundle / "docs" / "README.md").read_text()
    command = r"python -m monai\.bundle run (?:[^\n]*\\\n)*[^\n]*"  # with its continued lines
    match = re.search(rf"# {re.escape(comment)}[^\n]*\n(?:#[^\n]*\n)*({command})", text)
    assert match, f"{bundle.name}/docs/README.md has no command under '# {comment}'"
    return shlex.split(match.group(1).replace("\\\n", " "))


def cr_from_image(image: Path, target: Path) -> pydicom.Dataset:
    """A DICOM CR (MONOCHROME2, 8 bit, explicit VR little endian, PA) of the grayscale pixels of a PNG / JPEG file;
    written to ``target`` and returned.

    Its window (centre 127.5, width 255, ``LINEAR_EXACT``) maps the pixels to [0, 1] as the bit depth of the PNG /
    JPEG does, so both files reach a network with the same intensities (without a window the bundles' intensity
    step uses a percentile window, :class:`dissect_monai.transforms.MedicalIntensity`).
    """
    pixels = np.asarray(Image.open(image).convert("L"), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CR_IMAGE_STORAGE, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID, ds.ViewPosition = "CR", "Newcomer^Test", "NEWCOMER", "PA"
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20261201", "120000", 1, 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 127.5, 255, "LINEAR_EXACT"
    ds.PixelData = pixels.tobytes()
    pydicom.dcmwrite(target, ds, enforce_file_format=True)
    return ds
