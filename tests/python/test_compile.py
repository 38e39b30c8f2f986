"""torch.compile and torch.library.opcheck over ampkit.

* A small model of FusedLinear layers, run under an ampkit autocast policy (bf16; CPU, and CUDA
  on the GPU machine) and
  trained by ampkit.optim.AdamW, compiles with fullgraph=True (aot_eager, and inductor, the
  default backend) for the forward + backward and for the optimizer step, and trains to the same
  state as eager execution.
* torch.library.opcheck runs over EVERY op in torch.ops.ampkit: an op without an entry in
  OPCHECK_ARGS fails test_every_op_has_an_opcheck_case, so a new op cannot skip it.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import ampkit
from conftest import registered_ampkit_ops

ops = torch.ops.ampkit

# ---- a compiled training step against eager ----

STEPS = 3
LR = 1e-2


def make_model(device: str = "cpu", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(ampkit.FusedLinear(16, 32, activation="gelu"), ampkit.FusedLinear(32, 32, activation="relu"),
                         ampkit.FusedLinear(32, 4)).to(device)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x).float() - y).square().mean()


def train(model, loss, step, batches, policy):
    losses = []
    for x, y in batches:
        for p in model.parameters():
            p.grad = None
        with ampkit.autocast(policy.device_type, policy=policy):
            value = loss(model, x, y)
        value.backward()
        step()
        losses.append(value.detach())
    return torch.stack(losses)


def batches(device: str = "cpu"):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 16, generator=generator).to(device), torch.randn(8, 4, generator=generator).to(device))
            for _ in range(STEPS)]


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_training_matches_eager(device, backend):
    torch._dynamo.reset()
    policy = ampkit.Policy.default(device, torch.bfloat16)
    eager_model, compiled_model = make_model(device), make_model(device)
    eager_opt = ampkit.optim.AdamW(eager_model.parameters(), lr=LR)
    compiled_opt = ampkit.optim.AdamW(compiled_model.parameters(), lr=LR)

    eager_losses = train(eager_model, loss_fn, eager_opt.step, batches(device), policy)
    compiled_loss = torch.compile(loss_fn, backend=backend, fullgraph=True)
    compiled_step = torch.compile(compiled_opt.step, backend=backend, fullgraph=True)
    compiled_losses = train(compiled_model, compiled_loss, compiled_step, batches(device), policy)

    # The forward really ran in bf16 through ampkit's op: the loss is not the fp32 one.
    with torch.no_grad():
        fp32_loss = loss_fn(make_model(device), *batches(device)[0])
    assert eager_losses[0] != fp32_loss

    # Losses: the same bf16 GEMMs with fp32 accumulation; the compiled graph may order the fp32
    # epilogue/loss reduction differently: 1e-5 relative (bf16 products are exact in fp32, only the
    # summation order differs).
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=0.0)
    # State after STEPS AdamW steps. Gradients reach the fp32 params through a bf16 cast whose
    # placement the compiled backward may change, so a gradient can differ by one bf16 rounding
    # (2^-8 relative); AdamW normalises the gradient, so the parameter difference stays below
    # lr * 2^-7 per step. A wrong op (or a skipped or doubled step) moves parameters by ~lr.
    for eager_p, compiled_p in zip(eager_model.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(compiled_p, eager_p, rtol=0.0, atol=STEPS * LR * 2.0 ** -7)
    for eager_p, compiled_p in zip(eager_model.parameters(), compiled_model.parameters()):
        eager_state, compiled_state = eager_opt.state[eager_p], compiled_opt.state[compiled_p]
        assert compiled_state["step"].item() == eager_state["step"].item() == STEPS
        torch.testing.assert_close(compiled_state["exp_avg"], eager_state["exp_avg"], rtol=2.0 ** -7,
                                   atol=2.0 ** -7 * eager_state["exp_avg"].abs().max().item())
    # The parameters moved: the comparison above is not between two untouched models.
    assert not torch.equal(next(eager_model.parameters()), next(make_model(device).parameters()))


def test_compiled_grad_scaler_step_skips_on_overflow():
    # ampkit's optimizer consumes found_inf on the device, so the compiled step (no host sync, no
    # graph break) skips an overflowing step exactly as the eager one does.
    torch._dynamo.reset()
    model = make_model()
    optimizer = ampkit.optim.SGD(model.parameters(), lr=LR)
    before = [p.detach().clone() for p in model.parameters()]
    step = torch.compile(optimizer.step, backend="aot_eager", fullgraph=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.grad_scale, optimizer.found_inf = torch.full((1,), 4.0), torch.ones(1)
    step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    # The skipped step still leaves the grads unscaled, as torch's GradScaler.unscale_ does.
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # the next iteration's backward
    optimizer.found_inf = torch.zeros(1)
    step()
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p, b - LR * 0.25, rtol=0.0, atol=1e-7)  # grad 1 unscaled by 1/4


# ---- opcheck over every op ----

def _f(*shape, device, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)


def _scalar(value, device):
    return torch.full((1,), value, device=device)


def _multi_tensor_scale_args(device):
    inputs = [_f(5, device=device, dtype=torch.float16), _f(3, 7, device=device, dtype=torch.float16)]
    outputs = [torch.zeros(5, device=device), torch.zeros(3, 7, device=device)]
    return [(inputs, outputs, _scalar(0.5, device), _scalar(0.0, device))]


def _unscale_args(device):
    grads = [_f(5, device=device), _f(300, device=device, dtype=torch.bfloat16), _f(4, 4, device=device, dtype=torch.float16)]
    return [(grads, _scalar(0.0, device), _scalar(0.25, device), None),
            ([g.clone() for g in grads], _scalar(0.0, device), _scalar(0.25, device), _scalar(0.0, device))]


def _update_scale_args(device):
    trackers = lambda: (torch.zeros(1, dtype=torch.int32, device=device), torch.zeros(1, dtype=torch.int32, device=device))  # noqa: E731
    return [(_scalar(65536.0, device), *trackers(), _scalar(found, device), 2.0, 0.5, 2, 2, 1.0, 2.0**20)
            for found in (0.0, 1.0)]


def _reciprocal_scale_args(device):
    return [(_scalar(65536.0, device),), (torch.full((), 3.0, device=device),),
            (torch.full((1, 1), 7.0, dtype=torch.float64, device=device),)]


def _master_args(kind, device):
    params = [_f(5, device=device, dtype=torch.bfloat16), _f(3, 9, device=device, dtype=torch.bfloat16, seed=1)]
    masters = [p.float() for p in params]
    grads = [_f(*p.shape, device=device, dtype=torch.bfloat16, seed=2) for p in params]
    steps = [torch.zeros((), device=device) for _ in params]
    scalars = (_scalar(1e-2, device), _scalar(0.5, device), _scalar(1.0, device))
    zeros = lambda: [torch.zeros(p.shape, device=device) for p in params]  # noqa: E731
    if kind == "sgd":
        return [(params, masters, grads, zeros(), steps, *scalars, None, 0.9, 0.0, 1e-4, True, False)]
    return [(params, masters, grads, zeros(), zeros(), [], steps, *scalars, _scalar(0.0, device), 0.9, 0.999, 1e-8,
             1e-2, True, False),
            # amsgrad, grads written back unscaled
            (params, masters, grads, zeros(), zeros(), zeros(), steps, *scalars, _scalar(0.0, device), 0.9, 0.999,
             1e-8, 1e-2, True, False, True)]


def _linear_inputs(device, dtype=torch.bfloat16):
    return _f(4, 6, device=device, dtype=dtype), _f(5, 6, device=device, dtype=dtype, seed=1), \
        _f(5, device=device, dtype=dtype, seed=2)


def _fused_linear_args(device):
    x, w, b = _linear_inputs(device)
    xg, wg, bg = (t.clone().requires_grad_() for t in _linear_inputs(device, torch.float32))
    return [(x, w, b, "gelu"), (x, w, None, "relu"), (xg, wg, bg, "none")]


def _fused_linear_forward_args(device):
    x, w, b = _linear_inputs(device)
    return [(x, w, b, "gelu"), (x, w, b, "none")]


def _fused_linear_backward_args(device):
    x, w, b = _linear_inputs(device)
    cases = []
    for activation in ("gelu", "relu", "none"):
        out, pre = ops.fused_linear_forward(x, w, b, activation)
        saved = out if activation == "relu" else pre  # GELU: its input; none: the empty second output
        cases.append((torch.ones_like(out), x, w, saved, activation))
    return cases


def _mlp_inputs(device, dtype=torch.bfloat16):
    return (_f(4, 6, device=device, dtype=dtype), _f(8, 6, device=device, dtype=dtype, seed=1),
            _f(8, device=device, dtype=dtype, seed=2), _f(5, 8, device=device, dtype=dtype, seed=3),
            _f(5, device=device, dtype=dtype, seed=4))


def _fused_mlp_args(device):
    x, w1, b1, w2, b2 = _mlp_inputs(device)
    grads = tuple(t.clone().requires_grad_() for t in _mlp_inputs(device, torch.float32))
    return [(x, w1, b1, w2, b2), (x, w1, None, w2, None), grads]


def _fused_mlp_forward_args(device):
    return [_mlp_inputs(device)]


def _fused_mlp_backward_args(device):
    x, w1, b1, w2, b2 = _mlp_inputs(device)
    out, hidden, pre = ops.fused_mlp_forward(x, w1, b1, w2, b2)
    return [(torch.ones_like(out), x, w1, w2, hidden, pre)]


OPCHECK_ARGS = {
    "multi_tensor_scale_": _multi_tensor_scale_args,
    "unscale_and_check_": _unscale_args,
    "update_scale_": _update_scale_args,
    "reciprocal_scale": _reciprocal_scale_args,
    "master_sgd_step_": lambda device: _master_args("sgd", device),
    "master_adam_step_": lambda device: _master_args("adam", device),
    "fused_linear": _fused_linear_args,
    "fused_linear_forward": _fused_linear_forward_args,
    "fused_linear_backward": _fused_linear_backward_args,
    "fused_mlp": _fused_mlp_args,
    "fused_mlp_forward": _fused_mlp_forward_args,
    "fused_mlp_backward": _fused_mlp_backward_args,
}


def test_every_op_has_an_opcheck_case():
    names = registered_ampkit_ops()
    missing = [name for name in names if name not in OPCHECK_ARGS]
    assert not missing, f"ops without an opcheck case in OPCHECK_ARGS: {missing}"
    stale = [name for name in OPCHECK_ARGS if name not in names]
    assert not stale, f"OPCHECK_ARGS names ops that do not exist: {stale}"


@pytest.mark.parametrize("name", registered_ampkit_ops())
def test_opcheck(device, name):
    if name not in OPCHECK_ARGS:
        pytest.fail(f"torch.ops.ampkit.{name} has no opcheck case in OPCHECK_ARGS")
    op = getattr(ops, name).default
    for args in OPCHECK_ARGS[name](device):
        torch.library.opcheck(op, args)
