"""The input quality gate's mechanics on real images through the project's classification bundle config (random
weights until the release run: these tests check fitting, thresholds, saving and the node's "not assessed"
path, never how well a gate separates views; ``scripts/measure_quality_gate.py`` measures that)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pydicom
import pytest
import torch
from deploy_helpers import CR_RULES, SIIM_CR, ResultStore, make_tiny_bundle, node_config_file, project_bundle, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from dissect_monai.deploy.bundle_runner import BundleError, BundleRunner
from dissect_monai.deploy.config import PipelineConfig, load_node_config
from dissect_monai.deploy.jobs import StudyProcessor
from dissect_monai.deploy.node import InferenceNode
from dissect_monai.dicom.sr import read_classification_sr, read_unassessed_sr
from dissect_monai.networks.quality_gate import EmbeddingGate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def bundle(repo_root, tmp_path_factory) -> Path:
    path, _ = project_bundle(repo_root, "cxr_classification", tmp_path_factory.mktemp("bundles"))
    return path


@pytest.fixture(scope="module")
def runner(bundle) -> BundleRunner:
    return BundleRunner(bundle)


def _embeddings(runner: BundleRunner, paths: list[Path]) -> torch.Tensor:
    with torch.inference_mode():
        batch = torch.stack([runner.preprocessing({"image": str(p)})["image"].as_tensor() for p in paths])
        return runner.network.features(batch)


def _rows(data_root: Path, folder: str, **match: str) -> list[Path]:
    with open(data_root / folder / "labels.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if all(r[k] == v for k, v in match.items())]
    return [data_root / folder / r["image"] for r in rows]


def test_gate_threshold_is_the_fit_quantile_and_survives_saving(runner, data_root, tmp_path):
    frontal = _rows(data_root, "nih-cxr-pneumonia", split="train")[:40]
    embeddings = _embeddings(runner, frontal)
    assert embeddings.shape == (40, runner.network.features(torch.zeros(1, 1, 64, 64)).shape[1])
    gate = EmbeddingGate.fit(embeddings, quantile=0.9)
    assert int(gate.out_of_distribution(embeddings).sum()) == 4  # 10 % of 40 beyond the 0.9 quantile
    calibrated = EmbeddingGate.fit(embeddings[:30], quantile=0.9, calibration=embeddings[30:])
    assert int(calibrated.out_of_distribution(embeddings[30:]).sum()) == 1  # 10 % of the 10 held out
    torch.testing.assert_close(calibrated.mean, embeddings[:30].mean(dim=0))
    torch.save(gate.state_dict(), tmp_path / "quality_gate.pt")
    loaded = EmbeddingGate.load(tmp_path / "quality_gate.pt")
    others = [*_rows(data_root, "cxr-lung-seg", view="L")[:4], *_rows(data_root, "cxr-lung-seg", view="Axial")[:4]]
    torch.testing.assert_close(loaded(_embeddings(runner, others)), gate(_embeddings(runner, others)))
    assert all(math.isfinite(d) for d in gate(_embeddings(runner, others)).tolist())
    torch.save({"model": torch.zeros(2)}, tmp_path / "not_a_gate.pt")
    with pytest.raises(ValueError, match="not_a_gate.pt: not a quality gate"):
        EmbeddingGate.load(tmp_path / "not_a_gate.pt")
    with pytest.raises(ValueError, match=r"N >= 2"):
        EmbeddingGate.fit(embeddings[:1])


@pytest.mark.parametrize("flag_everything", [True, False])
def test_flagged_input_is_reported_not_assessed(flag_everything, bundle, runner, data_root, tmp_path):
    """A gate that flags every input (threshold below any distance) turns the SR into "not assessed"; one that
    flags nothing leaves the probabilities. The gate file sits in the bundle, as the release will ship it."""
    gate = EmbeddingGate.fit(_embeddings(runner, _rows(data_root, "nih-cxr-pneumonia", split="train")[:8]))
    gate.threshold.fill_(-1.0 if flag_everything else float("inf"))
    torch.save(gate.state_dict(), bundle / "models" / "test_gate.pt")
    gated = BundleRunner(bundle, quality_gate_file="models/test_gate.pt")
    pipeline = PipelineConfig(name="cls", bundle=bundle, output="sr", rules=CR_RULES, single_instance=True,
                              quality_gate="models/test_gate.pt")
    (sr,) = StudyProcessor([pipeline], {"cls": gated}).process({"series": [data_root / SIIM_CR]})
    source = pydicom.dcmread(data_root / SIIM_CR)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    if flag_everything:
        names = list(runner.channel_names().values())
        assert read_unassessed_sr(sr) == dict.fromkeys(names, pipeline.not_assessed_text)
    else:
        assert not read_unassessed_sr(sr) and set(read_classification_sr(sr)) == set(runner.channel_names().values())


def test_node_loads_the_gate_from_its_config_and_counts_not_assessed(bundle, runner, data_root, tmp_path):
    gate = EmbeddingGate.fit(_embeddings(runner, _rows(data_root, "nih-cxr-pneumonia", split="train")[:8]))
    gate.threshold.fill_(-1.0)  # flags every input: the mechanics, not a quality claim
    torch.save(gate.state_dict(), bundle / "models" / "flag_all_gate.pt")
    pacs = ResultStore()
    pipelines = [{"name": "cls", "bundle": str(bundle), "output": "sr", "rules": CR_RULES, "single_instance": True,
                  "quality_gate": "models/flag_all_gate.pt"}]
    path = node_config_file(tmp_path / "node.yaml", tmp_path / "spool", pipelines,
                            {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port})
    node = InferenceNode(load_node_config(path))  # bundles and gate loaded from the config, as deployed
    node.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(SecondaryCaptureImageStorage, "1.2.840.10008.1.2.4.50")
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="DISSECT_AI")
        assert assoc.send_c_store(data_root / SIIM_CR).Status == 0x0000
        assoc.release()
        (sr,) = wait_for(lambda: pacs.received, 60, what="the SR at the PACS")
        health = node.health()
    finally:
        node.stop()
        pacs.stop()
    assert set(read_unassessed_sr(sr).values()) == {PipelineConfig.not_assessed_text}
    assert health["not_assessed"] == 1 and health["processed"] == 1 and health["failed"] == 0


def test_gate_needs_a_network_with_features(tmp_path):
    tiny = make_tiny_bundle(tmp_path, "cxr_classification")  # monai Classifier: no features()
    with pytest.raises(BundleError, match="quality gate needs a network_def with features"):
        BundleRunner(tiny, quality_gate_file="models/quality_gate.pt")
