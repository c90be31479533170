"""Data-loading throughput on the real NIH chest X-rays: decode + transforms, uncached vs cached, 1 and 2 workers.

Pipeline = the pretraining input path: ``LoadImaged(reader=MedicalImageReader)`` -> ``MedicalIntensityd`` ->
``Resized`` (area, cache size) -> ``EnsureTyped``
(deterministic, cacheable) -> ``byol_views_2d`` preset (two random 64 px views). Writes
``results/data_throughput.json`` and ``results/data_throughput.md`` (with the machine load at the time, since
other jobs may share the CPU).

    python scripts/benchmark_data.py [--limit 1000] [--epochs 2] [--batch-size 64] [--out results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import monai
import torch
from monai.data import DataLoader
from monai.transforms import Compose, EnsureTyped, Resized

from dissect_monai.data import RobustCacheDataset, RobustDataset, RobustPersistentDataset, dataset_datalist
from dissect_monai.transforms import load_image_transforms, load_transform_preset


def pipeline(cache_size: int) -> Compose:
    return Compose([
        *load_image_transforms("image"),
        Resized("image", spatial_size=(cache_size, cache_size), mode="area"),
        EnsureTyped("image", track_meta=False),
        load_transform_preset("byol_views_2d"),
    ])


def epoch_rate(dataset, workers: int, batch_size: int, epochs: int) -> dict:
    """Images/s of the fastest of ``epochs`` full passes (the first also starts the workers)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    rates, cpu_ms = [], []
    for _ in range(epochs):
        start, cpu_start, n = time.perf_counter(), time.process_time(), 0
        for batch in loader:
            n += batch["image"].shape[0]
        rates.append(n / (time.perf_counter() - start))
        cpu_ms.append(1000 * (time.process_time() - cpu_start) / n)
    result = {"images_per_s": max(rates), "epochs_images_per_s": rates, "images": n}
    if workers == 0:  # all work in this process: its CPU time per image does not depend on the machine's load
        result["cpu_ms_per_image"] = min(cpu_ms)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="images of the NIH set (all: 1000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cache-size", type=int, default=96)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)

    items = dataset_datalist("nih-cxr-pneumonia")[: args.limit]
    load_before = os.getloadavg()
    results: dict = {
        "dataset": "nih-cxr-pneumonia", "images": len(items), "batch_size": args.batch_size,
        "pipeline": f"LoadImaged(MedicalImageReader) -> MedicalIntensityd -> Resized({args.cache_size}, area) -> "
                    "EnsureTyped -> byol_views_2d (2x64 px)",
        "cpu_count": os.cpu_count(), "torch_threads": 1, "platform": platform.platform(),
        "monai": monai.__version__, "torch": torch.__version__, "runs": [],
    }

    loader = Compose(load_image_transforms("image"))
    start, cpu_start = time.perf_counter(), time.process_time()
    for item in items:
        loader({"image": item["image"]})
    decode_rate = len(items) / (time.perf_counter() - start)
    results["decode_only_images_per_s"] = decode_rate
    results["decode_only_cpu_ms_per_image"] = 1000 * (time.process_time() - cpu_start) / len(items)
    print(f"decode only (main process): {decode_rate:.0f} images/s, "
          f"{results['decode_only_cpu_ms_per_image']:.1f} CPU ms/image")

    transform = pipeline(args.cache_size)
    for workers in [0] + args.workers:
        run = {"mode": "uncached", "workers": workers,
               **epoch_rate(RobustDataset(items, transform), workers, args.batch_size, args.epochs)}
        results["runs"].append(run)
        print(f"uncached, {workers} workers: {run['images_per_s']:.0f} images/s")

    start = time.perf_counter()
    cached = RobustCacheDataset(items, transform, num_workers=2)
    results["cache_build_s"] = time.perf_counter() - start
    print(f"CacheDataset build (2 threads): {results['cache_build_s']:.1f} s")
    for workers in [0] + args.workers:
        run = {"mode": "memory cache", "workers": workers,
               **epoch_rate(cached, workers, args.batch_size, args.epochs)}
        results["runs"].append(run)
        print(f"memory cache, {workers} workers: {run['images_per_s']:.0f} images/s")

    with tempfile.TemporaryDirectory() as cache_dir:
        persistent = RobustPersistentDataset(items, transform, cache_dir=cache_dir)
        first = epoch_rate(persistent, 0, args.batch_size, 1)  # fills the disk cache
        for workers in args.workers:
            run = {"mode": "disk cache", "workers": workers,
                   **epoch_rate(persistent, workers, args.batch_size, args.epochs)}
            results["runs"].append(run)
            print(f"disk cache, {workers} workers: {run['images_per_s']:.0f} images/s")
        results["disk_cache_fill_images_per_s"] = first["images_per_s"]
    results["load_average_before"] = load_before
    results["load_average_after"] = os.getloadavg()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_throughput.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "data_throughput.md").write_text(markdown(results))
    print(f"wrote {args.out / 'data_throughput.md'}")


def markdown(r: dict) -> str:
    lines = [
        "# Data-loading throughput (NIH chest X-rays)",
        "",
        f"{r['images']} real 256x256 PNGs of `nih-cxr-pneumonia`; pipeline: {r['pipeline']}; batch {r['batch_size']};",
        f"images/s of the fastest of the epochs; torch threads 1 per process; {r['cpu_count']} CPU cores;",
        f"monai {r['monai']}, torch {r['torch']}. Produced by `python scripts/benchmark_data.py`.",
        "",
        f"Machine load average (1, 5, 15 min) before: {', '.join(f'{x:.1f}' for x in r['load_average_before'])};"
        f" after: {', '.join(f'{x:.1f}' for x in r['load_average_after'])} -- other jobs shared the 2 cores, so"
        " absolute numbers are lower bounds; the ratios between rows are the point.",
        "",
        f"- decode only (loading transforms, main process): **{r['decode_only_images_per_s']:.0f} images/s**"
        f" ({r['decode_only_cpu_ms_per_image']:.1f} CPU ms per image)",
        f"- building the memory cache (`RobustCacheDataset`, 2 threads): {r['cache_build_s']:.1f} s",
        f"- filling the disk cache (`RobustPersistentDataset`, first epoch): "
        f"{r['disk_cache_fill_images_per_s']:.0f} images/s",
        "",
        "| dataset | DataLoader workers | images/s | per epoch (images/s) | CPU ms per image |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for run in r["runs"]:
        per_epoch = ", ".join(f"{x:.0f}" for x in run["epochs_images_per_s"])
        cpu = f"{run['cpu_ms_per_image']:.1f}" if "cpu_ms_per_image" in run else "(in workers)"
        lines.append(f"| {run['mode']} | {run['workers']} | {run['images_per_s']:.0f} | {per_epoch} | {cpu} |")
    lines += [
        "",
        "Uncached = decode + all transforms every epoch; memory/disk cache = the deterministic part (decode, resize)",
        "done once, only the random views every epoch. Workers 0 = in the training process; its CPU ms per image",
        "is the cost independent of the load (one free core supplies 1000 / that many images/s).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
