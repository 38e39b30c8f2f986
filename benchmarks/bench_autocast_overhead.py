"""Per-op dispatch overhead inside an autocast region: ampkit's default policy vs torch.autocast.

For each small op, N calls are timed in one run, three ways, with the repeats interleaved:
  torch   inside torch.autocast(device, lower dtype)
  ampkit  inside ampkit.autocast(device, lower dtype): the default policy (unboxed wrappers)
  base    no region, the op on inputs cast beforehand: the kernel work alone
overhead = region - base per call: what the autocast layer costs (its kernel, the casts).
`overhead_ratio` = ampkit overhead / torch overhead. Target <= 1.10 for ops ampkit knows at compile
time. The last row is the boxed path (an op torch does not list, put in allow), whose overhead is
reported in microseconds (torch has no equivalent). Each figure is the best of many short samples,
the variants interleaved (interference from other processes only ever adds time).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common import parser, report, time_fn
from targets import no_target, target

import ampkit  # noqa: E402


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads on the CPU (default 1: these ops are tiny, and more threads only add noise)")
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    calls = 1_000 if args.quick else 10_000  # per op and variant, in samples of `chunk` calls
    chunk = 250
    repeats = (args.repeats or (1 if args.quick else 3)) * (calls // chunk)
    device = args.device
    low = torch.bfloat16 if device == "cpu" else torch.float16
    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(16, 16, device=device, generator=g) for _ in range(2))
    x = torch.randn(4, 64, device=device, generator=g)
    v, w = (torch.randn(256, device=device, generator=g) for _ in range(2))
    a_low, b_low, v_low, w_low = a.to(low), b.to(low), v.to(low), w.to(low)
    x_base = x if device == "cpu" else x.float()  # layer_norm is in torch's CUDA fp32 list only
    b_up, v_up = b_low.float(), v_low.float()

    # (name, op run inside a region, the same op on inputs cast beforehand, no region)
    cases = [
        ("mm 16x16 (allow)", lambda: torch.mm(a, b), lambda: torch.mm(a_low, b_low)),
        ("layer_norm 4x64", lambda: F.layer_norm(x, (64,)), lambda: F.layer_norm(x_base, (64,))),
        ("mse_loss 256 (deny)", lambda: F.mse_loss(v_low, w), lambda: F.mse_loss(v_up, w)),
        ("cat 2x16x16", lambda: torch.cat([a, b_low]), lambda: torch.cat([a, b_up])),
    ]
    boxed_policy = ampkit.Policy.default(device, low).allow("aten::add.Tensor")
    boxed_case = ("add 256 (boxed, allow)", lambda: torch.add(v, w), lambda: torch.add(v_low, w_low))

    def loop(fn, factory=None):
        def run():
            if factory is None:
                for _ in range(chunk):
                    fn()
                return
            with factory():
                for _ in range(chunk):
                    fn()
        return run

    regions = {
        "torch": lambda: torch.autocast(device, dtype=low),
        "ampkit": lambda: ampkit.autocast(device, dtype=low),
        "boxed": lambda: ampkit.autocast(device, policy=boxed_policy),
    }
    ampkit.Policy.default(device, low).install()  # registration is paid once, not in the timing
    boxed_policy.install()

    def best(runs: dict) -> dict:
        # Many short samples, the variants interleaved, best of each: a busy neighbour can only
        # make a sample slower, and short samples are more often left alone.
        samples = {k: [] for k in runs}
        for _ in range(repeats):
            for k, run in runs.items():
                samples[k].append(time_fn(run, device, 1, warmup=1))
        return {k: min(s) / chunk for k, s in samples.items()}

    rows = []
    known = [case[0] for case in cases]  # the boxed row has no torch equivalent: reported, no target
    for name, op, base in cases:
        t = best({"torch": loop(op, regions["torch"]), "ampkit": loop(op, regions["ampkit"]), "base": loop(base)})
        over_torch, over_ampkit = t["torch"] - t["base"], t["ampkit"] - t["base"]
        rows.append({
            "op": name, "torch_us": round(t["torch"] * 1e6, 3), "ampkit_us": round(t["ampkit"] * 1e6, 3),
            "base_us": round(t["base"] * 1e6, 3), "ratio": round(t["ampkit"] / t["torch"], 3),
            "torch_overhead_us": round(over_torch * 1e6, 3), "ampkit_overhead_us": round(over_ampkit * 1e6, 3),
            "overhead_ratio": round(over_ampkit / over_torch, 3) if over_torch > 2.5e-7 else "n/a (torch overhead < 0.25 us)",
        })
    name, op, base = boxed_case
    t = best({"boxed": loop(op, regions["boxed"]), "base": loop(base)})
    rows.append({"op": name, "torch_us": "-", "ampkit_us": round(t["boxed"] * 1e6, 3), "base_us": round(t["base"] * 1e6, 3),
                 "ratio": "-", "torch_overhead_us": "-", "ampkit_overhead_us": round((t["boxed"] - t["base"]) * 1e6, 3),
                 "overhead_ratio": "-"})
    report(f"autocast per-op overhead (best of {repeats} samples of {chunk} calls, {repeats * chunk} calls per op)", rows,
           ["op", "torch_us", "ampkit_us", "base_us", "ratio", "torch_overhead_us", "ampkit_overhead_us", "overhead_ratio"],
           args, extra={"calls_per_sample": chunk, "samples": repeats, "lower_dtype": str(low)},
           targets=[target("autocast overhead vs torch.autocast, ops known at compile time", "overhead_ratio",
                           "<=", 1.10, where={"op": known}),
                    no_target("region time vs torch.autocast (kernel included)", "ratio", where={"op": known})],
           target_devices=("cpu", "cuda"))  # the overhead target holds on the CPU too


if __name__ == "__main__":
    main()
