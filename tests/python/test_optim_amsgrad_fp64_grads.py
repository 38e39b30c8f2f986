"""ampkit.optim against torch.optim for amsgrad, float64 parameters and the gradients a step leaves.

Tolerances:
* fp32 parameters: |ours - torch| <= 1e-6 * max|torch| over a list after 200 steps (the figure and
  its reasoning are test_optim.py's: torch's vectorised CPU kernels fuse multiply-adds where
  ampkit rounds twice, a few float32 ulps of the largest element).
* float64 parameters: the same rule with 1e-12. Both compute in double; what remains is the same
  rounding-order difference at double precision (~1e-16 per operation), while one update is ~1e-3
  of a weight, so a wrong formula, coefficient or a float32 rounding anywhere (lr, eps, a state
  kept in float32: ~1e-8 relative) fails by orders of magnitude.
* fp16/bf16 parameters with FP32 masters: the masters follow torch on fp32 copies within the fp32
  bound (the existing mixed-dtype test's rule).
* Gradients after a GradScaler step, fp32: bitwise. torch unscales with
  _amp_foreach_non_finite_check_and_unscale_ (grad * inv_scale in float, one rounding) and
  clip_grad_norm_ multiplies by the clip coefficient (a second rounding); the fused step computes
  (grad * inv_scale) * clip_coef in float, rounding at the same two points, so fp32 gradients are
  equal bit for bit. For fp16/bf16 gradients torch rounds to the gradient's dtype twice where the
  fused step rounds once: at most one ulp of the gradient's dtype apart (checked below).
"""
from __future__ import annotations

import io

import pytest
import torch

from ampkit import optim as aoptim
from test_optim import CONFIGS as FP32_CONFIGS

SHAPES = [(7,), (33, 17), (70000,), (1,)]


def assert_close_to_scale(actual, expected, tolerance):
    scale = max(e.abs().max().item() for e in expected if e.numel() > 0)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=0.0, atol=tolerance * scale)


def make_params(dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device))
            for s in SHAPES]


def grads_for_step(step, dtype, seed=1000):
    generator = torch.Generator().manual_seed(seed + step)
    return [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in SHAPES]


def same_bits(a, b):
    """Bitwise equality; NaN equals NaN whatever its payload."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    both_nan = a.isnan() & b.isnan()
    return bool(((a == b) | both_nan).all()) and bool((a.signbit() == b.signbit())[~both_nan].all())


AMSGRAD_CONFIGS = {
    "adam_amsgrad": (aoptim.Adam, torch.optim.Adam, dict(lr=1e-3, amsgrad=True)),
    "adam_amsgrad_l2_wd": (aoptim.Adam, torch.optim.Adam,
                           dict(lr=2e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True)),
    "adamw_amsgrad": (aoptim.AdamW, torch.optim.AdamW, dict(lr=1e-3, amsgrad=True)),
    "adamw_amsgrad_maximize": (aoptim.AdamW, torch.optim.AdamW,
                               dict(lr=1e-3, weight_decay=0.1, amsgrad=True, maximize=True)),
}
# Every fp32 configuration of test_optim.py, in float64, plus amsgrad.
FP64_CONFIGS = {**FP32_CONFIGS, **AMSGRAD_CONFIGS}
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def run_against_torch(config, dtype, device, steps=200):
    ours_cls, torch_cls, hyper = FP64_CONFIGS[config]
    ours_params, ref_params = make_params(dtype, device), make_params(dtype, device)
    ours = ours_cls(ours_params, **hyper)
    ref = torch_cls(ref_params, **hyper, foreach=False)  # the single-tensor path, whose order ampkit follows
    for step in range(steps):
        for p, q, g in zip(ours_params, ref_params, grads_for_step(step, dtype)):
            p.grad, q.grad = g.to(device), g.to(device).clone()
        ours.step()
        ref.step()
    return ours, ours_params, ref, ref_params


# ---- amsgrad ----

@pytest.mark.parametrize("config", list(AMSGRAD_CONFIGS))
def test_amsgrad_fp32_matches_torch_for_200_steps(device, config):
    ours, ours_params, ref, ref_params = run_against_torch(config, torch.float32, device)
    assert_close_to_scale([p.detach() for p in ours_params], [q.detach() for q in ref_params], 1e-6)
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        assert_close_to_scale([ours.state[p][key] for p in ours_params], [ref.state[q][key] for q in ref_params], 1e-6)
    # The running max is a real max: somewhere it is above the current exp_avg_sq.
    assert any(bool((ours.state[p]["max_exp_avg_sq"] > ours.state[p]["exp_avg_sq"]).any()) for p in ours_params)
    assert all(ours.state[p]["step"].item() == 200 for p in ours_params)


@pytest.mark.parametrize("cls, torch_cls", [(aoptim.Adam, torch.optim.Adam), (aoptim.AdamW, torch.optim.AdamW)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_amsgrad_with_masters_follows_torch_on_fp32_copies(device, cls, torch_cls, dtype):
    params = make_params(dtype, device)
    reference = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
    ours = cls(params, lr=1e-2, weight_decay=0.01, amsgrad=True)
    ref = torch_cls(reference, lr=1e-2, weight_decay=0.01, amsgrad=True, foreach=False)
    for step in range(20):
        for p, q, g in zip(params, reference, grads_for_step(step, torch.float32)):
            p.grad = g.to(device=device, dtype=dtype)
            q.grad = p.grad.float()
        ours.step()
        ref.step()
    assert_close_to_scale(ours.master_params(), [q.detach() for q in reference], 1e-6)
    assert_close_to_scale([ours.state[p]["max_exp_avg_sq"] for p in params],
                          [ref.state[q]["max_exp_avg_sq"] for q in reference], 1e-6)
    for p, master in zip(params, ours.master_params()):
        assert master.dtype == torch.float32 and ours.state[p]["max_exp_avg_sq"].dtype == torch.float32
        assert torch.equal(p.detach(), master.to(p.dtype))


def test_amsgrad_state_dict_round_trip_and_validation():
    params = make_params(torch.bfloat16, "cpu")
    optimizer = aoptim.AdamW(params, lr=1e-2, amsgrad=True)
    for step in range(3):
        for p, g in zip(params, grads_for_step(step, torch.bfloat16)):
            p.grad = g
        optimizer.step()
    saved = optimizer.state_dict()
    assert set(saved["state"][0]) == {"step", "master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}  # torch's name
    assert saved["param_groups"][0]["amsgrad"] is True
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    copies = make_params(torch.bfloat16, "cpu")
    resumed = aoptim.AdamW(copies, lr=1e-2, amsgrad=True)
    resumed.load_state_dict(loaded)
    for p, q in zip(params, copies):
        for key, value in optimizer.state[p].items():
            assert torch.equal(resumed.state[q][key], value), key

    # Validation, as for exp_avg_sq: a running max of squares is >= 0 and finite.
    bad = aoptim.AdamW(make_params(torch.bfloat16, "cpu"), lr=1e-2, amsgrad=True).state_dict()
    bad["state"][1]["max_exp_avg_sq"] = -bad["state"][1]["max_exp_avg_sq"] - 1.0
    with pytest.raises(ValueError, match=r"state 'max_exp_avg_sq' of param id 1 must be >= 0"):
        resumed.load_state_dict(bad)
    # A plain Adam state_dict has no max_exp_avg_sq: refused before anything changes.
    plain = aoptim.AdamW(make_params(torch.bfloat16, "cpu"), lr=1e-2).state_dict()
    with pytest.raises(ValueError, match=r"max_exp_avg_sq"):
        resumed.load_state_dict(plain)
    for p, q in zip(params, copies):
        assert torch.equal(resumed.state[q]["max_exp_avg_sq"], optimizer.state[p]["max_exp_avg_sq"])


def test_amsgrad_must_be_a_host_bool():
    with pytest.raises(TypeError, match=r"ampkit.optim.Adam: amsgrad must be a Python bool"):
        aoptim.Adam(make_params(torch.float32, "cpu"), amsgrad=torch.tensor(True))


# ---- float64 parameters ----

@pytest.mark.parametrize("config", list(FP64_CONFIGS))
def test_fp64_matches_torch_in_double_for_200_steps(device, config):
    ours, ours_params, ref, ref_params = run_against_torch(config, torch.float64, device)
    assert_close_to_scale([p.detach() for p in ours_params], [q.detach() for q in ref_params], 1e-12)
    for key in STATE_KEYS:
        if key in ref.state[ref_params[0]]:
            ours_state = [ours.state[p][key] for p in ours_params]
            assert all(s.dtype == torch.float64 for s in ours_state)
            assert_close_to_scale(ours_state, [ref.state[q][key] for q in ref_params], 1e-12)
    for p in ours_params:
        assert "master" not in ours.state[p]  # a float64 param is its own master
        assert ours.state[p]["step"].item() == 200


def test_fp64_mixed_with_other_dtypes_in_one_group(device):
    # One group holding fp64, fp32 and bf16 params: each follows its own rule (fp64 in double).
    dtypes = [torch.float64, torch.float32, torch.bfloat16]
    params = [torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64).to(device=device, dtype=d)) for d in dtypes]
    fp64_ref = torch.nn.Parameter(params[0].detach().clone())
    ours = aoptim.Adam(params, lr=1e-2, amsgrad=True)
    ref = torch.optim.Adam([fp64_ref], lr=1e-2, amsgrad=True, foreach=False)
    for step in range(10):
        generator = torch.Generator().manual_seed(step)
        g = torch.randn(5, 3, generator=generator, dtype=torch.float64).to(device)
        for p in params:
            p.grad = g.to(p.dtype)
        fp64_ref.grad = g.clone()
        ours.step()
        ref.step()
    assert_close_to_scale([params[0].detach()], [fp64_ref.detach()], 1e-12)
    assert "master" in ours.state[params[2]] and "master" not in ours.state[params[0]]
    assert [ours.state[p]["exp_avg"].dtype for p in params] == [torch.float64, torch.float32, torch.float32]


def test_fp64_state_dict_round_trip_and_dtype_validation():
    params = make_params(torch.float64, "cpu")
    optimizer = aoptim.SGD(params, lr=0.1, momentum=0.9)
    for step in range(3):
        for p, g in zip(params, grads_for_step(step, torch.float64)):
            p.grad = g
        optimizer.step()
    saved = optimizer.state_dict()
    assert saved["state"][0]["momentum_buffer"].dtype == torch.float64
    copies = make_params(torch.float64, "cpu")
    resumed = aoptim.SGD(copies, lr=0.1, momentum=0.9)
    resumed.load_state_dict(saved)
    assert all(torch.equal(resumed.state[q]["momentum_buffer"], optimizer.state[p]["momentum_buffer"])
               for p, q in zip(params, copies))
    # float64 state exactly for float64 params: float32 state there (or float64 state for an fp32
    # param) is refused.
    as_fp32 = {**saved, "state": {k: {**v, "momentum_buffer": v["momentum_buffer"].float()}
                                  for k, v in saved["state"].items()}}
    with pytest.raises(TypeError, match=r"state 'momentum_buffer' of param id 0 must be a torch.float64 tensor"):
        resumed.load_state_dict(as_fp32)
    fp32_optimizer = aoptim.SGD(make_params(torch.float32, "cpu"), lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"must be a torch.float32 tensor, got torch.float64"):
        fp32_optimizer.load_state_dict(saved)


def test_fp64_param_needs_an_fp64_grad():
    params = make_params(torch.float64, "cpu")
    optimizer = aoptim.AdamW(params)
    for p in params:
        p.grad = torch.ones_like(p)
    params[2].grad_dtype = None  # torch itself refuses a gradient of another dtype unless told to allow it
    params[2].grad = params[2].grad.float()
    with pytest.raises(TypeError, match=r"params\[2\] of group 0 has a torch.float32 gradient; supported: float64"):
        optimizer.step()
    fp32 = make_params(torch.float32, "cpu")
    optimizer = aoptim.AdamW(fp32)
    for p in fp32:
        p.grad_dtype = None
        p.grad = torch.ones_like(p, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"params\[0\] of group 0 has a torch.float64 gradient; supported: float32"):
        optimizer.step()


# ---- gradients after the step ----

def scaler_loop(optimizer_factory, dtype, clip, steps=6, overflow_at=3):
    """torch.amp.GradScaler driving an optimizer: scale, unscale_ (the torch path), optional clip,
    step, update. Returns the .grad of every parameter after every step, and the params."""
    params = make_params(dtype, "cpu")
    optimizer = optimizer_factory(params)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    fused = getattr(optimizer, "_step_supports_amp_scaling", False)
    history = []
    for step in range(steps):
        scale = scaler.scale(torch.ones((), dtype=torch.float32))  # the scale tensor, as scaling the loss would
        for p, g in zip(params, grads_for_step(step, torch.float32)):
            p.grad = (g * scale).to(dtype)
        if step == overflow_at:
            params[1].grad[0, 0] = float("inf")
        kwargs = {}
        if clip:
            # The clip coefficient torch's clip_grad_norm_ computes from the unscaled gradients.
            inv = scaler._scale.double().reciprocal().float()
            unscaled = [p.grad.float() * inv for p in params]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(u) for u in unscaled]))
            coefficient = torch.clamp(1.0 / (norm + 1e-6), max=1.0)
            if fused:
                kwargs["clip_coef"] = coefficient
            else:
                scaler.unscale_(optimizer)
                torch._foreach_mul_([p.grad for p in params], coefficient)
        scaler.step(optimizer, **kwargs)
        scaler.update()
        history.append([p.grad.clone() for p in params])
    return history, params


@pytest.mark.parametrize("clip", [False, True], ids=["unscale", "unscale+clip"])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_grads_after_grad_scaler_steps_equal_torch_bitwise_on_fp32(clip, amsgrad):
    theirs, their_params = scaler_loop(lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=amsgrad, foreach=False),
                                       torch.float32, clip)
    ours, our_params = scaler_loop(lambda p: aoptim.Adam(p, lr=1e-2, amsgrad=amsgrad), torch.float32, clip)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for index, (x, y) in enumerate(zip(a, b)):
            assert same_bits(x, y), f"step {step}, params[{index}].grad"
    # The overflow step left its inf (and NaN after a clip by 0) in place on both sides, and skipped.
    assert torch.isinf(ours[3][1]).any() or torch.isnan(ours[3][1]).any()
    assert_close_to_scale([p.detach() for p in our_params], [q.detach() for q in their_params], 1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_grads_are_unscaled_with_one_rounding(dtype):
    # The fused step rounds grad * inv_scale * clip once to the gradient's dtype; torch (unscale_,
    # then clip) rounds twice: at most one ulp of the gradient's dtype apart.
    params = make_params(dtype, "cpu")
    optimizer = aoptim.AdamW(params, lr=1e-3)
    scaled = [(g * 1024.0).to(dtype) for g in grads_for_step(0, torch.float32)]
    for p, g in zip(params, scaled):
        p.grad = g.clone()
    optimizer.grad_scale = torch.full((), 1024.0)
    optimizer.found_inf = torch.zeros(())
    coefficient = torch.tensor(0.3)
    optimizer.step(clip_coef=coefficient)
    for p, g in zip(params, scaled):
        once = (g.float() * (1.0 / 1024.0) * coefficient).to(dtype)
        twice = ((g.float() * (1.0 / 1024.0)).to(dtype).float() * coefficient).to(dtype)
        assert torch.equal(p.grad, once)
        ulp = torch.finfo(dtype).eps * twice.float().abs().clamp_min(torch.finfo(dtype).tiny)
        assert bool(((p.grad.float() - twice.float()).abs() <= ulp).all())


def test_plain_step_never_writes_the_grads():
    # No grad_scale and no clip_coef: write_back_grads is off, the op only reads the gradients, even
    # with an inv_scale that is not 1 handed to the op directly.
    params = [torch.randn(300)]
    grads = [torch.randn(300)]
    before = grads[0].clone()
    one = torch.ones(1)
    torch.ops.ampkit.master_sgd_step_(params, [], grads, [], [torch.zeros(())], torch.full((1,), 0.1),
                                      torch.full((1,), 0.5), one, None, 0.0, 0.0, 0.0, False, False)
    assert torch.equal(grads[0], before)
    torch.ops.ampkit.master_sgd_step_(params, [], grads, [], [torch.zeros(())], torch.full((1,), 0.1),
                                      torch.full((1,), 0.5), one, None, 0.0, 0.0, 0.0, False, False, True)
    assert torch.equal(grads[0], before * 0.5)
    model = make_params(torch.float32, "cpu")
    optimizer = aoptim.SGD(model, lr=0.1)
    for p, g in zip(model, grads_for_step(0, torch.float32)):
        p.grad = g
    grad_objects = [p.grad for p in model]
    values = [g.clone() for g in grad_objects]
    optimizer.step()
    assert all(p.grad is g and torch.equal(g, v) for p, g, v in zip(model, grad_objects, values))


# ---- the op: schema, opcheck and bad input ----

def adam_op_args(dtype, amsgrad, write_back, master=False):
    n = (5, 300)
    params = [torch.randn(k, dtype=torch.float64).to(dtype) for k in n]
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    masters = [p.float() for p in params] if master else []
    grads = [torch.randn(k, dtype=torch.float64).to(dtype) for k in n]
    state = [[torch.rand(k, dtype=state_dtype) for k in n] for _ in range(3 if amsgrad else 2)]
    if not amsgrad:
        state.append([])
    lr = torch.full((1,), 1e-2, dtype=state_dtype)
    return (params, masters, grads, *state, [torch.zeros(()) for _ in n], lr, torch.full((1,), 0.5), torch.ones(1),
            None, 0.9, 0.999, 1e-8, 1e-2, True, False, write_back)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_opcheck_amsgrad_fp64_write_back(dtype, amsgrad):
    torch.library.opcheck(torch.ops.ampkit.master_adam_step_,
                          adam_op_args(dtype, amsgrad, write_back=True, master=dtype == torch.bfloat16))
    sgd_args = (*adam_op_args(dtype, False, True)[:3], [], [torch.zeros(()) for _ in range(2)],
                torch.full((1,), 0.1, dtype=torch.float64 if dtype == torch.float64 else torch.float32),
                torch.full((1,), 0.5), torch.ones(1), None, 0.0, 0.0, 0.0, False, False, True)
    torch.library.opcheck(torch.ops.ampkit.master_sgd_step_, sgd_args)


def test_schema_marks_grads_mutable():
    for op in (torch.ops.ampkit.master_sgd_step_, torch.ops.ampkit.master_adam_step_):
        grads = next(a for a in op.default._schema.arguments if a.name == "grads")
        assert grads.alias_info is not None and grads.alias_info.is_write


def _bad_cases():
    def adam(dtype=torch.float64, amsgrad=False, write_back=False, **override):
        names = ["params", "master_params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "steps", "lr",
                 "inv_scale", "clip_coef", "found_inf", "beta1", "beta2", "eps", "weight_decay", "decoupled",
                 "maximize", "write_back_grads"]
        args = dict(zip(names, adam_op_args(dtype, amsgrad, write_back)))
        args.update(override)
        return lambda: torch.ops.ampkit.master_adam_step_(*args.values())

    shared = torch.zeros(300)
    return [
        (adam(master_params=[torch.zeros(5), torch.zeros(300)]), ValueError,
         r"master_params must be empty for float64 params \(a float64 param is its own master\), got 2 tensors"),
        (adam(grads=[torch.zeros(5), torch.zeros(300)]), TypeError,
         r"grads\[0\] must have dtype float64 \(the dtype of float64 params\), got float32"),
        (adam(exp_avgs=[torch.zeros(5), torch.zeros(300)]), TypeError,
         r"exp_avgs\[0\] must have dtype float64 \(the state of float64 params is float64\), got float32"),
        (adam(dtype=torch.float32, exp_avg_sqs=[torch.zeros(5, dtype=torch.float64),
                                                torch.zeros(300, dtype=torch.float64)]), TypeError,
         r"exp_avg_sqs\[0\] must have dtype float32 \(masters and optimizer state are kept in FP32\), got float64"),
        (adam(dtype=torch.float32, lr=torch.ones(1, dtype=torch.float64)), TypeError,
         "lr must be a one-element float32 tensor, got dtype float64"),
        (adam(lr=torch.ones(2, dtype=torch.float64)), RuntimeError,
         "lr must be a one-element float32 or float64 tensor, got 2 elements"),
        (adam(amsgrad=True, max_exp_avg_sqs=[torch.zeros(5, dtype=torch.float64)]), RuntimeError,
         "max_exp_avg_sqs must hold as many tensors as params"),
        (adam(dtype=torch.float32, amsgrad=True, max_exp_avg_sqs=[torch.zeros(5), shared]), None, None),
        (adam(dtype=torch.float32, amsgrad=True, exp_avg_sqs=[torch.zeros(5), shared],
              max_exp_avg_sqs=[torch.zeros(5), shared]), RuntimeError, r"max_exp_avg_sqs\[1\]"),
        # Written back, the grads must be their own memory; only read, they may be shared.
        (adam(dtype=torch.float32, write_back=True, grads=[torch.zeros(5), shared],
              exp_avgs=[torch.zeros(5), shared]), RuntimeError, r"grads\[1\]"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_cases())))
def test_op_bad_input_raises_naming_the_argument(index):
    call, error, message = _bad_cases()[index]
    if error is None:
        call()  # a well-formed call
        return
    with pytest.raises(error, match=message):
        call()


def test_write_back_grads_may_not_alias_but_read_grads_may():
    grad = torch.randn(4)
    args = lambda write_back: ([torch.zeros(4), torch.zeros(4)], [], [grad, grad], [], [torch.zeros(()), torch.zeros(())],  # noqa: E731
                               torch.full((1,), 0.1), torch.ones(1), torch.ones(1), None, 0.0, 0.0, 0.0, False, False,
                               write_back)
    torch.ops.ampkit.master_sgd_step_(*args(False))  # one gradient read for two params: fine
    with pytest.raises(RuntimeError, match=r"grads\[0\].*grads\[1\]|grads\[1\].*grads\[0\]"):
        torch.ops.ampkit.master_sgd_step_(*args(True))


# ---- CUDA ----

@pytest.mark.cuda
@pytest.mark.parametrize("config", ["sgd_momentum_wd_dampening", "adam_amsgrad_l2_wd", "adamw_amsgrad_maximize"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cuda_matches_cpu_with_amsgrad_fp64_and_grads_written_back(config, dtype):
    ours_cls, _, hyper = FP64_CONFIGS[config]
    runs = {}
    for device in ("cpu", "cuda"):
        params = make_params(dtype, device)
        optimizer = ours_cls(params, **hyper)
        grads_after = []
        for step in range(30):
            for p, g in zip(params, grads_for_step(step, dtype)):
                p.grad = (g * 1024).to(device=device, dtype=dtype)
            optimizer.grad_scale = torch.full((), 1024.0, device=device)
            optimizer.found_inf = torch.full((), float(step == 7), device=device)
            optimizer.step()
            grads_after.append([p.grad.cpu() for p in params])
        runs[device] = ([m.cpu() for m in optimizer.master_params()], grads_after)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    # CUDA contracts multiply-adds into FMAs; otherwise the formulas are the same code.
    for a, b in zip(runs["cpu"][0], runs["cuda"][0]):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)
    # The write-back is one multiplication by a power of two: bitwise on both devices.
    for a, b in zip(runs["cpu"][1], runs["cuda"][1]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
