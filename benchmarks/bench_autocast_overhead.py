"""Per-op dispatch overhead inside an autocast region: ampkit's default policy vs torch.autocast.

For each small op, N calls are timed in one run, three ways, with the repeats interleaved:
  torch   inside torch.autocast(device, lower dtype)
  ampkit  inside ampkit.autocast(device, lower dtype): the default policy (unboxed wrappers)
  base    no region, the op on inputs cast beforehand: the kernel work alone
overhead = region - base per call: what the autocast layer costs (its kernel, the casts).
`overhead_ratio` = ampkit overhead / torch overhead. Target <= 1.10 for ops ampkit knows at compile
time. The boxed row is an op torch does not list, put in allow, whose overhead is reported in
microseconds (torch has no equivalent). Each figure is the best of many short samples, the variants
interleaved (interference from other processes only ever adds time).

The last two rows time the region itself: constructing, entering and leaving an empty
``with ampkit.autocast(device, policy=...)`` against ``with torch.autocast(device, dtype=...)``, once
with warm caches (best of samples of `chunk` regions) and once as a training step meets it, after a
pass over 64 MB that evicts the caches (the median of single regions). Target: ratio <= 1.10.
"""
from __future__ import annotations

import statistics
import time

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

    # The region itself, as a training loop opens one every step.
    machine_policy = ampkit.Policy.for_this_machine(device, low).install()
    region_factories = {"torch": lambda: torch.autocast(device, dtype=low),
                        "ampkit": lambda: ampkit.autocast(device, policy=machine_policy)}

    def regions_in_a_row(factory):
        def run():
            for _ in range(chunk):
                with factory():
                    pass
        return run

    warm = best({k: regions_in_a_row(f) for k, f in region_factories.items()})
    evict = torch.empty(64 << 20, dtype=torch.uint8)
    cold_samples: dict[str, list[float]] = {k: [] for k in region_factories}
    for _ in range(200 if args.quick else 1000):
        for k, factory in region_factories.items():
            evict.fill_(1)
            start = time.perf_counter()
            with factory():
                pass
            cold_samples[k].append(time.perf_counter() - start)
    cold = {k: statistics.median(v) for k, v in cold_samples.items()}
    region_rows = []
    for label, t in (("region enter+exit, warm caches", warm), ("region enter+exit, after a 64 MB pass", cold)):
        ratio = round(t["ampkit"] / t["torch"], 3)
        region_rows.append(label)
        rows.append({"op": label, "torch_us": round(t["torch"] * 1e6, 3), "ampkit_us": round(t["ampkit"] * 1e6, 3),
                     "base_us": "-", "ratio": ratio, "torch_overhead_us": round(t["torch"] * 1e6, 3),
                     "ampkit_overhead_us": round(t["ampkit"] * 1e6, 3), "overhead_ratio": ratio})
    report(f"autocast per-op overhead (best of {repeats} samples of {chunk} calls, {repeats * chunk} calls per op)", rows,
           ["op", "torch_us", "ampkit_us", "base_us", "ratio", "torch_overhead_us", "ampkit_overhead_us", "overhead_ratio"],
           args, extra={"calls_per_sample": chunk, "samples": repeats, "lower_dtype": str(low)},
           targets=[target("autocast overhead vs torch.autocast, ops known at compile time", "overhead_ratio",
                           "<=", 1.10, where={"op": known}),
                    no_target("region time vs torch.autocast (kernel included)", "ratio", where={"op": known}),
                    target("region enter+exit vs torch.autocast", "ratio", "<=", 1.10, where={"op": region_rows})],
           target_devices=("cpu", "cuda"))  # the overhead target holds on the CPU too


if __name__ == "__main__":
    main()
