"""Training-step throughput: DiSSECT vs BYOL, fp32 NCHW vs bf16 + channels_last, and lightly's BYOL step.

Writes ``results/training_throughput.json`` and ``results/training_throughput.md``.

What is timed is one full optimisation step on a batch of two views already in memory: for our models the
project's own step (:class:`dissect_monai.engines.SSLIteration`: autocast forward of both views through
online and target networks, backward, gradient norm, SGD step, EMA target update); for lightly the BYOL
step of lightly's documentation (``BYOLProjectionHead`` / ``BYOLPredictionHead``, ``update_momentum``,
``NegativeCosineSimilarity``, one forward per view, fp32 NCHW as lightly runs by default), on the same
1-channel ResNet-18 architecture (torchvision's, as a lightly user builds it), same head sizes, batch,
images and optimiser. lightly needs torchvision, which the main environment must not have, so it runs in
its own virtual environment (created here on first use, ``.venv-lightly``) as a worker process that
this script drives line by line, so every variant is measured interleaved with the others in one run.

The machine has 2 cores shared with other work: each variant is measured in short bursts of ``--steps``
steps, repeated for ``--rounds`` rounds in a shuffled order, and the Markdown reports medians, the spread,
the load average and the share of the 2 cores each measured step actually got (process CPU time / wall
time / threads).

Usage: ``python scripts/benchmark_training.py [--sizes 64 128] [--batch 32] [--rounds 5] [--steps 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
LIGHTLY_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "lightly"]


# --------------------------------------------------------------------------------------------------------------
# timing helpers shared by the main process and the lightly worker (standard library + torch only)
# --------------------------------------------------------------------------------------------------------------
def _time_steps(step, steps: int, threads: int) -> list[dict]:
    """Run ``step()`` ``steps`` times; per step the wall seconds, CPU seconds and share of ``threads`` cores used."""
    out = []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        out.append({"seconds": wall, "cpu_seconds": cpu, "core_share": cpu / (wall * threads)})
    return out


# --------------------------------------------------------------------------------------------------------------
# the lightly worker (runs inside .venv-lightly; imports torch, torchvision and lightly only)
# --------------------------------------------------------------------------------------------------------------
def lightly_worker(views_file: str, threads: int, hidden: int, projection: int, lr: float) -> None:
    """Serve ``{"size": S, "steps": N}`` lines on stdin with timing lines on stdout."""
    import copy

    import lightly
    import torch
    import torchvision
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class LightlyBYOL(nn.Module):
        """lightly's documented BYOL model."""

        def __init__(self) -> None:
            super().__init__()
            resnet = torchvision.models.resnet18()
            resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            resnet.fc = nn.Identity()
            self.backbone = resnet
            self.projection_head = BYOLProjectionHead(512, hidden, projection)
            self.prediction_head = BYOLPredictionHead(projection, hidden, projection)
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
            deactivate_requires_grad(self.backbone_momentum)
            deactivate_requires_grad(self.projection_head_momentum)

        def forward(self, x):
            return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

        def forward_momentum(self, x):
            return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    model = LightlyBYOL()
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    views = torch.load(views_file, weights_only=True)
    counter = {"step": 0}

    def step(x0, x1):
        m = cosine_schedule(counter["step"], 1000, 0.996, 1)
        update_momentum(model.backbone, model.backbone_momentum, m=m)
        update_momentum(model.projection_head, model.projection_head_momentum, m=m)
        p0 = model(x0)
        z0 = model.forward_momentum(x0)
        p1 = model(x1)
        z1 = model.forward_momentum(x1)
        loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        counter["step"] += 1

    model.train()
    print(json.dumps({"ready": True, "torch": torch.__version__, "torchvision": torchvision.__version__,
                      "lightly": lightly.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        x0, x1 = views[str(request["size"])]
        result = _time_steps(lambda: step(x0, x1), int(request["steps"]), threads)
        print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------------------------
# main process
# --------------------------------------------------------------------------------------------------------------
def ensure_lightly_venv(venv: Path) -> Path:
    """Create ``venv`` with torch, torchvision and lightly unless it already imports them; return its python."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import torch, torchvision, lightly"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with {' '.join(LIGHTLY_REQUIREMENTS)} (a few minutes, once)", flush=True)
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *LIGHTLY_REQUIREMENTS], check=True)
    subprocess.run(check, check=True)
    return python


def real_views(sizes: list[int], batch: int, seed: int = 0) -> dict[str, tuple]:
    """Two augmented views (random resized crop + flip) of ``batch`` real NIH chest X-rays at each size."""
    import numpy as np
    import torch
    from PIL import Image

    from dissect_monai.data import default_data_root

    data = default_data_root() / "nih-cxr-pneumonia"
    lines = (data / "labels.csv").read_text().splitlines()[1:]
    names = [line.split(",", 1)[0] for line in lines if line.rstrip().endswith(",train")][:batch]
    if len(names) < batch:
        raise SystemExit(f"only {len(names)} NIH train images under {data}, need {batch}")
    rng = random.Random(seed)
    views = {}
    for size in sizes:
        pair = []
        for _ in range(2):
            crops = []
            for name in names:
                with Image.open(data / name) as im:
                    im = im.convert("L")
                    w, h = im.size
                    side = int(min(w, h) * rng.uniform(0.6, 1.0))
                    x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
                    crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
                    if rng.random() < 0.5:
                        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                crops.append(np.asarray(crop, dtype=np.float32) / 255.0)
            pair.append(torch.from_numpy(np.stack(crops)[:, None]).contiguous())
        views[str(size)] = tuple(pair)
    return views


def build_ours(method: str, precision: str, hidden: int, projection: int, lr: float):
    """Our model (``dissect`` or ``byol``), its optimiser and the project's SSL step under ``precision``."""
    import torch

    from dissect_monai.engines import SSLIteration
    from dissect_monai.networks import DiSSECT
    from dissect_monai.utils.precision import prepare_module, resolve_precision

    torch.manual_seed(0)
    policy = resolve_precision(precision, "cpu")
    model = DiSSECT(depth=18, use_quantizer=(method == "dissect"), hidden_dim=hidden, projection_dim=projection)
    model = prepare_module(model, "cpu", policy)
    optimizer = torch.optim.SGD(model.online_parameters(), lr=lr, momentum=0.9)
    iteration = SSLIteration(precision=policy)
    engine = SimpleNamespace(
        network=model, optimizer=optimizer, non_blocking=False, optim_set_to_none=True,
        state=SimpleNamespace(device=torch.device("cpu"), iteration=0, epoch=1, max_epochs=1, epoch_length=1000),
    )

    def step(v1, v2):
        engine.state.iteration += 1
        iteration(engine, {"image": v1, "image_2": v2})

    return step


class LightlyWorker:
    """The lightly worker process in its own venv."""

    def __init__(self, python: Path, views_file: Path, args) -> None:
        cmd = [str(python), str(Path(__file__).resolve()), "--lightly-worker", str(views_file),
               "--threads", str(args.threads), "--hidden", str(args.hidden), "--projection", str(args.projection),
               "--lr", str(args.lr)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.versions = json.loads(self._read())

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"lightly worker exited with code {self.proc.wait()}")
        return line

    def measure(self, size: int, steps: int) -> list[dict]:
        self.proc.stdin.write(json.dumps({"size": size, "steps": steps}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def conv_peak(threads: int, reps: int = 5) -> dict:
    """GFLOP/s of one 3x3 convolution (forward + backward, 64 x 256 x 16 x 16) in fp32 NCHW and bf16 channels_last.

    Shows the ceiling of the bf16 speed-up on this CPU, independent of the models.
    """
    import torch

    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False)
    x = torch.randn(64, 256, 16, 16)
    flops = 3 * 2 * 64 * 16 * 16 * 256 * 256 * 9
    out = {}
    for mode in ("fp32_nchw", "bf16_channels_last"):
        fmt = torch.channels_last if mode.startswith("bf16") else torch.contiguous_format
        c, xi = conv.to(memory_format=fmt), x.contiguous(memory_format=fmt).requires_grad_()

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.startswith("bf16")):
                y = c(xi)
            y.float().sum().backward()

        step()
        times = [s["cpu_seconds"] for s in _time_steps(step, reps, threads)]
        out[mode] = flops / statistics.median(times) / 1e9 / threads
    out["ratio"] = out["bf16_channels_last"] / out["fp32_nchw"]
    return out


def quantizer_cost(size: int, batch: int, threads: int, reps: int = 3) -> float:
    """CPU seconds per step of DiSSECT's quantizer alone under bf16 autocast + channels_last.

    Online quantisation of both views (projection, fp32 code search, EMA update, commitment, backward)
    plus the target's quantisation (no gradient), on maps of the shapes ResNet-18 gives at ``size`` px.
    """
    import torch

    from dissect_monai.networks import MultiScaleQuantizer

    torch.manual_seed(0)
    quantizer = MultiScaleQuantizer([64, 128, 256]).train().to(memory_format=torch.channels_last)
    maps = [
        torch.randn(2 * batch, c, size // s, size // s).contiguous(memory_format=torch.channels_last).requires_grad_()
        for c, s in ((64, 4), (128, 8), (256, 16))
    ]

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            quantised, loss, _ = quantizer.quantize(quantizer.project(maps), update=True)
            with torch.no_grad():
                quantizer.quantize(quantizer.project([m.detach() for m in maps]), update=False)
        (sum(q.mean() for q in quantised) + loss).backward()

    step()
    return statistics.median(x["cpu_seconds"] for x in _time_steps(step, reps, threads))


def search_cost(size: int, batch: int, threads: int, reps: int = 3) -> float:
    """CPU seconds per step of the fp32 nearest-code search alone (online and target, c2-c4, 512 x 64 codes).

    The part of the quantizer's cost that the method fixes: every position of both views is compared with
    every code in fp32, once for the online and once for the target network.
    """
    import torch
    import torch.nn.functional as F

    from dissect_monai.networks import EMACodebook

    torch.manual_seed(0)
    codebook = EMACodebook(512, 64)
    rows = [F.normalize(torch.randn(2 * batch * (size // s) ** 2, 64), dim=1) for s in (4, 8, 16)]

    def step():
        for _ in ("online", "target"):
            for z in rows:
                codebook.assign(z)

    step()
    return statistics.median(x["cpu_seconds"] for x in _time_steps(step, reps, threads))


def thread_check(step, views: tuple, threads: int, steps: int = 2) -> dict:
    """CPU and wall seconds of ``step`` with ``threads`` intra-op threads (then back to the benchmark's count)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step(*views)
        result = _time_steps(lambda: step(*views), steps, threads)
    finally:
        torch.set_num_threads(previous)
    return {"threads": threads, "wall_seconds": statistics.median(r["seconds"] for r in result),
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in result)}


def summarise(samples: list[dict], batch: int) -> dict:
    secs = sorted(s["seconds"] for s in samples)
    cpu = sorted(s["cpu_seconds"] for s in samples)
    return {
        "median_cpu_seconds_per_step": statistics.median(cpu),
        "cpu_seconds_range": [cpu[0], cpu[-1]],
        "images_per_cpu_second": batch / statistics.median(cpu),
        "median_seconds_per_step": statistics.median(secs),
        "images_per_second": batch / statistics.median(secs),
        "median_core_share": statistics.median(s["core_share"] for s in samples),
        "steps_measured": len(secs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="steps per measurement burst")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps per variant and size")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: with other jobs on the 2 cores, 2 OpenMP threads stall each other)")
    parser.add_argument("--hidden", type=int, default=4096, help="hidden width of projector/predictor")
    parser.add_argument("--projection", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--lightly-venv", type=Path, default=REPO / ".venv-lightly")
    parser.add_argument("--skip-lightly", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "training_throughput")
    parser.add_argument("--lightly-worker", metavar="VIEWS_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lightly_worker:
        lightly_worker(args.lightly_worker, args.threads, args.hidden, args.projection, args.lr)
        return

    import torch

    import dissect_monai
    from dissect_monai.utils.precision import cpu_supports_bf16

    torch.set_num_threads(args.threads)
    views = real_views(args.sizes, args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    views_file = REPO / "runs" / "benchmark_training_views.pt"
    views_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(views, views_file)

    variants: dict[str, object] = {}
    for method in ("dissect", "byol"):
        for precision in ("fp32", "bf16"):
            step = build_ours(method, precision, args.hidden, args.projection, args.lr)
            variants[f"{method}/{precision}"] = step
    worker = None
    if not args.skip_lightly:
        worker = LightlyWorker(ensure_lightly_venv(args.lightly_venv), views_file, args)

    def run(name: str, size: int, steps: int) -> list[dict]:
        if name == "lightly_byol/fp32":
            return worker.measure(size, steps)
        v1, v2 = views[str(size)]
        return _time_steps(lambda: variants[name](v1, v2), steps, args.threads)

    names = list(variants) + (["lightly_byol/fp32"] if worker else [])
    for name in names:  # warm-up: oneDNN primitives, allocator, first-touch of the codebooks
        for size in args.sizes:
            run(name, size, args.warmup)
            print(f"warmed up {name} at {size} px", flush=True)

    samples: dict[str, list[dict]] = {f"{n}@{s}": [] for n in names for s in args.sizes}
    per_round: list[dict[str, float]] = []
    loads = []
    order_rng = random.Random(0)
    for r in range(args.rounds):
        order = [(n, s) for n in names for s in args.sizes]
        order_rng.shuffle(order)
        medians = {}
        for name, size in order:
            loads.append(os.getloadavg()[0])
            result = run(name, size, args.steps)
            samples[f"{name}@{size}"].extend(result)
            medians[f"{name}@{size}"] = statistics.median(x["cpu_seconds"] for x in result)
        per_round.append(medians)
        print(f"round {r + 1}/{args.rounds} (CPU s/step): "
              + ", ".join(f"{k} {v:.3f}" for k, v in sorted(medians.items())),
              flush=True)
    if worker:
        worker.close()
    conv = conv_peak(args.threads)
    quantizer_seconds = {str(size): quantizer_cost(size, args.batch, args.threads) for size in args.sizes}
    search_seconds = {str(size): search_cost(size, args.batch, args.threads) for size in args.sizes}
    small = str(min(args.sizes))
    threads_effect = [thread_check(variants["byol/bf16"], views[small], n) for n in sorted({args.threads, 2})]

    summary = {k: summarise(v, args.batch) for k, v in samples.items()}

    def ratio(num: str, den: str) -> dict:
        """CPU-time ratio num/den (overall medians, range over the interleaved rounds) and the wall-time ratio."""
        rounds = [rd[num] / rd[den] for rd in per_round]
        return {
            "ratio": summary[num]["median_cpu_seconds_per_step"] / summary[den]["median_cpu_seconds_per_step"],
            "per_round_min": min(rounds),
            "per_round_max": max(rounds),
            "wall_ratio": summary[num]["median_seconds_per_step"] / summary[den]["median_seconds_per_step"],
        }

    ratios = {}
    for size in args.sizes:
        for method in ("dissect", "byol"):
            ratios[f"bf16_speedup/{method}@{size}"] = ratio(f"{method}/fp32@{size}", f"{method}/bf16@{size}")
        for precision in ("fp32", "bf16"):
            ratios[f"dissect_over_byol_time/{precision}@{size}"] = ratio(f"dissect/{precision}@{size}",
                                                                         f"byol/{precision}@{size}")
        if worker:
            for ours in ("byol/bf16", "dissect/bf16", "byol/fp32"):
                ratios[f"lightly_over_ours_time/{ours}@{size}"] = ratio(f"lightly_byol/fp32@{size}", f"{ours}@{size}")

    targets = {}
    for size in args.sizes:
        targets[f"bf16 >= 3x fp32 (DiSSECT, {size} px)"] = ratios[f"bf16_speedup/dissect@{size}"]["ratio"] >= 3.0
        targets[f"bf16 >= 3x fp32 (BYOL, {size} px)"] = ratios[f"bf16_speedup/byol@{size}"]["ratio"] >= 3.0
        targets[f"DiSSECT <= 1.15x BYOL time (bf16, {size} px)"] = (
            ratios[f"dissect_over_byol_time/bf16@{size}"]["ratio"] <= 1.15)
        if worker:
            targets[f"our BYOL step >= 3x lightly's (bf16, {size} px)"] = (
                ratios[f"lightly_over_ours_time/byol/bf16@{size}"]["ratio"] >= 3.0)
            targets[f"our DiSSECT step >= 3x lightly's BYOL (bf16, {size} px)"] = (
                ratios[f"lightly_over_ours_time/dissect/bf16@{size}"]["ratio"] >= 3.0)

    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "lightly_worker"},
        "backbone": "ResNet-18, 1 input channel, stride-2 stem + max-pool; projector 512-{h}-{p}, predictor {p}-{h}-{p}"
        .format(h=args.hidden, p=args.projection),
        "dissect": "scales c2, c3, c4; 512 codes x 64 dims each; commitment 0.25; EMA 0.99",
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__, "dissect_monai": dissect_monai.__version__,
            "cpu_bf16": cpu_supports_bf16(), "cpu_count": os.cpu_count(), "threads": args.threads,
            "lightly_worker": worker.versions if worker else None,
        },
        "load_average_1min": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "conv3x3_gflops_per_core": conv,
        "quantizer_cpu_seconds_per_step": quantizer_seconds,
        "code_search_cpu_seconds_per_step": search_seconds,
        "thread_check_byol_bf16": {"size": int(small), "runs": threads_effect},
        "results": summary,
        "ratios": ratios,
        "targets_met": targets,
        "per_round_median_cpu_seconds": per_round,
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report, args))
    print(args.out.with_suffix(".md").read_text())


def markdown(report: dict, args) -> str:
    env = report["environment"]
    lw = env["lightly_worker"]
    lines = [
        "# Training-step throughput (CPU)",
        "",
        f"Generated by `scripts/benchmark_training.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"One optimisation step on a batch of {args.batch} pairs of views of real NIH chest X-rays "
        f"(both views through online and target networks, backward, SGD, EMA update). Backbone: {report['backbone']}. "
        f"DiSSECT: {report['dissect']}.",
        "",
        f"Environment: Python {env['python']}, torch {env['torch']} (ours), {env['threads']} threads, "
        f"CPU native bf16: {env['cpu_bf16']}."
        + (f" lightly {lw['lightly']} with torch {lw['torch']} / torchvision {lw['torchvision']} in its own venv."
           if lw else " lightly: not measured (--skip-lightly)."),
        "",
        f"Load: the machine's 2 cores were shared with other jobs; 1-min load average during the run "
        f"{report['load_average_1min']['min']:.1f} - {report['load_average_1min']['max']:.1f} "
        f"(median {report['load_average_1min']['median']:.1f}). Variants were measured interleaved in "
        f"{args.rounds} shuffled rounds of {args.steps} step(s) after {args.warmup} warm-up step(s). With the cores "
        "this contended, wall time mostly measures the other jobs, so the primary figure is CPU time per step "
        "(process CPU seconds; 'images per CPU-second' = throughput with one core to itself per thread); "
        "'core share' = CPU time / wall time / threads is the fraction of the cores the step actually got.",
        "",
        "| variant | px | images per CPU-s | median CPU s/step | CPU s range | wall images/s | core share |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in sorted(report["results"].items(), key=lambda kv: (int(kv[0].split("@")[1]), kv[0])):
        name, size = key.split("@")
        lines.append(f"| {name} | {size} | {r['images_per_cpu_second']:.1f} | {r['median_cpu_seconds_per_step']:.3f} | "
                     f"{r['cpu_seconds_range'][0]:.3f} - {r['cpu_seconds_range'][1]:.3f} | "
                     f"{r['images_per_second']:.2f} | {r['median_core_share']:.2f} |")
    lines += ["", "| ratio (CPU time) | value | range over rounds | wall-time ratio |", "| --- | --- | --- | --- |"]
    for key, r in report["ratios"].items():
        lines.append(f"| {key} | {r['ratio']:.2f} | {r['per_round_min']:.2f} - {r['per_round_max']:.2f} | "
                     f"{r['wall_ratio']:.2f} |")
    conv = report["conv3x3_gflops_per_core"]
    lines += [
        "",
        f"Ceiling of bf16 on this CPU: one 3x3 convolution (64 x 256 x 16 x 16, forward + backward) runs at "
        f"{conv['fp32_nchw']:.0f} GFLOP/s per core in fp32 NCHW and {conv['bf16_channels_last']:.0f} in bf16 "
        f"channels_last (x{conv['ratio']:.1f}; CPU time, so independent of the load).",
    ]
    for size, q in report["quantizer_cpu_seconds_per_step"].items():
        byol = report["results"][f"byol/bf16@{size}"]["median_cpu_seconds_per_step"]
        extra = report["results"][f"dissect/bf16@{size}"]["median_cpu_seconds_per_step"] - byol
        search = report["code_search_cpu_seconds_per_step"][size]
        lines.append(
            f"\nDiSSECT's extra cost at {size} px (bf16): {extra:.3f} CPU s/step over BYOL (1.15x would leave "
            f"{0.15 * byol:.3f}); the quantizer alone (online quantisation of both views with backward and EMA "
            f"update, plus the target's, fp32 code search over all c2-c4 positions) takes {q:.3f} CPU s/step when "
            f"timed on its own, of which the fp32 nearest-code search alone (online and target) takes {search:.3f}."
        )
    check = report["thread_check_byol_bf16"]
    lines.append(
        f"\nThreads under this load (byol/bf16 at {check['size']} px): "
        + "; ".join(f"{r['threads']} thread(s): {r['wall_seconds']:.2f} s wall, {r['cpu_seconds']:.2f} CPU s per step"
                    for r in check["runs"])
        + ". With more runnable jobs than cores, OpenMP threads wait for each other, hence the benchmark's 1 thread."
    )
    lines += ["", "Targets:", ""]
    for key, ok in report["targets_met"].items():
        lines.append(f"- {key}: {'met' if ok else 'NOT met'}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
