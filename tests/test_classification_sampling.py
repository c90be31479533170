"""Label fractions of the classification bundle: patient-level, seeded, reproducible, both classes, on real CSVs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "dissect_cxr_classification" / "configs"


def _train_lists(data_root: Path, fraction: float, seed: int, extra: list[str] = ()) -> tuple[list[dict], list[dict]]:
    """(full train datalist, the bundle's label-fraction sample) as the train config builds them."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), *(str(CONFIGS / e) for e in extra)])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser["dataset_dir"] = str(data_root)
    parser["label_fraction"] = fraction
    parser["fraction_seed"] = seed
    return parser.get_parsed_content("train#full_datalist"), parser.get_parsed_content("train#datalist")


@pytest.mark.parametrize("extra", [[], ["kermany.yaml"]], ids=["nih", "kermany"])
@pytest.mark.parametrize("fraction", [0.01, 0.10])
def test_fraction_is_patient_level_and_reproducible(data_root, extra, fraction):
    full, sample = _train_lists(data_root, fraction, seed=3, extra=extra)
    images_of = defaultdict(set)
    for item in full:
        images_of[item["patient_id"]].add(item["image"])
    chosen = defaultdict(set)
    for item in sample:
        chosen[item["patient_id"]].add(item["image"])
    # whole patients only: every image of a chosen patient is in the sample
    assert all(chosen[p] == images_of[p] for p in chosen)
    assert {item["pneumonia"] for item in sample} == {0, 1}
    # about the requested share of images (whole patients make it approximate; at least one per class)
    assert len(sample) <= fraction * len(full) + max(len(v) for v in images_of.values()) + 2
    assert len(sample) >= max(2, 0.5 * fraction * len(full))
    # same seed -> same sample; another seed -> another sample
    _, again = _train_lists(data_root, fraction, seed=3, extra=extra)
    _, other = _train_lists(data_root, fraction, seed=4, extra=extra)
    assert [i["image"] for i in again] == [i["image"] for i in sample]
    assert {i["image"] for i in other} != {i["image"] for i in sample}


def test_full_fraction_keeps_every_train_image_and_no_other_split(data_root):
    full, sample = _train_lists(data_root, 1.0, seed=0)
    assert [i["image"] for i in sample] == [i["image"] for i in full]
    assert {i["split"] for i in sample} == {"train"}


def test_findings_config_builds_a_14_finding_label_vector(data_root):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "nih_findings.yaml")])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser["dataset_dir"] = str(data_root)
    names = parser.get_parsed_content("class_names")
    transform = parser.get_parsed_content("validate#preprocessing")
    item = next(i for i in parser.get_parsed_content("validate#datalist") if i["finding_labels"].count("|") >= 2)
    out = transform(dict(item))
    assert out["label"].shape == (14,)
    expected = [float(name in item["finding_labels"].split("|")) for name in names]
    assert out["label"].tolist() == expected
    assert out["view"] in ("AP", "PA") and out["image"].shape == (1, 64, 64)
