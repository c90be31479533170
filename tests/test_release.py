"""The release: fp16 weights that load strictly into each bundle's inference network, the large_files.yml check,
the release plan and the report's pure formatting."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dissect_monai.engines.export import (
    MODEL_PATH,
    compact_state_dict,
    export_bundle_weights,
    inference_network,
    read_state_dict,
    replace_readme_section,
    sha256_of,
    update_metadata,
    verify_large_files,
)
from dissect_monai.evaluation.metrics import format_mean_std
from dissect_monai.evaluation.release import (
    SHIPPED_LUNG_RECIPE,
    STAGES,
    ReleaseSettings,
    bundle_metrics,
    goal_status,
    paired_difference,
    plan,
    pretraining_runs,
    read_release_record,
    recorded_runs,
    export_sources,
    lung_dissect_vs_byol,
    lung_key,
    lung_recipe,
    release_markdown,
    run_stage,
    seed_context,
    segmentation_runs,
    write_performance_sections,
    write_release_report,
)
from dissect_monai.evaluation.results import read_json
from dissect_monai.utils import machine_state

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("dissect_cxr_pretrain", "dissect_cxr_classification", "dissect_cxr_lung_segmentation")


def bundle_copy(name: str, tmp_path: Path) -> Path:
    """The bundle's configs in a folder of its own (exports must not write into the checkout)."""
    target = tmp_path / name
    shutil.copytree(REPO / "bundles" / name / "configs", target / "configs")
    return target


@pytest.mark.parametrize("name", SHIPPED)
def test_fp16_export_loads_strictly_and_matches_fp32(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    bundle = bundle_copy(name, tmp_path)
    trained = inference_network(bundle)
    torch.save({"model": trained.state_dict()}, tmp_path / "checkpoint.pt")  # as CheckpointSaver writes it
    export_bundle_weights(tmp_path / "checkpoint.pt", bundle)
    shipped = read_state_dict(bundle / MODEL_PATH)
    assert all(v.dtype == torch.float16 for v in shipped.values() if v.is_floating_point())
    loaded = inference_network(bundle)
    loaded.load_state_dict(shipped, strict=True)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected, actual = trained(x), loaded(x)
    scale = expected.abs().max()
    assert scale > 0
    assert (expected - actual).abs().max() <= 1e-2 * scale
    assert not torch.equal(expected, actual)  # the weights really went through fp16


def test_compaction_refuses_values_beyond_fp16() -> None:
    with pytest.raises(ValueError, match="'w' exceeds the fp16 range"):
        compact_state_dict({"w": torch.tensor([1e6])})
    kept = compact_state_dict({"n": torch.tensor(3), "w": torch.ones(2)})
    assert kept["n"].dtype == torch.int64 and kept["w"].dtype == torch.float16


def test_large_files_check_fails_on_wrong_hash_and_on_weights_that_do_not_load(tmp_path: Path) -> None:
    bundle = bundle_copy("dissect_cxr_lung_segmentation", tmp_path)
    torch.save(inference_network(bundle).state_dict(), tmp_path / "model.pt")
    entry = export_bundle_weights(tmp_path / "model.pt", bundle)
    assert verify_large_files(bundle) == [MODEL_PATH]
    listing = bundle / "large_files.yml"
    assert yaml.safe_load(listing.read_text())["large_files"] == [entry] and entry["url"] == ""
    listing.write_text(yaml.safe_dump({"large_files": [{**entry, "hash_val": "0" * 64}]}))
    with pytest.raises(ValueError, match="sha256 of models/model.pt"):
        verify_large_files(bundle)
    state = read_state_dict(bundle / MODEL_PATH)
    state.pop(next(iter(state)))
    torch.save(state, bundle / MODEL_PATH)
    listing.write_text(yaml.safe_dump({"large_files": [{**entry, "hash_val": sha256_of(bundle / MODEL_PATH)}]}))
    with pytest.raises(ValueError, match="does not load strictly"):
        verify_large_files(bundle)


@pytest.mark.parametrize("name", [p.parent.name for p in sorted((REPO / "bundles").glob("*/large_files.yml"))])
def test_shipped_weights_match_large_files_and_load_strictly(name: str) -> None:
    assert verify_large_files(REPO / "bundles" / name)


def test_update_metadata_bumps_version_and_puts_the_entry_first(tmp_path: Path) -> None:
    bundle = bundle_copy("dissect_cxr_classification", tmp_path)
    before = json.loads((bundle / "configs" / "metadata.json").read_text())
    update_metadata(bundle, {"kermany_test_auc": 0.9}, "9.0.0", "release weights")
    after = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert after["version"] == "9.0.0" and after["eval_metrics"] == {"kermany_test_auc": 0.9}
    assert list(after["changelog"]) == ["9.0.0", *before["changelog"]]
    update_metadata(bundle, {"kermany_test_auc": 0.8}, "9.0.0", "release weights, measured again")
    again = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert list(again["changelog"]) == list(after["changelog"]) and again["changelog"]["9.0.0"].endswith("again")


def test_plan_of_an_empty_run_folder_lists_every_stage(tmp_path: Path, data_root: Path) -> None:
    text = plan(ReleaseSettings(repo=REPO, run_dir=tmp_path / "release", data_root=data_root))
    for i, stage in enumerate(STAGES, 1):
        assert f"{i}. {stage} " in text
    assert "0/2 finished" in text and "0/3 finished" in text and "total about" in text


def test_goal_status_and_paired_difference() -> None:
    assert goal_status(0.961, 0.96) == "met"
    assert goal_status(0.959, 0.96) == "not met"
    assert goal_status(float("nan"), 0.96) == goal_status(None, 0.96) == "not measured"
    diff = paired_difference({0: 0.80, 1: 0.84, 2: 0.9}, {0: 0.78, 1: 0.80})  # seed 2 has no partner
    assert diff.n == 2 and diff.mean == pytest.approx(0.03) and diff.std == pytest.approx(0.0141421, abs=1e-6)
    assert format_mean_std(diff) == "0.030 ± 0.014"


@pytest.mark.parametrize("name", SHIPPED)
def test_torchscript_rebuilds_from_the_fp16_weights_with_ckpt_export(name: str, tmp_path: Path) -> None:
    """The documented command (engines/export.py) turns a shipped model.pt into a TorchScript of the same outputs."""
    bundle = bundle_copy(name, tmp_path)
    torch.manual_seed(0)
    torch.save(inference_network(bundle).state_dict(), tmp_path / "model.pt")
    export_bundle_weights(tmp_path / "model.pt", bundle)
    configs = bundle / "configs"
    subprocess.run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
                    "--filepath", str(bundle / "models" / "model.ts"), "--ckpt_file", str(bundle / MODEL_PATH),
                    "--meta_file", str(configs / "metadata.json"), "--config_file", str(configs / "inference.yaml"),
                    "--bundle_root", str(bundle)], check=True, capture_output=True)
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu").eval()
    network = inference_network(bundle)
    network.load_state_dict(read_state_dict(bundle / MODEL_PATH), strict=True)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():  # the classifier's eager forward may autocast to bf16 ("auto"); TorchScript stays fp32
        torch.testing.assert_close(scripted(x), network(x), rtol=2e-2, atol=1e-3)


def test_readme_section_is_replaced_up_to_the_next_heading(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# b\n## Performance\nNot measured.\n\n## MONAI Bundle Commands\nrun\n")
    replace_readme_section(readme, "Performance", "| metric | value |\n|---|---|\n| dice | 0.951 |")
    assert readme.read_text() == ("# b\n## Performance\n| metric | value |\n|---|---|\n| dice | 0.951 |\n\n"
                                  "## MONAI Bundle Commands\nrun\n")
    with pytest.raises(ValueError, match="no '## Results' section"):
        replace_readme_section(readme, "Results", "x")


@pytest.mark.parametrize("stage", ["classification", "segmentation"])
def test_transfer_stages_refuse_to_start_before_pretraining(stage: str, tmp_path: Path) -> None:
    settings = ReleaseSettings(repo=REPO, run_dir=tmp_path / "release")
    with pytest.raises(RuntimeError, match="pretrain stage has not finished"):
        run_stage(stage, settings, log=lambda text: None)
    record = read_json(tmp_path / "release" / "stages.json")[stage]
    assert record == {"wall_seconds": pytest.approx(0, abs=5), "finished": False}


def test_pretrain_stage_can_start_one_method(tmp_path: Path, data_root: Path) -> None:
    settings = ReleaseSettings(repo=REPO, run_dir=tmp_path / "release", data_root=data_root, epochs=1,
                               pretrain_methods=("byol",))
    runs = pretraining_runs(settings)
    assert [Path(run_dir).name for run_dir, _, _ in runs] == ["byol"]
    assert "--quantizer" in runs[0][1] and runs[0][1][runs[0][1].index("--quantizer") + 1] == "False"
    with pytest.raises(ValueError, match="unknown pretraining method"):
        ReleaseSettings(repo=REPO, pretrain_methods=("mae",))


def _finished_run(run_dir: Path, epochs: int = 2) -> None:
    """A pretraining run folder as a finished bundle run leaves it: model.pt, run.json (exit 0), metrics.jsonl."""
    (run_dir / "logs").mkdir(parents=True)
    torch.save({}, run_dir / "model.pt")
    (run_dir / "run.json").write_text(json.dumps({"epochs": epochs, "image_size": 64, "returncode": 0,
                                                  "wall_seconds": 10.0, "threads": 2, "command": "python -m ..."}))
    records = [{"kind": "iteration", "iteration": e, "epoch": e, "loss": 1.0 / e, "images_per_s": 50.0}
               for e in range(1, epochs + 1)]
    records += [{"kind": "epoch", "iteration": e, "epoch": e, "epoch_time_s": 4.0, "loss": 1.0 / e}
                for e in range(1, epochs + 1)]
    (run_dir / "logs" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_pretrain_stage_is_finished_only_once_both_runs_are(tmp_path: Path, data_root: Path) -> None:
    run_dir = tmp_path / "release"
    settings = ReleaseSettings(repo=REPO, run_dir=run_dir, data_root=data_root, epochs=2, pretrain_methods=("dissect",))
    _finished_run(settings.pretrain_dir("dissect"))  # finished runs are skipped, so nothing trains here
    run_stage("pretrain", settings, log=lambda text: None)
    assert read_json(run_dir / "stages.json")["pretrain"]["finished"] is False
    _finished_run(settings.pretrain_dir("byol"))
    run_stage("pretrain", settings, log=lambda text: None)
    assert read_json(run_dir / "stages.json")["pretrain"]["finished"] is True


def test_segmentation_runs_start_with_the_exported_run_and_cover_every_seed_row_and_fraction(tmp_path: Path) -> None:
    settings = ReleaseSettings(repo=REPO, run_dir=tmp_path / "release")
    for method in ("dissect", "byol"):
        _finished_run(settings.pretrain_dir(method))
    runs = segmentation_runs(settings)
    keys = [lung_key(row, fraction, seed) for row, fraction, seed in runs]
    assert keys[0] == export_sources(settings)["dissect_cxr_lung_segmentation"].parent.parent.name
    assert lung_recipe(*runs[0][:2]) == SHIPPED_LUNG_RECIPE  # the lung goal is the shipped recipe's
    assert len(set(keys)) == len(keys) == 5 * 2 * 3
    assert [seed for _, _, seed in runs] == sorted(seed for _, _, seed in runs)  # a partial stage: whole seeds


def test_eval_metrics_are_the_shipped_seed_0_weights_and_the_spread_is_said_beside_them() -> None:
    kermany = {seed: {"test_auc": auc, "test_acc": acc} for seed, (auc, acc) in enumerate([(0.97, 0.80), (0.95, 0.90)])}
    lung = {f"dissect_fine-tuned_1_{seed}": {"test_dice": {"mean": dice}, "test_hd95": {"mean": 10.0 + seed}}
            for seed, dice in enumerate([0.95, 0.93])}
    stat = {"test_auc": {"mean": 0.96, "std": 0.014, "n": 2}, "test_acc": {"mean": 0.85, "std": 0.071, "n": 2}}
    collected = {"classification": {"dissect-finetune": {"kermany": {"fractions": {"1": stat}}}},
                 "cells_by_seed": {"dissect-finetune": {"kermany": {"1": kermany}}}, "lung": lung}
    metrics = bundle_metrics(collected)
    assert metrics["dissect_cxr_classification"] == {"kermany_test_auc": 0.97, "kermany_test_accuracy": 0.80}
    assert metrics["dissect_cxr_lung_segmentation"] == {"test_mean_dice": 0.95, "test_hd95": 10.0}
    context = seed_context(ReleaseSettings(repo=REPO), collected)
    assert "test AUC 0.960 ± 0.014" in context["dissect_cxr_classification"]
    assert "(2 of 3): test Dice 0.940 ± 0.014" in context["dissect_cxr_lung_segmentation"]


STOPPED_STAGE = """
import importlib.util, sys, time
from pathlib import Path
from dissect_monai.evaluation import release
spec = importlib.util.spec_from_file_location("release_script", sys.argv[1])
script = importlib.util.module_from_spec(spec)
sys.path.insert(0, str(Path(sys.argv[1]).parent))
spec.loader.exec_module(script)
script.install_stop_signals()
release.STAGE_RUNNERS["export"] = lambda s, log: (print("started", flush=True), time.sleep(120))
release.run_stage("export", release.ReleaseSettings(repo=Path("."), run_dir=Path(sys.argv[2])))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_a_background_stage_and_its_time_is_recorded(signum: int, tmp_path: Path) -> None:
    """As ``nohup python scripts/release.py ... &`` starts it: SIGINT ignored by the shell before the script runs."""
    proc = subprocess.Popen([sys.executable, "-c", STOPPED_STAGE, str(REPO / "scripts" / "release.py"),
                             str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout.readline().strip() == "started"
    time.sleep(1.0)
    proc.send_signal(signum)
    assert proc.wait(timeout=30) != 0
    record = read_json(tmp_path / "run" / "stages.json")["export"]
    assert record["finished"] is False and 1.0 <= record["wall_seconds"] < 30


def test_stage_table_gives_the_runs_own_time_beside_the_launchers_clock() -> None:
    """A launcher killed without its ``finally`` leaves no wall time in stages.json; its runs' own times remain."""
    cells = {seed: {"seconds": 1800.0, "test_auc": 0.8} for seed in (0, 1)}
    lung_run = {**_lung_result("dissect", "fine-tuned", 1.0, 0, 0.95), "train_seconds": 5400.0}
    collected = {"stages": {"pretrain": {"wall_seconds": 9000.0, "finished": True}},
                 "pretraining": [{"wall_seconds": 7200.0}, {"wall_seconds": None}],
                 "cells_by_seed": {"dissect": {"nih": {"0.1": cells}}},
                 "lung": {"dissect_fine-tuned_1_0": lung_run}}
    text = release_markdown(ReleaseSettings(repo=REPO), collected, machine_state(), [])
    assert "| pretrain | 2.50 h | 2.00 h | True |" in text
    assert "| classification | — | 1.00 h | False |" in text
    assert "| segmentation | — | 1.50 h | False |" in text
    assert "| export | — | — | False |" in text


def _lung_result(encoder: str, mode: str, fraction: float, seed: int, dice: float) -> dict:
    return {"row": {"encoder": encoder, "mode": mode, "fraction": fraction}, "seed": seed, "train_seconds": 60.0,
            "test_dice": {"mean": dice}, "test_hd95": {"mean": 10.0}}


def test_lung_dissect_minus_byol_is_paired_over_shared_seeds_and_read_plainly() -> None:
    runs = [("dissect", "fine-tuned", 1.0, 0, 0.950), ("dissect", "fine-tuned", 1.0, 1, 0.948),
            ("dissect", "fine-tuned", 1.0, 2, 0.952), ("byol", "fine-tuned", 1.0, 0, 0.947),
            ("byol", "fine-tuned", 1.0, 1, 0.949),  # byol has no seed 2 yet: seed 2 is left out of the pair
            ("dissect", "frozen", 0.1, 0, 0.915), ("byol", "frozen", 0.1, 0, 0.916),
            ("dissect", "frozen", 1.0, 0, 0.944)]  # no byol run: no difference
    lung = {f"{e}_{m}_{f}_{seed}": _lung_result(e, m, f, seed, d) for e, m, f, seed, d in runs}
    diff = lung_dissect_vs_byol(lung)
    assert set(diff) == {("fine-tuned", 1.0), ("frozen", 0.1)}
    assert diff[("fine-tuned", 1.0)].n == 2
    assert diff[("fine-tuned", 1.0)].mean == pytest.approx((0.003 - 0.001) / 2)
    assert diff[("frozen", 0.1)].n == 1 and diff[("frozen", 0.1)].mean == pytest.approx(-0.001)
    collected = {"stages": {}, "pretraining": [], "cells_by_seed": {}, "lung": lung}
    text = release_markdown(ReleaseSettings(repo=REPO), collected, machine_state(), [])
    assert "| fine-tuned | 100% | 2 | +0.001 ± 0.003 | within the spread |" in text
    assert "| frozen | 10% | 1 | -0.001 ± 0.000 | one seed: no spread yet |" in text


def test_release_report_has_the_pretraining_runs(tmp_path: Path, data_root: Path) -> None:
    settings = ReleaseSettings(repo=REPO, run_dir=tmp_path / "release", data_root=data_root, epochs=2)
    _finished_run(settings.pretrain_dir("dissect"))
    write_release_report(settings, tmp_path / "results")
    text = (tmp_path / "results" / "release.md").read_text()
    assert "# Pretraining" in text and "| dissect | 64 | 2 / 2 | 2 | True | 8.0 | 4.0 | 10.0 | 2 | 50.0 | 0.5 |" in text
    assert "| pretrain | — | 0.00 h | False |" in text  # not run through run_stage; the run's own 10 s
    assert (tmp_path / "results" / "release_pretraining_curves.png").is_file()
    assert "| 2 |" in (tmp_path / "results" / "release_pretraining.md").read_text()  # every epoch there
    # stages without results yet get no report (not an empty table with made-up budgets)
    assert "# Classification" not in text and "# Lung segmentation" not in text
    assert not (tmp_path / "results" / "release_segmentation.md").exists()


def test_the_report_is_not_rewritten_from_a_run_folder_lacking_recorded_runs(tmp_path: Path, data_root: Path) -> None:
    """A new machine (or another --run-dir) must not wipe the committed record: the report refuses, naming what the
    run folder lacks, and leaves every file as it was."""
    settings = ReleaseSettings(repo=REPO, run_dir=tmp_path / "release", data_root=data_root, epochs=2)
    results = tmp_path / "results"
    for method in ("dissect", "byol"):
        _finished_run(settings.pretrain_dir(method))
    write_release_report(settings, results)
    before = {p.name: p.read_bytes() for p in results.iterdir()}
    assert recorded_runs(read_json(results / "release.json")) == {"pretraining/dissect", "pretraining/byol"}
    shutil.rmtree(settings.pretrain_dir("byol"))
    with pytest.raises(RuntimeError, match=r"lacks 1 finished run\(s\).*pretraining/byol.*left as it is"):
        write_release_report(settings, results)
    assert {p.name: p.read_bytes() for p in results.iterdir()} == before
    plan_text = subprocess.run([sys.executable, str(REPO / "scripts" / "release.py"), "--plan", "--epochs", "2",
                                "--run-dir", str(settings.run_dir), "--results", str(results), "--data-root",
                                str(data_root)], capture_output=True, text=True, check=True).stdout
    assert "records finished runs this run folder lacks (1 pretraining)" in plan_text
    stage = subprocess.run([sys.executable, str(REPO / "scripts" / "release.py"), "--stage", "export", "--epochs",
                            "2", "--run-dir", str(settings.run_dir), "--results", str(results), "--data-root",
                            str(data_root)], capture_output=True, text=True)
    assert stage.returncode != 0 and "pretraining/byol" in stage.stderr and "left as it is" in stage.stderr
    assert not (settings.run_dir / "stages.json").exists()  # refused before the stage started
    write_release_report(settings, tmp_path / "elsewhere")  # a fresh results folder is written
    _finished_run(settings.pretrain_dir("byol"))
    write_release_report(settings, results)  # the run folder holds every recorded run again


def test_recorded_runs_name_every_cell_and_lung_run() -> None:
    record = {"pretraining": [{"run": "dissect"}], "lung": {"dissect_frozen_1_0": {}},
              "cells_by_seed": {"dissect": {"kermany": {"0.1": {"0": {}, "1": {}}}}}}
    assert recorded_runs(record) == {"pretraining/dissect", "lung/dissect_frozen_1_0",
                                     "classification/dissect/kermany/0.1/0", "classification/dissect/kermany/0.1/1"}


def _shipped_bundles_copy(tmp_path: Path) -> Path:
    """A repository folder with the shipped bundles' configs and docs (the Performance sections are written there)."""
    for name in SHIPPED:
        for part in ("configs", "docs"):
            shutil.copytree(REPO / "bundles" / name / part, tmp_path / "bundles" / name / part)
    return tmp_path


def test_the_committed_record_gives_the_shipped_performance_sections(tmp_path: Path) -> None:
    """``--performance-from-record`` on the committed results/release.json reproduces every shipped README's
    Performance section (its figures of the shipped weights are the bundles' eval_metrics), and refuses a record
    of another budget or a bundle whose eval_metrics are another run's."""
    repo = _shipped_bundles_copy(tmp_path)
    settings = ReleaseSettings(repo=repo)
    record = read_release_record(settings, REPO / "results" / "release.json")
    assert all(isinstance(seed, int) for row in record["cells_by_seed"].values() for fractions in row.values()
               for seeds in fractions.values() for seed in seeds)
    write_performance_sections(settings, record)
    for name in SHIPPED:
        readme = Path("bundles") / name / "docs" / "README.md"
        assert (repo / readme).read_text() == (REPO / readme).read_text(), readme
    with pytest.raises(ValueError, match="was made with settings"):
        read_release_record(ReleaseSettings(repo=repo, epochs=2), REPO / "results" / "release.json")
    metadata_file = repo / "bundles" / "dissect_cxr_lung_segmentation" / "configs" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["eval_metrics"]["test_mean_dice"] = 0.5
    metadata_file.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="dissect_cxr_lung_segmentation: eval_metrics .* export them again"):
        write_performance_sections(settings, record)
