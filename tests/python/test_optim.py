"""ampkit.optim (FP32-master-weight SGD/Adam/AdamW) and its ops, against torch.optim.

Tolerance of the fp32 differential tests: after 200 steps every element of the weights and state
must be within 1e-6 * max|reference tensor| of torch's (assert_close_to_scale). ampkit runs
torch's single-tensor formulas in the same order, with the per-step coefficients derived in
double as torch derives them from Python floats, so what remains is rounding: torch's vectorised
CPU kernels fuse multiply-adds (w + alpha * g, lerp) into one FMA rounding where ampkit rounds
twice, so elements differ by a few float32 ulps of the largest weights (observed on this CPU:
<= 2.6e-7 * max|w| for SGD, <= 1.1e-7 * max|w| for Adam/AdamW; 22% / 89% of the elements are
bitwise equal). 1e-6 is ~8 ulps of the largest weight, while a single update is ~1e-3 of it: a
wrong formula, bias correction or an off-by-one step shows up orders of magnitude above it. Step
counters must be equal exactly.
"""
from __future__ import annotations

import copy
import io
import re

import pytest
import torch

import ampkit
from ampkit import optim as aoptim

SCALED_TOL = 1e-6


def assert_close_to_scale(actual, expected):
    """|actual[i] - expected[i]| <= SCALED_TOL * (the largest |expected| over the whole list), for
    lists of parallel tensors (see the module docstring)."""
    scale = max(e.abs().max().item() for e in expected if e.numel() > 0)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0.0, atol=SCALED_TOL * scale)
LOW = [torch.float16, torch.bfloat16]
ALL = [torch.float32, torch.float16, torch.bfloat16]
# Odd sizes exercise the scalar tails of the kernels; 70000 spans two 65536-element chunks on CUDA.
SHAPES = [(7,), (33, 17), (70000,), (1,)]

# (ampkit optimizer, torch optimizer, hyper-parameters) covering every option of each update.
CONFIGS = {
    "sgd": (aoptim.SGD, torch.optim.SGD, dict(lr=0.05)),
    "sgd_momentum_wd_dampening": (aoptim.SGD, torch.optim.SGD,
                                  dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    "sgd_nesterov_maximize": (aoptim.SGD, torch.optim.SGD,
                              dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=1e-3, maximize=True)),
    "adam": (aoptim.Adam, torch.optim.Adam, dict(lr=1e-3)),
    "adam_l2_wd": (aoptim.Adam, torch.optim.Adam, dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    "adamw": (aoptim.AdamW, torch.optim.AdamW, dict(lr=1e-3)),
    "adamw_maximize": (aoptim.AdamW, torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.1, maximize=True)),
}


def make_params(dtype, device, seed=0, shapes=SHAPES):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=generator).to(dtype=dtype, device=device)) for s in shapes]


def grads_for_step(step, shapes=SHAPES, seed=1000):
    generator = torch.Generator().manual_seed(seed + step)
    return [torch.randn(s, generator=generator) for s in shapes]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_fp32_matches_torch_for_200_steps(device, config):
    ours_cls, torch_cls, hyper = CONFIGS[config]
    ours_params, ref_params = make_params(torch.float32, device), make_params(torch.float32, device)
    ours = ours_cls(ours_params, **hyper)
    ref = torch_cls(ref_params, **hyper, foreach=False)  # the single-tensor path, whose order ampkit follows
    for step in range(200):
        for p, q, g in zip(ours_params, ref_params, grads_for_step(step)):
            p.grad, q.grad = g.to(device), g.to(device).clone()
        ours.step()
        ref.step()
    assert_close_to_scale([p.detach() for p in ours_params], [q.detach() for q in ref_params])
    for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
        if key in ref.state[ref_params[0]]:
            assert_close_to_scale([ours.state[p][key] for p in ours_params], [ref.state[q][key] for q in ref_params])
    for p in ours_params:
        assert ours.state[p]["step"].item() == 200
        assert "master" not in ours.state[p]  # fp32 params are their own masters


def regression_run(kind, dtype, steps=200, lr=1e-3, seed=0):
    """AdamW on a least-squares problem. kind: 'fp32' (torch, the reference), 'ampkit' (low-precision
    params + FP32 masters), 'torch_low' (torch on low-precision params, no masters). Gradients come
    from the params each run holds, rounded to the params' dtype as a real model's would be."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(512, 256, generator=generator)
    target = features @ torch.randn(256, generator=generator)
    start = torch.randn(256, generator=generator)
    if kind == "fp32":
        param = torch.nn.Parameter(start.clone())
        optimizer = torch.optim.AdamW([param], lr=lr, foreach=False)
    elif kind == "ampkit":
        param = torch.nn.Parameter(start.to(dtype))
        optimizer = aoptim.AdamW([param], lr=lr)
    else:
        param = torch.nn.Parameter(start.to(dtype))
        optimizer = torch.optim.AdamW([param], lr=lr, foreach=False)
    for _ in range(steps):
        weights = param.detach().float().requires_grad_(True)
        ((features @ weights - target) ** 2).mean().backward()
        param.grad = weights.grad.to(param.dtype)
        optimizer.step()
    weights = optimizer.master_params()[0] if kind == "ampkit" else param.detach().float()
    return weights, start


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_masters_track_fp32_far_better_than_pure_low_precision(dtype):
    # Measure: relative error of the weights' change after 200 AdamW steps (lr 1e-3),
    # ||w - w_fp32|| / ||w_fp32 - w_0||. Updates of ~1e-3 on weights of ~1 are at or below half an
    # fp16 ulp and far below a bf16 ulp, so pure low-precision training loses most of them.
    reference, start = regression_run("fp32", dtype)
    change = (reference - start).norm()
    ours_error = ((regression_run("ampkit", dtype)[0] - reference).norm() / change).item()
    torch_error = ((regression_run("torch_low", dtype)[0] - reference).norm() / change).item()
    # Measured on CPU: fp16 ampkit 1.2e-3 vs torch 0.12; bf16 ampkit 8.2e-3 vs torch 0.84 (~100x better).
    assert ours_error < 0.05, ours_error
    assert ours_error < torch_error / 10, (ours_error, torch_error)


@pytest.mark.parametrize("dtype", ALL)
def test_mixed_dtypes_in_one_group_follow_the_fp32_update(device, dtype):
    # One group holding an fp32, an fp16 and a bf16 param: each low-precision param's master follows
    # torch's fp32 AdamW fed the same (upcast) gradients, and the model copy is the rounded master.
    shapes = [(5, 3), (129,)]
    params = [torch.nn.Parameter(torch.randn(s).to(device=device, dtype=d)) for s in shapes for d in ALL]
    reference = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
    ours = aoptim.AdamW(params, lr=1e-2)
    ref = torch.optim.AdamW(reference, lr=1e-2, foreach=False)
    for step in range(20):
        generator = torch.Generator().manual_seed(step)
        for p, q in zip(params, reference):
            g = torch.randn(p.shape, generator=generator).to(device=device, dtype=p.dtype)
            p.grad, q.grad = g, g.float()
        ours.step()
        ref.step()
    assert_close_to_scale(ours.master_params(), [q.detach() for q in reference])
    for p, master in zip(params, ours.master_params()):
        assert master.dtype == torch.float32
        assert torch.equal(p.detach(), master.to(p.dtype))


def snapshot(optimizer, params):
    tensors = [p.detach().clone() for p in params]
    for p in params:
        tensors += [v.clone() for v in optimizer.state[p].values()]
    return tensors


@pytest.mark.parametrize("config", ["sgd", "sgd_momentum_wd_dampening", "adam_l2_wd", "adamw"])
@pytest.mark.parametrize("dtype", ALL)
def test_overflowed_step_changes_nothing(device, config, dtype):
    ours_cls, _, hyper = CONFIGS[config]
    params = make_params(dtype, device)
    optimizer = ours_cls(params, **hyper)
    for step in range(3):
        for p, g in zip(params, grads_for_step(step)):
            p.grad = g.to(device=device, dtype=dtype)
        optimizer.step()
    before = snapshot(optimizer, params)
    masters_before = [m.clone() for m in optimizer.master_params()]
    for p, g in zip(params, grads_for_step(3)):
        p.grad = g.to(device=device, dtype=dtype)
    params[1].grad[0, 0] = float("inf")
    # The GradScaler protocol: found_inf (and grad_scale) set on the optimizer before step().
    optimizer.grad_scale = torch.full((), 1024.0, device=device)
    optimizer.found_inf = torch.ones((), device=device)
    optimizer.step()
    after = snapshot(optimizer, params)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(optimizer.state[p]["step"].item() == 3 for p in params)
    # Without found_inf the next step goes through.
    del optimizer.grad_scale, optimizer.found_inf
    params[1].grad.zero_()
    optimizer.step()
    assert all(optimizer.state[p]["step"].item() == 4 for p in params)
    assert not torch.equal(optimizer.master_params()[0], masters_before[0])


@pytest.mark.parametrize("dtype", ALL)
def test_torch_grad_scaler_skips_and_unscales_in_kernel(dtype):
    # torch.amp.GradScaler("cpu") drives the optimizer through _step_supports_amp_scaling: the
    # gradients stay scaled, the kernel unscales them. With power-of-two scales unscaling is exact,
    # so the result equals the same optimizer fed the unscaled gradients, bitwise.
    params, plain_params = make_params(dtype, "cpu"), make_params(dtype, "cpu")
    scaled_opt, plain_opt = aoptim.AdamW(params, lr=1e-2), aoptim.AdamW(plain_params, lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=1000)
    scaler.scale(torch.ones(()))  # creates the scale tensor, as scaling the loss would
    for step in range(5):
        for p, q, g in zip(params, plain_params, grads_for_step(step)):
            g = g.to(dtype)
            p.grad, q.grad = g * 2.0 ** 8, g.clone()
        scaler.step(scaled_opt)
        scaler.update()
        plain_opt.step()
    for a, b in zip(scaled_opt.master_params() + params, plain_opt.master_params() + plain_params):
        assert torch.equal(a, b)
    # An inf gradient: the scaler's found_inf makes the optimizer skip and the scale back off.
    before = snapshot(scaled_opt, params)
    params[0].grad[3] = float("inf")
    scaler.step(scaled_opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(scaled_opt, params)))
    assert scaler.get_scale() == 2.0 ** 7
    assert not hasattr(scaled_opt, "found_inf")  # the scaler removed its attributes again


def test_step_never_reads_a_value_back_to_the_host(monkeypatch):
    params = make_params(torch.float16, "cpu")
    optimizer = aoptim.AdamW(params, lr=torch.tensor(1e-3))
    for p, g in zip(params, grads_for_step(0)):
        p.grad = g.half()
    optimizer.grad_scale = torch.full((), 64.0)
    optimizer.found_inf = torch.zeros(())

    def host_read(*args, **kwargs):
        raise AssertionError("optimizer.step() read a tensor value on the host")

    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, method, host_read)
    optimizer.step(clip_coef=torch.tensor(0.5))
    monkeypatch.undo()
    assert optimizer.state[params[0]]["step"].item() == 1


def test_clip_coef_and_lr_tensor_scale_the_update():
    # SGD without momentum: w - lr * clip * g. With powers of two every product is exact.
    params = make_params(torch.float32, "cpu")
    expected = [p.detach() - 0.25 * 0.5 * g for p, g in zip(params, grads_for_step(0))]
    optimizer = aoptim.SGD(params, lr=torch.tensor(0.25))
    for p, g in zip(params, grads_for_step(0)):
        p.grad = g
    optimizer.step(clip_coef=0.5)
    assert all(torch.equal(p.detach(), e) for p, e in zip(params, expected))


def test_lr_scheduler_works_unchanged(device):
    ours_params, ref_params = make_params(torch.float32, device), make_params(torch.float32, device)
    ours = aoptim.SGD(ours_params, lr=0.1, momentum=0.9)
    ref = torch.optim.SGD(ref_params, lr=0.1, momentum=0.9, foreach=False)
    ours_sched = torch.optim.lr_scheduler.StepLR(ours, step_size=3, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=3, gamma=0.5)
    for step in range(10):
        for p, q, g in zip(ours_params, ref_params, grads_for_step(step)):
            p.grad, q.grad = g.to(device), g.to(device).clone()
        ours.step()
        ref.step()
        ours_sched.step()
        ref_sched.step()
    assert ours.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == 0.1 * 0.5 ** 3
    assert_close_to_scale([p.detach() for p in ours_params], [q.detach() for q in ref_params])


def test_param_groups_keep_their_own_hyper_parameters():
    a, b = make_params(torch.float16, "cpu", shapes=[(10,)]), make_params(torch.float32, "cpu", shapes=[(10,)])
    optimizer = aoptim.SGD([{"params": a, "lr": 0.5}, {"params": b}], lr=0.25)
    a_before, b_before = a[0].detach().float().clone(), b[0].detach().clone()
    a[0].grad, b[0].grad = torch.ones(10, dtype=torch.float16), torch.ones(10)
    optimizer.step()
    assert torch.equal(optimizer.master_params()[0], a_before - 0.5)
    assert torch.equal(b[0].detach(), b_before - 0.25)


def test_params_without_grad_are_left_alone():
    params = make_params(torch.bfloat16, "cpu")
    optimizer = aoptim.Adam(params)
    before = snapshot(optimizer, params)
    params[0].grad = torch.ones_like(params[0])
    optimizer.step()
    after = snapshot(optimizer, params)
    assert not torch.equal(params[0].detach(), before[0])
    assert torch.equal(params[1].detach(), before[1]) and optimizer.state[params[1]]["step"].item() == 0
    assert len(before) == len(after)


def test_master_weights_false_updates_low_precision_params_directly():
    params = make_params(torch.float16, "cpu", shapes=[(64,)])
    optimizer = aoptim.SGD(params, lr=0.5, master_weights=False)
    assert "master" not in optimizer.state[params[0]]
    assert optimizer.master_params()[0] is params[0]
    before = params[0].detach().clone()
    params[0].grad = torch.ones(64, dtype=torch.float16)
    optimizer.step()
    assert torch.equal(params[0].detach(), (before.float() - 0.5).half())


def small_model(dtype, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return aoptim.to_low_precision(model, dtype) if dtype != torch.float32 else model


def train(model, optimizer, scheduler, steps, start):
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(step)
        inputs = torch.randn(16, 12, generator=generator).to(next(model.parameters()).dtype)
        optimizer.zero_grad()
        model(inputs).float().pow(2).mean().backward()
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("config", ["sgd_momentum_wd_dampening", "adam_l2_wd", "adamw"])
@pytest.mark.parametrize("dtype", ALL)
def test_checkpoint_resume_is_bitwise_equal_to_uninterrupted_training(config, dtype):
    ours_cls, _, hyper = CONFIGS[config]

    def build():
        model = small_model(dtype)
        optimizer = ours_cls(model.parameters(), **hyper)
        return model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.5)

    model, optimizer, scheduler = build()
    train(model, optimizer, scheduler, 200, 0)

    model_a, optimizer_a, scheduler_a = build()
    train(model_a, optimizer_a, scheduler_a, 100, 0)
    buffer = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "optimizer": optimizer_a.state_dict(),
                "scheduler": scheduler_a.state_dict()}, buffer)
    del model_a, optimizer_a, scheduler_a
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    model_b, optimizer_b, scheduler_b = build()
    model_b.load_state_dict(checkpoint["model"])
    optimizer_b.load_state_dict(checkpoint["optimizer"])
    scheduler_b.load_state_dict(checkpoint["scheduler"])
    train(model_b, optimizer_b, scheduler_b, 100, 100)

    for a, b in zip(model.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(model.parameters(), model_b.parameters()):
        for key, value in optimizer.state[a].items():
            assert torch.equal(value, optimizer_b.state[b][key]), key


def test_state_dict_round_trips_masters_exactly():
    model = small_model(torch.bfloat16)
    optimizer = aoptim.AdamW(model.parameters(), lr=1e-2)
    train(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), 5, 0)
    saved = copy.deepcopy(optimizer.state_dict())
    fresh = aoptim.AdamW(small_model(torch.bfloat16).parameters(), lr=1e-2)
    fresh.load_state_dict(saved)
    for a, b in zip(optimizer.master_params(), fresh.master_params()):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    # The masters hold what bf16 cannot: they are not the rounded model weights.
    assert any(not torch.equal(m, p.float()) for m, p in zip(optimizer.master_params(), model.parameters()))


def test_to_low_precision_keeps_norm_layers_fp32_and_masters_exact():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.BatchNorm1d(8),
                                torch.nn.Linear(8, 2))
    originals = [p.detach().clone() for p in model.parameters()]
    aoptim.to_low_precision(model, torch.float16)
    assert model[0].weight.dtype == model[3].bias.dtype == torch.float16
    assert model[1].weight.dtype == model[2].weight.dtype == model[2].running_mean.dtype == torch.float32
    optimizer = aoptim.Adam(model.parameters())
    for original, master in zip(originals, optimizer.master_params()):
        assert torch.equal(original, master)  # the exact fp32 values, not the fp16-rounded ones
    with pytest.raises(ValueError, match="dtype must be torch.float16 or torch.bfloat16"):
        aoptim.to_low_precision(model, torch.float64)


# ---- bad input ----

@pytest.mark.parametrize("make, error, message", [
    (lambda p: aoptim.SGD(p, lr=-0.1), ValueError, "lr must be >= 0.0, got -0.1"),
    (lambda p: aoptim.Adam(p, lr=-1e-3), ValueError, "lr must be >= 0.0, got -0.001"),
    (lambda p: aoptim.Adam(p, betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be >= 0.0 and < 1.0, got 1.0"),
    (lambda p: aoptim.AdamW(p, betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be >= 0.0 and < 1.0, got -0.1"),
    (lambda p: aoptim.AdamW(p, eps=0.0), ValueError, "eps must be > 0.0, got 0.0"),
    (lambda p: aoptim.Adam(p, eps=-1e-8), ValueError, "eps must be > 0.0, got -1e-08"),
    (lambda p: aoptim.SGD(p, weight_decay=-1.0), ValueError, "weight_decay must be >= 0.0, got -1.0"),
    (lambda p: aoptim.SGD(p, momentum=-0.5), ValueError, "momentum must be >= 0.0, got -0.5"),
    (lambda p: aoptim.SGD(p, nesterov=True), ValueError, "nesterov momentum needs momentum > 0"),
    (lambda p: aoptim.SGD([{"params": p, "lr": -1.0}]), ValueError, "lr of group 0 must be >= 0.0, got -1.0"),
    (lambda p: aoptim.Adam(p, master_weights=1), TypeError, "master_weights must be a bool"),
])
def test_bad_hyper_parameters_raise(make, error, message):
    with pytest.raises(error, match=message):
        make(make_params(torch.float32, "cpu"))


def test_unsupported_param_and_grad_dtypes_raise():
    # float64 params are supported (updated in double, as torch does); complex ones are not, and a
    # float64 gradient belongs to a float64 param only.
    with pytest.raises(TypeError, match=r"params\[0\] of group 0 has dtype torch.complex64; supported"):
        aoptim.Adam([torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))])
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = aoptim.Adam([param])
    param.grad_dtype = None  # torch itself refuses a gradient of another dtype unless told to allow it
    param.grad = torch.ones(3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"params\[0\] of group 0 has a torch.float64 gradient"):
        optimizer.step()


def test_params_on_mixed_devices_in_one_group_raise():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3, device="meta"))]
    with pytest.raises(ValueError, match="the params of one group must be on one device, got .*cpu.*meta"):
        aoptim.SGD(params)


def test_load_state_dict_rejects_foreign_or_mismatched_state():
    model = small_model(torch.float16)
    adamw = aoptim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="comes from ampkit.optim.SGD, expected one from ampkit.optim.AdamW"):
        adamw.load_state_dict(aoptim.SGD(small_model(torch.float16).parameters(), momentum=0.9).state_dict())
    torch_model = small_model(torch.float32)
    with pytest.raises(ValueError, match="comes from a non-ampkit optimizer"):
        adamw.load_state_dict(torch.optim.AdamW(torch_model.parameters()).state_dict())
    wider = torch.nn.Sequential(torch.nn.Linear(12, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    aoptim.to_low_precision(wider, torch.float16)
    with pytest.raises(ValueError, match=r"state 'master' of param id 0 has shape \(64, 12\) in the state_dict, "
                                         r"but the parameter needs \(32, 12\)"):
        adamw.load_state_dict(aoptim.AdamW(wider.parameters()).state_dict())
    with pytest.raises(ValueError, match="group 0 of the state_dict has 2 params, this optimizer's has 4"):
        adamw.load_state_dict(aoptim.AdamW(list(model.parameters())[:2]).state_dict())
    fp32_masterless = aoptim.AdamW(small_model(torch.float16).parameters(), master_weights=False)
    with pytest.raises(ValueError, match="a different optimizer configuration, master_weights or parameter dtype"):
        adamw.load_state_dict(fp32_masterless.state_dict())
    # Nothing was changed by the failed loads.
    assert all(v["step"].item() == 0 for v in adamw.state.values())


# ---- tensor hyper-parameters: only lr may be a tensor ----
# The ops take momentum, dampening, betas, eps and weight_decay as doubles (only lr, inv_scale,
# clip_coef and found_inf are device tensors), so a tensor there would be read back to the host on
# every step: a device sync on CUDA, an error under graph capture. ampkit refuses such a tensor
# wherever it can enter a param group, with a TypeError naming it; lr stays a device tensor.

BASE_HYPER = {
    aoptim.SGD: dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    aoptim.Adam: dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    aoptim.AdamW: dict(lr=1e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
}
TENSOR_HYPER_CASES = [(aoptim.SGD, name) for name in ("momentum", "dampening", "weight_decay")] + [
    (cls, name) for cls in (aoptim.Adam, aoptim.AdamW) for name in ("betas[0]", "betas[1]", "eps", "weight_decay")]
TENSOR_HYPER_IDS = [f"{cls.__name__}-{name}" for cls, name in TENSOR_HYPER_CASES]


def hyper_value(group, name):
    return group["betas"][int(name[6])] if name.startswith("betas[") else group[name]


def with_hyper(group, name, value):
    """A copy of the dict `group` with the hyper-parameter `name` ("betas[0]" too) set to `value`."""
    group = dict(group)
    if name.startswith("betas["):
        betas = list(group["betas"])
        betas[int(name[6])] = value
        group["betas"] = tuple(betas)
    else:
        group[name] = value
    return group


def group_with_tensor(params, base, name):
    """A param group for `params` whose `name` is a 0-dim CPU tensor of `base`'s value (for a beta,
    the other beta is `base`'s float)."""
    group = {"params": params, "betas": base["betas"]} if name.startswith("betas[") else {"params": params}
    return with_hyper(group, name, torch.tensor(hyper_value(base, name)))


def tensor_refused(cls, name, where="", label=None):
    """The message that refuses a 0-dim CPU tensor for `name`: it says what, why, and shows the value."""
    label = label or cls.__name__
    return (rf"^ampkit\.optim\.{re.escape(label)}: {re.escape(name)}{where} must be a Python float \(a tensor "
            rf"would be read on the host every step\); got tensor\([-0-9.e]+\)$")


@pytest.mark.parametrize("cls, name", TENSOR_HYPER_CASES, ids=TENSOR_HYPER_IDS)
def test_tensor_hyper_parameter_is_refused_at_construction(cls, name):
    base = BASE_HYPER[cls]
    hyper = with_hyper(base, name, torch.tensor(hyper_value(base, name)))
    with pytest.raises(TypeError, match=tensor_refused(cls, name)):
        cls(make_params(torch.float16, "cpu"), **hyper)
    # In a group given to the constructor, too.
    group = group_with_tensor(make_params(torch.float16, "cpu"), base, name)
    with pytest.raises(TypeError, match=tensor_refused(cls, name, " of group 0")):
        cls([group], **base)


@pytest.mark.parametrize("cls, name", TENSOR_HYPER_CASES, ids=TENSOR_HYPER_IDS)
def test_tensor_hyper_parameter_is_refused_in_add_param_group(cls, name):
    base = BASE_HYPER[cls]
    optimizer = cls(make_params(torch.float16, "cpu"), **base)
    extra = make_params(torch.bfloat16, "cpu", seed=1)
    group = group_with_tensor(extra, base, name)
    with pytest.raises(TypeError, match=tensor_refused(cls, name, " of group 1")):
        optimizer.add_param_group(group)
    assert len(optimizer.param_groups) == 1 and not any(p in optimizer.state for p in extra)


@pytest.mark.parametrize("cls, name", TENSOR_HYPER_CASES, ids=TENSOR_HYPER_IDS)
def test_tensor_hyper_parameter_set_into_a_group_is_refused_by_step(cls, name):
    # A value mutated into param_groups between steps (as a hand-written schedule might) is checked
    # before anything is updated: the step raises instead of reading the tensor on the host, and no
    # group is half-stepped (the tensor is in the second group, the first is left alone too).
    base = BASE_HYPER[cls]
    first, second = make_params(torch.float16, "cpu"), make_params(torch.float32, "cpu", seed=1)
    optimizer = cls([{"params": first}, {"params": second}], **base)
    for step in range(2):
        for p, g in zip(first + second, grads_for_step(step) * 2):
            p.grad = g.to(p.dtype)
        if step == 1:
            before = snapshot(optimizer, first + second)
            group = optimizer.param_groups[1]
            group.update(with_hyper(group, name, torch.tensor(hyper_value(group, name))))
            with pytest.raises(TypeError, match=tensor_refused(cls, name, " of group 1")):
                optimizer.step()
            assert all(torch.equal(a, b) for a, b in zip(before, snapshot(optimizer, first + second)))
        else:
            optimizer.step()
    # Set back to a float, the step runs.
    group.update(with_hyper(group, name, hyper_value(base, name)))
    optimizer.step()
    assert optimizer.state[first[0]]["step"].item() == 2


@pytest.mark.parametrize("cls, name", TENSOR_HYPER_CASES, ids=TENSOR_HYPER_IDS)
def test_tensor_hyper_parameter_in_a_state_dict_is_refused_before_anything_loads(cls, name):
    base = BASE_HYPER[cls]

    def build(seed):
        groups = [{"params": make_params(torch.float16, "cpu", seed=seed)},
                  {"params": make_params(torch.bfloat16, "cpu", seed=seed + 1), "lr": 2e-3}]
        optimizer = cls(groups, **base)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        return optimizer, params

    source, source_params = build(0)
    for p, g in zip(source_params, grads_for_step(0) * 2):
        p.grad = g.to(p.dtype)
    source.step()
    saved = source.state_dict()
    saved["param_groups"][0]["lr"] = 0.5  # a loadable change in the group before the bad one
    saved["param_groups"][1] = with_hyper(saved["param_groups"][1], name,
                                          torch.tensor(hyper_value(saved["param_groups"][1], name)))
    target, target_params = build(5)
    before = snapshot(target, target_params)
    groups_before = copy.deepcopy([{k: v for k, v in g.items() if k != "params"} for g in target.param_groups])
    with pytest.raises(TypeError, match=tensor_refused(cls, name, " of group 1", f"{cls.__name__}.load_state_dict")):
        target.load_state_dict(saved)
    # Nothing half-applied: no state copied, no group value changed.
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(target, target_params)))
    assert [{k: v for k, v in g.items() if k != "params"} for g in target.param_groups] == groups_before


@pytest.mark.parametrize("cls", [aoptim.SGD, aoptim.Adam])
def test_tensor_flags_and_betas_as_one_tensor_are_refused(cls):
    params = make_params(torch.float32, "cpu")
    with pytest.raises(TypeError, match=r"maximize must be a Python bool \(a tensor would be read on the host "
                                        r"every step\); got tensor\(True\)"):
        cls(params, maximize=torch.tensor(True))
    if cls is aoptim.SGD:
        with pytest.raises(TypeError, match=r"nesterov must be a Python bool .*; got tensor\(True\)"):
            cls(params, momentum=0.9, nesterov=torch.tensor(True))
    else:
        with pytest.raises(TypeError, match=r"Adam: betas must be a pair of Python floats \(a tensor would be read "
                                            r"on the host every step\); got tensor\(\[0\.9000, 0\.9990\]\)"):
            cls(params, betas=torch.tensor([0.9, 0.999]))


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=["0-dim", "1-element", "1x1"])
@pytest.mark.parametrize("config", ["sgd_momentum_wd_dampening", "adam_l2_wd", "adamw"])
def test_lr_tensor_of_one_element_equals_a_float_lr(config, shape):
    # lr stays a tensor end to end: any one-element shape works, gives bitwise the float lr's
    # result, and a value written into it in place (a schedule on the device) is used by the next step.
    cls, _, hyper = CONFIGS[config]
    lr = hyper["lr"]
    tensor_params, float_params = make_params(torch.bfloat16, "cpu"), make_params(torch.bfloat16, "cpu")
    lr_tensor = torch.full(shape, lr)
    with_tensor = cls(tensor_params, **{**hyper, "lr": lr_tensor})
    with_float = cls(float_params, **hyper)
    for step in range(4):
        if step == 2:
            lr_tensor.fill_(lr / 2)
            with_float.param_groups[0]["lr"] = lr / 2
        for p, q, g in zip(tensor_params, float_params, grads_for_step(step)):
            p.grad, q.grad = g.bfloat16(), g.bfloat16()
        with_tensor.step()
        with_float.step()
    assert with_tensor.param_groups[0]["lr"] is lr_tensor
    assert all(torch.equal(a, b) for a, b in zip(snapshot(with_tensor, tensor_params),
                                                 snapshot(with_float, float_params)))


# ---- the ops directly ----

def op_args(kind, dtype, device, n=(5, 300), master=True):
    params = [torch.randn(k, device=device).to(dtype) for k in n]
    masters = [p.float() for p in params] if master else []
    grads = [torch.randn(k, device=device).to(dtype) for k in n]
    steps = [torch.zeros((), device=device) for _ in n]
    scalars = [torch.full((1,), v, device=device) for v in (1e-2, 0.5, 1.0)]
    if kind == "sgd":
        buffers = [torch.zeros(k, device=device) for k in n]
        return (params, masters, grads, buffers, steps, *scalars, None, 0.9, 0.0, 1e-4, True, False)
    state = [[torch.zeros(k, device=device) for k in n] for _ in range(2)]
    return (params, masters, grads, *state, [], steps, *scalars, torch.zeros(1, device=device), 0.9, 0.999, 1e-8,
            1e-2, True, False)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", ALL)
def test_opcheck(device, kind, dtype):
    op = torch.ops.ampkit.master_sgd_step_ if kind == "sgd" else torch.ops.ampkit.master_adam_step_
    torch.library.opcheck(op, op_args(kind, dtype, device, master=dtype != torch.float32))


def test_op_found_inf_skips_everything_including_steps(device):
    args = list(op_args("adam", torch.bfloat16, device))
    args[10] = torch.ones(1, device=device)  # found_inf
    before = [t.clone() for lst in args[:7] for t in lst]
    torch.ops.ampkit.master_adam_step_(*args)
    assert all(torch.equal(a, b) for a, b in zip(before, [t for lst in args[:7] for t in lst]))


def test_op_many_tensors_and_empty_ones(device):
    # 100 tensors (more than one launch table holds on CUDA) including empty ones: every step advances.
    sizes = [0 if i % 7 == 0 else 3 + 5 * i for i in range(100)]
    params = [torch.randn(k, device=device) for k in sizes]
    reference = [torch.nn.Parameter(p.clone()) for p in params]
    grads = [torch.randn(k, device=device) for k in sizes]
    steps = [torch.zeros((), device=device) for _ in sizes]
    lr, one = torch.full((1,), 0.1, device=device), torch.ones(1, device=device)
    torch.ops.ampkit.master_sgd_step_(params, [], grads, [], steps, lr, one, one, None, 0.0, 0.0, 0.0, False, False)
    for q, g in zip(reference, grads):
        q.grad = g
    torch.optim.SGD(reference, lr=0.1, foreach=False).step()
    assert_close_to_scale(params, [q.detach() for q in reference])
    assert all(s.item() == 1 for s in steps)


def _bad_op_cases():
    def adam(**override):
        args = dict(zip(["params", "master_params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps",
                         "lr", "inv_scale", "clip_coef", "found_inf", "beta1", "beta2", "eps", "weight_decay",
                         "decoupled", "maximize"],
                        op_args("adam", torch.float16, "cpu")))
        args.update(override)
        return lambda: torch.ops.ampkit.master_adam_step_(*args.values())

    f16 = [torch.ones(5, dtype=torch.float16), torch.ones(300, dtype=torch.float16)]
    return [
        (adam(grads=[g.double() for g in f16]), TypeError, r"grads\[0\] must have dtype float32, float16 or bfloat16, "
                                                           "got float64"),
        (adam(master_params=[g.clone() for g in f16]), TypeError, r"master_params\[0\] must have dtype float32"),
        (adam(exp_avgs=[torch.zeros(5), torch.zeros(301)]), RuntimeError,
         r"exp_avgs\[1\] must have the shape of params\[1\]"),
        (adam(steps=[torch.zeros(())]), RuntimeError, "steps must hold as many tensors as params"),
        (adam(lr=torch.ones(2)), RuntimeError, "lr must be a one-element float32 tensor, got 2 elements"),
        (adam(found_inf=torch.zeros(1, dtype=torch.float64)), TypeError, "found_inf must be a one-element float32"),
        (adam(beta1=1.0), ValueError, r"beta1 must be in \[0, 1\), got 1"),
        (adam(eps=0.0), ValueError, "eps must be a finite value > 0, got 0"),
        (adam(weight_decay=-1.0), ValueError, "weight_decay must be a finite value >= 0"),
        (adam(params=[f16[0], f16[1].float()]), TypeError, r"params\[0\] is float16 but params\[1\] is float32"),
        (lambda: torch.ops.ampkit.master_sgd_step_([torch.ones(3)], [], [torch.ones(3)], [], [torch.zeros(())],
                                                   torch.ones(1), torch.ones(1), torch.ones(1), None, 0.9, 0.0, 0.0,
                                                   False, False),
         RuntimeError, "momentum_buffers must hold one FP32 tensor per param when momentum"),
        (lambda: torch.ops.ampkit.master_sgd_step_([torch.ones(3)], [], [torch.ones(3, device="meta")], [],
                                                   [torch.zeros(())], torch.ones(1), torch.ones(1), torch.ones(1),
                                                   None, 0.0, 0.0, 0.0, False, False),
         RuntimeError, r"grads\[0\] must be on cpu \(the device of params\[0\]\), got meta"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_op_cases())))
def test_op_bad_input_raises_naming_the_argument(index):
    call, error, message = _bad_op_cases()[index]
    with pytest.raises(error, match=message):
        call()


# ---- CUDA only ----

@pytest.mark.cuda
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", ALL)
def test_cuda_matches_cpu(config, dtype):
    ours_cls, _, hyper = CONFIGS[config]
    runs = {}
    for device in ("cpu", "cuda"):
        params = make_params(dtype, device)
        optimizer = ours_cls(params, **hyper)
        for step in range(50):
            for p, g in zip(params, grads_for_step(step)):
                p.grad = g.to(device=device, dtype=dtype)
            optimizer.step()
        runs[device] = [m.cpu() for m in optimizer.master_params()]
    # CUDA contracts multiply-adds into FMAs; otherwise the formulas are the same code.
    for a, b in zip(runs["cpu"], runs["cuda"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
def test_cuda_graph_capture_of_a_step():
    params = make_params(torch.bfloat16, "cuda")
    lr = torch.full((1,), 1e-3, device="cuda")
    optimizer = aoptim.AdamW(params, lr=lr)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.grad_scale = torch.full((), 1.0, device="cuda")
    optimizer.found_inf = torch.zeros((), device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        optimizer.step()  # warm-up outside the graph (creates cached constants)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        optimizer.step()
    before = [m.clone() for m in optimizer.master_params()]
    graph.replay()
    torch.cuda.synchronize()
    # The warm-up step ran; capturing runs nothing; the replay is the second step.
    assert optimizer.state[params[0]]["step"].item() == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, optimizer.master_params()))


def test_op_misaligned_views_take_the_scalar_path(device):
    # Contiguous views starting one element in are not 16-byte aligned: the CUDA kernel must fall
    # back from its vector loads; results equal the aligned run's exactly (same per-element math).
    data, grad_data = torch.randn(4096, device=device).half(), torch.randn(4096, device=device).half()

    def placed(values, offset, dtype):
        storage = torch.zeros(4097, device=device, dtype=dtype)
        storage[offset:offset + 4096] = values
        return storage[offset:offset + 4096]

    results = []
    for offset in (0, 1):
        params, grads = [placed(data, offset, torch.float16)], [placed(grad_data, offset, torch.float16)]
        masters = [placed(data.float(), offset, torch.float32)]
        state = [[placed(torch.zeros(4096, device=device), offset, torch.float32)] for _ in range(2)]
        steps = [torch.zeros((), device=device)]
        lr, one = torch.full((1,), 1e-2, device=device), torch.ones(1, device=device)
        torch.ops.ampkit.master_adam_step_(params, masters, grads, *state, [], steps, lr, one, one, None, 0.9, 0.999,
                                           1e-8, 0.0, False, False)
        results.append([params[0], masters[0], *state[0], *state[1]])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert not torch.equal(results[0][0], data)


@pytest.mark.cuda
def test_cuda_one_tensor_spanning_several_launches():
    # 330 chunks of 65536 elements > 320 blocks per launch table: the tensor is split across two
    # launches, and its step counter still advances exactly once.
    n = 330 * 65536 + 3
    param = torch.ones(n, device="cuda", dtype=torch.bfloat16)
    master, buffer = param.float(), torch.zeros(n, device="cuda")
    grad = torch.ones(n, device="cuda", dtype=torch.bfloat16)
    step = torch.zeros((), device="cuda")
    lr, one = torch.full((1,), 0.5, device="cuda"), torch.ones(1, device="cuda")
    torch.ops.ampkit.master_sgd_step_([param], [master], [grad], [buffer], [step], lr, one, one, None, 0.9, 0.0,
                                      0.0, False, False)
    assert master.eq(0.5).all().item() and param.eq(0.5).all().item() and buffer.eq(1.0).all().item()
    assert step.item() == 1


@pytest.mark.parametrize("cls", list(BASE_HYPER), ids=lambda cls: cls.__name__)
def test_a_group_changed_between_steps_is_checked_again(cls):
    # step() re-checks a group only when one of its values changed since the last check; a change
    # that compares equal (lr 1 -> True, 0.9 -> a tensor inside betas) still counts as a change.
    base = dict(BASE_HYPER[cls], lr=1)
    params = make_params(torch.float16, "cpu")
    optimizer = cls(params, **base)
    for step in range(3):
        for p, g in zip(params, grads_for_step(step)):
            p.grad = g.to(p.dtype)
        if step == 1:
            optimizer.param_groups[0]["lr"] = True
            with pytest.raises(TypeError, match=r"lr of group 0 must be a float, got bool"):
                optimizer.step()
            optimizer.param_groups[0]["lr"] = 1e-3
        optimizer.step()
