"""Property tests (hypothesis): every ampkit op against a plain-torch reference, over random
shapes, dtypes, values (including inf/NaN) and hyper-parameters, on the CPU.

Tolerances, per op:
* multi_tensor_scale_ / unscale_and_check_: bitwise. Both multiply in fp32 and round once to the
  output dtype, which is exactly ``(x.float() * s).to(dtype)`` in torch.
* the norm of unscale_and_check_: relative 1e-6 against a float64 norm of the unscaled grads
  (the CPU kernel sums squares in double; only the final fp32 rounding, 2^-24, remains).
* update_scale_: bitwise against ``torch._amp_update_scale_`` (hysteresis 1, no bounds) and
  against the rule written out in Python below (hysteresis and bounds).
* master_sgd_step_ / master_adam_step_: each of 1-3 steps, started from the same weights and state
  (``steps_side_by_side``), leaves the fp32 weight and state within 1e-6 * max|reference| of
  torch.optim's single-tensor update on the fp32 gradient ``grad.float() * inv_scale * clip_coef``
  (as tests/python/test_optim.py: torch fuses some multiply-adds where ampkit rounds twice, a few
  ulps; a wrong formula is off by far more), plus, per element, what a few roundings of the
  effective gradient g' = +-g * inv_scale * clip + wd * p become in that update. The second term
  matters only where the terms of g' nearly cancel: the roundings are relative to
  |g * inv_scale * clip| + wd * |p|, not to the small g' left over, and Adam divides by
  sqrt(v_hat) + eps, which is then as small as g'. There both implementations are right and the
  reference is as far from the exact value as ours. Restarting torch from our state each step
  keeps one step's roundings from feeding the next (through wd * p). The low-precision model copy
  is the master rounded once, bitwise. Long runs are compared in tests/python/test_optim.py.
* fused_linear: the error bound of tests/python/test_fused_linear.py (fp32 accumulation error
  gamma(k) times sum|x w|, plus one rounding to the output dtype).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ampkit  # noqa: F401  (registers torch.ops.ampkit)
from test_fused_linear import assert_within, forward_bound, reference as linear_reference

ops = torch.ops.ampkit
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dtypes = st.sampled_from(FLOATS)
# Shapes with 0-3 dimensions, up to ~300 elements, empty tensors included.
shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple) | st.integers(1, 300).map(lambda n: (n,))


@st.composite
def tensor_values(draw, shape, dtype, allow_non_finite=True):
    """A tensor of `shape` and `dtype`: normal values times 2^e, and maybe a few inf/NaN."""
    seed = draw(st.integers(0, 2**31 - 1))
    exponent = draw(st.integers(-8, 8))
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator) * 2.0 ** exponent
    if allow_non_finite and values.numel() and draw(st.booleans()):
        flat = values.view(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([math.inf, -math.inf, math.nan]))
    return values.to(dtype)


def one(value: float) -> torch.Tensor:
    return torch.full((1,), value, dtype=torch.float32)


def any_non_finite(tensors) -> bool:
    return any(bool((~torch.isfinite(t.float())).any()) for t in tensors)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal including NaN positions (NaN payloads aside)."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(
        ((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


# ---- multi_tensor_scale_ ----

@PROPERTY
@given(data=st.data(), in_dtype=dtypes, out_dtype=dtypes, tensor_shapes=st.lists(shapes, min_size=1, max_size=5),
       scale=st.floats(2.0**-20, 2.0**20), found_before=st.booleans())
def test_multi_tensor_scale_matches_torch(data, in_dtype, out_dtype, tensor_shapes, scale, found_before):
    inputs = [data.draw(tensor_values(s, in_dtype)) for s in tensor_shapes]
    outputs = [torch.full(s, 7.0, dtype=out_dtype) for s in tensor_shapes]
    found_inf = one(1.0 if found_before else 0.0)
    scale_t = one(scale)
    ops.multi_tensor_scale_(inputs, outputs, scale_t, found_inf)
    for x, out in zip(inputs, outputs):
        assert bitwise_equal(out, (x.float() * scale_t.reshape(())).to(out_dtype))
    # found_inf is sticky: it is only ever set, never cleared.
    assert found_inf.item() == (1.0 if found_before or any_non_finite(inputs) else 0.0)


# ---- unscale_and_check_ ----

@PROPERTY
@given(data=st.data(), grad_dtypes=st.lists(dtypes, min_size=0, max_size=5), inv_scale=st.floats(2.0**-24, 4.0),
       with_norm=st.booleans())
def test_unscale_and_check_matches_torch(data, grad_dtypes, inv_scale, with_norm):
    grads = [data.draw(tensor_values(data.draw(shapes), dtype)) for dtype in grad_dtypes]
    originals = [g.clone() for g in grads]
    found_inf = one(0.0)
    norm = one(-1.0) if with_norm else None
    inv = one(inv_scale)
    ops.unscale_and_check_(grads, found_inf, inv, norm)
    expected = [(g.float() * inv.reshape(())).to(g.dtype) for g in originals]
    for ours, ref in zip(grads, expected):
        assert bitwise_equal(ours, ref)
    non_finite = any_non_finite(originals)
    assert found_inf.item() == (1.0 if non_finite else 0.0)
    if with_norm:
        # The norm of the unscaled gradients as stored (rounded to each grad's dtype), as
        # tests/python/test_unscale_and_check.py defines it.
        flat = [g.double().flatten() for g in expected]
        exact = torch.linalg.vector_norm(torch.cat(flat)).item() if flat else 0.0
        if non_finite:
            assert not math.isfinite(norm.item())
        else:
            assert norm.item() == pytest.approx(exact, rel=1e-6, abs=1e-30)


# ---- update_scale_ ----

def reference_update(scale, growth, hyst, found, growth_factor, backoff, interval, hysteresis, min_scale, max_scale):
    """The documented rule: back off after `hysteresis` overflowing steps in a row (clean steps
    reset the count), grow after `interval` clean steps, clamp to [min_scale, max_scale], never
    reach 0 or inf. Products in double, rounded once to float32 (torch's arithmetic)."""
    f32 = lambda v: torch.tensor(v, dtype=torch.float32).item()  # noqa: E731
    if found:
        growth = 0
        hyst = min(hyst, hysteresis - 1) + 1
        if hyst >= hysteresis:
            backed = scale * backoff
            if min_scale > 0 and backed < min_scale:
                backed = min_scale
            if f32(backed) > 0:
                scale = f32(backed)
    else:
        hyst = 0
        if growth + 1 >= interval:
            grown = scale * growth_factor
            if max_scale < 3.4028234663852886e38 and grown > max_scale:
                grown = max_scale
            if math.isfinite(f32(grown)):
                scale = f32(grown)
            growth = 0
        else:
            growth += 1
    return scale, growth, hyst


@PROPERTY
@given(flags=st.lists(st.booleans(), min_size=1, max_size=40), init=st.floats(2.0**-10, 2.0**30),
       growth_factor=st.floats(1.01, 8.0), backoff=st.floats(0.01, 0.99), interval=st.integers(1, 5))
def test_update_scale_matches_torch_amp_update_scale(flags, init, growth_factor, backoff, interval):
    ours = (one(init), torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32))
    theirs = (one(init), torch.zeros(1, dtype=torch.int32))
    for flag in flags:
        found = one(1.0 if flag else 0.0)
        ops.update_scale_(*ours, found, growth_factor, backoff, interval)
        torch._amp_update_scale_(theirs[0], theirs[1], found, growth_factor, backoff, interval)
        assert ours[0].item() == theirs[0].item() and ours[1].item() == theirs[1].item()


@PROPERTY
@given(flags=st.lists(st.booleans(), min_size=1, max_size=40), init=st.floats(1.0, 2.0**20),
       growth_factor=st.floats(1.01, 8.0), backoff=st.floats(0.01, 0.99), interval=st.integers(1, 5),
       hysteresis=st.integers(1, 4), min_scale=st.sampled_from([0.0, 1.0, 64.0]),
       max_scale=st.sampled_from([3.4028234663852886e38, 2.0**20, 2.0**24]))
def test_update_scale_with_hysteresis_and_bounds_follows_the_rule(flags, init, growth_factor, backoff, interval,
                                                                  hysteresis, min_scale, max_scale):
    scale, growth, hyst = one(init), torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    expected = (scale.item(), 0, 0)
    for flag in flags:
        ops.update_scale_(scale, growth, hyst, one(1.0 if flag else 0.0), growth_factor, backoff, interval,
                          hysteresis, min_scale, max_scale)
        expected = reference_update(*expected, flag, growth_factor, backoff, interval, hysteresis, min_scale,
                                    max_scale)
        assert (scale.item(), growth.item(), hyst.item()) == expected


# ---- master_sgd_step_ / master_adam_step_ ----

@st.composite
def optimizer_problem(draw):
    param_dtype = draw(dtypes)
    grad_dtype = draw(dtypes)
    tensor_shapes = draw(st.lists(st.integers(1, 200).map(lambda n: (n,)) | shapes, min_size=1, max_size=4))
    params = [draw(tensor_values(s, torch.float32, allow_non_finite=False)) for s in tensor_shapes]
    steps = draw(st.integers(1, 3))
    grads = [[draw(tensor_values(s, torch.float32, allow_non_finite=False)).to(grad_dtype) for s in tensor_shapes]
             for _ in range(steps)]
    inv_scale = draw(st.sampled_from([1.0, 0.5, 2.0**-10]))
    clip = draw(st.sampled_from([1.0, 0.25]))
    return param_dtype, params, grads, inv_scale, clip


def torch_optimizer(kind, hyper, ref):
    if kind == "sgd":
        return torch.optim.SGD(ref, lr=hyper["lr"], momentum=hyper["momentum"], dampening=hyper["dampening"],
                               weight_decay=hyper["weight_decay"], nesterov=hyper["nesterov"],
                               maximize=hyper["maximize"], foreach=False)
    cls = torch.optim.AdamW if hyper["decoupled"] else torch.optim.Adam
    return cls(ref, lr=hyper["lr"], betas=hyper["betas"], eps=hyper["eps"], weight_decay=hyper["weight_decay"],
               maximize=hyper["maximize"], foreach=False)


def steps_side_by_side(kind, hyper, param_dtype, params, grads, inv_scale, clip):
    """Runs the ampkit op and torch.optim's single-tensor update on the fp32 gradient the kernel
    forms (``grad.float() * inv_scale * clip``) step by step. Before each step torch starts from
    ampkit's weights and state, so each comparison covers one update (at step 1, 2 or 3 of the
    bias corrections and momentum start) and no earlier rounding feeds into it. Yields, per step,
    (ours, torch's) as dicts of tensor lists, and per element a few float32 roundings (2^-21, 4
    ulps) of the magnitudes that form g' (``rounding``)."""
    with_master = param_dtype != torch.float32
    model = [p.to(param_dtype, copy=True) for p in params]  # copy: fp32 params must not alias the inputs
    masters = [p.clone() for p in params] if with_master else []
    weights = masters if with_master else model
    counters = [torch.zeros(()) for _ in params]
    state = [[torch.zeros_like(p) for p in params] for _ in range(1 if kind == "sgd" else 2)]
    scalars = (one(hyper["lr"]), one(inv_scale), one(clip))
    ref = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = torch_optimizer(kind, hyper, ref)
    inv, c = one(inv_scale).reshape(()), one(clip).reshape(())
    state_names = ["momentum_buffer"] if kind == "sgd" else ["exp_avg", "exp_avg_sq"]
    for step, step_grads in enumerate(grads, start=1):
        rounding = []
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(ref, step_grads)):
                p.copy_(weights[i])
                if step > 1 and p in optimizer.state:
                    for name, ours in zip(state_names, state):
                        if optimizer.state[p].get(name) is not None:
                            optimizer.state[p][name].copy_(ours[i])
                p.grad = g.float() * inv * c
                rounding.append(2.0**-21 * (p.grad.abs() + hyper["weight_decay"] * p.abs()))
        optimizer.step()
        if kind == "sgd":
            ops.master_sgd_step_(model, masters, step_grads, state[0], counters, *scalars, None, hyper["momentum"],
                                 hyper["dampening"], hyper["weight_decay"], hyper["nesterov"], hyper["maximize"])
        else:
            ops.master_adam_step_(model, masters, step_grads, state[0], state[1], [], counters, *scalars, None,
                                  hyper["betas"][0], hyper["betas"][1], hyper["eps"], hyper["weight_decay"],
                                  hyper["decoupled"], hyper["maximize"])
        for copy, weight in zip(model, weights):
            assert torch.equal(copy, weight.to(param_dtype))  # the model copy: the weight rounded once
        assert all(counter.item() == step for counter in counters)
        ours = dict(weights=weights, **dict(zip(state_names, state)))
        theirs = dict(weights=[p.detach() for p in ref],
                      **{name: [optimizer.state[p].get(name) for p in ref] for name in state_names})
        yield step, ours, theirs, rounding


def assert_within_bounds(actual, expected, extra):
    """|actual - expected| <= 1e-6 * max|expected| over the list + `extra` (per element)."""
    assert [a.shape for a in actual] == [e.shape for e in expected]
    if not any(e.numel() for e in expected):
        return
    scale = max(e.abs().max().item() for e in expected if e.numel())
    for a, e, x in zip(actual, expected, extra, strict=True):
        allowed = 1e-6 * scale + x
        excess = (a - e).abs() - allowed
        assert not (excess > 0).any(), (
            f"max |ours - torch| beyond the bound by {excess.max().item():.3g} "
            f"(allowed there {allowed.view(-1)[excess.view(-1).argmax()].item():.3g})")


sgd_hyper = st.builds(
    lambda lr, momentum, dampening, weight_decay, nesterov, maximize: dict(
        lr=lr, momentum=momentum, dampening=0.0 if nesterov else dampening, weight_decay=weight_decay,
        nesterov=nesterov and momentum > 0, maximize=maximize),
    st.floats(1e-4, 0.5), st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.0, 0.1]),
    st.sampled_from([0.0, 1e-2]), st.booleans(), st.booleans())
adam_hyper = st.builds(
    lambda lr, b1, b2, eps, wd, decoupled, maximize: dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
                                                          decoupled=decoupled, maximize=maximize),
    st.floats(1e-5, 1e-1), st.sampled_from([0.0, 0.8, 0.9]), st.sampled_from([0.9, 0.999]),
    st.sampled_from([1e-8, 1e-6]), st.sampled_from([0.0, 1e-2]), st.booleans(), st.booleans())


@PROPERTY
@given(problem=optimizer_problem(), hyper=sgd_hyper)
def test_master_sgd_step_matches_torch_sgd(problem, hyper):
    for step, ours, theirs, rounding in steps_side_by_side("sgd", hyper, *problem):
        # The weight moves by lr * (g' + momentum * buffer) under nesterov: two roundings of g'.
        assert_within_bounds(ours["weights"], theirs["weights"], [2 * hyper["lr"] * r for r in rounding])
        if hyper["momentum"] > 0:
            assert_within_bounds(ours["momentum_buffer"], theirs["momentum_buffer"], rounding)


@PROPERTY
@given(problem=optimizer_problem(), hyper=adam_hyper)
def test_master_adam_step_matches_torch_adam(problem, hyper):
    beta2, eps, lr = hyper["betas"][1], hyper["eps"], hyper["lr"]
    for step, ours, theirs, rounding in steps_side_by_side("adam", hyper, *problem):
        # exp_avg and exp_avg_sq take g' and g'^2: off by one rounding of g' and by 2 |g'| times
        # it. The update lr * m_hat / (sqrt(v_hat) + eps) then moves by about lr times that
        # rounding over its denominator (m_hat and v_hat both shift, 4 covers the two).
        magnitude = [r * 2.0**21 for r in rounding]
        denominator = [(v / (1 - beta2**step)).sqrt() + eps for v in theirs["exp_avg_sq"]]
        assert_within_bounds(ours["weights"], theirs["weights"],
                             [4 * lr * r / d for r, d in zip(rounding, denominator)])
        assert_within_bounds(ours["exp_avg"], theirs["exp_avg"], rounding)
        assert_within_bounds(ours["exp_avg_sq"], theirs["exp_avg_sq"],
                             [2 * m * r + r * r for m, r in zip(magnitude, rounding)])


@PROPERTY
@given(problem=optimizer_problem(), kind=st.sampled_from(["sgd", "adam"]))
def test_master_step_with_found_inf_changes_nothing(problem, kind):
    param_dtype, params, grads, inv_scale, clip = problem
    model = [p.to(param_dtype, copy=True) for p in params]  # copy: fp32 params must not alias the inputs
    masters = [p.clone() for p in params] if param_dtype != torch.float32 else []
    state = [torch.rand_like(p) for p in params]
    second = [torch.rand_like(p) for p in params]
    steps = [torch.full((), 3.0) for _ in params]
    written = model + masters + state + second + steps
    before = [t.clone() for t in written]
    scalars = (one(0.1), one(inv_scale), one(clip), one(1.0))
    if kind == "sgd":
        ops.master_sgd_step_(model, masters, grads[0], state, steps, *scalars, 0.9, 0.0, 0.01, False, False)
    else:
        ops.master_adam_step_(model, masters, grads[0], state, second, [], steps, *scalars, 0.9, 0.999, 1e-8, 0.01,
                              True, False)
    assert all(torch.equal(after, b) for after, b in zip(written, before))


# ---- fused_linear ----

@PROPERTY
@given(data=st.data(), dtype=dtypes, lead=st.lists(st.integers(0, 5), max_size=2).map(tuple), k=st.integers(1, 48),
       n=st.integers(1, 24), bias=st.booleans(), activation=st.sampled_from(["none", "relu", "gelu"]))
def test_fused_linear_matches_f_linear(data, dtype, lead, k, n, bias, activation):
    x = data.draw(tensor_values(lead + (k,), torch.float32, allow_non_finite=False))
    seed = data.draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    # Scaled so pre-activations are O(|x|): the regime where GELU is neither linear nor zero.
    x = (x / x.abs().max().clamp_min(1e-30)).to(dtype) if x.numel() else x.to(dtype)
    w = (torch.randn(n, k, generator=generator) / k ** 0.5).to(dtype)
    b = (0.5 * torch.randn(n, generator=generator)).to(dtype) if bias else None
    ours = ampkit.fused_linear(x, w, b, activation)
    assert ours.dtype == dtype and ours.shape == lead + (n,)
    ref, _ = linear_reference(x, w, b, activation)
    assert_within(ours, ref, forward_bound(x, w, b, activation, ref, dtype), f"fused_linear {activation} {dtype}")
