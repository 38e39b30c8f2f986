"""A first look at ampkit: unscale a model's gradients in one fused pass and catch an overflow.

Runs on CUDA when available, else on the CPU.
"""
from __future__ import annotations

import argparse
import time

import torch

import ampkit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller model, for the test run")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"ampkit {ampkit.__version__} on {device}; build: {ampkit.build_info()}")
    width = 256 if args.quick else 1024
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(8)]).to(device)
    scale = 2.0 ** 16
    loss = model(torch.randn(64, width, device=device)).square().mean() * scale
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    reference = [g.clone() / scale for g in grads]

    start = time.perf_counter()
    found_inf = ampkit.multi_tensor_scale_(grads, scale=1.0 / scale)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    worst = max((g - r).abs().max().item() for g, r in zip(grads, reference))
    print(f"unscaled {len(grads)} gradients ({sum(g.numel() for g in grads):,} values) in one call, "
          f"{elapsed * 1e3:.2f} ms; max difference from plain torch: {worst:.3g}; found_inf={found_inf.item():.0f}")

    grads[3].view(-1)[11] = float("inf")
    found_inf = ampkit.multi_tensor_scale_(grads, scale=1.0)
    print(f"after planting an inf in one gradient: found_inf={found_inf.item():.0f} (the step would be skipped)")


if __name__ == "__main__":
    main()
