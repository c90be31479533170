"""The progress bar counts the whole run (all epochs), so its remaining-time estimate is the run's."""

from __future__ import annotations

import io

import torch
from ignite.engine import Engine

from dissect_monai.engines import ProgressBarHandler


def _engine(stream: io.StringIO) -> Engine:
    engine = Engine(lambda engine, batch: {"loss": torch.tensor(0.5 * batch)})
    ProgressBarHandler(persist=True, file=stream).attach(engine)
    return engine


def test_bar_spans_every_epoch_and_shows_epoch_and_loss():
    stream = io.StringIO()
    _engine(stream).run(range(3), max_epochs=4)
    text = stream.getvalue()
    assert "12/12" in text and "/3 " not in text
    assert "epoch=4/4" in text and "loss=1" in text


def test_resumed_run_starts_at_the_restored_iteration():
    stream = io.StringIO()
    engine = _engine(stream)
    engine.load_state_dict({"iteration": 6, "epoch_length": 3, "max_epochs": 4})
    engine.run(range(3))
    text = stream.getvalue()
    assert " 6/12" in text and "12/12" in text and " 1/12" not in text
