"""The node's job runner on the project's real chest X-ray bundle configs (trained weights when present, else a
random init of their own network_def; see deploy_helpers.project_bundle), on a real CR."""

from __future__ import annotations


import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from deploy_helpers import CR_RULES, SIIM_CR, project_bundle

from dissect_monai.deploy.bundle_runner import BundleRunner
from dissect_monai.deploy.config import PipelineConfig
from dissect_monai.deploy.jobs import StudyProcessor
from dissect_monai.dicom.seg import label_map_from_prediction
from dissect_monai.dicom.sr import read_classification_sr


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def processor(repo_root, tmp_path_factory) -> StudyProcessor:
    scratch = tmp_path_factory.mktemp("bundles")
    pipelines, runners = [], {}
    for kind, output in (("cxr_classification", "sr"), ("cxr_lung_segmentation", "seg")):
        path, _ = project_bundle(repo_root, kind, scratch)
        pipelines.append(PipelineConfig(name=kind, bundle=path, output=output, rules=CR_RULES, single_instance=True))
        runners[kind] = BundleRunner(path)
    return StudyProcessor(pipelines, runners)


def test_real_cxr_bundles_give_sr_and_seg(processor, data_root):
    source_path = data_root / SIIM_CR
    results = processor.process({"series": [source_path]})
    source = pydicom.dcmread(source_path)
    by_modality = {ds.Modality: ds for ds in results}
    assert set(by_modality) == {"SR", "SEG"}
    classifier = processor.runners["cxr_classification"]
    direct = classifier.predict(source_path).reshape(-1)
    names = classifier.channel_names()
    assert read_classification_sr(by_modality["SR"]) == pytest.approx({names[i]: float(direct[i]) for i in names})
    seg = hd.seg.Segmentation.from_dataset(by_modality["SEG"])
    mask = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)[0]
    direct_mask = processor.runners["cxr_lung_segmentation"].predict(source_path)  # MONAI's (W, H)
    assert mask.shape == (source.Rows, source.Columns) and 0.1 < mask.mean() < 0.6  # trained weights: real lungs
    np.testing.assert_array_equal(mask, np.asarray(direct_mask).T)  # the SEG frame is DICOM's (rows, columns)
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == (
        "dissect_cxr_lung_segmentation"
    )


def test_unmatched_series_ignored(processor, data_root):
    ct_slice = sorted((data_root / "totalseg-ct" / "example_ct_dicom").iterdir())[0]
    assert processor.process({"ct": [ct_slice]}) == []


def test_label_map_from_pred_accepts_squeezed_channel():
    mask = torch.zeros(6, 4)
    mask[2:4, 1:3] = 1
    np.testing.assert_array_equal(label_map_from_prediction(mask, 2)[0], mask.numpy())  # (H, W): was argmax over rows
    one_hot = torch.stack([1 - mask, mask])
    np.testing.assert_array_equal(label_map_from_prediction(one_hot, 2)[0], mask.numpy())
    with pytest.raises(ValueError, match="is not 3-D"):
        label_map_from_prediction(mask, 3)
