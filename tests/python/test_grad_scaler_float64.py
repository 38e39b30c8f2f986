"""float64 gradients in ampkit.GradScaler: a differential test against torch.amp.GradScaler.

torch's scaler unscales a float64 grad in double (the grad times the float32 inv_scale, promoted),
and checks it for inf/NaN in double. A model with an fp32 body, a bf16 layer and a float64 head
runs the same seeded loop under both scalers, with torch's own optimizers; parameters, every
.grad after every step, the scale and found_inf must be bitwise equal. fp16 layers are left out:
torch's scaler refuses fp16 grads ("Attempting to unscale FP16 gradients"), so there is nothing
to compare with (ampkit's fp16 path is covered in test_grad_scaler.py).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ampkit

INF, NAN = float("inf"), float("nan")
# Step -> (layer, value): non-finite grads in every dtype of the model, isolated and back to back.
CORRUPTED = {3: ("head", INF), 7: ("body", NAN), 8: ("mid", -INF), 12: ("head", NAN), 19: ("head", -INF)}
STEPS = 26


class MixedPrecisionMLP(torch.nn.Module):
    """fp32 body, a bf16 middle layer, a float64 head (the double-precision head of a model)."""

    def __init__(self, seed: int = 0, with_bf16: bool = True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Linear(16, 32)
        self.mid = torch.nn.Linear(32, 32).to(torch.bfloat16 if with_bf16 else torch.float32)
        self.head = torch.nn.Linear(32, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        h = torch.relu(self.mid(h.to(self.mid.weight.dtype))).float()
        return self.head(h.double())


def batches(steps, device, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 16, generator=generator).to(device),
             torch.randn(8, 4, generator=generator, dtype=torch.float64).to(device)) for _ in range(steps)]


def train(scaler, make_optimizer, device, clip=None, with_bf16=True):
    """Returns, per step: the scale after update(), found_inf, every .grad after the step; and the
    final parameters."""
    model = MixedPrecisionMLP(with_bf16=with_bf16).to(device)
    optimizer = make_optimizer(model.parameters())
    history = []
    for step, (x, y) in enumerate(batches(STEPS, device)):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step in CORRUPTED:
            layer, value = CORRUPTED[step]
            getattr(model, layer).weight.grad[1, 2] = value
        if clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        found_inf = sum(v.cpu() for v in scaler._found_inf_per_device(optimizer).values())
        grads = [p.grad.detach().clone() for p in model.parameters()]
        scaler.update()
        history.append((scaler.get_scale(), found_inf.item(), grads))
    return history, [p.detach().clone() for p in model.parameters()]


OPTIMIZERS = {
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2),
    "adam-foreach": lambda params: torch.optim.Adam(params, lr=1e-2, foreach=True),
    # Fused: consumes grad_scale/found_inf itself (the scaler's no-sync path and its check-only pass).
    "adam-fused": lambda params: torch.optim.Adam(params, lr=1e-2, fused=True),
}


def assert_same_runs(ours, theirs):
    (our_history, our_params), (their_history, their_params) = ours, theirs
    for step, ((scale, found, grads), (their_scale, their_found, their_grads)) in enumerate(
            zip(our_history, their_history)):
        assert scale == their_scale, f"step {step}: scale {scale} != torch's {their_scale}"
        assert found == their_found, f"step {step}: found_inf {found} != torch's {their_found}"
        for index, (a, b) in enumerate(zip(grads, their_grads)):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m: f"step {step}, .grad of parameter {index}: {m}")
    for a, b in zip(our_params, their_params):
        assert a.dtype == b.dtype and torch.equal(a, b)


def run_both(device, name, clip, with_bf16=True):
    config = dict(init_scale=2.0 ** 12, growth_interval=3)
    theirs = train(torch.amp.GradScaler(device, **config), OPTIMIZERS[name], device, clip, with_bf16)
    ours = train(ampkit.GradScaler(device, **config), OPTIMIZERS[name], device, clip, with_bf16)
    return ours, theirs


@pytest.mark.parametrize("clip", [None, 0.5], ids=["no-clip", "unscale-and-clip"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_float64_head_matches_torch_grad_scaler_bitwise(name, clip):
    ours, theirs = run_both("cpu", name, clip)
    assert_same_runs(ours, theirs)
    history = ours[0]
    # The run skipped the corrupted steps (and only those) and grew the scale.
    assert [step for step, (_, found, _) in enumerate(history) if found > 0] == sorted(CORRUPTED)
    scales = [scale for scale, _, _ in history]
    assert max(scales) > 2.0 ** 12 and min(scales) < 2.0 ** 12


@pytest.mark.cuda
@pytest.mark.parametrize("clip", [None, 0.5], ids=["no-clip", "unscale-and-clip"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_cuda_float64_head_matches_torch_grad_scaler_bitwise(name, clip):
    # The CUDA op routes fp64 grads through torch's own amp op, fp32/bf16 through ampkit's kernel
    # (bitwise equal to torch's for fp32 and bf16: test_unscale_and_check.py).
    ours, theirs = run_both("cuda", name, clip)
    assert_same_runs(ours, theirs)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_float64_grad_beyond_float32_range_is_not_an_overflow(device):
    # 1e300 is finite in double: torch's scaler unscales it and does not skip; neither may ampkit's
    # (a test in float32 would call it inf).
    results = []
    for scaler in (torch.amp.GradScaler(device, init_scale=2.0 ** 10),
                   ampkit.GradScaler(device, init_scale=2.0 ** 10)):
        model = MixedPrecisionMLP().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = batches(1, device)[0]
        scaler.scale(F.mse_loss(model(x), y)).backward()
        model.head.bias.grad[0] = 1e300
        model.head.weight.grad[0, 0] = -1e-310  # double-subnormal: unscaled in double, not flushed
        scaler.unscale_(optimizer)
        found_inf = sum(v.item() for v in scaler._found_inf_per_device(optimizer).values())
        results.append((found_inf, [p.grad.clone() for p in model.parameters()]))
    (ours_found, ours_grads), (their_found, their_grads) = results[1], results[0]
    assert ours_found == their_found == 0.0
    for a, b in zip(ours_grads, their_grads):
        assert torch.equal(a, b)
    assert ours_grads[-1][0].item() == 1e300 * 2.0 ** -10


def _scaled_mixed_model(device, init_scale=2.0 ** 10):
    model = MixedPrecisionMLP().to(device)
    scaler = ampkit.GradScaler(device, init_scale=init_scale)
    x, y = batches(1, device)[0]
    scaler.scale(F.mse_loss(model(x), y)).backward()
    return model, scaler


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_unscale_norm_covers_float64_grads(device):
    model, scaler = _scaled_mixed_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    norm = scaler.unscale_(optimizer, compute_norm=True)
    assert norm.dtype == torch.float32 and norm.device.type == device
    grads = [p.grad for p in model.parameters()]
    assert {g.dtype for g in grads} == {torch.float32, torch.bfloat16, torch.float64}
    exact = torch.linalg.vector_norm(torch.cat([g.double().flatten().cpu() for g in grads])).item()
    # Every square is summed in double (fp64 grads included); only the rounding to fp32 remains on
    # the CPU. CUDA's fp32/bf16 kernel sums per thread before its double finish (norm_rtol in
    # test_unscale_and_check.py).
    assert norm.item() == pytest.approx(exact, rel=1e-6 if device == "cpu" else 2e-5)
    # The fp64 grads on their own (a norm of doubles, summed in double, rounded once to fp32).
    head_only = torch.optim.SGD(model.head.parameters(), lr=0.1)
    scaler2 = ampkit.GradScaler(device, init_scale=1.0)
    scaler2.scale(torch.ones((), device=device))
    head_norm = scaler2.unscale_(head_only, compute_norm=True)
    exact_head = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.head.parameters()])).item()
    assert head_norm.item() == pytest.approx(exact_head, rel=1e-7)


def test_integer_and_complex_grads_are_refused_as_torch_refuses_them():
    for dtype in (torch.int32, torch.complex64):
        param = torch.zeros(3, dtype=dtype)
        param.grad = torch.ones(3, dtype=dtype)
        optimizer = torch.optim.SGD([param], lr=0.1)
        with pytest.raises(NotImplementedError):  # torch's refusal
            scaler = torch.amp.GradScaler("cpu")
            scaler.scale(torch.ones(()))
            scaler.unscale_(optimizer)
        scaler = ampkit.GradScaler("cpu")
        scaler.scale(torch.ones(()))
        name = {torch.int32: "int32", torch.complex64: "complex64"}[dtype]
        with pytest.raises(TypeError, match=r"grads\[0\] must have dtype float32, float16, bfloat16 or float64, "
                                            f"got {name}"):
            scaler.unscale_(optimizer)
