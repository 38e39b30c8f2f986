"""multi_tensor_scale_ against plain torch, on every device under test."""
from __future__ import annotations

import pytest
import torch

import ampkit

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
