"""multi_tensor_scale_ vs torch._foreach_mul_ (+ a non-finite check, as a real unscale needs)."""
from __future__ import annotations

import torch

from common import parser, report, time_fn
from targets import no_target

import ampkit  # noqa: E402


def main() -> None:
    args = parser(__doc__).parse_args()
    repeats = args.repeats or (5 if args.quick else 30)
    cases = {"one tensor": [1 << (20 if args.quick else 26)],
             "150 tensors": [(1 << (12 if args.quick else 19)) + 7 * i for i in range(150)]}
    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for name, numels in cases.items():
            tensors = [torch.randn(n, device=args.device, dtype=dtype) for n in numels]
            scale = torch.full((1,), 0.5, device=args.device)
            found = torch.zeros(1, device=args.device)

            def ours():
                torch.ops.ampkit.multi_tensor_scale_(tensors, tensors, scale, found)

            def baseline():
                torch._foreach_mul_(tensors, scale.squeeze(0))
                found.copy_(torch.stack([t.isfinite().all() for t in tensors]).all().logical_not())

            t_ours, t_base = time_fn(ours, args.device, repeats), time_fn(baseline, args.device, repeats)
            moved = 2 * sum(numels) * tensors[0].element_size()
            rows.append({"dtype": str(dtype).replace("torch.", ""), "case": name, "ampkit_ms": round(t_ours * 1e3, 3),
                         "torch_ms": round(t_base * 1e3, 3), "speedup": round(t_base / t_ours, 2),
                         "ampkit_GBps": round(moved / t_ours / 1e9, 1)})
    report("multi_tensor_scale_ vs torch._foreach_mul_ + isfinite", rows,
           ["dtype", "case", "ampkit_ms", "torch_ms", "speedup", "ampkit_GBps"], args,
           targets=[no_target("multi_tensor_scale_ vs _foreach_mul_ + isfinite", "speedup")])


if __name__ == "__main__":
    main()
