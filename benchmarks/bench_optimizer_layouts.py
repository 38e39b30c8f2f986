"""One AdamW step over ResNet-50's convolution weights, by parameter layout: the same parameters
contiguous and channels_last (the standard layout for convolutions on a GPU), fp16 weights with FP32
masters and state.

A channels_last parameter is dense in memory, so ``ampkit.optim.AdamW`` steps it in place through the
same fused pass, walking parameter, gradient, master and state in storage order; the step should cost
what the contiguous one costs per byte. Reported: ns per parameter byte the update moves (28 bytes per
parameter, see bench_optimizer.py) and the ratio to the contiguous step measured in the same run,
rounds interleaved. A strided-slice parameter (not dense) takes the copy path; its row shows that
price, with no target.
Target, on the CPU and the GPU: channels_last within 5 % of contiguous.
"""
from __future__ import annotations

import statistics

import torch

from common import parser, report, time_fn
from targets import no_target, target

import ampkit  # noqa: E402

BYTES_PER_PARAM = 2 + 4 + 4 + 4 + 4 + 4 + 4 + 2
TARGETS = [
    target("channels_last AdamW step vs contiguous, time per byte", "ratio_vs_contiguous", "<=", 1.05,
           where={"layout": "channels_last"}),
    no_target("strided-slice (copy path) AdamW step vs contiguous", "ratio_vs_contiguous",
              where={"layout": "strided slice"}),
]


def resnet50_conv_shapes(quick: bool) -> list[tuple[int, int, int, int]]:
    """The 53 convolution weights of ResNet-50 (23.5M parameters); --quick: channels / 8."""
    div = 8 if quick else 1
    shapes = [(64 // div, 3, 7, 7)]
    in_ch = 64 // div
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        width //= div
        for block in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
            if block == 0:
                shapes.append((4 * width, in_ch, 1, 1))
            in_ch = 4 * width
    return shapes


def make_params(shapes, layout: str, device: str) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        values = torch.randn(shape, generator=generator).mul_(0.02).to(device, torch.float16)
        if layout == "channels_last":
            values = values.contiguous(memory_format=torch.channels_last)
        elif layout == "strided slice":
            values = torch.cat([values, values], dim=0)[::2]  # every other output channel: not dense
        param = torch.nn.Parameter(values)
        param.grad = torch.randn(shape, generator=generator).mul_(1e-3).to(device, torch.float16)
        if layout == "channels_last":
            param.grad = param.grad.contiguous(memory_format=torch.channels_last)
        params.append(param)
    return params


def main() -> None:
    args = parser(__doc__).parse_args()
    on_cuda = args.device.startswith("cuda")
    repeats = args.repeats or (3 if args.quick else (30 if on_cuda else 5))
    rounds = 3 if args.quick else 5
    shapes = resnet50_conv_shapes(args.quick)
    numel = sum(torch.Size(s).numel() for s in shapes)
    layouts = ("contiguous", "channels_last", "strided slice")
    optimizers = {layout: ampkit.optim.AdamW(make_params(shapes, layout, args.device), lr=1e-6) for layout in layouts}
    samples: dict[str, list[float]] = {layout: [] for layout in layouts}
    for _ in range(rounds):  # interleaved, so drift in the machine's speed hits every layout alike
        for layout in layouts:
            samples[layout].append(time_fn(optimizers[layout].step, args.device, repeats))
    base = statistics.median(samples["contiguous"])
    rows = []
    for layout in layouts:
        seconds = statistics.median(samples[layout])
        first = optimizers[layout].param_groups[0]["params"][0]
        rows.append({
            "layout": layout, "params_M": round(numel / 1e6, 2), "step_ms": round(seconds * 1e3, 3),
            "ns_per_byte": round(seconds * 1e9 / (BYTES_PER_PARAM * numel), 4),
            "ratio_vs_contiguous": round(seconds / base, 3),
            "state_strides_match": optimizers[layout].state[first]["exp_avg"].stride() == first.stride(),
        })
    report("AdamW step by parameter layout, ResNet-50 conv weights (fp16 + FP32 masters)", rows,
           ["layout", "params_M", "step_ms", "ns_per_byte", "ratio_vs_contiguous", "state_strides_match"], args,
           extra={"bytes_per_param": BYTES_PER_PARAM, "rounds": rounds, "repeats": repeats}, targets=TARGETS,
           target_devices=("cpu", "cuda"))


if __name__ == "__main__":
    main()
