"""multi_tensor_scale_ against plain torch, on every device under test."""
from __future__ import annotations

import pytest
import torch

import ampkit
from conftest import run_with_baseline_cpu_isa

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
# Sizes: empty, below one vector pack, odd, several 65536-element chunks.
NUMELS = [0, 3, 1001, 70000, 200003]


def make(numels, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=generator).to(dtype=dtype, device=device) for n in numels]


@pytest.mark.parametrize("in_dtype", FLOATS)
@pytest.mark.parametrize("out_dtype", FLOATS)
def test_matches_torch_bitwise(device, in_dtype, out_dtype):
    inputs = make(NUMELS, in_dtype, device)
    outputs = [torch.empty(n, dtype=out_dtype, device=device) for n in NUMELS]
    found_inf = ampkit.multi_tensor_scale_(inputs, outputs, 0.37)
    for x, y in zip(inputs, outputs):
        # Same arithmetic as the kernel (fp32 multiply, one rounding), so exact equality is right.
        expected = (x.float() * torch.tensor(0.37, dtype=torch.float32)).to(out_dtype)
        assert torch.equal(y, expected)
    assert found_inf.item() == 0.0


def test_in_place_and_many_tensors(device):
    # 300 tensors is more than one launch table holds: exercises the launcher's table refills.
    inputs = make([17 + 3 * i for i in range(300)], torch.float16, device, seed=1)
    originals = [t.clone() for t in inputs]
    scale = torch.full((1,), 2.0 ** -10, device=device)
    ampkit.multi_tensor_scale_(inputs, scale=scale)
    for before, after in zip(originals, inputs):
        assert torch.equal(after, (before.float() * 2.0 ** -10).half())


def test_one_tensor_spanning_many_launches(device):
    # 400 chunks of 65536 > 320 blocks per launch: a tensor split across two launches.
    n = 400 * 65536 + 5
    x = torch.ones(n, device=device)
    x[-1] = 3.0
    ampkit.multi_tensor_scale_([x], scale=0.5)
    assert x[:-1].eq(0.5).all().item() and x[-1].item() == 1.5


@pytest.mark.parametrize("special", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("dtype", FLOATS)
def test_non_finite_sets_found_inf(device, special, dtype):
    tensors = make([10, 5000, 7], dtype, device)
    tensors[1][4321] = special
    found_inf = torch.zeros(1, device=device)
    ampkit.multi_tensor_scale_(tensors, scale=1.0, found_inf=found_inf)
    assert found_inf.item() == 1.0


def test_found_inf_is_never_cleared(device):
    found_inf = torch.ones(1, device=device)
    ampkit.multi_tensor_scale_([torch.ones(4, device=device)], scale=1.0, found_inf=found_inf)
    assert found_inf.item() == 1.0


BAD_INPUTS = [
    ("empty list", lambda: ([], [], torch.ones(1), torch.zeros(1)), ValueError, "inputs must hold at least one tensor"),
    ("integer tensor", lambda: ([torch.ones(4, dtype=torch.int64)], [torch.ones(4)], torch.ones(1), torch.zeros(1)),
     TypeError, "inputs[0] must have dtype float32, float16 or bfloat16, got int64"),
    ("mixed dtypes", lambda: ([torch.ones(4), torch.ones(4).half()], [torch.ones(4), torch.ones(4)], torch.ones(1),
                              torch.zeros(1)), TypeError, "inputs[0] is float32 but inputs[1] is float16"),
    ("non-contiguous", lambda: ([torch.ones(4, 4).t()], [torch.ones(4, 4)], torch.ones(1), torch.zeros(1)),
     RuntimeError, "inputs[0] must be contiguous"),
    ("shape mismatch", lambda: ([torch.ones(4)], [torch.ones(5)], torch.ones(1), torch.zeros(1)),
     RuntimeError, "outputs[0] must have the shape of inputs[0]"),
    ("length mismatch", lambda: ([torch.ones(4)], [torch.ones(4), torch.ones(4)], torch.ones(1), torch.zeros(1)),
     RuntimeError, "outputs must hold as many tensors as inputs (1), got 2"),
    ("scale of two elements", lambda: ([torch.ones(4)], [torch.ones(4)], torch.ones(2), torch.zeros(1)),
     RuntimeError, "scale must be a one-element float32 tensor, got 2 elements"),
    ("found_inf float64", lambda: ([torch.ones(4)], [torch.ones(4)], torch.ones(1), torch.zeros(1, dtype=torch.float64)),
     TypeError, "found_inf must be a one-element float32 tensor, got dtype float64"),
    ("mixed devices", lambda: ([torch.ones(4), torch.ones(4, device="meta")], [torch.ones(4), torch.ones(4)],
                               torch.ones(1), torch.zeros(1)), RuntimeError,
     "inputs[1] must be on cpu (the device of inputs[0]), got meta"),
    ("scale on another device", lambda: ([torch.ones(4)], [torch.ones(4)], torch.ones(1, device="meta"), torch.zeros(1)),
     RuntimeError, "scale must be on cpu (the device of inputs[0]), got meta"),
    ("sparse tensor", lambda: ([torch.ones(4).to_sparse()], [torch.ones(4)], torch.ones(1), torch.zeros(1)),
     RuntimeError, "inputs[0] must be a dense (strided) tensor"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_clear_error(case):
    _, make_args, error, message = case
    inputs, outputs, scale, found_inf = make_args()
    with pytest.raises(error) as info:
        torch.ops.ampkit.multi_tensor_scale_(inputs, outputs, scale, found_inf)
    assert message in str(info.value)


def test_python_wrapper_rejects_wrong_types():
    with pytest.raises(TypeError, match="inputs must be a list or tuple of tensors, got Tensor"):
        ampkit.multi_tensor_scale_(torch.ones(3))
    with pytest.raises(TypeError, match="scale must be a float or a one-element float32 tensor, got str"):
        ampkit.multi_tensor_scale_([torch.ones(3)], scale="2")
    with pytest.raises(ValueError, match="inputs must hold at least one tensor"):
        ampkit.multi_tensor_scale_([])


def test_opcheck(device):
    inputs = make([5, 300], torch.float16, device)
    outputs = [torch.empty(5, device=device), torch.empty(300, device=device)]
    args = (inputs, outputs, torch.full((1,), 0.5, device=device), torch.zeros(1, device=device))
    torch.library.opcheck(torch.ops.ampkit.multi_tensor_scale_.default, args)


def test_runs_under_torch_compile():
    def step(grads, scale, found_inf):
        torch.ops.ampkit.multi_tensor_scale_(grads, grads, scale, found_inf)
        return [g * 2 for g in grads]

    grads = make([8, 33], torch.float32, "cpu")
    expected_grads = [g.clone() for g in grads]
    expected = step(expected_grads, torch.full((1,), 0.25), torch.zeros(1))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(grads, torch.full((1,), 0.25), torch.zeros(1))
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


# ---- the CPU loops, bit for bit, on both instruction sets ----
# x86-64 builds run AVX2/F16C loops (8 elements a step, then a scalar tail); AMPKIT_CPU_ISA=baseline
# forces the portable loop (test_baseline_cpu_code_in_a_subprocess). Both must give the bits of
# torch's (in.float() * scale).to(out_dtype) for every value that is not NaN. NaNs: the op writes
# the NaN of c10's scalar conversions on either instruction set and at any position (fp16 out:
# the NaN's sign | 0x7E00, bf16 out: 0x7FC0, fp32 out: the input NaN widened and quietened).
# torch's NaN bits are no reference: its vectorised .to() keeps fp16 payloads, writes bf16 NaN
# as 0xFFFF, and its partial vectors at a tensor's end give 0x7FFFFFFF for any NaN.
# CPU only: CUDA's conversions write other NaNs (test_matches_torch_bitwise covers CUDA).
TAIL_NUMELS = [0, 1, 7, 8, 15, 16, 17, 1000, 4099]
SCALES = [1.0, 0.37, 2.0 ** -24 * 3, 2.0 ** 10, 65536.0 + 1.0]
def dtype_id(dtype):
    return str(dtype).replace("torch.", "")


BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def fp32_bits(*patterns):
    return torch.tensor([p - (1 << 32) if p >= 1 << 31 else p for p in patterns], dtype=torch.int32).view(torch.float32)


def special_fp32_values():
    return torch.cat([
        fp32_bits(0x00000000, 0x80000000,                          # +-0
                  0x7F800000, 0xFF800000,                          # +-inf
                  0x7FC00000, 0xFFC00000, 0x7FC12345, 0xFFD00001,  # quiet NaNs, with payloads
                  0x7F800001, 0xFF812345,                          # signalling NaNs
                  0x00000001, 0x807FFFFF, 0x00800000,              # fp32 subnormals, min normal
                  0x7F7FFFFF, 0xFF7FFFFF,                          # fp32 max: overflows when scaled up
                  0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF,  # bf16 ties (to even: down, up), near ties
                  0xBF818000, 0x7F7F8000, 0x7F7E8000),             # negative tie, ties at bf16 max (to inf, stays)
        torch.tensor([2.0 ** -24, -(2.0 ** -24), 2.0 ** -25, 3 * 2.0 ** -25, 2.0 ** -26,  # fp16 subnormals, ties
                      2.0 ** -14, 2.0 ** -14 - 2.0 ** -24, 1e-8, -3e-6,
                      65504.0, -65504.0, 65519.0, 65520.0, -65520.0, 70000.0, 1e6,      # fp16 max, overflow
                      1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 2049.0, 2051.0, -2051.0,   # fp16 ties
                      1.0, -1.0, 0.1, 3.14159, -123.456]),
    ])


def special_inputs(dtype):
    values = special_fp32_values().to(dtype)
    if dtype == torch.float16:  # fp16 subnormals and NaN payloads as stored bit patterns
        extra = [0x0001, 0x03FF, 0x8001, 0x83FF, 0x0400, 0x7BFF, 0x7C01, 0x7E00, 0xFE01, 0x7FFF]
    elif dtype == torch.bfloat16:
        extra = [0x0001, 0x807F, 0x0080, 0x7F7F, 0x7F81, 0x7FC0, 0xFFC1, 0xFFFF]
    else:
        return values
    patterns = torch.tensor([p - (1 << 16) if p >= 1 << 15 else p for p in extra], dtype=torch.int16).view(dtype)
    return torch.cat([values, patterns])


def inputs_with_specials(numel, dtype, seed):
    # Specials at shifting positions among random values, so that they reach every vector lane
    # and the scalar tail.
    generator = torch.Generator().manual_seed(seed)
    values = (torch.randn(numel, generator=generator) * 100).to(dtype)
    specials = special_inputs(dtype)
    positions = torch.arange(seed % 5, numel, 2)
    values[positions] = specials[torch.arange(len(positions)) % len(specials)]
    return values


def bits(tensor):
    return tensor.view(BITS[tensor.dtype])


def quiet_nan_bits(x):
    """fp32 bits (as int64) of x.float() * scale where x is NaN and scale finite: the NaN widened
    (fp16: sign, exponent all ones, mantissa << 13; bf16: << 16), then quietened by the multiply."""
    raw = bits(x).long() & ((1 << (8 * x.element_size())) - 1)
    if x.dtype == torch.float16:
        raw = ((raw & 0x8000) << 16) | 0x7F800000 | ((raw & 0x3FF) << 13)
    elif x.dtype == torch.bfloat16:
        raw = raw << 16
    return raw | 0x00400000


def reference_bits(x, scale, out_dtype):
    assert scale != 0 and scale == scale  # the NaN rule below: NaN out exactly where NaN in
    expected = (x.float() * torch.tensor(scale, dtype=torch.float32)).to(out_dtype)
    expected_bits = bits(expected).clone()
    nan = expected.isnan()
    assert torch.equal(nan, x.isnan())
    product = quiet_nan_bits(x[nan])
    if out_dtype == torch.float32:
        nan_bits = product - ((product >> 31) << 32)  # as int32
    elif out_dtype == torch.float16:
        nan_bits = ((product >> 16) & 0x8000) | 0x7E00
        nan_bits = nan_bits - ((nan_bits >> 15) << 16)  # as int16
    else:
        nan_bits = torch.full_like(product, 0x7FC0)
    expected_bits[nan] = nan_bits.to(expected_bits.dtype)
    return expected_bits


def assert_bits_equal(actual, expected_bits, what):
    got = bits(actual)
    if not torch.equal(got, expected_bits):
        wrong = (got != expected_bits).nonzero().flatten()
        i = wrong[0].item()
        mask = (1 << (8 * actual.element_size())) - 1
        raise AssertionError(f"{what}: {len(wrong)} elements differ, first at {i}: "
                             f"{got[i].item() & mask:#x} != expected {expected_bits[i].item() & mask:#x}")


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("in_dtype", FLOATS, ids=dtype_id)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=dtype_id)
def test_cpu_tails_and_special_values_bitwise(in_dtype, out_dtype, scale):
    inputs = [inputs_with_specials(n, in_dtype, seed) for seed, n in enumerate(TAIL_NUMELS)]
    originals = [x.clone() for x in inputs]
    outputs = [torch.full((n,), 7.0, dtype=out_dtype) for n in TAIL_NUMELS]
    found_inf = ampkit.multi_tensor_scale_(inputs, outputs, scale)
    for x, y in zip(originals, outputs):
        assert_bits_equal(y, reference_bits(x, scale, out_dtype), f"numel {x.numel()}")
    assert found_inf.item() == 1.0  # the specials include inf and NaN


@pytest.mark.parametrize("in_dtype", FLOATS, ids=dtype_id)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=dtype_id)
def test_cpu_in_place_and_unaligned_bitwise(in_dtype, out_dtype):
    # Views that start 1 and 3 elements into their storage: no 16- or 32-byte alignment. Same
    # dtype: in place.
    for offset in (1, 3):
        for seed, n in enumerate(TAIL_NUMELS):
            x = inputs_with_specials(n + offset, in_dtype, seed)[offset:]
            expected = reference_bits(x, 0.37, out_dtype)
            y = x if in_dtype == out_dtype else torch.empty(n + offset, dtype=out_dtype)[offset:]
            ampkit.multi_tensor_scale_([x], [y], 0.37)
            assert_bits_equal(y, expected, f"offset {offset}, numel {n}")


@pytest.mark.parametrize("scale", [1.0, 0.75, 2.0 ** -24 * 3, 1.5 + 2.0 ** -10, 2.0 ** 10])
@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=dtype_id)
def test_cpu_every_16bit_input_bitwise(in_dtype, out_dtype, scale):
    # Every bit pattern of the input dtype: subnormals, ties, overflow on narrowing, NaN payloads.
    x = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(in_dtype)
    y = torch.empty(x.shape, dtype=out_dtype)
    found_inf = ampkit.multi_tensor_scale_([x], [y], scale)
    assert_bits_equal(y, reference_bits(x, scale, out_dtype), f"{in_dtype} -> {out_dtype} x {scale}")
    assert found_inf.item() == 1.0


@pytest.mark.parametrize("special", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("in_dtype", FLOATS, ids=dtype_id)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16], ids=dtype_id)
def test_cpu_found_inf_exact_at_every_position(in_dtype, out_dtype, special):
    # found_inf is 1 exactly when an input is inf or NaN, wherever it is (any vector lane, the
    # tail). A finite input whose product or narrowed result overflows to inf does not set it:
    # the flag is about the inputs, as on CUDA.
    for n in [1, 7, 8, 9, 15, 16, 17, 4099]:
        x = torch.full((n,), 60000.0).to(in_dtype)  # x 2^10: inf when narrowed to fp16
        x[::3] = {torch.float32: 3e38, torch.float16: 65504.0, torch.bfloat16: 1e38}[in_dtype]  # 3e38, 1e38: inf in fp32
        y = torch.empty(n, dtype=out_dtype)
        found_inf = ampkit.multi_tensor_scale_([x], [y], 2.0 ** 10)
        assert found_inf.item() == 0.0, f"numel {n}, all inputs finite"
        positions = range(n) if n < 100 else [0, 1, 7, 8, 15, 2048, 4087, 4095, 4096, 4097, 4098]
        for p in positions:
            z = x.clone()
            z[p] = special
            found_inf = ampkit.multi_tensor_scale_([z], [y], 2.0 ** 10)
            assert found_inf.item() == 1.0, f"numel {n}, {special} at {p}"


def test_cpu_found_inf_in_one_tensor_of_many():
    # A non-finite in the last tensor only, or in none: the flag gathers every tensor's.
    inputs = [inputs_with_specials(n, torch.float16, 0).nan_to_num(0.0, 0.0, 0.0) for n in TAIL_NUMELS]
    outputs = [torch.empty(n, dtype=torch.bfloat16) for n in TAIL_NUMELS]
    assert ampkit.multi_tensor_scale_(inputs, outputs, 0.5).item() == 0.0
    inputs[-1][-1] = float("nan")
    assert ampkit.multi_tensor_scale_(inputs, outputs, 0.5).item() == 1.0


def test_baseline_cpu_code_in_a_subprocess():
    # The same bitwise and found_inf tests, with AMPKIT_CPU_ISA=baseline forcing the portable loops
    # (what CPUs without AVX2/F16C run).
    run_with_baseline_cpu_isa(__file__, "(bitwise or found_inf or non_finite) and not subprocess and not cuda")
