"""The SSL pieces every method shares: momentum schedule, EMA update of a target network, global pooling."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dissect_monai.networks.ssl_utils import cosine_momentum, ema_update, global_pool


def test_cosine_momentum_rises_from_base_to_final_and_clips_progress() -> None:
    assert cosine_momentum(0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.5) == pytest.approx(0.998)
    assert cosine_momentum(1.0) == pytest.approx(1.0)
    assert cosine_momentum(-1.0, 0.9, 0.99) == pytest.approx(0.9)
    assert cosine_momentum(2.0, 0.9, 0.99) == pytest.approx(0.99)


def test_ema_update_moves_every_target_parameter_towards_the_online_one() -> None:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in target.parameters()]
    ema_update([(online, target)], 0.9)
    for pt, p0, po in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(pt, 0.9 * p0 + 0.1 * po)
    ema_update([(online, target)], 1.0)
    for pt, p0, po in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(pt, 0.9 * p0 + 0.1 * po)
    with pytest.raises(ValueError, match="does not have the parameters"):
        ema_update([(online, nn.Linear(3, 4))], 0.9)


@pytest.mark.parametrize("spatial", [(4, 5), (2, 3, 4)])
def test_global_pool_is_the_spatial_mean_in_either_memory_layout(spatial) -> None:
    x = torch.randn(2, 3, *spatial)
    expected = x.mean(dim=tuple(range(2, x.ndim)))
    torch.testing.assert_close(global_pool(x), expected)
    layout = torch.channels_last if len(spatial) == 2 else torch.channels_last_3d
    torch.testing.assert_close(global_pool(x.to(memory_format=layout)), expected)
    torch.testing.assert_close(torch.jit.script(global_pool)(x), expected)
