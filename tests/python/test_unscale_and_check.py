"""unscale_and_check_ against plain-torch references, on every device under test."""
from __future__ import annotations

import pytest
import torch

import ampkit  # noqa: F401  (registers torch.ops.ampkit.*)
from conftest import run_with_baseline_cpu_isa

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
# Sizes: empty, one element, below one 16-byte vector, odd, several 65536-element chunks.
NUMELS = [0, 1, 3, 1001, 70000, 200003]
INV_SCALE = 2.0 ** -13 * 1.5  # not a power of two, so the fp16/bf16 results need rounding
op = torch.ops.ampkit.unscale_and_check_


def make(numels, dtype, device, seed=0, magnitude=1000.0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=generator) * magnitude).to(dtype=dtype, device=device) for n in numels]


def scalar(value, device):
    return torch.full((), value, dtype=torch.float32, device=device)


def expected_unscaled(grad, inv_scale):
    # The kernel's arithmetic: fp32 multiply, one rounding to the grad's dtype.
    return (grad.float() * torch.tensor(inv_scale, dtype=torch.float32, device=grad.device)).to(grad.dtype)


def assert_bitwise(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def reference_norm(grads):
    if not grads:
        return 0.0
    return torch.linalg.vector_norm(torch.cat([g.detach().double().flatten().cpu() for g in grads])).item()


# Tolerance of the fused norm against a float64 reference. CPU accumulates in double, so only
# the final rounding to fp32 (2^-24 relative) remains. CUDA sums squares in fp32 per thread
# (<= 128 terms) and per block before a double finish: relative error below ~256 * 2^-24.
def norm_rtol(device):
    return 1e-6 if device == "cpu" else 2e-5


@pytest.mark.parametrize("dtype", FLOATS)
def test_unscale_matches_reference_bitwise(device, dtype):
    grads = make(NUMELS, dtype, device)
    originals = [g.clone() for g in grads]
    found_inf = torch.zeros(1, device=device)
    op(grads, found_inf, scalar(INV_SCALE, device))
    for before, after in zip(originals, grads):
        assert_bitwise(after, expected_unscaled(before, INV_SCALE))
    assert found_inf.item() == 0.0


@pytest.mark.parametrize("dtype", FLOATS)
def test_matches_torch_amp_foreach_unscale(device, dtype):
    if device == "cuda" and dtype == torch.bfloat16:
        pytest.skip("torch's CUDA kernel has no bfloat16 path (pytorch/pytorch#127176)")
    ours = make([5, 4097, 70001], dtype, device, seed=3)
    ours[1][100] = float("nan")
    ours[2][-1] = float("-inf")
    theirs = [g.clone() for g in ours]
    found_ours, found_theirs = torch.zeros((), device=device), torch.zeros((), device=device)
    inv_scale = scalar(INV_SCALE, device)
    op(ours, found_ours, inv_scale)
    torch._amp_foreach_non_finite_check_and_unscale_(theirs, found_theirs, inv_scale)
    for a, b in zip(ours, theirs):
        assert_bitwise(a, b)
    assert found_ours.item() == found_theirs.item() == 1.0


def test_mixed_dtypes_in_one_call(device):
    grads = []
    for i, dtype in enumerate(FLOATS * 3):
        grads += make([1000 + 37 * i, 65536 + i], dtype, device, seed=i)
    originals = [g.clone() for g in grads]
    found_inf, norm = torch.zeros(1, device=device), torch.zeros(1, device=device)
    op(grads, found_inf, scalar(INV_SCALE, device), norm)
    for before, after in zip(originals, grads):
        assert after.dtype == before.dtype
        assert_bitwise(after, expected_unscaled(before, INV_SCALE))
    assert found_inf.item() == 0.0
    assert norm.item() == pytest.approx(reference_norm(grads), rel=norm_rtol(device))


def test_empty_list_and_empty_tensors(device):
    found_inf, norm = torch.zeros(1, device=device), torch.full((1,), 7.0, device=device)
    op([], found_inf, scalar(0.5, device), norm)
    assert found_inf.item() == 0.0 and norm.item() == 0.0
    empties = [torch.empty(0, device=device), torch.empty(0, 3, dtype=torch.float16, device=device)]
    op(empties, found_inf, scalar(0.5, device), norm)
    assert found_inf.item() == 0.0 and norm.item() == 0.0


def test_one_huge_tensor(device):
    # 2^25 + 5 fp16 elements: 513 chunks, more blocks than one launch table holds (320), so one
    # tensor is split across launches; the odd tail exercises the scalar path.
    n = (1 << 25) + 5
    grad = torch.full((n,), 1024.0, dtype=torch.float16, device=device)
    grad[-1] = 2048.0
    grad[n // 2] = -512.0
    found_inf, norm = torch.zeros(1, device=device), torch.zeros(1, device=device)
    op([grad], found_inf, scalar(2.0 ** -10, device), norm)
    assert grad[-1].item() == 2.0 and grad[n // 2].item() == -0.5
    assert (grad[: n // 2] == 1.0).all().item() and (grad[n // 2 + 1 : -1] == 1.0).all().item()
    expected_norm = ((n - 2) * 1.0 + 4.0 + 0.25) ** 0.5
    assert norm.item() == pytest.approx(expected_norm, rel=norm_rtol(device))
    assert found_inf.item() == 0.0


def test_many_small_tensors(device):
    # 2500 tensors: far more than one launch table's 110 (or 64 with the norm) tensors.
    numels = [1 + (i * 7919) % 300 for i in range(2500)]
    grads = make(numels, torch.bfloat16, device, seed=5)
    originals = [g.clone() for g in grads]
    found_inf, norm = torch.zeros(1, device=device), torch.zeros(1, device=device)
    op(grads, found_inf, scalar(INV_SCALE, device), norm)
    for before, after in zip(originals, grads):
        assert_bitwise(after, expected_unscaled(before, INV_SCALE))
    assert norm.item() == pytest.approx(reference_norm(grads), rel=norm_rtol(device))
    grads[2345][0] = float("inf")
    op(grads, found_inf, scalar(1.0, device))
    assert found_inf.item() == 1.0


@pytest.mark.parametrize("dtype", FLOATS)
def test_non_contiguous_grads(device, dtype):
    base = make([64 * 96], dtype, device, seed=7)[0].view(64, 96)
    storage_before = base.clone()
    transposed = base[:, :48].t()  # neither contiguous nor dense: a slice, then transposed
    dense_transpose = make([33 * 17], dtype, device, seed=8)[0].view(33, 17).t()
    channels_last = make([2 * 3 * 5 * 7], dtype, device, seed=9)[0].view(2, 3, 5, 7).to(
        memory_format=torch.channels_last)
    every_other = make([1000], dtype, device, seed=10)[0][::2]
    grads = [transposed, dense_transpose, channels_last, every_other]
    originals = [g.clone() for g in grads]
    found_inf, norm = torch.zeros(1, device=device), torch.zeros(1, device=device)
    op(grads, found_inf, scalar(INV_SCALE, device), norm)
    for before, after in zip(originals, grads):
        assert_bitwise(after, expected_unscaled(before, INV_SCALE))
    # Elements outside the slice are untouched.
    assert_bitwise(base[:, 48:], storage_before[:, 48:])
    assert norm.item() == pytest.approx(reference_norm(grads), rel=norm_rtol(device))
    assert found_inf.item() == 0.0


@pytest.mark.parametrize("special", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_non_finite_sets_found_inf(device, special, dtype, where):
    grads = make([10, 70000, 7], dtype, device, seed=11)
    tensor, index = {"first": (0, 0), "middle": (1, 65537), "last": (2, 6)}[where]
    grads[tensor][index] = special
    originals = [g.clone() for g in grads]
    found_inf, norm = torch.zeros(1, device=device), torch.zeros(1, device=device)
    op(grads, found_inf, scalar(INV_SCALE, device), norm)
    assert found_inf.item() == 1.0
    # Every element is still unscaled, as torch does (the caller skips the step anyway).
    for before, after in zip(originals, grads):
        assert_bitwise(after, expected_unscaled(before, INV_SCALE))
    assert torch.isnan(norm).item() if special != special else norm.item() == float("inf")


# ---- float64 grads: torch's arithmetic (grad * float inv_scale, in double), inf/NaN test in double ----

def make_float64(numels, device, seed=20, extremes=False):
    """Random doubles; with `extremes`, each tensor of 8+ elements starts with values a float32 round
    trip would change: beyond float32's range (1e300), double-subnormal, float32-subnormal, and one
    with more mantissa bits than float32 holds."""
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for n in numels:
        grad = torch.randn(n, generator=generator, dtype=torch.float64) * 1000.0
        if extremes and n >= 8:
            grad[:4] = torch.tensor([1e300, -1e-310, 3e-42, 1.0 + 2.0 ** -40], dtype=torch.float64)
        grads.append(grad.to(device))
    return grads


@pytest.mark.parametrize("inv_scale", [INV_SCALE, 2.0 ** -16, 0.1, 3.0])
def test_float64_unscale_matches_torch_amp_foreach_unscale_bitwise(device, inv_scale):
    ours = make_float64(NUMELS, device, extremes=True)
    theirs = [g.clone() for g in ours]
    found_ours, found_theirs = torch.zeros((), device=device), torch.zeros((), device=device)
    op(ours, found_ours, scalar(inv_scale, device))
    torch._amp_foreach_non_finite_check_and_unscale_(theirs, found_theirs, scalar(inv_scale, device))
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.float64
        assert_bitwise(a, b)
    # 1e300 is finite in double: no overflow (a float32 test would have called it inf).
    assert found_ours.item() == found_theirs.item() == 0.0
    # And the product really is in double: not the float32 product widened.
    factor = torch.tensor(inv_scale, dtype=torch.float32).double()
    assert ours[4][3].item() == (1.0 + 2.0 ** -40) * factor.item()


@pytest.mark.parametrize("special", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_float64_non_finite_sets_found_inf(device, special, where):
    grads = make_float64([10, 70000, 7], device, seed=21)
    tensor, index = {"first": (0, 5), "middle": (1, 65537), "last": (2, 6)}[where]
    grads[tensor][index] = special
    theirs = [g.clone() for g in grads]
    found_inf, norm = torch.zeros(1, device=device), torch.zeros(1, device=device)
    op(grads, found_inf, scalar(INV_SCALE, device), norm)
    found_theirs = torch.zeros(1, device=device)
    torch._amp_foreach_non_finite_check_and_unscale_(theirs, found_theirs, scalar(INV_SCALE, device))
    assert found_inf.item() == found_theirs.item() == 1.0
    for a, b in zip(grads, theirs):
        assert_bitwise(a, b)
    assert torch.isnan(norm).item() if special != special else norm.item() == float("inf")


def test_float64_mixed_with_every_dtype_in_one_call(device):
    grads = []
    for i, dtype in enumerate(FLOATS * 2):
        grads += make([1000 + 37 * i, 65536 + i], dtype, device, seed=30 + i)
        grads += make_float64([513 + i, 70001], device, seed=40 + i)
    originals = [g.clone() for g in grads]
    found_inf, norm = torch.zeros(1, device=device), torch.zeros(1, device=device)
    op(grads, found_inf, scalar(INV_SCALE, device), norm)
    for before, after in zip(originals, grads):
        assert after.dtype == before.dtype
        if before.dtype == torch.float64:
            expected = before.clone()
            torch._amp_foreach_non_finite_check_and_unscale_([expected], torch.zeros(1, device=device),
                                                            scalar(INV_SCALE, device))
        else:
            expected = expected_unscaled(before, INV_SCALE)
        assert_bitwise(after, expected)
    assert found_inf.item() == 0.0
    assert norm.item() == pytest.approx(reference_norm(grads), rel=norm_rtol(device))


def test_float64_norm_is_summed_in_double(device):
    # Squares of 1e-30 are 1e-60: zero in float32, exact enough in double; and 1e25 squared is past
    # float32's range. The norm of these doubles is still a float32 number, and must be right.
    grad = torch.tensor([1e-30] * 64 + [3e25, 4e25], dtype=torch.float64, device=device)
    found_inf, norm = torch.zeros(1, device=device), torch.zeros(1, device=device)
    op([grad], found_inf, scalar(1.0, device), norm)
    assert norm.item() == pytest.approx(5e25, rel=1e-7)
    tiny = torch.full((1000,), 1e-30, dtype=torch.float64, device=device)
    op([tiny], found_inf, scalar(1.0, device), norm)
    assert norm.item() == pytest.approx(1e-30 * 1000 ** 0.5, rel=1e-6)
    assert found_inf.item() == 0.0


def test_float64_non_contiguous_grads(device):
    base = make_float64([64 * 96], device, seed=22)[0].view(64, 96)
    storage_before = base.clone()
    sliced_transpose = base[:, :48].t()
    dense_transpose = make_float64([33 * 17], device, seed=23)[0].view(33, 17).t()
    channels_last = make_float64([2 * 3 * 5 * 7], device, seed=24)[0].view(2, 3, 5, 7).to(
        memory_format=torch.channels_last)
    every_other = make_float64([1000], device, seed=25)[0][::2]
    grads = [sliced_transpose, dense_transpose, channels_last, every_other]
    theirs = [g.clone() for g in grads]
    found_inf, norm = torch.zeros(1, device=device), torch.zeros(1, device=device)
    op(grads, found_inf, scalar(INV_SCALE, device), norm)
    torch._amp_foreach_non_finite_check_and_unscale_(theirs, torch.zeros(1, device=device), scalar(INV_SCALE, device))
    for a, b in zip(grads, theirs):
        assert_bitwise(a, b)
    assert_bitwise(base[:, 48:], storage_before[:, 48:])
    assert norm.item() == pytest.approx(reference_norm(grads), rel=norm_rtol(device))


def test_float64_inv_scale_one_checks_without_changing_values(device):
    grads = make_float64([1000, 70001], device, seed=26, extremes=True)
    grads[0][7] = float("nan")
    originals = [g.clone() for g in grads]
    found_inf = torch.zeros(1, device=device)
    op(grads, found_inf, scalar(1.0, device))
    for before, after in zip(originals, grads):
        assert_bitwise(after, before)
        assert torch.equal(after.view(torch.int64), before.view(torch.int64))  # NaN payloads too
    assert found_inf.item() == 1.0


def test_overflow_to_inf_in_fp16_by_the_multiply_is_not_flagged(device):
    # found_inf reports non-finite *inputs* (torch's semantics): a finite fp16 value that a scale
    # below 1 pushes past 65504 becomes inf in the output but is not an overflow of the grads.
    grad = torch.tensor([60000.0, 1.0], dtype=torch.float16, device=device)
    found_inf = torch.zeros(1, device=device)
    op([grad], found_inf, scalar(4.0, device))
    assert grad[0].item() == float("inf") and grad[1].item() == 4.0
    assert found_inf.item() == 0.0


def test_inv_scale_one_checks_without_changing_values(device):
    grads = make([1000, 70001], torch.float16, device, seed=12)
    originals = [g.clone() for g in grads]
    found_inf, norm = torch.zeros(1, device=device), torch.zeros(1, device=device)
    op(grads, found_inf, scalar(1.0, device), norm)
    for before, after in zip(originals, grads):
        assert_bitwise(after, before)
    assert norm.item() == pytest.approx(reference_norm(originals), rel=norm_rtol(device))
    grads[1][-1] = float("nan")
    op(grads, found_inf, scalar(1.0, device))
    assert found_inf.item() == 1.0


def test_found_inf_is_never_cleared(device):
    found_inf = torch.ones(1, device=device)
    op([torch.ones(4, device=device)], found_inf, scalar(0.5, device))
    assert found_inf.item() == 1.0


def test_norm_is_deterministic(device):
    grads = make([300000, 5, 123457], torch.float32, device, seed=13)
    norms = []
    for _ in range(3):
        copies = [g.clone() for g in grads]
        norm = torch.zeros(1, device=device)
        op(copies, torch.zeros(1, device=device), scalar(INV_SCALE, device), norm)
        norms.append(norm.item())
    assert norms[0] == norms[1] == norms[2]


def test_norm_does_not_depend_on_thread_count():
    grads = make([1 << 20], torch.float32, "cpu", seed=14)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, max(2, threads)):
            torch.set_num_threads(count)
            norm = torch.zeros(1)
            op([grads[0].clone()], torch.zeros(1), scalar(INV_SCALE, "cpu"), norm)
            results.append(norm.item())
    finally:
        torch.set_num_threads(threads)
    assert results[0] == results[1]


BAD_INPUTS = [
    ("inv_scale on another device", lambda: ([torch.ones(4)], torch.zeros(1), torch.ones(1, device="meta"), None),
     RuntimeError, "inv_scale must be on cpu (the device of grads[0]), got meta"),
    ("inv_scale float64", lambda: ([torch.ones(4)], torch.zeros(1), torch.ones(1, dtype=torch.float64), None),
     TypeError, "inv_scale must be a one-element float32 tensor, got dtype float64"),
    ("inv_scale of two elements", lambda: ([torch.ones(4)], torch.zeros(1), torch.ones(2), None),
     RuntimeError, "inv_scale must be a one-element float32 tensor, got 2 elements"),
    ("found_inf float16", lambda: ([torch.ones(4)], torch.zeros(1, dtype=torch.float16), torch.ones(1), None),
     TypeError, "found_inf must be a one-element float32 tensor, got dtype float16"),
    ("found_inf on another device", lambda: ([torch.ones(4)], torch.zeros(1, device="meta"), torch.ones(1), None),
     RuntimeError, "found_inf must be on cpu (the device of grads[0]), got meta"),
    ("norm_out int32", lambda: ([torch.ones(4)], torch.zeros(1), torch.ones(1), torch.zeros(1, dtype=torch.int32)),
     TypeError, "norm_out must be a one-element float32 tensor, got dtype int32"),
    ("norm_out on another device", lambda: ([torch.ones(4)], torch.zeros(1), torch.ones(1),
                                            torch.zeros(1, device="meta")),
     RuntimeError, "norm_out must be on cpu (the device of grads[0]), got meta"),
    # torch's scaler refuses these too (its op has no kernel for them); float64 is accepted (test_float64_*).
    ("integer grad", lambda: ([torch.ones(4), torch.ones(4, dtype=torch.int64)], torch.zeros(1), torch.ones(1), None),
     TypeError, "grads[1] must have dtype float32, float16, bfloat16 or float64, got int64"),
    ("complex grad", lambda: ([torch.ones(4, dtype=torch.complex128)], torch.zeros(1), torch.ones(1), None),
     TypeError, "grads[0] must have dtype float32, float16, bfloat16 or float64, got complex128"),
    ("float8 grad", lambda: ([torch.ones(4).to(torch.float8_e4m3fn)], torch.zeros(1), torch.ones(1), None),
     TypeError, "grads[0] must have dtype float32, float16, bfloat16 or float64, got "),
    ("grads on two devices", lambda: ([torch.ones(4), torch.ones(4, device="meta")], torch.zeros(1), torch.ones(1),
                                      None),
     RuntimeError, "grads[1] must be on cpu (the device of grads[0]), got meta"),
    ("expanded grad", lambda: ([torch.ones(1, 4).expand(3, 4)], torch.zeros(1), torch.ones(1), None),
     RuntimeError, "grads[0] must not have internally overlapping memory"),
    ("sparse grad", lambda: ([torch.ones(4).to_sparse()], torch.zeros(1), torch.ones(1), None),
     RuntimeError, "grads[0] must be a dense (strided) tensor"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_clear_error(case):
    _, make_args, error, message = case
    grads, found_inf, inv_scale, norm_out = make_args()
    with pytest.raises(error) as info:
        op(grads, found_inf, inv_scale, norm_out)
    assert message in str(info.value)


@pytest.mark.parametrize("with_norm", [False, True])
def test_opcheck(device, with_norm):
    grads = (make([5, 300], torch.float16, device) + make([17], torch.bfloat16, device)
             + make([9], torch.float64, device))
    norm = torch.zeros(1, device=device) if with_norm else None
    args = (grads, torch.zeros(1, device=device), scalar(0.5, device), norm)
    torch.library.opcheck(op.default, args)


def test_runs_under_torch_compile():
    def step(grads, found_inf, inv_scale, norm):
        torch.ops.ampkit.unscale_and_check_(grads, found_inf, inv_scale, norm)
        return [g * 2 for g in grads], norm * 1

    grads = make([8, 33], torch.float32, "cpu")
    expected_grads = [g.clone() for g in grads]
    expected = step(expected_grads, torch.zeros(1), torch.full((1,), 0.25), torch.zeros(1))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(grads, torch.zeros(1), torch.full((1,), 0.25), torch.zeros(1))
    for a, b in zip(expected[0], got[0]):
        assert torch.equal(a, b)
    assert torch.equal(expected[1], got[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("factor", [2.0 ** -24 * 3, 0.75, 1.5 + 2.0 ** -10, 2.0 ** 10])
def test_rounding_edge_cases_bitwise(device, dtype, factor):
    # Every finite bit pattern of the dtype plus inf/NaN: subnormal results, ties, overflow to
    # inf, NaN payloads. The vectorised conversions must round exactly as torch's .to(dtype).
    every_value = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(dtype).to(device)
    grad = every_value.clone()
    found_inf = torch.zeros(1, device=device)
    op([grad], found_inf, scalar(factor, device))
    assert_bitwise(grad, expected_unscaled(every_value, factor))
    assert found_inf.item() == 1.0  # the patterns include inf and NaN


@pytest.mark.cuda
def test_cuda_scalars_on_the_cpu_are_clear_errors():
    grads = [torch.ones(4, device="cuda")]
    with pytest.raises(RuntimeError, match=r"inv_scale must be on cuda:0 \(the device of grads\[0\]\), got cpu"):
        op(grads, torch.zeros(1, device="cuda"), torch.ones(1), None)
    with pytest.raises(RuntimeError, match=r"found_inf must be on cuda:0 \(the device of grads\[0\]\), got cpu"):
        op(grads, torch.zeros(1), torch.ones(1, device="cuda"), None)
    scale = torch.ones((), device="cuda")
    trackers = torch.zeros((), dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match=r"found_inf must be on cuda:0 \(the device of scale\), got cpu"):
        torch.ops.ampkit.update_scale_(scale, trackers, trackers.clone(), torch.zeros(()), 2.0, 0.5, 10)


def test_baseline_cpu_code_in_a_subprocess():
    # x86-64 builds choose AVX2/F16C loops at run time; AMPKIT_CPU_ISA=baseline forces the
    # portable ones, which CPUs without AVX2 run. The same bitwise tests must pass there.
    run_with_baseline_cpu_isa(__file__, "(bitwise or non_finite or norm or mixed or contiguous or float64) and not subprocess "
                                        "and not cuda")
