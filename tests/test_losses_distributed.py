"""Batch statistics of the SSL losses are global under torch.distributed: 2 ranks x B == 1 process x 2B.

Real processes (torch.multiprocessing, gloo on CPU, rendezvous through a file). Each rank holds the same weights
and its half of the batch; its parameter gradients are averaged over the ranks as DistributedDataParallel does.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dissect_monai.losses import DINOLoss, VICRegLoss
from dissect_monai.utils.distributed import gather_with_grad

WORLD = 2
BATCH = 4  # per rank
IN_DIM, DIM, PROTOTYPES = 6, 5, 7


def _batch() -> dict[str, torch.Tensor]:
    """The full batch of both ranks (2 * BATCH rows): two views, and DINO's two global views plus one local view."""
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(WORLD * BATCH, IN_DIM, generator=g) for name in ("v1", "v2", "g1", "g2", "local")}


def _nets() -> tuple[torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(1)
    return torch.nn.Linear(IN_DIM, DIM), torch.nn.Linear(IN_DIM, PROTOTYPES)


def _vicreg(net: torch.nn.Linear, data: dict[str, torch.Tensor]) -> torch.Tensor:
    return VICRegLoss()(net(data["v1"]), net(data["v2"]))["loss"]


def _dino(net: torch.nn.Linear, loss: DINOLoss, data: dict[str, torch.Tensor]) -> torch.Tensor:
    """DINO loss of a student on 3 views against a teacher (the student's weights + 0.1) on the 2 global views;
    then the centre update."""
    student = [net(data[k]) for k in ("g1", "g2", "local")]
    with torch.no_grad():
        teacher = [torch.nn.functional.linear(data[k], net.weight + 0.1, net.bias) for k in ("g1", "g2")]
    value = loss(student, teacher, progress=0.5)
    loss.update_center(teacher)
    return value


def _run(data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Losses, gradients and the DINO centre after two steps (the second loss uses the first step's centre)."""
    vicreg_net, dino_net = _nets()
    out = {"vicreg": _vicreg(vicreg_net, data)}
    out["vicreg"].backward()
    dino_loss = DINOLoss(PROTOTYPES, center_momentum=0.5)
    first = _dino(dino_net, dino_loss, data)
    second = _dino(dino_net, dino_loss, data)
    (first + second).backward()
    out.update(dino=(first + second).detach(), center=dino_loss.center.clone())
    out.update({f"vicreg_grad_{n}": p.grad for n, p in vicreg_net.named_parameters()})
    out.update({f"dino_grad_{n}": p.grad for n, p in dino_net.named_parameters()})
    return {k: v.detach() for k, v in out.items()}


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        local = {k: v[rank * BATCH:(rank + 1) * BATCH] for k, v in _batch().items()}
        out = _run(local)
        for key, value in out.items():
            if "grad" in key or key == "dino":  # DDP averages gradients; the DINO loss is a per-sample mean
                dist.all_reduce(value)
                value /= WORLD
        out["gathered_v1"] = gather_with_grad(local["v1"])
        # unequal batches (rank r holds r + 1 rows): rows in rank order, each rank gets the summed gradient of its own
        rows = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)
        gathered = gather_with_grad(rows)
        (gathered * torch.arange(1.0, 4.0).unsqueeze(1)).sum().backward()
        out.update(unequal=gathered.detach(), unequal_grad=rows.grad)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_of_b_equal_one_process_of_2b(tmp_path) -> None:
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    reference = _run(_batch())
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got.pop("gathered_v1"), _batch()["v1"], rtol=0, atol=0)
        torch.testing.assert_close(got.pop("unequal"), torch.tensor([[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]))
        # d/d rows of sum_i w_i * gathered_i, w = (1, 2, 3), summed over the 2 ranks' identical losses
        expected_grad = torch.tensor([[2.0, 2.0]]) if rank == 0 else torch.tensor([[4.0, 4.0], [6.0, 6.0]])
        torch.testing.assert_close(got.pop("unequal_grad"), expected_grad)
        assert set(got) == set(reference)
        for key, value in reference.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {key}")
    # the per-rank statistics differ from the global ones, so the test can tell the difference
    half = {k: v[:BATCH] for k, v in _batch().items()}
    assert not torch.allclose(_run(half)["vicreg"], reference["vicreg"])
    assert not torch.allclose(_run(half)["center"], reference["center"])


def test_gather_is_the_identity_without_a_process_group() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
