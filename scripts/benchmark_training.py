"""Training throughput on CPU, ours against lightly's BYOL, in one run; writes results/training_throughput.{json,md}.

Three parts, interleaved where they can be:
- the step alone (two views already in memory): our DiSSECT and BYOL steps (``SSLIteration``) in fp32, bf16 +
  channels_last with oneDNN convolutions ("before") and with the GEMM convolutions chosen by timing ("after"),
  and lightly's documented BYOL step (``scripts/lightly_byol_worker.py`` in ``.venv-lightly``), in shuffled
  rounds of short bursts;
- one 3x3 convolution per ResNet-18 stage, forward + backward, oneDNN vs GEMM (GFLOP/s per core);
- the main job end to end: the pretraining bundle itself (``ConfigWorkflow``, its own ``train#preprocessing``
  and DataLoader, cache filled) for N iterations, next to lightly's own BYOL example pipeline (its transforms,
  its DataLoader, the same image files, size, batch and threads).

Usage: ``python scripts/benchmark_training.py --sizes 64 128 --batch 64 --rounds 5 --steps 2 --threads 2``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import dissect_monai
from dissect_monai.engines import throughput as tp
from dissect_monai.utils import machine_state

from repo_paths import PRETRAIN_BUNDLE, REPO, RESULTS, RUNS
LIGHTLY_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "lightly"]
# variant name -> (precision mode, GEMM convolutions allowed)
PRECISIONS = {"fp32": ("fp32", False), "bf16-onednn": ("bf16", False), "bf16-gemm": ("bf16", True)}


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


class LightlyWorker:
    """``scripts/lightly_byol_worker.py`` in its own venv, answering one request per line."""

    def __init__(self, python: Path, views_file: Path, args: argparse.Namespace) -> None:
        cmd = [str(python), str(REPO / "scripts" / "lightly_byol_worker.py"), str(views_file),
               "--threads", str(args.threads), "--hidden", str(args.hidden), "--projection", str(args.projection),
               "--lr", str(args.lr)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.versions = self.ask(None)

    def ask(self, request: dict | None):
        if request is not None:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"lightly worker exited with code {self.proc.wait()}")
        return json.loads(line)

    def steps(self, size: int, steps: int, threads: int) -> list[dict]:
        return [{**s, "core_share": s["cpu_seconds"] / (s["seconds"] * threads)}
                for s in self.ask({"step": size, "steps": steps})]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def end_to_end(size: int, args: argparse.Namespace, worker: LightlyWorker | None) -> dict:
    """The pretraining bundle (DiSSECT and its BYOL control) and lightly's BYOL example pipeline at ``size`` px."""
    out = {}
    for method in ("dissect", "byol"):
        overrides = {"image_size": size, "quantizer": method == "dissect", "num_threads": args.threads}
        if args.num_workers is not None:
            overrides["num_workers"] = args.num_workers
        out[f"bundle_{method}"] = r = tp.bundle_end_to_end(PRETRAIN_BUNDLE, args.iterations,
                                                           args.warmup_iterations, args.batch, overrides)
        print(f"end to end {method} at {size} px: {r['pairs_per_second']:.1f} pairs/s", flush=True)
    if worker:
        r = worker.ask({"pipeline": size, "files": out["bundle_dissect"]["images"], "batch": args.batch,
                        "iterations": args.iterations, "warmup": args.warmup_iterations,
                        "num_workers": out["bundle_dissect"]["num_workers"]})
        out["lightly_byol"] = {"seconds_per_iteration": r["seconds"] / args.iterations,
                               "pairs_per_second": args.batch * args.iterations / r["seconds"],
                               "main_cpu_seconds_per_iteration": r["cpu_seconds"] / args.iterations,
                               "num_workers": out["bundle_dissect"]["num_workers"]}
    for r in out.values():
        r.pop("images", None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=64, help="pairs per step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per measurement burst")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps per variant and size")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, for every variant")
    parser.add_argument("--iterations", type=int, default=10, help="measured iterations of each end-to-end run")
    parser.add_argument("--warmup-iterations", type=int, default=2)
    parser.add_argument("--e2e-sizes", type=int, nargs="*", default=[64], help="sizes of the end-to-end runs")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the bundle's)")
    parser.add_argument("--hidden", type=int, default=4096, help="hidden width of projector/predictor")
    parser.add_argument("--projection", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--lightly-venv", type=Path, default=REPO / ".venv-lightly")
    parser.add_argument("--skip-lightly", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "training_throughput")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine_before = machine_state()
    views = tp.real_view_pairs(args.sizes, args.batch)
    views_file = RUNS / "benchmark_training_views.pt"
    views_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(views, views_file)
    variants = {f"{m}/{p}": tp.ssl_step(m, *PRECISIONS[p], args.hidden, args.projection, args.lr)
                for m in ("dissect", "byol") for p in PRECISIONS}
    worker = None if args.skip_lightly else LightlyWorker(ensure_lightly_venv(args.lightly_venv), views_file, args)

    def run(name: str, size: int, steps: int) -> list[dict]:
        if name == "lightly_byol/fp32":
            return worker.steps(size, steps, args.threads)
        return tp.timed_calls(lambda: variants[name](*views[str(size)]), steps, args.threads)

    names = list(variants) + (["lightly_byol/fp32"] if worker else [])
    for name in names:  # warm-up: oneDNN primitives, GEMM-or-oneDNN timing, allocator, first touch
        for size in args.sizes:
            run(name, size, args.warmup)
    samples = {f"{n}@{s}": [] for n in names for s in args.sizes}
    loads, order_rng = [], random.Random(0)
    for r in range(args.rounds):
        order = [(n, s) for n in names for s in args.sizes]
        order_rng.shuffle(order)
        for name, size in order:
            loads.append(os.getloadavg()[0])
            samples[f"{name}@{size}"].extend(run(name, size, args.steps))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    results = {k: tp.summarise(v, args.batch) for k, v in samples.items()}
    conv = {str(s): tp.conv_layer_table(s, 2 * args.batch, args.threads) for s in args.sizes}
    e2e = {str(s): end_to_end(s, args, worker) for s in args.e2e_sizes}
    if worker:
        worker.close()

    def ratio(num: str, den: str, key: str = "median_seconds_per_step") -> float:
        return results[num][key] / results[den][key]

    ratios, targets = {}, {}
    for s in args.sizes:
        for m in ("dissect", "byol"):
            ratios[f"{m}: fp32 / bf16-gemm time @{s}"] = ratio(f"{m}/fp32@{s}", f"{m}/bf16-gemm@{s}")
            ratios[f"{m}: bf16-onednn / bf16-gemm time @{s}"] = ratio(f"{m}/bf16-onednn@{s}", f"{m}/bf16-gemm@{s}")
            if worker:
                ratios[f"lightly / our {m} step time @{s}"] = ratio(f"lightly_byol/fp32@{s}", f"{m}/bf16-gemm@{s}")
        ratios[f"DiSSECT / BYOL step time @{s}"] = ratio(f"dissect/bf16-gemm@{s}", f"byol/bf16-gemm@{s}")
        targets[f"DiSSECT <= 1.10x BYOL step time @{s}"] = ratios[f"DiSSECT / BYOL step time @{s}"] <= 1.10
        if worker:
            targets[f"our DiSSECT step >= 2.5x lightly's BYOL step @{s}"] = (
                ratios[f"lightly / our dissect step time @{s}"] >= 2.5)
    for s, runs in e2e.items():
        if s in map(str, args.sizes):  # the bundle against its own step with the views already in memory
            for m in ("dissect", "byol"):
                bundle, step_only = runs[f"bundle_{m}"], results[f"{m}/bf16-gemm@{s}"]
                ratios[f"end to end / step only: our {m} pairs/s @{s}"] = (
                    bundle["pairs_per_second"] / step_only["pairs_per_second"])
            targets[f"DiSSECT bundle end to end >= 90% of its step only @{s}"] = (
                ratios[f"end to end / step only: our dissect pairs/s @{s}"] >= 0.90)
        if "lightly_byol" in runs:
            key = f"end to end: our DiSSECT bundle / lightly's pipeline pairs/s @{s}"
            ratios[key] = runs["bundle_dissect"]["pairs_per_second"] / runs["lightly_byol"]["pairs_per_second"]
            targets[f"end to end DiSSECT >= 2.5x lightly @{s}"] = ratios[key] >= 2.5
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {"torch": torch.__version__, "dissect_monai": dissect_monai.__version__,
                        "lightly_worker": worker.versions if worker else None},
        "machine_before": machine_before, "machine_after": machine_state(),
        "load_average_1min_during_steps": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "steps": results, "ratios": ratios, "targets_met": targets, "conv3x3_per_stage": conv, "end_to_end": e2e,
        "code_search_cpu_seconds_per_step": {str(s): tp.code_search_seconds(s, args.batch, args.threads)
                                             for s in args.sizes},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report, args))
    print(args.out.with_suffix(".md").read_text())


def markdown(report: dict, args: argparse.Namespace) -> str:
    before, after, load = report["machine_before"], report["machine_after"], report["load_average_1min_during_steps"]
    lw = report["environment"]["lightly_worker"]

    def avg(machine: dict) -> str:
        return " / ".join(f"{v:.2f}" for v in machine["load_average"])

    lines = [
        "# Training throughput (CPU)", "",
        f"`python scripts/benchmark_training.py {' '.join(sys.argv[1:])}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {before['cpu']}, {before['cpu_count']} cores, "
        f"native bf16: {before['bf16']}, **AMX: {before['amx']}**; torch {report['environment']['torch']}; "
        f"{args.threads} thread(s); batch {args.batch} pairs of views of real chest X-rays."
        + (f" lightly {lw['lightly']} (torch {lw['torch']}, torchvision {lw['torchvision']}) in its own venv."
           if lw else ""),
        "",
        f"Load average (1 / 5 / 15 min) before: {avg(before)}; during the step rounds (1 min): {load['min']:.2f} - "
        f"{load['max']:.2f} (median {load['median']:.2f}); after: {avg(after)}.", "",
        f"## The step alone ({args.rounds} shuffled rounds of {args.steps} step(s))", "",
        "| variant | px | pairs/s (wall) | median s/step | pairs per CPU-s | CPU s range | core share |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for key, r in sorted(report["steps"].items(), key=lambda kv: (int(kv[0].split("@")[1]), kv[0])):
        name, size = key.split("@")
        low, high = r["cpu_seconds_range"]
        lines.append(f"| {name} | {size} | {r['pairs_per_second']:.1f} | {r['median_seconds_per_step']:.3f} | "
                     f"{r['pairs_per_cpu_second']:.1f} | {low:.3f} - {high:.3f} | {r['median_core_share']:.2f} |")
    lines += ["", "| ratio (wall) | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.2f} |" for k, v in report["ratios"].items()]
    lines += ["", "## One 3x3 convolution per ResNet-18 stage, forward + backward, bf16 channels_last", "",
              "GFLOP/s per core from CPU time; batch = both views; 'after' = the path picked by timing at first use.",
              "", "| px | map | channels | batch | before: oneDNN | GEMM path | picked | after |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for size, rows in report["conv3x3_per_stage"].items():
        lines += [f"| {size} | {r['map']} | {r['channels']} | {r['batch']} | {r['onednn_gflops']:.0f} | "
                  f"{r['gemm_gflops']:.0f} | {r['picked']} | {r['after_gflops']:.0f} |" for r in rows]
    lines += ["", f"## The main job end to end ({args.iterations} iterations after {args.warmup_iterations} warm-up)",
              "", "Data loading and views included, cache filled; bundle_* = bundles/dissect_cxr_pretrain through "
              "ConfigWorkflow, lightly_byol = lightly's BYOL example pipeline on the same image files.", "",
              "| px | pipeline | pairs/s (wall) | s/iteration | main-process CPU s/iteration | DataLoader workers |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for size, runs in report["end_to_end"].items():
        lines += [f"| {size} | {name} | {r['pairs_per_second']:.1f} | {r['seconds_per_iteration']:.3f} | "
                  f"{r['main_cpu_seconds_per_iteration']:.3f} | {r['num_workers']} |" for name, r in runs.items()]
    search = report["code_search_cpu_seconds_per_step"]
    lines += ["", "fp32 nearest-code search alone (CPU s/step, online + target, c2-c4): "
              + ", ".join(f"{s} px {v:.3f}" for s, v in search.items()), "", "Targets:", ""]
    lines += [f"- {k}: {'met' if ok else 'NOT met'}" for k, ok in report["targets_met"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
