"""Unit tests of the SSL engine: step order, NaN guard, atomic checkpoints, resume (small synthetic tensors)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from ignite.engine import Events
from monai.handlers import LrScheduleHandler
from torch import nn

from dissect_monai.engines import (
    EpochSeeder,
    NonFiniteTrainingError,
    SSLCheckpointer,
    SSLIteration,
    SSLMetricsLogger,
    atomic_save,
    load_checkpoint,
)
from dissect_monai.transforms import RandTwoViewsd

torch.set_num_threads(1)


class TinySSL(nn.Module):
    """BYOL-shaped toy with the engine's protocol: forward(v1, v2) -> losses, update_target, codebook stats."""

    def __init__(self) -> None:
        super().__init__()
        self.online = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4, 8),
        )
        self.predictor = nn.Linear(8, 8)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.register_buffer("usage", torch.zeros(4))
        self.nan_at_call: int | None = None
        self.calls = 0
        self.update_log: list[tuple[int, float]] = []

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        p1, p2 = self.predictor(self.online(view1)), self.predictor(self.online(view2))
        with torch.no_grad():
            t1, t2 = self.target(view1), self.target(view2)
        term1 = (2 - 2 * nn.functional.cosine_similarity(p1.float(), t2.float())).mean()
        term2 = (2 - 2 * nn.functional.cosine_similarity(p2.float(), t1.float())).mean()
        loss = term1 + term2
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            loss = loss * float("nan")
        self.usage += 1
        return {"loss": loss, "byol_12": term1, "byol_21": term2}

    @torch.no_grad()
    def update_target(self, progress: float) -> float:
        momentum = 0.5 + 0.5 * progress
        for online, target in zip(self.online.parameters(), self.target.parameters()):
            target.mul_(momentum).add_(online, alpha=1 - momentum)
        self.update_log.append((self.calls, momentum))
        return momentum

    def codebook_statistics(self) -> dict[str, float]:
        return {"scale0/usage": float(self.usage.mean())}


def _loader(n: int = 8, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = [
        {"image": torch.rand(1, 16, 16, generator=g), "image_2": torch.rand(1, 16, 16, generator=g)} for _ in range(n)
    ]
    return DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=0)


def _trainer(net, max_epochs, handlers_fn, precision="fp32"):
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    handlers = handlers_fn(net, optimizer, scheduler)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=_loader(),
        network=net,
        optimizer=optimizer,
        loss_function=None,
        iteration_update=SSLIteration(precision=precision),
        train_handlers=[LrScheduleHandler(scheduler, print_lr=False, epoch_level=False), EpochSeeder(7), *handlers],
    )
    return trainer, optimizer, scheduler


def _checkpointer(save_dir, every, exports=False):
    def make(net, optimizer, scheduler):
        return [
            SSLCheckpointer(
                save_dir,
                {"network": net, "optimizer": optimizer, "lr_scheduler": scheduler},
                save_interval=every,
                final_exports={"model.pt": net.online} if exports else None,
            )
        ]

    return make


def test_step_outputs_terms_and_updates_target_after_optimizer_step(tmp_path):
    torch.manual_seed(0)
    net = TinySSL()
    trainer, optimizer, _ = _trainer(net, 1, lambda *a: [SSLMetricsLogger(tmp_path, interval=1, tensorboard=False)])
    steps = []
    original_step = optimizer.step

    def counting_step(*args, **kwargs):
        steps.append(net.calls)
        return original_step(*args, **kwargs)

    optimizer.step = counting_step
    trainer.run()
    out = trainer.state.output
    assert {"loss", "byol_12", "byol_21", "momentum", "grad_norm"} <= set(out)
    assert torch.allclose(out["loss"], out["byol_12"] + out["byol_21"])
    # one target update per iteration, after that iteration's optimizer step, with progress = iteration / total
    assert [call for call, _ in net.update_log] == steps == [1, 2, 3, 4]
    assert [m for _, m in net.update_log] == pytest.approx([0.5 + 0.5 * i / 4 for i in range(1, 5)])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 + 1  # 4 iteration records + 1 epoch record
    assert '"codebook/scale0/usage"' in lines[0] and '"lr"' in lines[0]


def test_target_update_sees_stepped_weights():
    """With momentum 0 the target copies the online weights: equal at the end only if copied after the step."""

    class CopyTarget(TinySSL):
        @torch.no_grad()
        def update_target(self, progress: float) -> float:
            for online, target in zip(self.online.parameters(), self.target.parameters()):
                target.copy_(online)
            return 0.0

    torch.manual_seed(0)
    net = CopyTarget()
    trainer, _, _ = _trainer(net, 1, lambda *a: [])
    trainer.run()
    for online, target in zip(net.online.parameters(), net.target.parameters()):
        assert torch.equal(online, target)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = TinySSL()
    net.nan_at_call = 6  # iterations 1..5 fine, 6 produces NaN
    trainer, _, _ = _trainer(net, 3, _checkpointer(tmp_path, every=2, exports=True))
    with pytest.raises(NonFiniteTrainingError, match="non-finite loss at iteration 6"):
        trainer.run()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["network"].values() if v.is_floating_point())
    # the optimizer did not step on the NaN iteration: the live weights are those of iteration 5, still finite
    assert all(torch.isfinite(p).all() for p in net.parameters())
    # the export written with the last good checkpoint is that checkpoint's online encoder
    exported = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(v, ckpt["network"][f"online.{k}"]) for k, v in exported.items())
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_non_finite_state_is_never_written(tmp_path):
    torch.manual_seed(0)
    net = TinySSL()
    trainer, _, _ = _trainer(net, 1, _checkpointer(tmp_path, every=1))
    trainer.run()
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    with torch.no_grad():
        net.predictor.weight[0, 0] = float("inf")
    checkpointer = SSLCheckpointer(tmp_path, {"network": net}, save_interval=1)
    with pytest.raises(NonFiniteTrainingError, match="not overwriting"):
        checkpointer.save(trainer)
    again = load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(torch.equal(good["network"][k], again["network"][k]) for k in good["network"])


def test_atomic_save_failure_leaves_previous_file(tmp_path):
    path = tmp_path / "c.pt"
    atomic_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": torch.zeros(2), "b": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]


def test_resume_restores_everything_and_matches_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    reference = TinySSL()
    init_state = copy.deepcopy(reference.state_dict())
    trainer, ref_opt, ref_sched = _trainer(reference, 4, _checkpointer(tmp_path / "ref", every=4))
    trainer.run()

    # interrupted: the same 4-epoch run crashes after epoch 2; new objects then resume it
    class Crash(Exception):
        pass

    def crash(engine):
        raise Crash()

    first = TinySSL()
    first.load_state_dict(init_state)
    trainer, _, _ = _trainer(first, 4, _checkpointer(tmp_path / "run", every=4))
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), crash)
    with pytest.raises(Crash):
        trainer.run()
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["iteration"] == 8

    resumed = TinySSL()  # different random init: everything must come from the checkpoint
    trainer, opt, sched = _trainer(resumed, 2, _checkpointer(tmp_path / "run", every=4))
    trainer.run()  # max_epochs already reached: restore only
    assert trainer.state.iteration == 8 and trainer.state.epoch == 2
    for k, v in saved["network"].items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert sched.last_epoch == saved["lr_scheduler"]["last_epoch"] == 8
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], saved["optimizer"]["state"][0]["exp_avg"])

    trainer, opt, sched = _trainer(resumed, 4, _checkpointer(tmp_path / "run", every=4))
    trainer.run()
    assert trainer.state.iteration == 16
    for k, v in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert sched.last_epoch == ref_sched.last_epoch == 16


def test_resume_rejects_changed_epoch_length(tmp_path):
    torch.manual_seed(0)
    net = TinySSL()
    trainer, _, _ = _trainer(net, 1, _checkpointer(tmp_path, every=2))
    trainer.run()
    checkpointer = SSLCheckpointer(tmp_path, {"network": net})
    trainer.state.epoch_length = 3
    with pytest.raises(ValueError, match="epoch_length 4"):
        checkpointer.load(trainer)


def test_bf16_policy_runs_the_step(tmp_path):
    torch.manual_seed(0)
    net = TinySSL()
    trainer, _, _ = _trainer(net, 1, lambda *a: [], precision="bf16")
    trainer.run()
    assert trainer.state.output["loss"].dtype == torch.float32
    assert torch.isfinite(trainer.state.output["loss"])


def test_batch_transform_cuts_the_views_and_epoch_seeder_reseeds_it():
    """SSLIteration takes its views from ``batch_transform`` (the bundle's RandTwoViewsd) applied to the collated
    batch; EpochSeeder reseeds that transform at each epoch start, so a run draws the same views whatever state
    the transform was left in (as a run resumed at an epoch boundary does)."""
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(1, 12, 12, generator=g)} for _ in range(4)]

    def run(advance: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        seen = []
        net = TinySSL()
        net.register_forward_pre_hook(lambda module, views: seen.append(tuple(v.clone() for v in views)))
        views = RandTwoViewsd("image", (8, 8))
        for _ in range(advance):
            views.randomize(4)
        trainer = SupervisedTrainer(
            device=torch.device("cpu"), max_epochs=2, train_data_loader=DataLoader(data, batch_size=2),
            network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=None,
            iteration_update=SSLIteration(precision="fp32", batch_transform=views),
            train_handlers=[EpochSeeder(7, transforms=[views])],
        )
        trainer.run()
        return seen

    first, second = run(advance=0), run(advance=3)
    assert len(first) == 4 and first[0][0].shape == first[0][1].shape == (2, 1, 8, 8)
    assert not torch.allclose(first[0][0], first[0][1])  # two different views of the same images
    assert not torch.allclose(first[0][0], first[2][0])  # the same images, new views in epoch 2
    for (a1, a2), (b1, b2) in zip(first, second):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
