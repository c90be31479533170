"""The image reader (a MONAI ``ImageReader`` for PNG/JPEG, NIfTI, DICOM files and series), datalists (CSV, folders,
DICOM trees, the project's datasets and pretraining pool), patient-level splits, label-fraction sampling, and datasets
that skip and count unreadable images."""

from dissect_monai.data.datalists import (
    DATA_DIR_VARIABLE,
    DATASETS,
    csv_datalist,
    dataset_datalist,
    default_data_root,
    dicom_datalist,
    folder_datalist,
)
from dissect_monai.data.datasets import (
    RobustCacheDataset,
    RobustDataset,
    RobustPersistentDataset,
    find_image_load_error,
)
from dissect_monai.data.errors import ImageLoadError
from dissect_monai.data.image_reader import MedicalImageReader
from dissect_monai.data.pool import POOL_SOURCES, pool_summary, pretraining_pool
from dissect_monai.data.splits import LABEL_FRACTIONS, group_by_patient, sample_label_fraction, split_by_patient

__all__ = [
    "DATASETS",
    "DATA_DIR_VARIABLE",
    "ImageLoadError",
    "LABEL_FRACTIONS",
    "MedicalImageReader",
    "POOL_SOURCES",
    "RobustCacheDataset",
    "RobustDataset",
    "RobustPersistentDataset",
    "csv_datalist",
    "dataset_datalist",
    "default_data_root",
    "dicom_datalist",
    "find_image_load_error",
    "folder_datalist",
    "group_by_patient",
    "pool_summary",
    "pretraining_pool",
    "sample_label_fraction",
    "split_by_patient",
]
