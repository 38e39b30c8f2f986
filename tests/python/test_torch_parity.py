"""Differential harness: one training loop run twice, with torch's classes (torch.optim.SGD / Adam /
AdamW, torch.amp.GradScaler) and with ampkit's (ampkit.optim.*, ampkit.GradScaler), over the options,
layouts, dtypes and loop shapes torch accepts. After every step it requires:

- equal loss scales and skip decisions (bitwise: both scalers are exact arithmetic on powers of 2);
- equal ``.grad`` after the step, bitwise: torch leaves gradients unscaled, and so does ampkit (its
  fused step writes the unscaled gradient back where it applied a scale);
- equal parameters and optimizer state (exp_avg, exp_avg_sq, max_exp_avg_sq, momentum_buffer) within
  the rounding bound of test_optim.py: 1e-6 of the largest reference value for float32 (torch fuses
  some multiply-adds that ampkit rounds twice), 1e-12 for float64; step counters exactly.
  float16/bfloat16 parameters are compared through their FP32 masters against torch on float32
  copies (the gradients are exactly representable in the low dtype, so both sides see the same
  values), and the model copy must be exactly the master rounded to the parameter's dtype.

The loss is sum(coef * p) with fresh coefficients each step (exact in bfloat16 and float16), so
every gradient is known exactly and the comparison tests the optimizers and scalers alone. Where
ampkit deliberately differs from torch the case is not here but in README's "Differences from
torch" and in test_differences_from_torch_are_deliberate below.
"""
from __future__ import annotations

import dataclasses
import itertools
import warnings

import pytest
import torch

import ampkit
from ampkit import optim as aoptim

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 1e-6, torch.bfloat16: 1e-6}

OPTIONS = {
    "SGD": [dict(lr=0.05), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3),
            dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), dict(lr=0.05, weight_decay=0.1),
            dict(lr=0.05, momentum=0.5, maximize=True, weight_decay=0.01)],
    "Adam": [dict(lr=1e-2), dict(lr=1e-2, betas=(0.8, 0.95), eps=1e-6), dict(lr=1e-2, weight_decay=0.1),
             dict(lr=1e-2, amsgrad=True), dict(lr=1e-2, maximize=True, amsgrad=True, weight_decay=0.01)],
    "AdamW": [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.3), dict(lr=1e-2, amsgrad=True),
              dict(lr=1e-2, maximize=True, amsgrad=True, betas=(0.5, 0.9))],
}
CLASSES = {"SGD": (aoptim.SGD, torch.optim.SGD), "Adam": (aoptim.Adam, torch.optim.Adam),
           "AdamW": (aoptim.AdamW, torch.optim.AdamW)}
STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@dataclasses.dataclass(frozen=True)
class Loop:
    optimizer: str
    options: dict
    dtype: torch.dtype = torch.float32
    layout: str = "contiguous"  # of the conv and linear weights
    scaler: bool = False
    groups: bool = False  # two parameter groups with their own hyper-parameters
    scheduler: bool = False  # StepLR on every group
    named: bool = False  # named parameters, as torch.optim accepts them
    skip_grads: bool = False  # some parameters get no gradient on some steps
    steps: int = 10

    @property
    def name(self) -> str:
        flags = [f for f in ("scaler", "groups", "scheduler", "named", "skip_grads") if getattr(self, f)]
        options = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.optimizer}({options})-{str(self.dtype)[6:]}-{self.layout}-{'+'.join(flags) or 'plain'}"


def weight(shape, layout, generator):
    if layout == "channels_last" and len(shape) == 4:
        return torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)
    if layout == "transposed" and len(shape) == 2:
        return torch.randn(shape[::-1], generator=generator).t()
    if layout == "strided_slice" and len(shape) >= 2:
        return torch.randn(shape[0] * 2, *shape[1:], generator=generator)[::2]
    return torch.randn(shape, generator=generator)


SHAPES = {"conv.weight": (6, 3, 3, 3), "linear.weight": (5, 7), "linear.bias": (5,), "temperature": ()}


def make_params(loop: Loop, device: str, torch_side: bool) -> dict[str, torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    params = {}
    for name, shape in SHAPES.items():
        values = weight(shape, loop.layout, generator)
        low = loop.dtype in (torch.float16, torch.bfloat16)
        # Low precision: both sides start from the values the low-precision model holds; torch keeps
        # them in float32 (the comparison is against ampkit's FP32 masters).
        values = values.to(loop.dtype)
        if torch_side and low:
            values = values.float()
        if values.device.type != device:
            values = values.to(device)
        params[name] = torch.nn.Parameter(values)
    return params


def optimizer_params(loop: Loop, params: dict):
    entries = list(params.items()) if loop.named else list(params.values())
    if not loop.groups:
        return entries
    return [{"params": entries[:2]},
            {"params": entries[2:], "lr": loop.options["lr"] * 3, "weight_decay": 0.05}]


def coefficients(loop: Loop, step: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    result = {}
    for name, shape in SHAPES.items():
        if loop.skip_grads and name in ("linear.bias", "temperature") and step % 3 == 1:
            continue  # no gradient this step
        # Multiples of 1/32 below 8: at most 8 significant bits, exact in bfloat16 and float16.
        values = torch.randn(shape, generator=generator).mul(32).round().clamp(-255, 255).div(32)
        if loop.scaler and step == 4 and name == "linear.weight":
            values[0, 0] = float("inf")  # an overflow: both scalers must skip and back off
        result[name] = values
    return result


def run(loop: Loop, device: str, torch_side: bool):
    params = make_params(loop, device, torch_side)
    ours_cls, torch_cls = CLASSES[loop.optimizer]
    if torch_side:
        optimizer = torch_cls(optimizer_params(loop, params), **loop.options, foreach=False)
        scaler = torch.amp.GradScaler(device, init_scale=2.0**10, growth_interval=3) if loop.scaler else None
    else:
        optimizer = ours_cls(optimizer_params(loop, params), **loop.options)
        scaler = ampkit.GradScaler(device, init_scale=2.0**10, growth_interval=3) if loop.scaler else None
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5) if loop.scheduler else None
    trace = []
    for step in range(loop.steps):
        optimizer.zero_grad(set_to_none=True)
        coefs = coefficients(loop, step)
        loss = sum((coefs[name].to(device, p.dtype) * p).sum() for name, p in params.items() if name in coefs)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        trace.append(snapshot(optimizer, params, scaler))
    return trace


def snapshot(optimizer, params, scaler):
    state = {}
    for name, p in params.items():
        entry = optimizer.state.get(p, {})
        weights = entry.get("master", p).detach()
        state[name] = {
            "param": weights.clone(), "model": p.detach().clone(),
            "grad": None if p.grad is None else p.grad.detach().clone(),
            "step": None if "step" not in entry else float(entry["step"]),
            **{k: entry[k].clone() for k in STATE_KEYS if k in entry},
        }
    scale = None if scaler is None else float(scaler.get_scale())
    return scale, state


def assert_same(loop: Loop, ours_trace, torch_trace):
    tolerance = TOLERANCE[loop.dtype]
    low = loop.dtype in (torch.float16, torch.bfloat16)
    for step, ((our_scale, ours), (torch_scale, theirs)) in enumerate(zip(ours_trace, torch_trace, strict=True)):
        where = f"{loop.name}, step {step}"
        assert our_scale == torch_scale, f"{where}: scale {our_scale} != torch's {torch_scale}"
        for name in SHAPES:
            a, b = ours[name], theirs[name]
            # torch's SGD keeps no step counter (ampkit's does, on the device, for the momentum
            # buffer's first step; listed in README's differences).
            if b["step"] is not None or loop.optimizer != "SGD":
                assert a["step"] == b["step"], f"{where}: {name} step counter {a['step']} != {b['step']}"
            assert (a["grad"] is None) == (b["grad"] is None), f"{where}: {name} grad presence differs"
            if a["grad"] is not None:
                ours_grad = a["grad"].to(b["grad"].dtype)
                assert torch.equal(ours_grad, b["grad"]) or (
                    ours_grad.isnan().any() and torch.equal(ours_grad.nan_to_num(), b["grad"].nan_to_num())), \
                    f"{where}: {name}.grad differs from torch's after the step"
            for key in ("param", *STATE_KEYS):
                assert (key in a) == (key in b), f"{where}: {name} has {key} on one side only"
                if key in a:
                    expected = b[key]
                    scale = max(expected.abs().max().item(), 1e-30)
                    torch.testing.assert_close(a[key].to(expected.dtype), expected, rtol=0.0,
                                               atol=tolerance * max(scale, 1.0),
                                               msg=lambda m, key=key: f"{where}: {name} {key}: {m}")
                    if key != "param":
                        assert a[key].stride() == b[key].stride() or a[key].dim() == 0 or \
                            loop.layout == "strided_slice", f"{where}: {name} {key} layout differs from torch's"
            if low:  # the model copy is the master rounded once
                assert torch.equal(a["model"], a["param"].to(loop.dtype)), f"{where}: {name} model copy"


def loops() -> list[Loop]:
    cases = []
    for optimizer, option_sets in OPTIONS.items():
        for options, dtype, scaler in itertools.product(option_sets, (torch.float32, torch.float64), (False, True)):
            cases.append(Loop(optimizer, options, dtype=dtype, scaler=scaler))
        for layout, scaler in itertools.product(("channels_last", "transposed", "strided_slice"), (False, True)):
            for options in option_sets:
                cases.append(Loop(optimizer, options, layout=layout, scaler=scaler))
        for dtype, layout in itertools.product((torch.float16, torch.bfloat16), ("contiguous", "channels_last")):
            cases.append(Loop(optimizer, option_sets[-1], dtype=dtype, layout=layout, scaler=True))
        base = option_sets[1]
        cases += [
            Loop(optimizer, base, groups=True, scaler=True),
            Loop(optimizer, base, scheduler=True),
            Loop(optimizer, base, groups=True, scheduler=True, named=True),
            Loop(optimizer, base, named=True, scaler=True),
            Loop(optimizer, base, skip_grads=True, scaler=True),
            Loop(optimizer, option_sets[-1], skip_grads=True, groups=True, layout="channels_last"),
        ]
    return cases


LOOPS = loops()


@pytest.mark.parametrize("loop", LOOPS, ids=[loop.name for loop in LOOPS])
def test_same_loop_same_result(device, loop):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's scheduler warnings about step order are the same on both sides
        ours, theirs = run(loop, device, torch_side=False), run(loop, device, torch_side=True)
    assert_same(loop, ours, theirs)


# ---- the constructor keywords torch's optimizers take ----

KEYWORDS = {
    # Accepted: every ampkit step is one fused multi-tensor pass that never reads a value back to the
    # host, so these choose nothing here and the results are the same for every value.
    "foreach": (None, True, False),
    "fused": (None, True, False),
    "capturable": (False, True),
    "differentiable": (False,),
}


@pytest.mark.parametrize("optimizer", list(CLASSES))
@pytest.mark.parametrize("keyword,value", [(k, v) for k, values in KEYWORDS.items() for v in values])
def test_torch_keywords_are_accepted_and_change_nothing(optimizer, keyword, value):
    plain = Loop(optimizer, OPTIONS[optimizer][1], scaler=True)
    reference = run(plain, "cpu", torch_side=False)
    with_keyword = Loop(optimizer, {**OPTIONS[optimizer][1], keyword: value}, scaler=True)
    for (scale_a, a), (scale_b, b) in zip(run(with_keyword, "cpu", torch_side=False), reference, strict=True):
        assert scale_a == scale_b
        for name in SHAPES:
            assert all(torch.equal(a[name][k], b[name][k]) for k in a[name] if isinstance(a[name][k], torch.Tensor))


@pytest.mark.parametrize("optimizer", list(CLASSES))
def test_differentiable_true_is_refused_with_the_reason(optimizer):
    ours_cls, _ = CLASSES[optimizer]
    with pytest.raises(ValueError, match=r"differentiable=True .* not supported.*in-place"):
        ours_cls([torch.nn.Parameter(torch.ones(2))], lr=0.1, differentiable=True)


def test_differences_from_torch_are_deliberate():
    """Each refusal listed in README's "Differences from torch": torch accepts, ampkit raises with a reason."""
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="appears twice"):
        aoptim.SGD([p, p], lr=0.1)  # torch warns and would update p twice per step
    with pytest.raises(ValueError, match="one device"):
        if torch.cuda.is_available():
            aoptim.SGD([p, torch.nn.Parameter(torch.ones(3, device="cuda"))], lr=0.1)
        else:
            aoptim.SGD([p, torch.nn.Parameter(torch.ones(3, device="meta"))], lr=0.1)
    with pytest.raises(TypeError, match="complex64"):
        aoptim.Adam([torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))])
    sparse = torch.nn.Parameter(torch.ones(3))
    optimizer = aoptim.SGD([sparse], lr=0.1)
    sparse.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()


@pytest.mark.parametrize("optimizer", list(CLASSES))
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_optimizer_steps_like_the_original(optimizer, how):
    """copy.deepcopy and pickle work on torch's optimizers; an ampkit copy must step like its source."""
    import copy
    import pickle
    ours_cls, _ = CLASSES[optimizer]
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).half())]
    original = ours_cls(params, **OPTIONS[optimizer][1])
    params[0].grad = torch.ones(4, 3, dtype=torch.half)
    original.step()
    copied = copy.deepcopy(original) if how == "deepcopy" else pickle.loads(pickle.dumps(original))
    assert copied.master_weights == original.master_weights
    copied_param = copied.param_groups[0]["params"][0]
    copied_param.grad = params[0].grad.clone()
    original.step()
    copied.step()
    assert torch.equal(copied_param.detach(), params[0].detach())
    assert torch.equal(copied.state[copied_param]["master"], original.state[params[0]]["master"])


def test_harness_size():
    """The harness covers what the issue asks for (a guard against cases silently dropping out)."""
    assert len(LOOPS) >= 150
    assert {loop.layout for loop in LOOPS} == {"contiguous", "channels_last", "transposed", "strided_slice"}
    assert {loop.dtype for loop in LOOPS} == set(TOLERANCE)
    assert any(loop.options.get("amsgrad") for loop in LOOPS)
