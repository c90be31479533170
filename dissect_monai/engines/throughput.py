"""Training throughput on CPU: timed step bursts, per-layer convolution speed, the pretraining bundle end to end.

Used by ``scripts/benchmark_training.py``. Times are wall seconds (what a user waits) and process CPU
seconds (robust to other jobs on the cores: the throughput with one core to itself per thread).
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from PIL import Image

from dissect_monai.data import dataset_datalist
from dissect_monai.engines.ssl_iteration import SSLIteration
from dissect_monai.networks import DiSSECT, DiSSECTEmbedder, EMACodebook, ResNetFeaturePyramid
from dissect_monai.utils.gemm_conv import GemmConv2d, conv_gemm
from dissect_monai.utils.precision import prepare_module, resolve_precision

__all__ = [
    "timed_calls",
    "summarise",
    "real_view_pairs",
    "ssl_step",
    "conv_layer_table",
    "bundle_end_to_end",
    "code_search_seconds",
]

# 3x3 stride-1 convolutions of a 2-D ResNet-18 stage: (channels, map stride relative to the input)
RESNET18_STAGES = ((64, 4), (128, 8), (256, 16), (512, 32))


def timed_calls(step: Callable[[], Any], calls: int, threads: int) -> list[dict[str, float]]:
    """Run ``step()`` ``calls`` times; per call the wall seconds, CPU seconds and share of ``threads`` cores used."""
    out = []
    for _ in range(calls):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        out.append({"seconds": wall, "cpu_seconds": cpu, "core_share": cpu / (wall * threads)})
    return out


def summarise(samples: Sequence[Mapping[str, float]], batch: int) -> dict[str, Any]:
    """Medians and ranges of :func:`timed_calls` samples, and pairs per (CPU-)second for ``batch`` pairs a step."""
    secs = sorted(s["seconds"] for s in samples)
    cpu = sorted(s["cpu_seconds"] for s in samples)
    return {
        "median_cpu_seconds_per_step": statistics.median(cpu),
        "cpu_seconds_range": [cpu[0], cpu[-1]],
        "pairs_per_cpu_second": batch / statistics.median(cpu),
        "median_seconds_per_step": statistics.median(secs),
        "pairs_per_second": batch / statistics.median(secs),
        "median_core_share": statistics.median(s["core_share"] for s in samples),
        "steps_measured": len(secs),
    }


def real_view_pairs(sizes: Sequence[int], batch: int, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Two augmented views (random resized crop + flip) of the first ``batch`` NIH train chest X-rays at each size.

    Returns:
        ``{str(size): (view_1, view_2)}``, each ``(batch, 1, size, size)`` fp32 in [0, 1].
    """
    files = [item["image"] for item in dataset_datalist("nih-cxr-pneumonia", "train")][:batch]
    if len(files) < batch:
        raise ValueError(f"only {len(files)} NIH train images found, need {batch}")
    rng, views = random.Random(seed), {}
    for size in sizes:
        pair = []
        for _ in range(2):
            crops = []
            for name in files:
                with Image.open(name) as im:
                    im = im.convert("L")
                    side = int(min(im.size) * rng.uniform(0.6, 1.0))
                    x0, y0 = rng.randint(0, im.size[0] - side), rng.randint(0, im.size[1] - side)
                    crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
                    if rng.random() < 0.5:
                        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                crops.append(np.asarray(crop, dtype=np.float32) / 255.0)
            pair.append(torch.from_numpy(np.stack(crops)[:, None]).contiguous())
        views[str(size)] = (pair[0], pair[1])
    return views


def ssl_step(
    method: str, precision: str, gemm_conv: bool, hidden: int, projection: int, lr: float
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One optimisation step of our ResNet-18 ``"dissect"`` or ``"byol"`` (quantizer off) on two views.

    The project's own step (:class:`~dissect_monai.engines.SSLIteration`: autocast forward of both views
    through online and target networks, backward, gradient norm, SGD step, EMA update) under ``precision``
    (``"fp32"`` / ``"bf16"``), with or without the GEMM convolutions; the model is built once, here.
    """
    torch.manual_seed(0)
    policy = resolve_precision(precision, "cpu")
    embedder = DiSSECTEmbedder(ResNetFeaturePyramid(depth=18), use_quantizer=(method == "dissect"))
    model = DiSSECT(embedder, hidden_dim=hidden, projection_dim=projection)
    model = prepare_module(model, "cpu", policy, gemm_conv=gemm_conv)
    engine = SimpleNamespace(
        network=model, optimizer=torch.optim.SGD(model.online_parameters(), lr=lr, momentum=0.9),
        non_blocking=False, optim_set_to_none=True,
        state=SimpleNamespace(device=torch.device("cpu"), iteration=0, epoch=1, max_epochs=1, epoch_length=1000),
    )  # fmt: skip
    iteration = SSLIteration(precision=policy)

    def step(view_1: torch.Tensor, view_2: torch.Tensor) -> None:
        engine.state.iteration += 1
        iteration(engine, {"image": view_1, "image_2": view_2})

    return step


def conv_layer_table(image_size: int, batch: int, threads: int, repeats: int = 3) -> list[dict[str, Any]]:
    """GFLOP/s per core of each ResNet-18 stage's 3x3 convolution, forward + backward, bf16 channels_last.

    For each stage at ``image_size`` px (``batch`` images, e.g. the two views of a batch of pairs): the stock
    oneDNN convolution, the GEMM path (:func:`~dissect_monai.utils.gemm_conv.conv_gemm`), and which of the
    two :class:`~dissect_monai.utils.gemm_conv.GemmConv2d` picks when timing them at first use ("after" is
    the picked path's speed). FLOPs count forward, grad input and grad weight (3 x 2 x B x H x W x C x C x 9);
    speed is from CPU time, median of ``repeats`` after one warm-up.
    """
    rows = []
    for channels, stride in RESNET18_STAGES:
        side = max(image_size // stride, 1)
        conv = GemmConv2d(channels, channels, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
        x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
        flops = 3 * 2 * batch * side * side * channels * channels * 9

        def speed(conv_fn: Callable) -> float:
            def step() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = conv_fn(x, conv.weight, None, 1, 1)
                torch.autograd.grad(y, (x, conv.weight), torch.ones_like(y))

            step()
            cpu = statistics.median(s["cpu_seconds"] for s in timed_calls(step, repeats, threads))
            return flops / cpu / 1e9 / threads

        onednn, gemm = speed(F.conv2d), speed(conv_gemm)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            picked = "gemm" if conv.uses_gemm(x) else "onednn"
        rows.append({
            "map": f"{side}x{side}", "channels": channels, "batch": batch,
            "onednn_gflops": onednn, "gemm_gflops": gemm, "picked": picked,
            "after_gflops": gemm if picked == "gemm" else onednn,
        })  # fmt: skip
    return rows


def bundle_end_to_end(
    bundle_dir: str | os.PathLike,
    iterations: int,
    warmup: int,
    batch_size: int,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a training bundle as users do (``ConfigWorkflow`` of ``configs/train.yaml``) and time its iterations.

    The bundle's own dataset, ``train#preprocessing``, data loader and trainer run unchanged except for the
    overrides: the datalist is the first ``batch_size * (warmup + iterations)`` items of the bundle's own
    (so one epoch is exactly the measured run), one epoch, checkpoints and logs in a temporary folder, no
    progress bar, plus ``overrides`` (e.g. ``image_size``, ``quantizer``, ``num_threads``, ``num_workers``).
    The cache is filled (timed separately) before the trainer starts; the clock runs from the end of the
    ``warmup``-th iteration to the end of the last, so data loading and view generation are included.

    Returns:
        ``seconds_per_iteration`` and ``pairs_per_second`` (wall), ``main_cpu_seconds_per_iteration`` (the
        trainer's process; DataLoader workers not included), ``cache_fill_seconds``, ``iterations``,
        ``num_workers``, ``load_average`` (1-min, at start and end) and ``images`` (the files read).
    """
    from monai.bundle import ConfigWorkflow

    if warmup < 1 or iterations < 1:
        raise ValueError(f"need warmup >= 1 and iterations >= 1, got {warmup} and {iterations}")
    bundle_dir = Path(bundle_dir)
    marks: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workflow = ConfigWorkflow(
            config_file=str(bundle_dir / "configs" / "train.yaml"),
            meta_file=str(bundle_dir / "configs" / "metadata.json"),
            logging_file=False,
            workflow_type="train",
            **{"bundle_root": str(bundle_dir), "output_dir": tmp, "log_dir": tmp, "epochs": 1, "batch_size": batch_size,
               "progress_bar": False, "save_interval": 10**9, **(overrides or {})},
        )  # fmt: skip
        workflow.initialize()
        parser = workflow.parser
        datalist = parser.get_parsed_content("train#datalist")[: batch_size * (warmup + iterations)]
        parser["train#datalist"] = datalist
        load_start = os.getloadavg()[0]
        start = time.perf_counter()
        trainer = parser.get_parsed_content("train#trainer")  # builds the dataset: fills the cache
        cache_fill = time.perf_counter() - start
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda engine: marks.append((time.perf_counter(), time.process_time()))
        )
        workflow.run()
        workflow.finalize()
        num_workers = trainer.data_loader.num_workers
    if len(marks) != warmup + iterations:
        raise RuntimeError(f"{bundle_dir.name} ran {len(marks)} iterations, expected {warmup + iterations}")
    wall = marks[-1][0] - marks[warmup - 1][0]
    cpu = marks[-1][1] - marks[warmup - 1][1]
    return {
        "iterations": iterations,
        "seconds_per_iteration": wall / iterations,
        "pairs_per_second": batch_size * iterations / wall,
        "main_cpu_seconds_per_iteration": cpu / iterations,
        "cache_fill_seconds": cache_fill,
        "num_workers": num_workers,
        "load_average": [load_start, os.getloadavg()[0]],
        "images": [str(item["image"]) for item in datalist],
    }


def code_search_seconds(image_size: int, batch: int, threads: int, repeats: int = 3) -> float:
    """CPU seconds of DiSSECT's fp32 nearest-code search alone in one step, median of ``repeats``.

    The search of every c2-c4 position of both views (``2 * batch`` images at ``image_size`` px, ResNet-18
    strides 4, 8, 16) among 512 codes of 64 dims, once for the online and once for the target network.
    """
    torch.manual_seed(0)
    codebook = EMACodebook(512, 64)
    rows = [F.normalize(torch.randn(2 * batch * (image_size // s) ** 2, 64), dim=1) for s in (4, 8, 16)]

    def step() -> None:
        for _ in ("online", "target"):
            for z in rows:
                codebook.assign(z)

    step()
    return statistics.median(x["cpu_seconds"] for x in timed_calls(step, repeats, threads))
