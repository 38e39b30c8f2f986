"""Step time with ampkit.AdaptivePrecision vs plain AMP, side by side in one run.

The model is the adaptive example's digits MLP (examples/python/train_adaptive.py) without its
overflowing gain, so nothing is promoted and the figure is the controller's running cost: forward
hooks launching one float32 sum per leaf module output, one per gradient, a few vector ops, and at
every `log_every`-th step the logging point's read and decisions. Both variants run the same
training step (fp16 autocast, GradScaler, ampkit AdamW):

  plain     ampkit.autocast + GradScaler
  adaptive  AdaptivePrecision.autocast() + after_backward() + update() every log_every steps, with
            the default blame="after_non_finite" (a clean run records only its loss)
  always    the same with blame="always": hooks and sums on every step (what a window with
            non-finite steps costs by default), reported without a target

`ratio` = adaptive / plain seconds per step; target <= 1.03. Each figure is the best of many short
samples of `chunk` steps, the variants interleaved (a busy neighbour only ever adds time).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common import load_example, parser, report, time_fn
from targets import no_target, target

import ampkit  # noqa: E402


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads on the CPU (default 1: less noise)")
    p.add_argument("--log-every", type=int, default=20)
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = args.device
    dtype = torch.float16
    example = load_example("train_adaptive")
    (inputs, targets), _ = example.load_data()
    chunk = args.log_every  # one logging point per sample
    repeats = args.repeats or (5 if args.quick else 30)
    rows = []
    for batch in ((64,) if args.quick else (64, 256)):
        x, y = inputs[:batch].to(device), targets[:batch].to(device)

        # The base policy AdaptivePrecision starts from, so both sides route alike.
        policy = ampkit.Policy.for_this_machine(device, dtype)

        def make(blame: str | None):
            adaptive = blame is not None
            model = example.build_model(gain=1.0).to(device)
            optimizer = ampkit.optim.AdamW(model.parameters(), lr=1e-3)
            scaler = ampkit.GradScaler(device)
            controller = (ampkit.AdaptivePrecision(model, device, dtype, scaler=scaler, blame=blame)
                          if adaptive else None)
            state = {"step": 0}

            def steps():
                for _ in range(chunk):
                    optimizer.zero_grad(set_to_none=True)
                    region = controller.autocast() if adaptive else ampkit.autocast(device, policy=policy)
                    with region:
                        loss = F.cross_entropy(model(x), y)
                    scaler.scale(loss).backward()
                    if adaptive:
                        controller.after_backward(loss)
                    scaler.step(optimizer)
                    scaler.update()
                    state["step"] += 1
                if adaptive:
                    changes = controller.update(state["step"])
                    assert not changes, f"the benchmark model should run clean, got {changes}"
            return steps

        runs = {"plain": make(None), "adaptive": make("after_non_finite"), "always": make("always")}
        samples = {k: [] for k in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                samples[name].append(time_fn(run, device, 1, warmup=1))
        best = {k: min(v) / chunk for k, v in samples.items()}
        rows.append({"model": f"digits MLP, batch {batch}", "plain_ms": round(best["plain"] * 1e3, 4),
                     "adaptive_ms": round(best["adaptive"] * 1e3, 4),
                     "overhead_us": round((best["adaptive"] - best["plain"]) * 1e6, 2),
                     "ratio": round(best["adaptive"] / best["plain"], 4),
                     "always_ms": round(best["always"] * 1e3, 4),
                     "always_ratio": round(best["always"] / best["plain"], 4)})
    report(f"adaptive precision step overhead (fp16, best of {repeats} samples of {chunk} steps, a logging point "
           "per sample)", rows,
           ["model", "plain_ms", "adaptive_ms", "overhead_us", "ratio", "always_ms", "always_ratio"], args,
           extra={"log_every": chunk, "samples": repeats},
           targets=[target("adaptive step time vs plain AMP", "ratio", "<=", 1.03),
                    no_target("step time with blame on every step vs plain AMP", "always_ratio")],
           target_devices=("cpu",))


if __name__ == "__main__":
    main()
