"""A MONAI Deploy application around the dissect_ct_segmentation bundle, built from the App SDK's own operators:
DICOM loader -> series selector (CT) -> series to volume -> MonaiBundleInferenceOperator -> DICOM SEG writer.

The bundle is the TorchScript file ``ckpt_export`` writes (it embeds ``metadata.json`` and ``inference.json``, which
the operator reads); its transforms come from the ``dissect_monai`` package, which must be installed beside
``monai-deploy-app-sdk`` (e.g. the project's wheel). Export and run, from the bundle folder::

    python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \
        --config_file configs/inference.yaml
    python <this file> -i <folder of one CT study's DICOM files> -o <output folder> -m models/model.ts

It writes one BINARY DICOM SEG (one segment per organ of the bundle's ``channel_def``) into the output folder.
Not working yet: the bundle's loader (``LoadMedicalImaged``) survives the operator's ``LoadImage*`` filter and fails
on the in-memory volume (``tests/test_deploy_sdk.py`` marks this run as an expected failure).
Research only, not for clinical use.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from monai.deploy.core.domain import Image
from monai.deploy.core.io_type import IOType
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import DICOMSegmentationWriterOperator, SegmentDescription
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

#: the primary CT series of a study (the SDK's selection rule syntax: regular expressions per attribute)
CT_SERIES_RULES = json.dumps({"selections": [{"name": "CT series", "conditions": {"Modality": "(?i)CT"}}]})
#: SNOMED CT codes of the bundle's channel names (its metadata's ``channel_def``)
ORGAN_CODES = {
    "spleen": codes.SCT.Spleen,
    "kidney_right": Code("9846003", "SCT", "Right kidney"),
    "kidney_left": Code("18639004", "SCT", "Left kidney"),
    "liver": codes.SCT.Liver,
}


def bundle_metadata(torchscript_bundle: Path) -> dict:
    """The ``metadata.json`` that ``ckpt_export`` embeds in a TorchScript bundle (``<name>/extra/metadata.json``)."""
    with zipfile.ZipFile(torchscript_bundle) as zf:
        names = [n for n in zf.namelist() if n.endswith("/extra/metadata.json")]
        if not names:
            raise ValueError(f"{torchscript_bundle}: no extra/metadata.json (export the bundle with ckpt_export)")
        return json.loads(zf.read(names[0]))


def segment_descriptions(metadata: dict, algorithm_name: str) -> list[SegmentDescription]:
    """One SEG segment per non-background output channel, in label order (label value i = channel i)."""
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    labels = [channel_def[str(i)] for i in range(1, len(channel_def))]
    unknown = [name for name in labels if name not in ORGAN_CODES]
    if unknown:
        raise ValueError(f"no SNOMED CT code for channel(s) {unknown}; known: {sorted(ORGAN_CODES)}")
    return [
        SegmentDescription(
            segment_label=name,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=ORGAN_CODES[name],
            algorithm_name=algorithm_name,
            algorithm_family=codes.DCM.ArtificialIntelligence,
            algorithm_version=str(metadata["version"]),
        )
        for name in labels
    ]


class CTOrganSegmentationApp(Application):
    """CT study in, DICOM SEG of spleen, kidneys and liver out (``-i`` DICOM folder, ``-o`` output, ``-m`` model)."""

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)
        output = Path(app_context.output_path)
        metadata = bundle_metadata(Path(app_context.model_path))

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=Path(app_context.input_path),
                                         name="study_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=CT_SERIES_RULES, name="series_selector")
        to_volume = DICOMSeriesToVolumeOperator(self, name="series_to_volume")
        # the bundle's preprocessing / inferer / postprocessing, minus LoadImage* and SaveImage* transforms
        segment = MonaiBundleInferenceOperator(
            self,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            app_context=app_context,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            name="bundle_inference",
        )
        writer = DICOMSegmentationWriterOperator(
            self,
            segment_descriptions=segment_descriptions(metadata, "dissect_ct_segmentation"),
            custom_tags={"SeriesDescription": "AI generated organ segmentation, research only, not for clinical use"},
            output_folder=output,
            name="seg_writer",
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, segment, {("image", "image")})
        self.add_flow(selector, writer, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(segment, writer, {("pred", "seg_image")})


if __name__ == "__main__":
    CTOrganSegmentationApp().run()
