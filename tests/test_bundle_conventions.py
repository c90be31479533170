"""Model-zoo conventions every bundle keeps: metadata valid against the shipped schema, version pins from the one
source (``bundles/pinned_versions.json``), a changelog entry for the current version, metadata read through
``_meta_`` (never by path), ``docs/data_license.txt``, and ``docs/README.md`` with the zoo template's sections."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from bundle_checks import BundleUnderTest

import dissect_monai

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
PINS = json.loads((BUNDLES / "pinned_versions.json").read_text())
NAMES = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/metadata.json"))
# the section order of the model zoo's README template (e.g. spleen_ct_segmentation's docs/README.md)
README_SECTIONS = ["Model Overview", "Data", "Training configuration", "Input", "Output", "Performance",
                   "MONAI Bundle Commands", "References", "Limitations", "License"]


def _metadata(name: str) -> dict:
    return json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def test_every_bundle_is_listed_in_the_pin_file():
    assert NAMES == sorted(PINS["bundles"]) and len(NAMES) == 4


@pytest.mark.parametrize("name", NAMES)
def test_metadata_is_valid_against_the_shipped_schema(name):
    BundleUnderTest(BUNDLES / name).check_metadata()


@pytest.mark.parametrize("name", NAMES)
def test_metadata_pins_come_from_the_pin_file(name):
    meta, spec = _metadata(name), PINS["bundles"][name]
    env = PINS["environments"][spec["environment"]]
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        assert meta[key] == env[key], f"{name}: {key} {meta[key]} != {env[key]} ({spec['environment']} environment)"
    expected = {pkg: dissect_monai.__version__ if pkg == "dissect-monai" else env["packages"][pkg]
                for pkg in spec["packages"]}
    assert meta["required_packages_version"] == expected


def test_environment_setup_scripts_install_the_pinned_versions():
    main = (REPO / "scripts" / "setup_env.sh").read_text()
    assert f"TORCH_VERSION:-{PINS['environments']['main']['pytorch_version']}" in main
    label = (REPO / "scripts" / "setup_monailabel_env.sh").read_text()
    env = PINS["environments"]["monailabel"]
    assert f"monai=={env['monai_version']}" in label and f"torch=={env['pytorch_version']}" in label


@pytest.mark.parametrize("name", NAMES)
def test_current_version_has_the_newest_changelog_entry(name):
    meta = _metadata(name)
    versions = list(meta["changelog"])
    assert versions[0] == meta["version"], "the changelog starts with the current version"
    assert versions == sorted(versions, key=_version, reverse=True) and len(set(versions)) == len(versions)
    assert all(meta["changelog"][v].strip() for v in versions)


@pytest.mark.parametrize("name", NAMES)
def test_configs_read_metadata_through_meta_not_by_path(name):
    for config in (BUNDLES / name / "configs").glob("*.yaml"):
        code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
                         for line in config.read_text().splitlines())
        assert "metadata.json" not in code, f"{config.name} reads metadata.json by path; use @_meta_"


@pytest.mark.parametrize("name", NAMES)
def test_data_license_names_the_terms_of_the_data(name):
    text = (BUNDLES / name / "docs" / "data_license.txt").read_text()
    assert "License" in text or "license" in text
    if name == "dissect_cxr_lung_segmentation":
        assert "CC BY-NC-SA" in text and "non-commercial" in text


@pytest.mark.parametrize("name", NAMES)
def test_readme_follows_the_zoo_template(name):
    text = (BUNDLES / name / "docs" / "README.md").read_text()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # comments in code blocks are no headings
    headings = [re.sub(r"[*`]", "", h).strip() for h in re.findall(r"^#{1,3} (.+)$", prose, flags=re.M)]
    missing = [s for s in README_SECTIONS if s not in headings]
    assert not missing, f"{name} README lacks the sections {missing}"
    positions = [headings.index(s) for s in README_SECTIONS]
    assert positions == sorted(positions), f"{name} README sections out of the template's order: {headings}"
    assert "run training" in text and "--bundle_root" in text
