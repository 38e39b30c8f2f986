"""One AdamW step over GPT-2-small parameter shapes with fp16 / bf16 model weights.

ampkit: low-precision params and grads, FP32 masters and state, one fused pass per step
(``ampkit.optim.AdamW``; also the bare op, to show the Python-side overhead).
torch baseline (the best torch equivalent): fp32 params and grads with
``torch.optim.AdamW(fused=True)`` plus ``torch._foreach_copy_`` into the low-precision model copy.

Bandwidth: the bytes the update must move per parameter — read the grad (2), read and write the
master (4+4), exp_avg (4+4) and exp_avg_sq (4+4), write the model copy (2) = 28 bytes — divided by
the step time, and compared with the bandwidth of a plain large fp32 copy measured in the same run.
Targets on the GPU machine: >= 1.3x torch's equivalent and >= 75% of the copy bandwidth.

The byte bound: torch's pair moves 34 bytes per parameter — the fused step reads the fp32 grad (4)
and reads and writes param, exp_avg and exp_avg_sq (24); the copy reads the master (4) and writes
the model copy (2) — and on the CPU 36, since a normal store first reads the line it writes (2).
When both sides are bandwidth-bound, the speedup is the byte ratio (36/28 = 1.29x on the CPU,
34/28 = 1.21x on a GPU) times how much faster ampkit moves its bytes: `torch_GBps` (torch's bytes
over torch's time) next to `ampkit_GBps` shows that second factor, `pct_of_byte_bound` the whole.
"""
from __future__ import annotations

import statistics

import torch

from common import parser, report, time_fn
from targets import target

import ampkit  # noqa: E402

BYTES_PER_PARAM = 2 + 4 + 4 + 4 + 4 + 4 + 4 + 2
TORCH_FUSED_STEP_BYTES = 4 + 8 + 8 + 8
TORCH_COPY_BYTES = 4 + 2


def torch_bytes_per_param(device: str) -> int:
    """Bytes torch's fused AdamW + copy move per parameter; the CPU's write-allocate caches read
    each line of the copy's destination before writing it."""
    return TORCH_FUSED_STEP_BYTES + TORCH_COPY_BYTES + (0 if device.startswith("cuda") else 2)
TARGETS = [
    target("AdamW step vs torch fused AdamW + _foreach_copy_", "speedup", ">=", 1.3),
    target("AdamW step bandwidth, % of the fp32 copy bandwidth", "pct_of_copy_bw", ">=", 75.0),
]


def gpt2_small_shapes(quick: bool) -> list[tuple[int, ...]]:
    """wte, wpe, 12 transformer blocks (ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj), ln_f:
    124.4M parameters in 148 tensors. --quick: a 2-block, d=128 model of the same structure."""
    d, layers, vocab, context = (128, 2, 5000, 256) if quick else (768, 12, 50257, 1024)
    shapes: list[tuple[int, ...]] = [(vocab, d), (context, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def copy_bandwidth(device: str, repeats: int, quick: bool) -> float:
    """GB/s of a large fp32 device-to-device copy (bytes read + bytes written)."""
    n = (1 << 22) if quick else (1 << 28)
    src, dst = torch.randn(n, device=device), torch.empty(n, device=device)
    seconds = time_fn(lambda: dst.copy_(src), device, repeats)
    return 2 * n * 4 / seconds / 1e9


def time_one_dtype(dtype: torch.dtype, shapes, device: str, repeats: int) -> tuple[float, float, float]:
    """Seconds per step: ampkit.optim.AdamW, its bare op, torch's fused AdamW + copy. A function of
    its own so that one dtype's tensors are freed before the next dtype's are made."""
    generator = torch.Generator().manual_seed(0)
    model = [torch.nn.Parameter(torch.randn(s, generator=generator).mul_(0.02).to(device, dtype)) for s in shapes]
    for p in model:
        p.grad = torch.randn_like(p).mul_(1e-3)
    ours = ampkit.optim.AdamW(model, lr=1e-6)

    # The same step through the bare op, lists prebuilt: the kernel without the Python side.
    states = [ours.state[p] for p in model]
    lists = ([p.detach() for p in model], [s["master"] for s in states], [p.grad for p in model],
             [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states])
    lr = torch.full((1,), 1e-6, device=device)
    one = torch.ones(1, device=device)

    def ours_op():
        torch.ops.ampkit.master_adam_step_(*lists, lr, one, one, None, 0.9, 0.999, 1e-8, 1e-2, True, False)

    masters32 = [torch.nn.Parameter(p.detach().float()) for p in model]
    for p, q in zip(masters32, model):
        p.grad = q.grad.float()
    fused = torch.optim.AdamW(masters32, lr=1e-6, fused=True)
    model_copy = [p.detach() for p in model]
    master_data = [p.detach() for p in masters32]

    def baseline():
        fused.step()
        torch._foreach_copy_(model_copy, master_data)

    # Interleaved, one call of each per round: on a shared machine a load that comes and goes then
    # hits the three alike instead of whichever ran while it lasted.
    runs = {"step": ours.step, "op": ours_op, "torch": baseline}
    for run in runs.values():
        time_fn(run, device, 1, warmup=2)
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(time_fn(run, device, 1, warmup=0))
    return tuple(statistics.median(samples[name]) for name in runs)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch.set_num_threads); ampkit and torch run with the same count")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    on_cuda = args.device.startswith("cuda")
    repeats = args.repeats or (3 if args.quick else (50 if on_cuda else 7))
    shapes = gpt2_small_shapes(args.quick)
    numel = sum(torch.Size(s).numel() for s in shapes)
    copy_gbps = copy_bandwidth(args.device, repeats, args.quick)
    rows = []
    torch_bytes = torch_bytes_per_param(args.device)
    byte_bound = torch_bytes / BYTES_PER_PARAM
    for dtype in (torch.float16, torch.bfloat16):
        t_step, t_op, t_base = time_one_dtype(dtype, shapes, args.device, repeats)
        gbps = BYTES_PER_PARAM * numel / t_step / 1e9
        op_gbps = BYTES_PER_PARAM * numel / t_op / 1e9
        rows.append({
            "dtype": str(dtype).replace("torch.", ""), "params_M": round(numel / 1e6, 2),
            "ampkit_step_ms": round(t_step * 1e3, 3), "ampkit_op_ms": round(t_op * 1e3, 3),
            "torch_ms": round(t_base * 1e3, 3), "speedup": round(t_base / t_step, 2),
            "ampkit_GBps": round(gbps, 1), "op_GBps": round(op_gbps, 1),
            "torch_GBps": round(torch_bytes * numel / t_base / 1e9, 1),
            "pct_of_copy_bw": round(100 * gbps / copy_gbps, 1),
            "pct_of_byte_bound": round(100 * t_base / t_step / byte_bound, 1),
        })
    report("AdamW step, GPT-2-small shapes: ampkit (low-precision weights + FP32 masters) vs "
           "torch fused AdamW on fp32 + _foreach_copy_", rows,
           ["dtype", "params_M", "ampkit_step_ms", "ampkit_op_ms", "torch_ms", "speedup", "ampkit_GBps", "op_GBps",
            "torch_GBps", "pct_of_copy_bw", "pct_of_byte_bound"], args,
           extra={"copy_GBps": round(copy_gbps, 1), "bytes_per_param": BYTES_PER_PARAM,
                  "torch_bytes_per_param": torch_bytes, "byte_bound": round(byte_bound, 3)}, targets=TARGETS)
    print(f"copy bandwidth (fp32 copy_, read+write): {copy_gbps:.1f} GB/s")
    print(f"byte bound: torch moves {torch_bytes} B/param, ampkit {BYTES_PER_PARAM}: at equal GB/s the speedup is "
          f"{byte_bound:.3f}x")


if __name__ == "__main__":
    main()
