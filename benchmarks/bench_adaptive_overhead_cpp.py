"""Step time of a torch:: C++ loop with ampkit::AdaptivePrecision vs plain AMP, side by side in one run.

Runs the C++ program benchmarks/cpp/bench_adaptive_overhead.cpp (built with the project: found in
$AMPKIT_BUILD_DIR or build/main) and reports its figures: a digits-sized MLP, fp16 autocast on the
CPU, GradScaler + ampkit::optim::AdamW, every Linear wrapped by the controller, a logging point
(update()) every `log_every` steps; the variants interleaved, best of `samples` samples each.

  plain     AutocastGuard(policy) around the forward
  adaptive  adaptive.region() + after_backward(loss) + update() (default: blame after a non-finite step)
  always    BlameMode::kAlways: flags on every step (what a window with non-finite steps costs)

`ratio` = adaptive / plain seconds per step; target <= 1.03.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from common import parser, report
from targets import no_target, target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_program() -> str:
    build = os.environ.get("AMPKIT_BUILD_DIR") or os.path.join(ROOT, "build", "main")
    path = os.path.join(build, "benchmarks", "cpp", "bench_adaptive_overhead")
    if not os.path.exists(path):
        sys.exit(f"bench_adaptive_overhead_cpp: {path} does not exist: build the project first (scripts/build.sh)")
    return path


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: less noise)")
    p.add_argument("--log-every", type=int, default=20)
    args = p.parse_args()
    if args.device != "cpu":
        args.device = "cpu"  # the C++ loop runs on the CPU: its figure is the controller's host cost
    torch.set_num_threads(args.threads)  # so the report's environment names the program's thread count
    command = [find_program(), "--threads", str(args.threads), "--log-every", str(args.log_every)]
    if args.quick:
        command.append("--quick")
    if args.repeats:
        command += ["--samples", str(args.repeats)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in output.splitlines():
        figures = json.loads(line)
        plain, adaptive, always = figures["plain_s"], figures["adaptive_s"], figures["always_s"]
        rows.append({"model": f"C++ MLP 64-256-256-10, batch {figures['batch']}",
                     "plain_ms": round(plain * 1e3, 4), "adaptive_ms": round(adaptive * 1e3, 4),
                     "overhead_us": round((adaptive - plain) * 1e6, 2), "ratio": round(adaptive / plain, 4),
                     "always_ms": round(always * 1e3, 4), "always_ratio": round(always / plain, 4)})
        samples = figures["samples"]
    report(f"C++ adaptive precision step overhead (fp16, {args.threads} thread(s), best of {samples} samples of "
           f"{args.log_every} steps, a logging point per sample)", rows,
           ["model", "plain_ms", "adaptive_ms", "overhead_us", "ratio", "always_ms", "always_ratio"], args,
           extra={"log_every": args.log_every, "samples": samples},
           targets=[target("C++ adaptive step time vs plain AMP", "ratio", "<=", 1.03),
                    no_target("C++ step time with blame on every step vs plain AMP", "always_ratio")],
           target_devices=("cpu",))


if __name__ == "__main__":
    main()
