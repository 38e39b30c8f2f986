"""fused_linear against an FP32 reference (F.linear on upcast inputs, then the activation).

Tolerances are error bounds, computed per element, not fixed constants:
  * Our GEMM and the reference both accumulate in fp32 (u32 = 2^-24). For a dot product of
    length n, |computed - exact| <= gamma_n * sum|a_i b_i|. The worst case gamma_n = n u32 /
    (1 - n u32) is far too loose at n in the thousands to catch anything, so for n >= 64 we use
    the probabilistic bound of Higham & Mary (2019), gamma_n = lambda sqrt(n) u32, with lambda = 8
    (failure probability per element ~ n exp(-lambda^2 / 2) < 1e-10 for independent rounding
    errors; blocked and tensor-core sums have fewer sequential additions still). Two such results
    differ by at most 2 gamma_n sum|a_i b_i|. That is the K (forward), N (grad_input) and M
    (grad_weight, grad_bias) dependence of every bound below; test_the_bounds_can_fail shows the
    bound rejects fp16 accumulation.
  * The activation is L-Lipschitz (L = 1 for ReLU, 1.13 > max |gelu_tanh'|) and its derivative
    L2-Lipschitz (L2 = 0.8 > max |gelu_tanh''|).
  * Our result is rounded once to the output dtype: <= u |value|, u = 2^-11 (fp16), 2^-8 (bf16).
  * Backward: the CUDA path rounds the saved GELU input and the gradient at the pre-activation to
    the input dtype before its GEMMs (cuBLASLt multiplies operands of one dtype); the bound
    carries both roundings (the CPU path keeps them in fp32, so it is well inside).
The inputs themselves are the same fp16/bf16 values for both sides, so they add no error.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ampkit

U_OUT = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float32: 2.0 ** -24}
U32 = 2.0 ** -24
LIPSCHITZ = {"none": 1.0, "relu": 1.0, "gelu": 1.13}
GELU_SECOND_DERIVATIVE_BOUND = 0.8
LOW_PRECISION = [torch.float16, torch.bfloat16]
ACTIVATIONS = ["none", "relu", "gelu"]

# (leading shape of input, in_features K, out_features N): odd sizes, 1-D and 3-D inputs, k = 1,
# zero-size batches, a single output feature, and one multiple-of-8 case.
SHAPES = [
    ((7,), 13, 11),
    ((2, 5), 33, 17),
    ((), 12, 7),
    ((4,), 1, 9),
    ((0,), 16, 8),
    ((3, 0), 5, 6),
    ((5,), 10, 1),
    ((64,), 64, 40),
]


def gamma(n: int) -> float:
    worst_case = n * U32 / (1 - n * U32)
    return min(worst_case, 8 * n ** 0.5 * U32)


def activate(pre: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(pre)
    if activation == "gelu":
        return F.gelu(pre, approximate="tanh")
    return pre


def make_problem(lead, k, n, dtype, device, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Scaled so pre-activations are O(1): the regime where GELU is neither linear nor zero.
    x = torch.randn(*lead, k, generator=generator)
    w = torch.randn(n, k, generator=generator) / max(k, 1) ** 0.5
    b = 0.5 * torch.randn(n, generator=generator) if bias else None
    cast = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
    return cast(x), cast(w), cast(b)


def reference(x, w, b, activation):
    """FP32 reference: F.linear on the upcast inputs, then the activation; also the pre-activation."""
    pre = F.linear(x.float(), w.float(), None if b is None else b.float())
    return activate(pre, activation), pre


def forward_bound(x, w, b, activation, ref, dtype):
    k = x.shape[-1]
    magnitude = x.float().abs() @ w.float().abs().t()  # sum_k |x w| per output element
    if b is not None:
        magnitude = magnitude + b.float().abs()
    bound = LIPSCHITZ[activation] * 2 * gamma(k) * magnitude + 1.01 * U_OUT[dtype] * ref.abs() + 1e-6
    if activation == "gelu":
        # cuBLASLt's GELU epilogue may evaluate tanh with the hardware approximation (relative
        # error < 2^-10.98); through 0.5 x (1 + tanh(.)) that is < 2^-11 |x| absolute.
        pre = F.linear(x.float(), w.float(), None if b is None else b.float())
        bound = bound + 2.0 ** -11 * pre.abs()
    return bound


def assert_within(ours, ref, bound, what):
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    error = (ours.float() - ref).abs()
    excess = error - bound
    worst = excess.max().item() if excess.numel() else float("-inf")
    assert worst <= 0, f"{what}: error exceeds its bound by {worst:.3g} (max error {error.max().item():.3g})"


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{lead}x{k}->{n}" for lead, k, n in SHAPES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
def test_forward_and_gradients_match_fp32_reference(device, dtype, activation, bias, shape):
    lead, k, n = shape
    x, w, b = make_problem(lead, k, n, dtype, device, bias)
    x.requires_grad_()
    w.requires_grad_()
    if b is not None:
        b.requires_grad_()
    out = ampkit.fused_linear(x, w, b, activation)
    assert out.dtype == dtype and out.device == x.device

    ref, pre = reference(x.detach(), w.detach(), None if b is None else b.detach(), activation)
    fwd_bound = forward_bound(x.detach(), w.detach(), None if b is None else b.detach(), activation, ref, dtype)
    assert_within(out, ref, fwd_bound, "output")

    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype=dtype, device=device)
    if activation == "relu":
        # Where the reference pre-activation is within its own error bound of 0, the two sides may
        # legitimately disagree on the side of the kink; no gradient flows through those elements.
        pre_bound = 2 * gamma(k) * (x.detach().float().abs() @ w.detach().float().abs().t()) + 1e-6
        if b is not None:
            pre_bound = pre_bound + 2 * gamma(k) * b.detach().float().abs()
        grad = grad.masked_fill(pre.abs() <= pre_bound, 0)
    out.backward(grad)

    # Reference gradients, all in fp32.
    g = grad.float()
    if activation == "gelu":
        grad_pre = torch.ops.aten.gelu_backward(g, pre, approximate="tanh")
    elif activation == "relu":
        grad_pre = g * (pre > 0)
    else:
        grad_pre = g
    x32, w32 = x.detach().float(), w.detach().float()
    lead_rows = grad_pre.reshape(-1, n)
    x_rows = x32.reshape(-1, k)
    ref_dx = (lead_rows @ w32).reshape(x.shape)
    ref_dw = lead_rows.t() @ x_rows
    ref_db = lead_rows.sum(0)

    u = U_OUT[dtype]
    lipschitz = LIPSCHITZ[activation]
    m = lead_rows.shape[0]
    g_abs = g.abs().reshape(-1, n)
    # E: bound on |our grad_pre - reference grad_pre| (derivative at a rounded, differently
    # accumulated pre-activation, then rounding of grad_pre itself). "none": grad_pre = grad exactly.
    if activation == "gelu":
        pre_error = U_OUT[dtype] * pre.abs() + fwd_bound_pre(x32, w32, b, k)
        e = g_abs * (GELU_SECOND_DERIVATIVE_BOUND * pre_error.reshape(-1, n) + u * lipschitz)
    elif activation == "relu":
        e = u * g_abs  # mask agrees away from the kink (masked above); only the product's rounding
    else:
        e = torch.zeros_like(g_abs)
    bound_dx = e @ w32.abs() + 2 * gamma(n) * lipschitz * (g_abs @ w32.abs()) + 1.01 * u * ref_dx.abs().reshape(-1, k)
    bound_dw = e.t() @ x_rows.abs() + 2 * gamma(m) * lipschitz * (g_abs.t() @ x_rows.abs()) + 1.01 * u * ref_dw.abs()
    bound_db = e.sum(0) + 2 * gamma(m) * lipschitz * g_abs.sum(0) + 1.01 * u * ref_db.abs()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype
    assert_within(x.grad, ref_dx, bound_dx.reshape(x.shape) + 1e-6, "grad_input")
    assert_within(w.grad, ref_dw, bound_dw + 1e-6, "grad_weight")
    if b is not None:
        assert b.grad.dtype == dtype
        assert_within(b.grad, ref_db, bound_db + 1e-6, "grad_bias")


def fwd_bound_pre(x32, w32, b, k):
    magnitude = x32.abs() @ w32.abs().t()
    if b is not None:
        magnitude = magnitude + b.detach().float().abs()
    return 2 * gamma(k) * magnitude


def test_the_bounds_can_fail():
    """The forward bound rejects a result accumulated in fp16 (the error fp32 accumulation exists
    to avoid), so passing it means something."""
    x, w, b = make_problem((64,), 4096, 32, torch.float16, "cpu", seed=3)
    ref, _ = reference(x, w, b, "none")
    products = x.float()[:, None, :] * w.float()[None, :, :]  # [64, 32, 4096], exact in fp32
    running = torch.zeros(64, 32, dtype=torch.float16)
    for i in range(4096):
        running = (running.float() + products[..., i]).half()  # every partial sum rounded to fp16
    fp16_accumulated = (running.float() + b.float()).half()
    bound = forward_bound(x, w, b, "none", ref, torch.float16)
    assert ((fp16_accumulated.float() - ref).abs() > bound).any()
    assert ((ampkit.fused_linear(x, w, b).float() - ref).abs() <= bound).all()


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32_inputs_run_in_float32(device, activation):
    x, w, b = make_problem((9,), 20, 12, torch.float32, device)
    out = ampkit.fused_linear(x, w, b, activation)
    ref, _ = reference(x, w, b, activation)
    assert out.dtype == torch.float32
    assert_within(out, ref, forward_bound(x, w, b, activation, ref, torch.float32) + 1e-6, "output")


def test_non_contiguous_inputs(device):
    x, w, b = make_problem((6,), 10, 8, torch.float16, device)
    x_t = x.t().contiguous().t()  # same values, column-major strides
    w_t = w.t().contiguous().t()
    assert not x_t.is_contiguous() and not w_t.is_contiguous()
    assert torch.equal(ampkit.fused_linear(x_t, w_t, b, "gelu"), ampkit.fused_linear(x, w, b, "gelu"))


@pytest.mark.parametrize("device_type,dtype", [("cpu", torch.bfloat16), ("cuda", torch.float16)])
def test_autocast_runs_fp32_inputs_in_the_autocast_dtype(device, device_type, dtype):
    if device != device_type:
        pytest.skip(f"autocast on {device_type} needs {device_type} tensors")
    x, w, b = make_problem((2, 5), 24, 16, torch.float32, device)
    w.requires_grad_()
    with torch.autocast(device_type, dtype=dtype):
        out = ampkit.fused_linear(x, w, b, "gelu")
    assert out.dtype == dtype
    # Exactly what the op computes on inputs cast to the autocast dtype, through the same path (a
    # weight that needs a gradient takes the forward that saves the GELU input: another epilogue,
    # on CUDA maybe another kernel).
    w_cast = w.detach().to(dtype).requires_grad_()
    assert torch.equal(out, ampkit.fused_linear(x.to(dtype), w_cast, b.to(dtype), "gelu").detach())
    out.float().sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_autocast_casts_as_torch_linear_does(dtype):
    x, w, b = make_problem((4,), 8, 8, torch.float32, "cpu")
    x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ampkit.fused_linear(x, w, b, "relu")
        expected = F.linear(x, w, b)
    # torch's lower-precision ops cast every float16/bfloat16/float32 input to the autocast dtype.
    assert out.dtype == expected.dtype == torch.bfloat16


def test_double_backward_is_a_clear_error(device):
    x, w, b = make_problem((3,), 4, 5, torch.float32, device)
    x.requires_grad_()
    w.requires_grad_()
    (grad_x,) = torch.autograd.grad(ampkit.fused_linear(x, w, b, "gelu").sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="fused_linear has no double backward"):
        grad_x.sum().backward()


def test_no_graph_recorded_without_grad(device):
    x, w, b = make_problem((4,), 8, 8, torch.float16, device)
    out = ampkit.fused_linear(x, w, b, "gelu")
    assert out.grad_fn is None
    w.requires_grad_()
    with torch.no_grad():
        assert ampkit.fused_linear(x, w, b, "gelu").grad_fn is None
    assert ampkit.fused_linear(x, w, b, "gelu").grad_fn is not None


# ---- bad input ----
def _t(*shape, dtype=torch.float16, device="cpu"):
    return torch.ones(*shape, dtype=dtype, device=device)


BAD_INPUTS = [
    ("mismatched inner dimensions", lambda: (_t(3, 7), _t(5, 6), _t(5), "none"), RuntimeError,
     "weight (argument 1) must have shape [out_features, 7] to match the last dimension of input [3, 7], got [5, 6]"),
    ("bias of wrong length", lambda: (_t(3, 7), _t(5, 7), _t(4), "none"), RuntimeError,
     "bias (argument 2) must have shape [5] (out_features of weight [5, 7]), got [4]"),
    ("2-D bias", lambda: (_t(3, 7), _t(5, 7), _t(1, 5), "none"), RuntimeError,
     "bias (argument 2) must have shape [5]"),
    ("mixed dtypes", lambda: (_t(3, 7), _t(5, 7, dtype=torch.bfloat16), None, "none"), TypeError,
     "weight (argument 1) must have the dtype of input (float16), got bfloat16"),
    ("bias of another dtype", lambda: (_t(3, 7), _t(5, 7), _t(5, dtype=torch.float32), "none"), TypeError,
     "bias (argument 2) must have the dtype of input (float16), got float32"),
    ("integer input", lambda: (_t(3, 7, dtype=torch.int64), _t(5, 7), None, "none"), TypeError,
     "input (argument 0) must have dtype float32, float16 or bfloat16, got int64"),
    ("integer weight", lambda: (_t(3, 7), _t(5, 7, dtype=torch.int32), None, "none"), TypeError,
     "weight (argument 1) must have dtype float32, float16 or bfloat16, got int32"),
    ("float64", lambda: (_t(3, 7, dtype=torch.float64), _t(5, 7, dtype=torch.float64), None, "none"), TypeError,
     "input (argument 0) must have dtype float32, float16 or bfloat16, got float64"),
    ("unsupported activation", lambda: (_t(3, 7), _t(5, 7), None, "tanh"), ValueError,
     "activation must be one of 'none', 'relu', 'gelu' (tanh approximation), got 'tanh'"),
    ("1-D weight", lambda: (_t(3, 7), _t(7), None, "none"), RuntimeError,
     "weight (argument 1) must be 2-D [out_features, in_features], got shape [7]"),
    ("0-d input", lambda: (torch.tensor(1.0, dtype=torch.float16), _t(5, 1), None, "none"), RuntimeError,
     "input (argument 0) must have at least one dimension"),
    ("weight on another device", lambda: (_t(3, 7), _t(5, 7, device="meta"), None, "none"), RuntimeError,
     "weight (argument 1) must be on cpu (the device of input), got meta"),
    ("sparse input", lambda: (_t(3, 7).to_sparse(), _t(5, 7), None, "none"), RuntimeError,
     "input (argument 0) must be a dense (strided) tensor"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
def test_bad_input_is_a_clear_error(case, requires_grad):
    _, make_args, error, message = case
    x, w, b, activation = make_args()
    if requires_grad and w.is_floating_point() and not w.is_sparse and w.device.type != "meta":
        w.requires_grad_()
    with pytest.raises(error) as info:
        torch.ops.ampkit.fused_linear(x, w, b, activation)
    assert message in str(info.value)


def test_backward_op_rejects_mismatched_saved_and_grad():
    x, w, b = make_problem((4,), 8, 6, torch.float16, "cpu")
    out, saved = torch.ops.ampkit.fused_linear_forward(x, w, b, "gelu")
    assert saved.shape == (4, 8)  # out_features 6 padded to 8
    with pytest.raises(RuntimeError, match=r"saved \(argument 3\) must have shape \[4, 8\]"):
        torch.ops.ampkit.fused_linear_backward(out, x, w, saved[:, :6], "gelu")
    with pytest.raises(RuntimeError, match=r"grad_output \(argument 0\) must have the output's shape \[4, 6\]"):
        torch.ops.ampkit.fused_linear_backward(out[:3], x, w, saved, "gelu")


def _has_cuda_kernel() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("ampkit::fused_linear", "CUDA")


@pytest.mark.skipif(not _has_cuda_kernel(), reason="built without CUDA kernels")
@pytest.mark.parametrize("op_name", ["fused_linear", "fused_linear_forward"])
def test_cpu_tensors_to_the_cuda_kernel_are_a_clear_error(op_name):
    # The CUDA kernel is reached only through the dispatcher; calling it by key with CPU tensors
    # (what a wrong device guard or a hand-made redispatch would do) is an error, not a fault.
    x, w, b = make_problem((4,), 8, 6, torch.float16, "cpu")
    op = getattr(torch.ops.ampkit, op_name).default
    with pytest.raises(RuntimeError, match=r"input \(argument 0\) must be a CUDA tensor for the CUDA kernel, got cpu"):
        op.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), x, w, b, "gelu")


@pytest.mark.skipif(not _has_cuda_kernel(), reason="built without CUDA kernels")
def test_cpu_tensors_to_the_cuda_backward_kernel_are_a_clear_error():
    x, w, b = make_problem((4,), 8, 6, torch.float16, "cpu")
    out, saved = torch.ops.ampkit.fused_linear_forward(x, w, b, "gelu")
    with pytest.raises(RuntimeError, match=r"must be a CUDA tensor for the CUDA kernel, got cpu"):
        torch.ops.ampkit.fused_linear_backward.default.redispatch(
            torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), out, x, w, saved, "gelu")


@pytest.mark.cuda
def test_mixed_cpu_and_cuda_tensors_are_a_clear_error():
    x, w, b = make_problem((4,), 8, 6, torch.float16, "cuda")
    with pytest.raises(RuntimeError, match=r"weight \(argument 1\) must be on cuda:0 \(the device of input\), got cpu"):
        ampkit.fused_linear(x, w.cpu(), b)
    with pytest.raises(RuntimeError, match=r"bias \(argument 2\) must be on cuda:0 \(the device of input\), got cpu"):
        ampkit.fused_linear(x, w, b.cpu())


# ---- CUDA-only numerics: large K, misaligned operands ----
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cuda_large_k_and_misaligned_pointers(dtype, activation):
    x, w, b = make_problem((129,), 4099, 263, dtype, "cuda", seed=5)
    # Views starting 1 element into a buffer: 2-byte aligned operands, which the algorithm
    # selection must account for.
    x_buf = torch.empty(x.numel() + 1, dtype=dtype, device="cuda")
    x_buf[1:].copy_(x.flatten())
    x_view = x_buf[1:].view_as(x)
    out = ampkit.fused_linear(x_view, w, b, activation)
    ref, _ = reference(x, w, b, activation)
    assert_within(out, ref, forward_bound(x, w, b, activation, ref, dtype), "output")


def test_cpu_kernels_count_no_fused_epilogues():
    """ampkit._native.fused_epilogue_counts() counts the CUDA kernels' epilogue GEMMs (fused in cuBLASLt
    or not); the CPU kernels have none, so a CPU call leaves both counts at zero."""
    ampkit._native.reset_fused_epilogue_counts()
    x, w, b = make_problem((4,), 8, 6, torch.float16, "cpu")
    ampkit.fused_linear(x, w, b, "gelu")
    assert ampkit._native.fused_epilogue_counts() == {"fused": 0, "unfused": 0}


@pytest.mark.cuda
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cuda_epilogue_runs_fused_at_a_standard_shape(activation):
    """At 256 x 1024 -> 512 fp16 with a bias, fresh (256-byte aligned) allocations and every
    dimension a multiple of 16, cuBLASLt's BIAS / RELU_BIAS / GELU_BIAS epilogue must run fused: a
    silent fallback to the unfused path on every call would otherwise go unnoticed (the results are
    the same within the bounds). With a weight that needs a gradient, the forward's GELU_AUX_BIAS
    (saved input leading dimension 512, divisible by 8 as EPILOGUE_AUX_LD requires) is fused too."""
    x, w, b = make_problem((256,), 1024, 512, torch.float16, "cuda", seed=6)
    ampkit._native.reset_fused_epilogue_counts()
    out = ampkit.fused_linear(x, w, b, activation)
    assert ampkit._native.fused_epilogue_counts() == {"fused": 1, "unfused": 0}
    ref, _ = reference(x, w, b, activation)
    assert_within(out, ref, forward_bound(x, w, b, activation, ref, torch.float16), "output")
    ampkit._native.reset_fused_epilogue_counts()
    w.requires_grad_()
    out = ampkit.fused_linear(x, w, b, activation)
    assert ampkit._native.fused_epilogue_counts() == {"fused": 1, "unfused": 0}
    out.float().sum().backward()
    # The backward's BGRADB wgrad: counted, fused or not (cublasLt.h promises no fused algorithm).
    counts = ampkit._native.fused_epilogue_counts()
    assert counts["fused"] + counts["unfused"] == 2


def _offset_view(t):
    """The same values in a view one element into a larger buffer (2-byte aligned on CUDA)."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    buffer[1:].copy_(t.flatten())
    return buffer[1:].view_as(t)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
def test_misaligned_bias_input_and_weight_views(device, dtype, activation):
    """Slices of larger buffers everywhere: on CUDA the epilogues refuse a bias that is not 16-byte
    aligned, so the op takes the plain GEMM + separate bias/activation passes; the result must
    still be within the forward bound, and the gradients within 8 units of rounding (plus 8 u of
    the mean magnitude) of those of aligned copies: the unfused path rounds the pre-activation
    once more and sums the bias gradient in another order."""
    x, w, b = make_problem((7,), 24, 40, dtype, device, seed=4)
    views = [_offset_view(t).requires_grad_() for t in (x, w, b)]
    copies = [t.clone().requires_grad_() for t in (x, w, b)]
    out = ampkit.fused_linear(*views, activation)
    ref, _ = reference(x, w, b, activation)
    assert_within(out, ref, forward_bound(x, w, b, activation, ref, dtype), "output")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype=dtype, device=device)
    out.backward(grad)
    ampkit.fused_linear(*copies, activation).backward(grad)
    u = U_OUT[dtype]
    for name, view, copy in zip(("grad_input", "grad_weight", "grad_bias"), views, copies):
        expected = copy.grad.float()
        bound = 8 * u * (expected.abs() + expected.abs().mean())
        assert_within(view.grad, expected, bound, name)


# ---- torch.library and torch.compile ----
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_opcheck(device, activation):
    x, w, b = make_problem((2, 3), 12, 10, torch.float16, device)
    torch.library.opcheck(torch.ops.ampkit.fused_linear.default, (x, w, b, activation))
    args = (x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_(), activation)
    torch.library.opcheck(torch.ops.ampkit.fused_linear.default, args)
    torch.library.opcheck(torch.ops.ampkit.fused_linear.default, (x, w, None, activation))
    out, saved = torch.ops.ampkit.fused_linear_forward(x, w, b, activation)
    torch.library.opcheck(torch.ops.ampkit.fused_linear_forward.default, (x, w, b, activation))
    backward_saved = out if activation == "relu" else saved
    torch.library.opcheck(torch.ops.ampkit.fused_linear_backward.default,
                          (torch.randn_like(out), x, w, backward_saved, activation))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_runs_under_torch_compile_without_graph_break(device, dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(ampkit.nn.FusedLinear(16, 32, activation="gelu"),
                                ampkit.nn.FusedLinear(32, 8, activation="relu"),
                                ampkit.nn.FusedLinear(8, 4)).to(device=device, dtype=dtype)
    x = torch.randn(3, 5, 16, dtype=dtype, device=device)

    def step(inputs):
        return model(inputs).float().square().sum()

    eager_loss = step(x)
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.equal(loss, eager_loss)
    for a, b in zip(grads, eager_grads):
        assert torch.equal(a, b)
    explanation = torch._dynamo.explain(step)(x)
    assert explanation.graph_break_count == 0


def test_ops_are_tagged_pt2_compliant():
    for name in ("fused_linear", "fused_linear_forward", "fused_linear_backward"):
        assert torch.Tag.pt2_compliant_tag in getattr(torch.ops.ampkit, name).default.tags


# ---- modules ----
def test_fused_linear_module_loads_a_linear_state_dict(device):
    torch.manual_seed(0)
    linear = torch.nn.Linear(20, 12).to(device)
    fused = ampkit.nn.FusedLinear(20, 12, activation="relu", device=device)
    fused.load_state_dict(linear.state_dict())
    x = torch.randn(4, 20, device=device)
    ref = torch.relu(linear(x))
    assert_within(fused(x), ref.detach(),
                  forward_bound(x, linear.weight.detach(), linear.bias.detach(), "relu", ref.detach(), torch.float32),
                  "output")
    assert fused.weight.shape == linear.weight.shape and "activation=relu" in repr(fused)


def test_fused_linear_module_initialises_like_linear():
    torch.manual_seed(0)
    fused = ampkit.nn.FusedLinear(300, 200)
    bound = 1 / 300 ** 0.5  # kaiming_uniform(a=sqrt(5)) and the bias both give U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert fused.weight.abs().max() <= bound and fused.weight.abs().max() > 0.95 * bound
    assert fused.bias.abs().max() <= bound
    assert ampkit.nn.FusedLinear(3, 2, bias=False).bias is None
    with pytest.raises(ValueError, match="activation must be one of 'none', 'relu', 'gelu'"):
        ampkit.nn.FusedLinear(3, 2, activation="swish")


def test_fuse_linear_activations_swaps_pairs_and_shares_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 16), torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU(approximate="tanh")),
        torch.nn.Linear(16, 12), torch.nn.GELU(),  # exact GELU: not the fused tanh form, left alone
        torch.nn.Linear(12, 4),
    )
    x = torch.randn(6, 10)
    before = model(x).detach()
    parameters = list(model.parameters())
    assert ampkit.fuse_linear_activations(model) == 2
    assert isinstance(model[0], ampkit.nn.FusedLinear) and model[0].activation == "relu"
    assert isinstance(model[1], torch.nn.Identity)
    assert isinstance(model[2][0], ampkit.nn.FusedLinear) and model[2][0].activation == "gelu"
    assert isinstance(model[3], torch.nn.Linear) and isinstance(model[4], torch.nn.GELU)
    assert all(a is b for a, b in zip(model.parameters(), parameters))  # an optimizer built before still works
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)  # fp32: same math, other summation order
    assert ampkit.fuse_linear_activations(model, include_exact_gelu=True) == 1
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ---- fused_mlp: Linear -> GELU(tanh) -> Linear ----
# Same error model as above, composed through the two layers. Eh bounds |our hidden - reference
# hidden| (layer 1's accumulation through GELU, a possible hardware tanh, one rounding); the
# output adds layer 2's accumulation over H and its rounding. In the backward, the GELU
# derivative is taken at the rounded pre-activation (and possibly with the hardware tanh:
# 2^-10 (1 + |pre|) covers it), grad_pre is rounded before layers 1's GEMMs, and bias1's gradient
# may be summed from rounded terms.
MLP_SHAPES = [
    ((7,), 13, 20, 11),
    ((2, 5), 33, 24, 17),
    ((4,), 1, 9, 3),
    ((0,), 16, 8, 8),
    ((5,), 10, 1, 4),
    ((64,), 64, 128, 40),
]


def make_mlp(lead, k, h, n, dtype, device, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(*lead, k, generator=generator), torch.randn(h, k, generator=generator) / k ** 0.5,
               0.5 * torch.randn(h, generator=generator) if bias else None,
               torch.randn(n, h, generator=generator) / h ** 0.5,
               0.5 * torch.randn(n, generator=generator) if bias else None]
    return [None if t is None else t.to(dtype=dtype, device=device) for t in tensors]


@pytest.mark.parametrize("shape", MLP_SHAPES, ids=[f"{lead}x{k}->{h}->{n}" for lead, k, h, n in MLP_SHAPES])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["fp16", "bf16"])
def test_fused_mlp_matches_fp32_reference(device, dtype, bias, shape):
    lead, k, h, n = shape
    params = make_mlp(lead, k, h, n, dtype, device, bias)
    for t in params:
        if t is not None:
            t.requires_grad_()
    x, w1, b1, w2, b2 = params
    out = ampkit.fused_mlp(x, w1, b1, w2, b2)
    assert out.dtype == dtype and out.shape == (*lead, n)

    f32 = [None if t is None else t.detach().float().requires_grad_() for t in params]
    pre = F.linear(f32[0], f32[1], f32[2])
    hidden = F.gelu(pre, approximate="tanh")
    ref = F.linear(hidden, f32[3], f32[4])
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype=dtype, device=device)
    out.backward(grad)
    ref.backward(grad.float())

    u, lip, lip2 = U_OUT[dtype], LIPSCHITZ["gelu"], GELU_SECOND_DERIVATIVE_BOUND
    m = x.numel() // k if k else 0
    xa, w1a, w2a = f32[0].detach().abs().reshape(-1, k), f32[1].detach().abs(), f32[3].detach().abs()
    pre_a, hidden_a = pre.detach().abs().reshape(-1, h), hidden.detach().abs().reshape(-1, h)
    s1 = xa @ w1a.t() + (f32[2].detach().abs() if bias else 0)
    e_hidden = lip * 2 * gamma(k) * s1 + 1.01 * u * hidden_a + 2.0 ** -11 * pre_a
    s2 = hidden_a @ w2a.t() + (f32[4].detach().abs() if bias else 0)
    bound_out = e_hidden @ w2a.t() + 2 * gamma(h) * s2 + 1.01 * u * ref.detach().abs().reshape(-1, n) + 1e-6
    assert_within(out.reshape(-1, n), ref.detach().reshape(-1, n), bound_out, "output")

    g_a = grad.float().abs().reshape(-1, n)
    g2 = g_a @ w2a  # bounds |grad_hidden|
    e_pre = (g2 * (lip2 * (u * pre_a + 2 * gamma(k) * s1) + 2.0 ** -10 * (1 + pre_a))
             + lip * (2 * gamma(n) + u) * g2)
    expected = {
        "grad_input": (x, f32[0], (e_pre @ w1a + 2 * gamma(h) * lip * (g2 @ w1a)).reshape(x.shape)),
        "grad_weight1": (w1, f32[1], e_pre.t() @ xa + 2 * gamma(m) * lip * (g2.t() @ xa)),
        "grad_weight2": (w2, f32[3], g_a.t() @ e_hidden + 2 * gamma(m) * (g_a.t() @ hidden_a)),
    }
    if bias:
        expected["grad_bias1"] = (b1, f32[2], e_pre.sum(0) + (2 * gamma(m) + u) * lip * g2.sum(0))
        expected["grad_bias2"] = (b2, f32[4], (2 * gamma(m) + u) * g_a.sum(0))
    for what, (ours, reference, bound) in expected.items():
        assert ours.grad.dtype == dtype
        ref_grad = reference.grad
        assert_within(ours.grad, ref_grad, bound + 1.01 * u * ref_grad.abs() + 1e-6, what)


def test_fused_mlp_autocast_and_bad_input(device):
    x, w1, b1, w2, b2 = make_mlp((3,), 8, 16, 4, torch.float32, device)
    device_type = torch.device(device).type
    low = torch.bfloat16 if device_type == "cpu" else torch.float16
    with torch.autocast(device_type, dtype=low):
        out = ampkit.fused_mlp(x, w1, b1, w2, b2)
    assert out.dtype == low
    assert torch.equal(out, ampkit.fused_mlp(*(t.to(low) for t in (x, w1, b1, w2, b2))))
    with pytest.raises(RuntimeError, match=r"weight2 \(argument 3\) must have shape \[out_features, 16\] to match "
                                           r"the hidden features of weight1, got \[4, 15\]"):
        ampkit.fused_mlp(x, w1, b1, w2[:, :15], b2)
    with pytest.raises(RuntimeError, match=r"bias2 \(argument 4\) must have shape \[4\]"):
        ampkit.fused_mlp(x, w1, b1, w2, b1)
    with pytest.raises(TypeError, match=r"weight1 \(argument 1\) must have the dtype of input \(float32\), got float16"):
        ampkit.fused_mlp(x, w1.half(), b1, w2, b2)


def test_fused_mlp_opcheck_and_compile(device):
    x, w1, b1, w2, b2 = make_mlp((2, 3), 12, 24, 10, torch.float16, device)
    torch.library.opcheck(torch.ops.ampkit.fused_mlp.default, (x, w1, b1, w2, b2))
    grads = [t.clone().requires_grad_() for t in (x, w1, b1, w2, b2)]
    torch.library.opcheck(torch.ops.ampkit.fused_mlp.default, tuple(grads))
    torch.library.opcheck(torch.ops.ampkit.fused_mlp.default, (x, w1, None, w2, None))
    out, hidden, pre = torch.ops.ampkit.fused_mlp_forward(x, w1, b1, w2, b2)
    assert hidden.shape == (6, 24) and pre.shape == (6, 24)
    torch.library.opcheck(torch.ops.ampkit.fused_mlp_forward.default, (x, w1, b1, w2, b2))
    torch.library.opcheck(torch.ops.ampkit.fused_mlp_backward.default,
                          (torch.randn_like(out), x, w1, w2, hidden, pre))

    model = ampkit.nn.FusedMLP(12, 24, 10, device=device)
    inputs = torch.randn(4, 12, device=device)
    eager = torch.autograd.grad(model(inputs).square().sum(), list(model.parameters()))
    compiled = torch.compile(lambda t: model(t).square().sum(), fullgraph=True, backend="aot_eager")
    for a, b in zip(torch.autograd.grad(compiled(inputs), list(model.parameters())), eager):
        assert torch.equal(a, b)


def test_fuse_linear_activations_makes_mlp_blocks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(32, 10),
                                torch.nn.Linear(10, 8), torch.nn.GELU(approximate="tanh"))
    x = torch.randn(5, 10)
    before = model(x).detach()
    parameters = list(model.parameters())
    assert ampkit.fuse_linear_activations(model) == 2
    assert isinstance(model[0], ampkit.nn.FusedMLP)
    assert isinstance(model[1], torch.nn.Identity) and isinstance(model[2], torch.nn.Identity)
    assert isinstance(model[3], ampkit.nn.FusedLinear) and model[3].activation == "gelu"
    assert all(a is b for a, b in zip(model.parameters(), parameters))
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert set(model[0].state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    with pytest.raises(ValueError, match="fc2.in_features"):
        ampkit.nn.FusedMLP.from_linears(torch.nn.Linear(3, 4), torch.nn.Linear(5, 2))


# ---- the CPU's low-precision route ----
def _cpu_multiplies_bf16() -> bool:
    capabilities = torch._C._cpu._get_cpu_capability()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16")) and torch.backends.mkldnn.is_available()


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cpu_bf16_products_accumulate_in_fp32(activation):
    """One 1 and 4095 values of 2^-9 along each summed dimension: accumulated in fp32 they sum to
    8.998 (9 in bf16); a bf16 accumulator stays at 1, since 1 + 2^-9 rounds back to 1 in bf16. The
    forward sums over K, grad_input over N, grad_weight and grad_bias over the rows."""
    n = 4096
    column = torch.full((n,), 2.0 ** -9)
    column[0] = 1
    # Forward: K = 4096 (a positive sum: the same through every activation).
    x, w = column.reshape(1, n).bfloat16(), torch.ones(1, n, dtype=torch.bfloat16)
    assert ampkit.fused_linear(x, w, activation=activation).item() == pytest.approx(activate(torch.tensor(9.0), activation).item(), rel=2 ** -8)
    # Backward (activation "none": the gradient at the output is the gradient at the pre-activation).
    x_rows = column.reshape(n, 1).bfloat16()
    w_row = torch.ones(1, 1, dtype=torch.bfloat16)
    out, saved = torch.ops.ampkit.fused_linear_forward(x_rows, w_row, None, "none")
    grad_input, grad_weight, grad_bias = torch.ops.ampkit.fused_linear_backward(
        column.reshape(n, 1).bfloat16(), x_rows, w_row, saved, "none")
    assert grad_bias.item() == 9.0  # sum of the gradient over 4096 rows
    assert grad_weight.item() == pytest.approx(1 + 4095 * 2.0 ** -18, rel=2 ** -8)  # sum of grad * x over rows
    # grad_input sums over N = 4096 output features.
    grad, w_wide = torch.ones(1, n, dtype=torch.bfloat16), column.reshape(n, 1).bfloat16()
    out, saved = torch.ops.ampkit.fused_linear_forward(torch.ones(1, 1, dtype=torch.bfloat16), w_wide, None, "none")
    grad_input, _, _ = torch.ops.ampkit.fused_linear_backward(grad, torch.ones(1, 1, dtype=torch.bfloat16), w_wide,
                                                              saved, "none")
    assert grad_input.item() == 9.0


@pytest.mark.skipif(not _cpu_multiplies_bf16(), reason="this CPU has neither AVX512-BF16 nor AMX-BF16")
def test_cpu_bf16_runs_low_precision_gemms_without_widening_copies():
    """Where the CPU multiplies bf16 in hardware, fused_linear's forward and backward are bf16 GEMMs
    (oneDNN, fp32 accumulation) with the GELU as oneDNN's post-op: no operand is widened to fp32."""
    from torch.profiler import profile

    torch.manual_seed(0)
    x = torch.randn(64, 128, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(256, 128, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(256, dtype=torch.bfloat16, requires_grad=True)
    x2 = torch.randn(64, 128, dtype=torch.bfloat16, requires_grad=True)
    model = ampkit.nn.FusedMLP(128, 256, 128, dtype=torch.bfloat16)
    with profile() as run:
        ampkit.fused_linear(x, w, b, activation="gelu").sum().backward()
        model(x2).sum().backward()
    # What ampkit's ops ran (aten::to of a tensor already in its dtype copies nothing).
    names = [event.name for event in run.events()
             if event.cpu_parent is not None and event.cpu_parent.name.startswith("ampkit::")]
    assert "aten::_to_copy" not in names, names
    assert "aten::copy_" not in names, names  # widths of 256: the GEMM writes the saved GELU input itself
    assert names.count("mkldnn::_linear_pointwise") == 2  # the GELU forwards
    assert names.count("aten::mm") + names.count("aten::addmm") == 2 + 4 + 1 + 2, names


def test_both_cpu_routes_meet_the_same_bounds():
    """AMPKIT_CPU_LINEAR=fp32 forces the widened fp32 route (what CPUs without bf16 units run): the
    bound tests pass there too, run in a child process (the route is chosen once per process)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, AMPKIT_CPU_LINEAR="fp32")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
                             "-k", "match_fp32_reference or matches_fp32_reference or accumulate_in_fp32"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


GELU_GRAD_CASE = """
import sys, torch, ampkit
torch.manual_seed(0)
results = {}
for dtype in (torch.bfloat16,):
    for features in (1, 15, 16, 17, 515):  # vector tails, and a saved tensor padded to a multiple of 8
        rows = 67
        pre = (torch.randn(rows, features) * 4).to(dtype)
        specials = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 1e-30, 40.0, -40.0, -0.75,
                                 6e4, -6e4, 1e-7])
        flat = pre.view(-1)
        flat[: min(flat.numel(), specials.numel())] = specials[: flat.numel()].to(dtype)
        grad = torch.randn(rows, features).to(dtype)
        padded = -(-features // 8) * 8
        saved = torch.full((rows, padded), 7.0, dtype=dtype)
        saved[:, :features] = pre
        x, w = torch.zeros(rows, 3, dtype=dtype), torch.zeros(features, 3, dtype=dtype)
        torch.set_num_threads(2)
        # grad_pre itself comes back as grad_bias when every row is its own call (the sum of one row)
        grad_pre = torch.cat([torch.ops.ampkit.fused_linear_backward(grad[r:r + 1], x[r:r + 1], w, saved[r:r + 1],
                                                                      "gelu")[2][None] for r in range(rows)])
        results[f"{dtype}/{features}"] = (grad, pre, grad_pre)
torch.save(results, sys.argv[1])
"""


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != "AVX512", reason="the vector GELU backward is AVX-512")
def test_cpu_vector_gelu_backward_matches_atens(tmp_path):
    """The CPU's bf16 GELU backward (cpu/gelu.cpp, an exp-based tanh on AVX-512) against ATen's
    gelu_backward, which AMPKIT_CPU_ISA=avx2 runs instead, over ±inf, NaN, ±0, huge and tiny inputs,
    row tails and a padded saved tensor, at 2 threads. Bound: 1 ulp of the dtype at ATen's value plus
    4e-6 |grad|. Both evaluate the derivative in fp32 with an absolute error below ~1e-6 (ATen's tanh
    is Sleef's, ours exp-based), and where its two terms cancel (pre near -0.75) that error is all
    there is of a tiny result (ATen's own vector loop and scalar tail differ there by as much: 3e-7
    against 0 at pre = -5.1); elsewhere both round the same fp32 value, ties aside."""
    import os
    import subprocess
    import sys

    outputs = {}
    for level in ("avx512", "avx2"):
        path = tmp_path / f"{level}.pt"
        env = dict(os.environ, AMPKIT_CPU_ISA=level)
        result = subprocess.run([sys.executable, "-c", GELU_GRAD_CASE, str(path)], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[level] = torch.load(path)
    for key, (grad, pre, ours) in outputs["avx512"].items():
        theirs = outputs["avx2"][key][2]
        assert torch.equal(ours.isnan(), theirs.isnan()), key
        finite = ~theirs.isnan()
        dtype = theirs.dtype
        magnitude = theirs.double().abs().clamp_min(torch.finfo(dtype).tiny)
        ulp = torch.pow(2.0, torch.floor(torch.log2(magnitude))) * torch.finfo(dtype).eps
        bound = ulp + 4e-6 * grad.double().abs()
        error = (ours.double() - theirs.double()).abs()
        assert bool((error[finite] <= bound[finite]).all()), f"{key}: max excess {(error - bound)[finite].max():.3g}"
        assert bool((ours[finite].isinf() == theirs[finite].isinf()).all()), key
