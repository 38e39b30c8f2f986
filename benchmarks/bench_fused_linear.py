"""fused_linear vs torch, side by side:

  gemm      ampkit.fused_linear(x, w) vs torch.matmul(x, w.T), fp16/bf16 tensors (no autocast)
  fwd+bwd   under autocast, fp32 parameters: ampkit.fused_linear(x, w, b, "gelu") vs
            F.gelu(F.linear(x, w, b), approximate="tanh"); forward plus all three gradients

  mlp block ampkit.fused_mlp vs Linear -> GELU -> Linear under autocast, forward plus all gradients
            (768->3072->768 and 4096->16384->4096): the block whose backward fuses the GELU gradient

at transformer MLP shapes (tokens 8192: 768->3072, 3072->768, 4096->16384, 16384->4096) and a few
small/odd ones, reporting TFLOP/s and ratios (>1: ampkit faster). Large GEMMs are also compared
with the TFLOP/s torch.matmul reaches at 8192^3 in the same dtype on the same device.
Targets on the GPU machine: gemm >= 0.97x torch; fwd+bwd >= 1.10x at the MLP shapes; large
GEMMs >= 85% of torch's 8192^3 TFLOP/s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common import parser, report, time_fn
from targets import no_target, target

import ampkit  # noqa: E402

MLP_SHAPES = [(768, 3072), (3072, 768), (4096, 16384), (16384, 4096)]
ODD_SHAPES = [(1000, 1023, 4097), (77, 512, 2048), (8, 4096, 4096), (4097, 1024, 1000)]  # (tokens, in, out)
# The targets (GPU machine, full size), judged on the worst row each covers (benchmarks/targets.py).
TARGETS = [
    target("gemm vs torch.matmul", "speedup", ">=", 0.97, where={"what": "gemm"}),
    target("fwd+bwd bias+GELU vs torch at MLP shapes", "speedup", ">=", 1.10,
           where={"what": "fwd+bwd gelu", "kind": "mlp"}),
    target("large GEMMs, fraction of torch's 8192^3 TFLOP/s", "of_torch_peak", ">=", 0.85,
           where={"what": "gemm", "kind": "mlp"}),
    no_target("fwd+bwd bias+GELU vs torch at odd shapes", "speedup", where={"what": "fwd+bwd gelu", "kind": "odd"}),
    no_target("fused_mlp block fwd+bwd vs Linear-GELU-Linear", "speedup", where={"what": "mlp fwd+bwd"}),
]


def tflops(flops: float, seconds: float) -> float:
    return round(flops / seconds / 1e12, 4)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--tokens", type=int, default=None, help="tokens of the MLP shapes (default 8192; 256 on CPU)")
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    repeats = args.repeats or (3 if args.quick else (20 if cuda else 5))
    if args.quick and not cuda:
        tokens, mlp, odd, peak_n = 64, [(64, 256), (256, 64)], [(7, 33, 65)], 256
    elif args.quick:
        tokens, mlp, odd, peak_n = 1024, [(768, 3072), (3072, 768)], [(77, 512, 2048)], 4096
    else:
        tokens = args.tokens or (8192 if cuda else 256)
        mlp, odd, peak_n = MLP_SHAPES, ODD_SHAPES, 8192 if cuda else 1024
    cases = [("mlp", tokens, k, n) for k, n in mlp] + [("odd", m, k, n) for m, k, n in odd]
    mlp_blocks = [(k, n) for k, n in mlp if n > k]  # (model width, hidden width) pairs
    device_type = "cuda" if cuda else "cpu"
    generator = torch.Generator(device=args.device).manual_seed(0)

    def randn(*shape, dtype=torch.float32, scale=1.0):
        return (torch.randn(*shape, device=args.device, generator=generator) * scale).to(dtype)

    rows, peaks, peak_flops = [], {}, {}
    for dtype in (torch.float16, torch.bfloat16):
        a, b_ = randn(peak_n, peak_n, dtype=dtype), randn(peak_n, peak_n, dtype=dtype)
        peak_seconds = time_fn(lambda: torch.matmul(a, b_), args.device, repeats)
        peak_flops[str(dtype)] = 2 * peak_n ** 3 / peak_seconds
        peaks[str(dtype).replace("torch.", "")] = tflops(2 * peak_n ** 3, peak_seconds)
        del a, b_
        name = str(dtype).replace("torch.", "")
        for kind, m, k, n in cases:
            # --- GEMM alone ---
            x = randn(m, k, dtype=dtype)
            w = randn(n, k, dtype=dtype, scale=k ** -0.5)
            t_ours = time_fn(lambda: ampkit.fused_linear(x, w), args.device, repeats)
            t_torch = time_fn(lambda: torch.matmul(x, w.t()), args.device, repeats)
            flops = 2 * m * n * k
            rows.append({"dtype": name, "shape": f"{m}x{k}->{n}", "kind": kind, "what": "gemm",
                         "ampkit_TFLOPs": tflops(flops, t_ours), "torch_TFLOPs": tflops(flops, t_torch),
                         "speedup": round(t_torch / t_ours, 3),
                         "of_torch_peak": round(flops / t_ours / peak_flops[str(dtype)], 3)})

            # --- forward + backward, bias + GELU, under autocast with fp32 parameters ---
            x_in = x.clone().requires_grad_()
            w32 = w.float().requires_grad_()
            b32 = randn(n, scale=0.1).requires_grad_()
            grad = randn(m, n, dtype=dtype)

            def ours():
                with torch.autocast(device_type, dtype=dtype):
                    out = ampkit.fused_linear(x_in, w32, b32, "gelu")
                return torch.autograd.grad(out, (x_in, w32, b32), grad)

            def baseline():
                with torch.autocast(device_type, dtype=dtype):
                    out = F.gelu(F.linear(x_in, w32, b32), approximate="tanh")
                return torch.autograd.grad(out, (x_in, w32, b32), grad)

            t_ours = time_fn(ours, args.device, repeats)
            t_torch = time_fn(baseline, args.device, repeats)
            rows.append({"dtype": name, "shape": f"{m}x{k}->{n}", "kind": kind, "what": "fwd+bwd gelu",
                         "ampkit_TFLOPs": tflops(3 * flops, t_ours), "torch_TFLOPs": tflops(3 * flops, t_torch),
                         "speedup": round(t_torch / t_ours, 3), "of_torch_peak": ""})
            del x, w, x_in, w32, b32, grad

        # --- the whole MLP block, fwd+bwd: fused_mlp vs Linear -> GELU -> Linear under autocast ---
        for k, h in mlp_blocks:
            x_in = randn(tokens, k, dtype=dtype).requires_grad_()
            params = [randn(h, k, scale=k ** -0.5), randn(h, scale=0.1), randn(k, h, scale=h ** -0.5),
                      randn(k, scale=0.1)]
            for p_ in params:
                p_.requires_grad_()
            grad = randn(tokens, k, dtype=dtype)
            inputs = (x_in, *params)

            def ours_block():
                with torch.autocast(device_type, dtype=dtype):
                    out = ampkit.fused_mlp(x_in, *params)
                return torch.autograd.grad(out, inputs, grad)

            def baseline_block():
                with torch.autocast(device_type, dtype=dtype):
                    hidden = F.gelu(F.linear(x_in, params[0], params[1]), approximate="tanh")
                    out = F.linear(hidden, params[2], params[3])
                return torch.autograd.grad(out, inputs, grad)

            t_ours = time_fn(ours_block, args.device, repeats)
            t_torch = time_fn(baseline_block, args.device, repeats)
            flops = 3 * 2 * 2 * tokens * k * h
            rows.append({"dtype": name, "shape": f"{tokens}x{k}->{h}->{k}", "kind": "block",
                         "what": "mlp fwd+bwd", "ampkit_TFLOPs": tflops(flops, t_ours),
                         "torch_TFLOPs": tflops(flops, t_torch), "speedup": round(t_torch / t_ours, 3),
                         "of_torch_peak": ""})
            del x_in, params, grad, inputs

    report(f"fused_linear vs torch (tokens {tokens}; torch.matmul at {peak_n}^3: {peaks} TFLOP/s)", rows,
           ["dtype", "shape", "kind", "what", "ampkit_TFLOPs", "torch_TFLOPs", "speedup", "of_torch_peak"], args,
           extra={"torch_matmul_peak_TFLOPs": peaks, "peak_size": peak_n}, targets=TARGETS)


if __name__ == "__main__":
    main()
