"""Input-pipeline cost of the pretraining bundle on real chest X-rays, through the bundle's own config.

Reads ``bundles/dissect_cxr_pretrain/configs/train.yaml`` with MONAI's ``ConfigParser`` and times its parts as
training runs them: ``train#preprocessing`` uncached (decode + resize every time), building ``train#dataset``
(the memory cache), one pass of ``train#dataloader`` over the cache, and ``train#views`` (the two views, batched
on the collated batch, as ``SSLIteration`` applies them), also applied one image at a time for comparison.
Costs are CPU ms per image pair in this process (independent of other jobs' load); the pipeline keeps up with a
training step that consumes P pairs per CPU-second while ``P * (loader + views) ms`` stays well under 1000.
Writes ``results/data_throughput.json`` and ``results/data_throughput.md``.

    python scripts/benchmark_data.py [--limit 1000] [--sizes 64 128] [--batch-size 64] [--epochs 2] [--out results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import monai
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset

from repo_paths import PRETRAIN_BUNDLE as BUNDLE
from repo_paths import RESULTS


def bundle_parser(image_size: int, batch_size: int, limit: int, workers: int) -> ConfigParser:
    """The bundle's training config at ``image_size`` on the first ``limit`` images of its own datalist."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser["bundle_root"] = str(BUNDLE)
    parser.update({"image_size": image_size, "batch_size": batch_size, "num_workers": workers})
    parser["train#datalist"] = parser.get_parsed_content("train#datalist")[:limit]
    return parser


class CPUClock:
    """Wall and process-CPU seconds of a block (``with CPUClock() as c: ...; c.wall, c.cpu``)."""

    def __enter__(self) -> CPUClock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def time_size(image_size: int, args: argparse.Namespace) -> dict:
    """All measurements at one training size."""
    parser = bundle_parser(image_size, args.batch_size, args.limit, workers=0)
    items = parser["train#datalist"]
    preprocessing, views = parser.get_parsed_content("train#preprocessing"), parser.get_parsed_content("train#views")
    views.set_random_state(0)
    row: dict = {"image_size": image_size, "cache_size": parser.get_parsed_content("cache_size"),
                 "images": len(items)}

    uncached = items[: min(len(items), 200)]
    with CPUClock() as c:
        for _ in DataLoader(Dataset(uncached, preprocessing), batch_size=args.batch_size, num_workers=0):
            pass
    row["uncached_cpu_ms_per_image"] = 1000 * c.cpu / len(uncached)

    with CPUClock() as c:
        dataset = parser.get_parsed_content("train#dataset")
    row["cache_build_s"], row["cached_images"] = c.wall, len(dataset)

    loader_cpu = views_cpu = per_image_cpu = 0.0
    pairs = per_image_pairs = 0
    loader = parser.get_parsed_content("train#dataloader")
    for _ in range(args.epochs):
        batches = iter(loader)
        while True:
            with CPUClock() as fetch:
                batch = next(batches, None)
            if batch is None:
                break
            with CPUClock() as view:
                views(batch)
            loader_cpu, views_cpu, pairs = loader_cpu + fetch.cpu, views_cpu + view.cpu, pairs + len(batch["image"])
            if per_image_pairs < args.batch_size:  # the same recipe one image at a time, on one batch
                with CPUClock() as one:
                    for i in range(len(batch["image"])):
                        views({"image": batch["image"][i: i + 1]})
                per_image_cpu, per_image_pairs = per_image_cpu + one.cpu, per_image_pairs + len(batch["image"])
    row["pairs"] = pairs
    row["loader_cpu_ms_per_pair"] = 1000 * loader_cpu / pairs
    row["views_cpu_ms_per_pair"] = 1000 * views_cpu / pairs
    row["views_per_image_cpu_ms_per_pair"] = 1000 * per_image_cpu / per_image_pairs
    row["input_cpu_ms_per_pair"] = row["loader_cpu_ms_per_pair"] + row["views_cpu_ms_per_pair"]
    row["workers"] = [worker_rate(parser, w, args.epochs) for w in args.workers]
    return row


def worker_rate(parser: ConfigParser, workers: int, epochs: int) -> dict:
    """Wall pairs/s of the bundle's DataLoader with ``workers`` processes plus the views in this process."""
    dataset, views = parser.get_parsed_content("train#dataset"), parser.get_parsed_content("train#views")
    loader = DataLoader(dataset, batch_size=parser["batch_size"], shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0)
    rates = []
    for _ in range(epochs):
        n = 0
        with CPUClock() as c:
            for batch in loader:
                n += len(views(batch)["image"])
        rates.append(n / c.wall)
    return {"workers": workers, "pairs_per_s": max(rates), "epochs_pairs_per_s": rates}


def markdown(r: dict) -> str:
    lines = [
        "# Input pipeline of the pretraining bundle (real chest X-rays)",
        "",
        f"The first {r['limit']} images of the bundle's pretraining pool, through "
        "`bundles/dissect_cxr_pretrain/configs/train.yaml` itself (`train#preprocessing`, `train#dataset`, "
        f"`train#dataloader`, `train#views`); batch {r['batch_size']} pairs; torch threads {r['threads']}; "
        f"{r['cpu_count']} CPU cores; monai {r['monai']}, torch {r['torch']}. "
        "Produced by `python scripts/benchmark_data.py`.",
        "",
        f"Machine load average (1, 5, 15 min) before: {', '.join(f'{x:.1f}' for x in r['load_average_before'])};"
        f" after: {', '.join(f'{x:.1f}' for x in r['load_average_after'])}. CPU ms are this process's own CPU time"
        " and do not depend on the load; pairs/s (wall) do.",
        "",
        "| size (cache) | uncached decode + resize, CPU ms/image | cache build, s | loader from cache, CPU ms/pair "
        "| views batched, CPU ms/pair | views one image at a time, CPU ms/pair | input total, CPU ms/pair "
        "| pairs per CPU-second |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in r["sizes"]:
        lines.append(
            f"| {s['image_size']} px ({s['cache_size']} px) | {s['uncached_cpu_ms_per_image']:.2f} "
            f"| {s['cache_build_s']:.1f} | {s['loader_cpu_ms_per_pair']:.3f} | {s['views_cpu_ms_per_pair']:.3f} "
            f"| {s['views_per_image_cpu_ms_per_pair']:.3f} | {s['input_cpu_ms_per_pair']:.3f} "
            f"| {1000 / s['input_cpu_ms_per_pair']:.0f} |"
        )
    lines += ["", "| size | DataLoader workers (views in the main process) | pairs/s (wall) | per epoch |",
              "| --- | ---: | ---: | --- |"]
    for s in r["sizes"]:
        for w in s["workers"]:
            per_epoch = ", ".join(f"{x:.0f}" for x in w["epochs_pairs_per_s"])
            lines.append(f"| {s['image_size']} px | {w['workers']} | {w['pairs_per_s']:.0f} | {per_epoch} |")
    lines += [
        "",
        "The deterministic part (decode, resize to 1.5x the training size) is cached once; every epoch the loader",
        "only collates cached tensors and `train#views` cuts two views from the whole batch in one resampling and",
        "a few filters (`dissect_monai.transforms.RandTwoViewsd`, applied by `SSLIteration` on the training",
        "device). A training step that consumes P pairs per CPU-second spends `P * input total / 1000` of its",
        "time waiting for data with `num_workers: 0`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="images of the bundle's pretraining pool")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="training image sizes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="passes over the cache per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to compare")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict = {
        "limit": args.limit, "batch_size": args.batch_size, "threads": args.threads, "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "monai": monai.__version__, "torch": torch.__version__,
        "load_average_before": os.getloadavg(),
    }
    results["sizes"] = []
    for size in args.sizes:
        row = time_size(size, args)
        results["sizes"].append(row)
        print(f"{size} px: loader {row['loader_cpu_ms_per_pair']:.3f} + views {row['views_cpu_ms_per_pair']:.3f} "
              f"CPU ms/pair (views one image at a time: {row['views_per_image_cpu_ms_per_pair']:.3f})")
    results["load_average_after"] = os.getloadavg()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "data_throughput.md").write_text(markdown(results))
    print(f"wrote {args.out / 'data_throughput.md'}")


if __name__ == "__main__":
    main()
