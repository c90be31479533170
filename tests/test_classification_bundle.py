"""The dissect_cxr_classification bundle: standard checks, linear-probe training on real NIH radiographs,
test evaluation (overall / per view), inference on the real SIIM CR DICOM, and the checkpoint errors.

Runs are small (a 5 % patient sample of NIH train, 2 epochs, a quarter of val/test by patient, 64 px);
every output goes to pytest's temporary directory, never into the repository.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from bundle_checks import BundleUnderTest
from monai.bundle import ConfigParser, ConfigWorkflow

from dissect_monai.networks import PretrainedWeightsError, ResNetFeaturePyramid
from dissect_monai.networks.dissect import DiSSECTEmbedder

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "dissect_cxr_classification"
CONFIGS = BUNDLE / "configs"
SIIM_DICOM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
NIH_FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
# a quarter of a split, whole patients, both classes (the data layer's sampler)
QUARTER = "$dissect_monai.data.sample_label_fraction(dissect_monai.data.dataset_datalist(@dataset_name, '{split}', @dataset_dir), 0.25, seed=0)"  # noqa: E501


def _workflow(workflow_type: str, configs: list[str], data_root: Path, **override) -> ConfigWorkflow:
    override.setdefault("bundle_root", str(BUNDLE))
    override.setdefault("dataset_dir", str(data_root))
    return ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )


def _run(workflow: ConfigWorkflow) -> ConfigWorkflow:
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.fixture(scope="module")
def pretrained_checkpoint(tmp_path_factory) -> Path:
    """A pretraining-bundle-format models/model.pt (DiSSECTEmbedder state dict, encoder + quantizer)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pretrain") / "model.pt"
    torch.save(DiSSECTEmbedder(use_quantizer=True).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root, pretrained_checkpoint) -> dict:
    """Linear probe with the DiSSECT descriptor: 2 epochs on 5 % of NIH train, then the test evaluation."""
    out = tmp_path_factory.mktemp("classification")
    common = {
        "output_dir": str(out / "models"),
        "log_dir": str(out / "runs"),
        "pretrained_checkpoint": str(pretrained_checkpoint),
        "use_descriptor": True,
        "num_threads": 2,
    }
    _run(_workflow("train", ["train.yaml"], data_root, epochs=2, label_fraction=0.05,
                   **{"validate#datalist": QUARTER.format(split="val")}, **common))
    _run(_workflow("train", ["train.yaml", "evaluate.yaml"], data_root, eval_dir=str(out / "eval"),
                   **{"validate#datalist": QUARTER.format(split="test")}, **common))
    return {"dir": out, "model": out / "models" / "model.pt", "eval": out / "eval"}


def test_standard_bundle_checks(tmp_path, pretrained_checkpoint):
    bundle = BundleUnderTest(BUNDLE)
    bundle.check_metadata()
    bundle.check_net_in_out("inference.yaml")
    # with the descriptor, the quantizer's architecture is the one stored in the bundle's checkpoint
    classifier = tmp_path / "classifier.pt"
    trained = bundle.network("train.yaml", pretrained_checkpoint=str(pretrained_checkpoint), use_descriptor=True)
    torch.save(trained.state_dict(), classifier)
    bundle.check_net_in_out("inference.yaml", use_descriptor=True, ckpt_path=str(classifier))
    bundle.check_ckpt_export("inference.yaml", tmp_path / "plain", precision="fp32")
    bundle.check_ckpt_export("inference.yaml", tmp_path / "descriptor", ckpt_file=classifier, precision="fp32",
                             use_descriptor=True, ckpt_path=str(classifier))
    bundle.check_properties("infer", "inference.yaml")
    bundle.check_properties("train", "train.yaml", pretrained_checkpoint="",  # its TensorBoard writer into tmp
                            output_dir=str(tmp_path / "models"), log_dir=str(tmp_path / "runs"))


def test_train_and_inference_networks_are_the_same():
    """inference.yaml must rebuild exactly the network train.yaml trains (same definition and state-dict keys)."""
    train, infer = ConfigParser(), ConfigParser()
    train.read_config(str(CONFIGS / "train.yaml"))
    infer.read_config(str(CONFIGS / "inference.yaml"))
    train_def = {k: v for k, v in train["network_def"].items() if k != "freeze_encoder"}
    assert train_def == infer["network_def"]
    # the same descriptor, read from the pretraining checkpoint in training and from the bundle's own in inference
    assert train["descriptor"].replace("@pretrained_checkpoint", "@ckpt_path") == infer["descriptor"]


def test_linear_probe_trains_head_only_and_selects_on_val(trained, pretrained_checkpoint):
    state = torch.load(trained["model"], map_location="cpu", weights_only=True)
    pretrained = torch.load(pretrained_checkpoint, map_location="cpu", weights_only=True)
    # the frozen encoder (batch-norm statistics included) and the codebooks are exactly the pretrained ones
    for key, value in pretrained.items():
        if key.startswith("encoder."):
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
        if key.startswith("quantizer."):
            torch.testing.assert_close(state["descriptor." + key], value, rtol=0, atol=0)
    assert state["head.weight"].shape == (1, 512 + 3 * 64)
    assert (trained["dir"] / "runs").is_dir()


def test_evaluation_writes_auc_overall_per_view_and_roc(trained):
    report = json.loads((trained["eval"] / "metrics.json").read_text())
    assert report["classes"] == ["pneumonia"]
    assert 0.0 <= report["auc"]["pneumonia"] <= 1.0
    assert set(report["auc_by_view"]) == {"AP", "PA"}
    assert sum(v["n"] for v in report["auc_by_view"].values()) == report["n"]
    assert (trained["eval"] / "roc.png").stat().st_size > 1000


def test_inference_on_real_dicom_gives_one_sigmoid_probability_per_class(trained, data_root, tmp_path):
    out = tmp_path / "pred"
    _run(_workflow("infer", ["inference.yaml", "inference_files.yaml"], data_root, ckpt_path=str(trained["model"]),
                   use_descriptor=True, dataset_dir=str(data_root / "dicom-samples"), output_dir=str(out)))
    rows = _predictions(out)
    assert len(rows[SIIM_DICOM]) == 1  # one probability: pneumonia
    assert 0.0 <= rows[SIIM_DICOM][0] <= 1.0


def test_inference_multilabel_findings_uses_class_names(data_root, tmp_path):
    """14 NIH findings: one independent sigmoid per finding (probabilities need not sum to 1), names in order."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.yaml"), str(CONFIGS / "nih_findings.yaml")])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():
        net.head.bias.fill_(2.0)  # every class likely: a softmax would force the sum to 1, sigmoids do not
    torch.save(net.state_dict(), tmp_path / "model.pt")
    out = tmp_path / "pred"
    _run(_workflow("infer", ["inference.yaml", "nih_findings.yaml", "inference_files.yaml"], data_root,
                   ckpt_path=str(tmp_path / "model.pt"), dataset_dir=str(data_root / "dicom-samples"),
                   output_dir=str(out)))
    probs = _predictions(out)[SIIM_DICOM]
    assert len(probs) == len(NIH_FINDINGS)  # one column per finding, in class_names order
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert sum(probs) > 1.5


def _predictions(output_dir: Path) -> dict[str, list[float]]:
    """SaveClassificationd's ``predictions.csv``: source file name -> probabilities in class_names order."""
    with open(output_dir / "predictions.csv", newline="") as f:
        return {Path(row[0]).name: [float(v) for v in row[1:]] for row in csv.reader(f)}


def _messages(exc: BaseException) -> str:
    """All messages along an exception's cause chain (ConfigWorkflow wraps errors of config expressions)."""
    parts = []
    while exc is not None:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def test_missing_pretrained_checkpoint_is_a_clear_error(data_root, tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(Exception) as info:
        _workflow("train", ["train.yaml"], data_root, pretrained_checkpoint=str(missing)).initialize()
    text = _messages(info.value)
    assert "FileNotFoundError" in text and str(missing) in text and "dissect_cxr_pretrain" in text


def test_default_checkpoint_is_the_pretraining_bundle_model(data_root):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    expected = (BUNDLE / ".." / "dissect_cxr_pretrain" / "models" / "model.pt").resolve()
    assert Path(parser.get_parsed_content("pretrained_checkpoint")).resolve() == expected


def test_mismatched_checkpoint_names_file_and_architecture(data_root, tmp_path):
    wrong = tmp_path / "resnet50.pt"
    torch.save({"encoder." + k: v for k, v in ResNetFeaturePyramid(depth=50).state_dict().items()}, wrong)
    with pytest.raises(Exception) as info:
        _workflow("train", ["train.yaml"], data_root, pretrained_checkpoint=str(wrong)).initialize()
    text = _messages(info.value)
    assert "PretrainedWeightsError" in text and str(wrong) in text and "ResNet-18" in text
    assert isinstance(_find(info.value, PretrainedWeightsError), PretrainedWeightsError)


def test_descriptor_without_quantizer_in_checkpoint_is_a_clear_error(data_root, tmp_path):
    byol = tmp_path / "byol.pt"
    torch.save(DiSSECTEmbedder(use_quantizer=False).state_dict(), byol)
    with pytest.raises(Exception) as info:
        _workflow("train", ["train.yaml"], data_root, pretrained_checkpoint=str(byol), use_descriptor=True).initialize()
    text = _messages(info.value)
    assert "PretrainedWeightsError" in text and str(byol) in text and "MultiScaleQuantizer" in text


def _find(exc: BaseException | None, kind: type) -> BaseException | None:
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__cause__ or exc.__context__
    return exc


@pytest.mark.parametrize("mode, frozen", [("linear_probe", True), ("finetune", False)])
def test_modes_set_trainable_parameters_and_encoder_lr(mode, frozen):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser["mode"] = mode
    net = parser.get_parsed_content("network_def")
    optimizer = parser.get_parsed_content("optimizer")
    assert all(p.requires_grad != frozen for p in net.encoder.parameters())
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs == ([1e-3] if frozen else [1e-4, 1e-3])
    net.train()
    assert net.encoder.training != frozen
