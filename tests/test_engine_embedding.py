"""Embedding inference step and writer: outputs per image, safe unique file names."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch
from monai.data import MetaTensor

from dissect_monai.engines import EmbeddingIteration, EmbeddingWriter
from dissect_monai.engines.embedding import _output_name
from dissect_monai.networks.dissect import DiSSECTEmbedder


def test_output_names_are_safe_and_unique():
    a = _output_name("/data/a/../../etc/passwd x.png")
    assert "/" not in a and " " not in a and not a.startswith(".")
    assert _output_name("/data/site1/img.png") != _output_name("/data/site2/img.png")
    assert _output_name("/data/site1/img.png").startswith("img_")
    assert _output_name("/data/series_dir/").startswith("series_dir_")


def test_iteration_and_writer(tmp_path):
    torch.manual_seed(0)
    net = DiSSECTEmbedder(quantizer_args={"num_codes": 16, "code_dims": 8})
    images = MetaTensor(torch.rand(2, 1, 32, 32), meta={"filename_or_obj": ["/x/a.png", "/y/a.png"]})
    engine = SimpleNamespace(state=SimpleNamespace(device=torch.device("cpu"), iteration=1), network=net)
    out = EmbeddingIteration(precision="fp32")(engine, {"image": images})
    assert out["pred"].shape == (2, 512) and out["codes_c2"].shape == (2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(out["pred"], net(images.as_tensor()))
    engine.state.output, engine.state.batch = out, {"image": images}
    writer = EmbeddingWriter(tmp_path)
    writer(engine)
    index = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert [r["source"] for r in index] == ["/x/a.png", "/y/a.png"] and len({r["output"] for r in index}) == 2
    saved = np.load(tmp_path / index[1]["output"])
    np.testing.assert_allclose(saved["embedding"], out["pred"][1].numpy())
    np.testing.assert_array_equal(saved["codes_c4"], out["codes_c4"][1].numpy())
