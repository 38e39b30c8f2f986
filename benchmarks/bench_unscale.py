"""unscale_and_check_ vs torch._amp_foreach_non_finite_check_and_unscale_, side by side.

Cases: (a) one 256M-element tensor, (b) the parameter shapes of GPT-2 small (148 tensors, 124M
elements); fp32 and fp16 against torch, bf16 too (torch's CUDA kernel has no bf16 path, so there
ampkit runs alone). Also: the same pass producing the global grad norm, against torch's unscale
followed by torch.nn.utils.get_total_norm (a second read of the grads).

Effective bandwidth counts what an in-place unscale must move: every element read once and
written once. The device-to-device copy of case (a) (`dst.copy_(src)`, also one read and one
write per element) is the yardstick: `of_copy` is ampkit's bandwidth as a fraction of it.
"""
from __future__ import annotations

import statistics

import torch

from common import parser, report, time_fn

from targets import target

import ampkit  # noqa: E402  (registers torch.ops.ampkit.*)

# The smallest float32 above 1: every element is rewritten (an inv_scale of exactly 1 would let
# ampkit skip the stores), yet repeated runs do not drift the values towards denormals.
INV_SCALE = 1.0 + 2.0 ** -23
# The targets on the GPU machine: at least torch's throughput on every case (fp32, fp16;
# torch has no CUDA bf16 kernel, so those rows have no ratio) and at least 85 % of the copy
# bandwidth of case (a), here asked of every row, both variants.
TARGETS = [
    target("unscale vs torch's unscale", "speedup", ">=", 1.0, where={"op": "unscale"}),
    target("unscale+norm vs torch's unscale + get_total_norm", "speedup", ">=", 1.0, where={"op": "unscale+norm"}),
    target("unscale bandwidth, fraction of the copy's", "of_copy", ">=", 0.85, where={"op": "unscale"}),
    target("unscale+norm bandwidth, fraction of the copy's", "of_copy", ">=", 0.85, where={"op": "unscale+norm"}),
]


def gpt2_small_shapes(quick: bool) -> list[tuple[int, ...]]:
    vocab, context, width, layers = (1000, 128, 64, 12) if quick else (50257, 1024, 768, 12)
    shapes = [(vocab, width), (context, width)]
    for _ in range(layers):
        shapes += [(width,), (width,),                       # ln_1
                   (width, 3 * width), (3 * width,),         # attn.c_attn
                   (width, width), (width,),                 # attn.c_proj
                   (width,), (width,),                       # ln_2
                   (width, 4 * width), (4 * width,),         # mlp.c_fc
                   (4 * width, width), (width,)]             # mlp.c_proj
    return shapes + [(width,), (width,)]                     # ln_f


def time_side_by_side(ours, theirs, device: str, repeats: int) -> tuple[float, float | None]:
    """Median seconds per call of each, interleaved one call of each per round: on a shared machine
    a load that comes and goes then hits both alike. theirs=None: ours alone."""
    runs = [ours] if theirs is None else [ours, theirs]
    for run in runs:
        time_fn(run, device, 1, warmup=3)
    samples = [[] for _ in runs]
    for _ in range(repeats):
        for run, times in zip(runs, samples):
            times.append(time_fn(run, device, 1, warmup=0))
    medians = [statistics.median(times) for times in samples]
    return medians[0], (medians[1] if theirs is not None else None)


def copy_bandwidth(numel: int, device: str, repeats: int) -> float:
    """The yardstick: GB/s of a device-to-device copy of an fp32 tensor of case (a)'s size."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    seconds = time_fn(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def case_rows(dtype: torch.dtype, name: str, shapes, device: str, repeats: int, copy_gbps: float) -> list[dict]:
    """Both variants of one case: its grads live as long as this call."""
    grads = [torch.randn(shape, device=device).to(dtype) for shape in shapes]
    numel = sum(g.numel() for g in grads)
    inv_scale = torch.full((), INV_SCALE, device=device)
    found_inf = torch.zeros((), device=device)
    norm = torch.zeros((), device=device)

    def ours():
        torch.ops.ampkit.unscale_and_check_(grads, found_inf, inv_scale)

    def ours_with_norm():
        torch.ops.ampkit.unscale_and_check_(grads, found_inf, inv_scale, norm)

    def theirs():
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)

    def theirs_with_norm():
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
        return torch.nn.utils.get_total_norm(grads)

    torch_supported = True
    try:
        theirs()
    except RuntimeError:  # bf16 on CUDA
        torch_supported = False
    moved = 2 * numel * grads[0].element_size()
    rows = []
    for variant, ours_fn, theirs_fn in (("unscale", ours, theirs), ("unscale+norm", ours_with_norm, theirs_with_norm)):
        t_ours, t_theirs = time_side_by_side(ours_fn, theirs_fn if torch_supported else None, device, repeats)
        rows.append({"dtype": str(dtype).replace("torch.", ""), "case": name, "op": variant,
                     "tensors": len(grads), "numel": numel,
                     "ampkit_ms": round(t_ours * 1e3, 3),
                     "torch_ms": round(t_theirs * 1e3, 3) if t_theirs else "n/a",
                     "speedup": round(t_theirs / t_ours, 2) if t_theirs else "n/a",
                     "ampkit_GBps": round(moved / t_ours / 1e9, 1),
                     "torch_GBps": round(moved / t_theirs / 1e9, 1) if t_theirs else "n/a",
                     "of_copy": round(moved / t_ours / 1e9 / copy_gbps, 2)})
    return rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--big-numel", type=int, default=None, help="elements of case (a) (default 2**28, quick 2**20)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch.set_num_threads); 1 gives stable figures on a shared machine")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 20)
    device = args.device
    big = args.big_numel or (1 << (20 if args.quick else 28))
    cases = {"(a) one tensor": [(big,)], "(b) gpt2-small": gpt2_small_shapes(args.quick)}
    copy_gbps = copy_bandwidth(big, device, repeats)

    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for name, shapes in cases.items():
            rows += case_rows(dtype, name, shapes, device, repeats, copy_gbps)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()

    report(f"unscale_and_check_ vs torch._amp_foreach_non_finite_check_and_unscale_ "
           f"(copy of case (a): {copy_gbps:.1f} GB/s)", rows,
           ["dtype", "case", "op", "tensors", "numel", "ampkit_ms", "torch_ms", "speedup", "ampkit_GBps",
            "torch_GBps", "of_copy"], args,
           extra={"copy_GBps": round(copy_gbps, 1), "copy_numel": big, "inv_scale": INV_SCALE,
                  "ampkit": ampkit.__version__}, targets=TARGETS)


if __name__ == "__main__":
    main()
