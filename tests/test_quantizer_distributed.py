"""Two processes (torch.distributed, gloo on CPU) keep identical codebooks with all-reduced EMA statistics."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dissect_monai.networks import MultiScaleQuantizer


def _rank_main(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(100 + rank)  # different random initial codebooks and data on each rank
        q = MultiScaleQuantizer([6, 10], num_codes=[16, 32], code_dims=[4, 8], decay=0.5, dead_code_threshold=0.3)
        q.train()
        for step in range(6):
            q([torch.randn(2, 6, 5, 5) + step, torch.randn(3, 10, 3, 3)])
        # a step without restarts: the EMA counts grow by the one-hot counts of *both* ranks
        for cb in q.codebooks:
            cb.dead_code_threshold = 0.0
        before = [cb.ema_count.clone() for cb in q.codebooks]
        _, _, indices = q([torch.randn(2, 6, 5, 5), torch.randn(3, 10, 3, 3)])
        for cb, idx, prev in zip(q.codebooks, indices, before):
            counts = F.one_hot(idx.flatten(), cb.num_codes).float().sum(0)
            local = counts.clone()
            dist.all_reduce(counts)
            assert not torch.equal(counts, local)
            torch.testing.assert_close(cb.ema_count, 0.5 * prev + 0.5 * counts)
        torch.save(q.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_identical_codebooks(tmp_path) -> None:
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    buffers = [k for k in states[0] if k.startswith("codebooks.")]
    assert any(k.endswith("codebook") for k in buffers)
    for key in buffers:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0, msg=key)
    assert sum(int(states[0][k]) for k in buffers if k.endswith("restarts")) > 0, "restarts must be exercised too"
    # the 1x1 projections were initialised differently on each rank (no DDP here): the sync is the quantizer's
    assert not torch.equal(states[0]["projections.0.weight"], states[1]["projections.0.weight"])
