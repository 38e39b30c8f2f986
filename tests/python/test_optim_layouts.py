"""ampkit.optim on parameters of every layout torch.optim accepts.

Dense layouts other than contiguous (channels_last conv weights, permuted or transposed parameters)
are stepped in place by the fused kernels, in storage order: masters and state are made with the
parameter's strides (as torch.optim makes its state), so parameter, gradient, master and state
share one memory order. A parameter that is not dense (a strided slice) and a gradient in another
memory order than its parameter take a correct path through dense copies that are written back.

Tolerance: against torch.optim's single-tensor path on the same values, the fp32 bound of
test_optim.py (1e-6 of the largest reference value; see its docstring). The layout changes only
the order elements are visited in, not their arithmetic, so a layout's result must also be
bitwise equal to the contiguous run's.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import ampkit
from ampkit import optim as aoptim

SCALED_TOL = 1e-6

CONFIGS = {
    "sgd_momentum_nesterov": (aoptim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True,
                                                                weight_decay=1e-3)),
    "adam": (aoptim.Adam, torch.optim.Adam, dict(lr=1e-3, weight_decay=1e-2)),
    "adamw": (aoptim.AdamW, torch.optim.AdamW, dict(lr=1e-3)),
}


def channels_last(shape, generator):
    return torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)


def transposed(shape, generator):
    return torch.randn(shape[::-1], generator=generator).t()


def permuted_3d(shape, generator):
    return torch.randn(shape[2], shape[0], shape[1], generator=generator).permute(1, 2, 0)


def strided_slice(shape, generator):
    return torch.randn(shape[0] * 2, *shape[1:], generator=generator)[::2]  # every other row: not dense


# layout name -> (shape, maker, dense in memory?)
LAYOUTS = {
    "contiguous": ((6, 3, 3, 3), lambda s, g: torch.randn(s, generator=g), True),
    "channels_last": ((6, 3, 3, 3), channels_last, True),
    "channels_last_1x1": ((16, 8, 1, 1), channels_last, True),
    "transposed": ((33, 17), transposed, True),
    "permuted_3d": ((5, 7, 9), permuted_3d, True),
    "strided_slice": ((9, 5), strided_slice, False),
}


def make_param(layout, seed=0):
    shape, maker, _ = LAYOUTS[layout]
    return torch.nn.Parameter(maker(shape, torch.Generator().manual_seed(seed)))


def grad_like(param, step):
    """A gradient with the parameter's strides, as autograd's accumulation makes it."""
    values = torch.randn(param.shape, generator=torch.Generator().manual_seed(1000 + step))
    return torch.empty_like(param).copy_(values)


def assert_close_to_scale(actual, expected):
    scale = max(e.abs().max().item() for e in expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0.0, atol=SCALED_TOL * scale)


def copy_ops_during(fn) -> list[str]:
    """The copy/clone ops fn() ran on tensors of more than one element (the profiler records every
    ATen op with its input shapes; one-element copies are the step's device scalars, not data)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, acc_events=True) as prof:
        fn()
    copies = []
    for event in prof.events():
        if event.name in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::empty_like"):
            shapes = [shape for shape in event.input_shapes if shape]
            if any(torch.Size(shape).numel() > 1 for shape in shapes):
                copies.append(f"{event.name}{shapes}")
    return copies


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_layout_matches_torch_and_keeps_its_strides(device, layout, config):
    ours_cls, torch_cls, hyper = CONFIGS[config]
    ours_param = make_param(layout).to(device) if device != "cpu" else make_param(layout)
    ref_param = torch.nn.Parameter(ours_param.detach().clone(memory_format=torch.preserve_format))
    ours_param = torch.nn.Parameter(ours_param.detach()) if device != "cpu" else ours_param
    strides = ours_param.stride()
    ours, ref = ours_cls([ours_param], **hyper), torch_cls([ref_param], **hyper, foreach=False)
    for step in range(30):
        g = grad_like(ours_param, step).to(device)
        ours_param.grad, ref_param.grad = g, g.clone(memory_format=torch.preserve_format)
        ours.step()
        ref.step()
    assert ours_param.stride() == strides
    assert_close_to_scale([ours_param.detach()], [ref_param.detach()])
    for key, value in ref.state[ref_param].items():
        if key != "step":
            assert_close_to_scale([ours.state[ours_param][key]], [value])
            if LAYOUTS[layout][2]:  # state in the parameter's layout, as torch.optim keeps it
                assert ours.state[ours_param][key].stride() == ours_param.stride() == value.stride()


@pytest.mark.parametrize("layout", [name for name, (_, _, dense) in LAYOUTS.items() if dense])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dense_layouts_are_bitwise_equal_to_contiguous_and_step_in_place(layout, dtype):
    """The fused path ran on the parameter itself: the same bits as the contiguous run, and no copy
    or clone op ran during the step (the profiler lists every ATen op)."""
    dense = make_param(layout)
    contiguous = torch.nn.Parameter(dense.detach().contiguous().to(dtype))
    dense = torch.nn.Parameter(dense.detach().to(dtype))  # .to keeps dense strides
    assert dense.stride() == make_param(layout).stride()
    ours_dense, ours_contiguous = aoptim.AdamW([dense], lr=1e-2), aoptim.AdamW([contiguous], lr=1e-2)
    for step in range(5):
        g = grad_like(dense, step).to(dtype)
        dense.grad, contiguous.grad = g, g.contiguous()
        ours_contiguous.step()
        if step == 4:
            assert copy_ops_during(ours_dense.step) == []
        else:
            ours_dense.step()
    assert torch.equal(dense.detach().contiguous(), contiguous.detach())
    for key in ("exp_avg", "exp_avg_sq") + (("master",) if dtype != torch.float32 else ()):
        assert ours_dense.state[dense][key].stride() == dense.stride()
        assert torch.equal(ours_dense.state[dense][key].contiguous(), ours_contiguous.state[contiguous][key])


def test_a_strided_slice_takes_the_copy_path_and_writes_back():
    base = torch.randn(18, 5, generator=torch.Generator().manual_seed(0))
    param = torch.nn.Parameter(base[::2])  # shares base's storage
    assert not param.is_contiguous() and param.data_ptr() == base.data_ptr()
    reference = torch.nn.Parameter(param.detach().clone())
    ours, ref = aoptim.SGD([param], lr=0.1, momentum=0.9), torch.optim.SGD([reference], lr=0.1, momentum=0.9)
    for step in range(3):
        g = torch.randn(param.shape, generator=torch.Generator().manual_seed(step))
        param.grad, reference.grad = g, g.clone()
        ours.step()
        ref.step()
    assert copy_ops_during(lambda: ours.step()) != []  # the dense copy in and out
    ref.step()
    assert_close_to_scale([param.detach()], [reference.detach()])
    # The slice is still a view of its base: the update landed in the caller's storage.
    assert torch.equal(base[::2], param.detach())


def test_a_gradient_in_another_memory_order_is_used_correctly_and_left_intact():
    param = make_param("channels_last")
    reference = torch.nn.Parameter(param.detach().clone(memory_format=torch.preserve_format))
    ours, ref = aoptim.Adam([param], lr=1e-2), torch.optim.Adam([reference], lr=1e-2, foreach=False)
    for step in range(4):
        g = torch.randn(param.shape, generator=torch.Generator().manual_seed(step))  # contiguous
        param.grad, reference.grad = g, g.clone()
        ours.step()
        ref.step()
        assert param.grad.is_contiguous() and torch.equal(param.grad, reference.grad)
    assert_close_to_scale([param.detach()], [reference.detach()])


def test_model_moved_to_channels_last_after_the_optimizer_was_built():
    """model.to(memory_format=...) replaces param.data: the state follows the new layout once."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    reference = copy.deepcopy(model)
    ours, ref = aoptim.AdamW(model.parameters(), lr=1e-2), torch.optim.AdamW(reference.parameters(), lr=1e-2,
                                                                             foreach=False)
    x = torch.randn(2, 3, 9, 9)
    for step in range(6):
        if step == 3:
            model.to(memory_format=torch.channels_last)
            reference.to(memory_format=torch.channels_last)
        for m, opt in ((model, ours), (reference, ref)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert p.stride() == q.stride()
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)
            assert ours.state[p]["exp_avg"].stride() == p.stride()
    assert_close_to_scale([p.detach() for p in model.parameters()], [q.detach() for q in reference.parameters()])


def test_state_dict_round_trip_keeps_layouts_and_values():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 8, 3).to(torch.float16).to(memory_format=torch.channels_last)
    optimizer = aoptim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(1, 3, 6, 6, dtype=torch.float16)).float().sum().backward()
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["state"][0]["master"].stride() == model.weight.stride()

    fresh_model = torch.nn.Conv2d(3, 8, 3).to(torch.float16).to(memory_format=torch.channels_last)
    fresh = aoptim.AdamW(fresh_model.parameters(), lr=1e-2)
    fresh.load_state_dict(saved)
    for key in ("master", "exp_avg", "exp_avg_sq"):
        loaded, original = fresh.state[fresh_model.weight][key], optimizer.state[model.weight][key]
        assert loaded.stride() == fresh_model.weight.stride()
        assert torch.equal(loaded, original)


def test_op_takes_dense_layouts_and_refuses_mismatched_ones():
    param = make_param("channels_last").detach().half()
    master = param.float()  # .float() keeps channels_last
    grad = torch.ones_like(param)
    exp_avg, exp_avg_sq = torch.zeros_like(master), torch.zeros_like(master)
    one, step = torch.ones(1), torch.zeros(())
    args = lambda g, ea: ([param], [master], [g], [ea], [exp_avg_sq], [], [step], one * 1e-2, one, one, None,
                          0.9, 0.999, 1e-8, 0.0, True, False)
    torch.ops.ampkit.master_adam_step_(*args(grad, exp_avg))
    assert step.item() == 1
    with pytest.raises(RuntimeError, match=r"grads\[0\] must have the memory layout of params\[0\]"):
        torch.ops.ampkit.master_adam_step_(*args(grad.contiguous(), exp_avg))
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] must have the memory layout of params\[0\]"):
        torch.ops.ampkit.master_adam_step_(*args(grad, exp_avg.contiguous()))
    sliced = torch.zeros(8, 5)[::2]
    with pytest.raises(RuntimeError, match=r"params\[0\] must be dense in memory"):
        torch.ops.ampkit.master_sgd_step_([sliced], [], [torch.zeros(4, 5)[::1]], [], [torch.zeros(())], one, one,
                                          one, None, 0.0, 0.0, 0.0, False, False)


def channels_last_cnn(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        # No conv bias before BatchNorm (as CNNs are built): BatchNorm cancels it, so its gradient is
        # rounding noise that Adam would normalise into full-size steps, and the two runs would part
        # ways on noise rather than on the optimizer.
        torch.nn.Conv2d(1, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2, bias=False), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    return model.to(memory_format=torch.channels_last)


def test_channels_last_cnn_with_ampkit_scaler_and_adamw_matches_torch_adamw_for_50_steps():
    """Acceptance: a channels_last CNN with BatchNorm on real data (scikit-learn's digits), trained
    with ampkit.GradScaler and ampkit.optim.AdamW, against torch.optim.AdamW in fp32 with no scaler.
    The parameters are fp32, so each is its own FP32 master and is stepped in place. A scale of
    2**16 is exact in fp32 (no overflow here), so both runs see bitwise-equal unscaled gradients and
    differ only by the optimizer's rounding: rtol 1e-5 after 50 steps."""
    digits = pytest.importorskip("sklearn.datasets").load_digits()
    images = torch.tensor(digits.images[:256], dtype=torch.float32).unsqueeze(1) / 16.0
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.tensor(digits.target[:256])
    ours_model, ref_model = channels_last_cnn(), channels_last_cnn()
    strides = [p.stride() for p in ours_model.parameters()]
    ours = aoptim.AdamW(ours_model.parameters(), lr=1e-3, weight_decay=1e-2)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-3, weight_decay=1e-2, foreach=False)
    scaler = ampkit.GradScaler("cpu", init_scale=2.0**16)
    conv_weights = [p for p in ours_model.parameters() if p.dim() == 4]
    for step in range(50):
        batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
        x, y = images[batch], labels[batch]
        ours.zero_grad()
        scaler.scale(torch.nn.functional.cross_entropy(ours_model(x), y)).backward()
        if step == 49:
            assert copy_ops_during(lambda: scaler.step(ours)) == []
        else:
            scaler.step(ours)
        scaler.update()
        ref.zero_grad()
        torch.nn.functional.cross_entropy(ref_model(x), y).backward()
        ref.step()
    assert scaler.get_scale() == 2.0**16  # no step was skipped
    assert [p.stride() for p in ours_model.parameters()] == strides
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    for p, q in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        # rtol 1e-5, with elements near zero held to 1e-5 of the tensor's largest value (observed:
        # <= 1.2e-7 absolute after 50 steps, weights up to ~0.5).
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-5 * q.abs().max().item())
        assert ours.state[p]["exp_avg"].stride() == p.stride()
    for a, b in zip(ours_model.buffers(), ref_model.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
