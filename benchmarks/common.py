"""Shared benchmark plumbing: timing, tables, JSON. Every benchmark measures ampkit and the
torch-native baseline side by side in one run and reports ratios; absolute numbers only mean
something on the GPU machine."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

from targets import evaluate, format_result

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "python")


def load_example(name: str):
    """An example's module (examples/python/<name>.py), loaded from its file, for its models and data."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke test)")
    p.add_argument("--repeats", type=int, default=None)
    return p


def time_fn(fn: Callable[[], object], device: str, repeats: int, warmup: int = 3) -> float:
    """Median seconds per call. CUDA: events around each call; CPU: perf_counter."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "device": device, "machine": platform.machine(), "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def run_label(args, target_devices: tuple[str, ...] = ("cuda",)) -> str:
    """How far a run's figures are from the ones its targets are defined for (by default the GPU at
    full size)."""
    notes = []
    if str(args.device).split(":")[0] not in target_devices:
        notes.append(f"{args.device}: targets are for {'/'.join(target_devices)}")
    if getattr(args, "quick", False):
        notes.append("quick sizes")
    return "; ".join(notes)


def report(title: str, rows: list[dict], columns: list[str], args, extra: dict | None = None,
           targets: list[dict] | None = None, target_devices: tuple[str, ...] = ("cuda",)) -> None:
    """Prints the table and each target's verdict (benchmarks/targets.py); writes the JSON with the
    rows, the targets and their verdicts, so the GPU run's summary can judge the run by itself."""
    print(f"\n{title}  ({environment(args.device)})")
    widths = [max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(f"{r.get(c, '')}".ljust(w) for c, w in zip(columns, widths)))
    benchmark = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    checks = evaluate(rows, targets or [])
    label = run_label(args, target_devices)
    for check in checks:
        print(format_result(benchmark, check, label))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"benchmark": benchmark, "title": title, "environment": environment(args.device),
                       "args": {k: v for k, v in vars(args).items() if k != "json"}, "label": label,
                       "rows": rows, **(extra or {}), "targets": targets or [], "checks": checks},
                      handle, indent=2)
