"""Attention (F.scaled_dot_product_attention, causal, forward + backward) in float32 and in each
lower-precision dtype on this device, side by side in one run, and the dtype that
``ampkit.Policy.for_this_machine`` runs it in.

``low_vs_fp32`` is the low-precision time over the float32 time: above 1, low precision is the
slower choice here. ``fitted_vs_default`` is the speedup of the policy's choice over torch's lists
(which always run attention in the low-precision dtype): 1.0 where the policy keeps torch's choice.
The shapes: the tiny GPT of bench_end_to_end (CPU) and a GPT-2-small attention layer.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from common import parser, report
from targets import no_target

import ampkit  # noqa: E402

def shapes(quick: bool) -> dict[str, tuple[int, int, int, int]]:
    """name -> (batch, heads, tokens, head dim)."""
    if quick:
        return {"small B2 H2 T32 D16": (2, 2, 32, 16)}
    return {"tiny GPT B16 H4 T128 D32": (16, 4, 128, 32), "B8 H8 T256 D64": (8, 8, 256, 64),
            "GPT-2 layer B4 H12 T512 D64": (4, 12, 512, 64)}


def step_for(size: tuple[int, int, int, int], dtype: torch.dtype, device: str):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(size, generator=generator).to(device, dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(size, generator=generator).to(device, dtype)

    def step():
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)

    return step


def routed_dtype(size: tuple[int, int, int, int], dtype: torch.dtype, device: str) -> torch.dtype:
    """The dtype attention runs in under Policy.for_this_machine (its machine rules read the shapes)."""
    q = torch.zeros(size, device=device, dtype=dtype)
    with ampkit.autocast(device.split(":")[0], policy=ampkit.Policy.for_this_machine(device.split(":")[0], dtype)):
        return F.scaled_dot_product_attention(q, q, q, is_causal=True).dtype


def interleaved_medians(steps: dict, device: str, repeats: int) -> dict[str, float]:
    """Median seconds per call, the variants taking turns so a passing load hits them alike."""
    for step in steps.values():
        step()
        step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device_type = args.device.split(":")[0]
    repeats = args.repeats or (3 if args.quick else 20)
    rows = []
    for name, size in shapes(args.quick).items():
        for dtype in (torch.bfloat16, torch.float16):
            routed = routed_dtype(size, dtype, args.device)
            seconds = interleaved_medians({"fp32": step_for(size, torch.float32, args.device),
                                           "low": step_for(size, dtype, args.device)}, args.device, repeats)
            low_vs_fp32 = seconds["low"] / seconds["fp32"]
            rows.append({
                "shape": name, "dtype": str(dtype).replace("torch.", ""),
                "fp32_ms": round(seconds["fp32"] * 1e3, 3), "low_ms": round(seconds["low"] * 1e3, 3),
                "low_vs_fp32": round(low_vs_fp32, 2),
                "for_this_machine": str(routed).replace("torch.", ""),
                "fitted_vs_default": round(low_vs_fp32 if routed == torch.float32 else 1.0, 2),
            })
    report("Attention forward + backward: float32 vs the lower-precision dtype, and the dtype "
           "Policy.for_this_machine picks", rows,
           ["shape", "dtype", "fp32_ms", "low_ms", "low_vs_fp32", "for_this_machine", "fitted_vs_default"], args,
           extra={"slow_in_lower_precision": {str(d).replace("torch.", ""): ampkit.slow_in_lower_precision(device_type, d)
                                              for d in (torch.bfloat16, torch.float16)}},
           targets=[no_target("attention: policy's choice vs torch's lists", "fitted_vs_default")],
           target_devices=("cpu", "cuda"))


if __name__ == "__main__":
    main()
