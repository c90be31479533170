"""Evaluation utilities (ROC AUC per group, logistic probe with C on val, kNN, fine-tuning, report handler),
the classifier network, and the representation benchmark script (resumable) on real NIH images."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dissect_monai.engines.evaluation import (
    ClassificationReport,
    extract_features,
    finetune_classifier,
    fit_logistic_probe,
    knn_accuracy,
    roc_auc,
    roc_auc_by_group,
)
from dissect_monai.networks import ResNetFeaturePyramid
from dissect_monai.networks.classification import EncoderClassifier
from dissect_monai.networks.dissect import DiSSECTEmbedder, QuantisedDescriptor
from dissect_monai.networks.heads import DiscreteDescriptor

REPO = Path(__file__).resolve().parents[1]


def test_roc_auc_is_nan_for_one_class_and_exact_otherwise():
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    by = roc_auc_by_group([0, 1, 0, 1, 1], [0.2, 0.9, 0.8, 0.1, 0.5], ["AP", "AP", "PA", "PA", "PA"])
    assert by["AP"] == 1.0 and by["PA"] == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc_by_group([0, 1], [0.1, 0.2], ["AP"])


def test_logistic_probe_picks_c_on_val_and_refuses_one_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = np.c_[y + rng.normal(0, 1.0, 400), rng.normal(0, 1, (400, 30))]  # one informative of 31 features
    probe = fit_logistic_probe(x[:200], y[:200], x[200:300], y[200:300], cs=(1e-3, 1e-1, 10.0))
    assert probe.val_auc == max(probe.val_aucs.values())
    assert probe.val_aucs[probe.c] == probe.val_auc
    assert roc_auc(y[300:], probe.predict_proba(x[300:])) > 0.7
    with pytest.raises(ValueError, match="single class"):
        fit_logistic_probe(x[:10], np.ones(10), x[10:20], y[10:20])


def test_knn_accuracy_votes_with_cosine_neighbours_and_breaks_ties_by_rank():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    test = np.array([[5.0, 0.2], [0.2, 3.0]])  # scale must not matter (cosine)
    assert knn_accuracy(train, labels, test, np.array([0, 1]), k=3) == 1.0
    # k = 2 with one neighbour of each class: the nearer one decides
    assert knn_accuracy(train[[0, 2]], labels[[0, 2]], np.array([[1.0, 0.3]]), np.array([0]), k=2) == 1.0
    assert knn_accuracy(train[[0, 2]], labels[[0, 2]], np.array([[0.3, 1.0]]), np.array([1]), k=20) == 1.0


def test_linear_probe_classifier_freezes_encoder_and_batchnorm():
    net = EncoderClassifier(ResNetFeaturePyramid(), num_classes=2, freeze_encoder=True)
    net.train()
    assert not net.encoder.training and net.head.training
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    opt = torch.optim.SGD([g for g in net.parameter_groups(0.1, 0.01)][0]["params"], lr=0.1)
    loss = net(torch.rand(4, 1, 64, 64)).sum()
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in net.encoder.state_dict().items())  # running stats too
    assert [len(g["params"]) for g in net.parameter_groups(0.1, 0.01)] == [2]


def test_quantised_descriptor_matches_dissect_discrete_descriptor():
    """The classifier's descriptor = DiSSECT's fusion='none' descriptor of the quantised maps (eval mode)."""
    torch.manual_seed(0)
    embedder = DiSSECTEmbedder(quantizer_args={"num_codes": 32}).eval()
    x = torch.rand(2, 1, 64, 64)
    maps = embedder.encoder(x)
    quantised, _, _ = embedder.quantizer([maps[s] for s in embedder.scales])
    expected = DiscreteDescriptor(embedder.quantizer.code_dims, 512, fusion="none")(quantised, maps[-1])
    got = QuantisedDescriptor(embedder.quantizer, embedder.scales)(maps)
    torch.testing.assert_close(got, expected)
    net = EncoderClassifier(embedder.encoder, 1, descriptor=QuantisedDescriptor(embedder.quantizer, embedder.scales))
    assert net.features(x).shape == (2, 512 + 3 * 64)
    with pytest.raises(ValueError, match="scales"):
        QuantisedDescriptor(embedder.quantizer, scales=(1, 2))


def test_classifier_bf16_features_close_to_fp32():
    torch.manual_seed(0)
    net = EncoderClassifier(ResNetFeaturePyramid(), num_classes=1).eval()
    x = torch.rand(4, 1, 64, 64)
    fp32 = net.features(x)
    net.precision = "bf16"
    bf16 = net.features(x)
    assert bf16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() > 0.99
    net.precision = "fp32"
    np.testing.assert_allclose(extract_features(net.features, x, batch_size=3, precision="fp32"), fp32.detach().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_finetune_selects_best_val_step_and_restores_it():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 32, 32)
    y = (x[:, 0, :16].mean((1, 2)) > x[:, 0, 16:].mean((1, 2))).float()[:, None]  # top brighter than bottom
    net = EncoderClassifier(ResNetFeaturePyramid(depth=10), num_classes=1)
    result = finetune_classifier(net, x[:48], y[:48], x[48:], y[48:], steps=12, batch_size=16, evaluations=3,
                                 max_shift=0, precision="fp32")
    assert [s for s, _ in result.history] == [4, 8, 12]
    assert result.best_val_auc == max(a for _, a in result.history)
    probs = torch.sigmoid(net(x[48:])).detach()[:, 0].numpy()
    assert roc_auc(y[48:, 0].numpy(), probs) == pytest.approx(result.best_val_auc)


def test_classification_report_overall_per_class_and_per_view(tmp_path):
    report = ClassificationReport(tmp_path, ["pneumonia", "effusion"], group_key="view")
    preds = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.2]])
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    out = report.compute(preds, labels, ["AP", "AP", "PA", "PA"])
    assert out["auc"] == {"pneumonia": 1.0, "effusion": 1.0}
    assert out["auc_by_view"]["AP"]["n"] == 2 and out["auc_by_view"]["AP"]["pneumonia"] == 1.0
    assert math.isnan(out["auc_by_view"]["PA"]["effusion"])  # no positive PA effusion
    with pytest.raises(ValueError, match="must both be"):
        report.compute(preds[:, :1], labels, None)


def _script():
    path = REPO / "scripts" / "evaluate_representations.py"
    spec = importlib.util.spec_from_file_location("evaluate_representations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_script_runs_resumes_and_reports_on_real_nih(tmp_path, data_root):
    script = _script()
    args = ["--rows", "random", "--benchmarks", "nih", "--fractions", "0.05", "1", "--seeds", "0", "1",
            "--image-size", "32", "--data-root", str(data_root), "--work-dir", str(tmp_path / "work"),
            "--results", str(tmp_path / "out" / "representations")]
    assert script.main(args) == 0
    row_file = tmp_path / "work" / "rows" / "random.json"
    first = json.loads(row_file.read_text())
    cells = first["benchmarks"]["nih"]["cells"]
    assert set(cells) == {"0.05", "1"} and set(cells["0.05"]) == {"0", "1"}
    for cell in cells["0.05"].values():
        assert 0 <= cell["test_auc"] <= 1 and set(cell["test_auc_by_view"]) == {"AP", "PA"}
        assert cell["n_train"] < 0.1 * 682
    assert cells["1"]["1"]["same_as_seed"] == 0  # identical train set: reused, not recomputed
    assert 0 <= first["benchmarks"]["nih"]["view_probe_auc"] <= 1
    mtime = row_file.stat().st_mtime_ns
    assert script.main(args) == 0  # resume: nothing left to compute, the row file is untouched
    assert row_file.stat().st_mtime_ns == mtime
    report = json.loads((tmp_path / "out" / "representations.json").read_text())
    assert report["summary"]["random"]["nih"]["fractions"]["0.05"]["test_auc"]["n"] == 2
    md = (tmp_path / "out" / "representations.md").read_text()
    assert "random-init ResNet-18" in md and "AP / PA" in md
    assert (tmp_path / "out" / "representations.png").stat().st_size > 1000


def test_probability_writer_writes_every_item_of_a_batch(tmp_path):
    """Regression: each item of a multi-image batch gets its own file (not only the first item's values)."""
    from types import SimpleNamespace

    from monai.data import MetaTensor

    from dissect_monai.engines.evaluation import ProbabilityWriter

    writer = ProbabilityWriter(tmp_path, ["pneumonia"])
    images = [MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": f"/data/dir/case {i}.png"}) for i in (1, 2)]
    engine = SimpleNamespace(state=SimpleNamespace(
        output=[{"pred": torch.tensor([0.25])}, {"pred": torch.tensor([0.75])}],
        batch=[{"image": images[0]}, {"image": images[1]}],
    ))
    writer(engine)
    first = json.loads((tmp_path / "case_1.json").read_text())
    second = json.loads((tmp_path / "case_2.json").read_text())
    assert first == {"source": "case 1.png", "probabilities": {"pneumonia": 0.25}}
    assert second["probabilities"] == {"pneumonia": 0.75}
    assert [r["source"] for r in writer.results] == ["case 1.png", "case 2.png"]


def test_classifier_accepts_a_collated_metatensor_batch():
    """Regression: a DataLoader batch of MetaTensors with per-image affines crashed the descriptor's slicing."""
    from monai.data import MetaTensor, list_data_collate

    from dissect_monai.networks.quantizer import MultiScaleQuantizer

    items = [{"image": MetaTensor(torch.rand(1, 64, 64), affine=torch.eye(4) * (i + 1))} for i in range(3)]
    batch = list_data_collate(items)["image"]
    descriptor = QuantisedDescriptor(MultiScaleQuantizer([64, 128, 256], num_codes=16), scales=(1, 2, 3))
    net = EncoderClassifier(ResNetFeaturePyramid(), 1, descriptor=descriptor).eval()
    out = net(batch)
    assert out.shape == (3, 1) and not isinstance(out, MetaTensor)
    torch.testing.assert_close(out, net(batch.as_tensor()))


def test_benchmark_script_evaluates_a_vit_method_checkpoint_with_its_own_encoder(tmp_path, data_root):
    from dissect_monai.networks.presets import build_method_embedder

    torch.manual_seed(0)
    checkpoint = tmp_path / "mae.pt"
    torch.save(build_method_embedder("mae", 32, REPO / "configs" / "methods", REPO / "bundles" / "dissect_cxr_pretrain")
               .state_dict(), checkpoint)
    script = _script()
    args = [f"vit-run={checkpoint}", "--method", "vit-run=mae", "--rows", "--benchmarks", "nih", "--fractions", "1",
            "--seeds", "0", "--image-size", "32", "--data-root", str(data_root), "--work-dir", str(tmp_path / "work"),
            "--results", str(tmp_path / "out" / "representations")]
    assert script.main(args) == 0
    row = json.loads((tmp_path / "work" / "rows" / "vit-run.json").read_text())
    assert row["method"] == "mae" and "-mmae-" in row["fingerprint"]
    assert 0 <= row["benchmarks"]["nih"]["cells"]["1"]["0"]["test_auc"] <= 1
    with np.load(tmp_path / "work" / "features" / "vit-run_nih_32.npz") as cached:
        assert cached["features"].shape[1] == 192  # the ViT's class token, not a ResNet's 512 pooled channels
    with pytest.raises(SystemExit, match="unknown method preset"):
        script.main([f"x={checkpoint}", "--method", "x=simclr", "--rows"])
