"""ampkit.GradScaler: a differential test against torch.amp.GradScaler, the state machine, checkpoints
and bad input."""
from __future__ import annotations

import copy
import math
import pickle
import re

import pytest
import torch
import torch.nn.functional as F

import ampkit

INF, NAN = float("inf"), float("nan")
# Steps at which one gradient element is forced non-finite: isolated, back to back, every kind.
CORRUPTED = {4: INF, 9: NAN, 10: -INF, 11: INF, 23: NAN, 31: -INF}


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 4))


def batches(steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 16, generator=generator), torch.randn(8, 4, generator=generator)) for _ in range(steps)]


def train(scaler, make_optimizers, steps=40, corrupted=CORRUPTED, clip=None, model_seed=0):
    """A seeded loop; returns (scale history, per-optimizer skipped flags, final parameters)."""
    model = make_model(model_seed)
    layers = [model[0], model[2], model[4]]
    optimizers = make_optimizers(model)
    scales, skipped = [], []
    for step, (x, y) in enumerate(batches(steps)):
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss = F.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step in corrupted:
            layers[step % 3].weight.grad[1, 2] = corrupted[step]
        for optimizer in optimizers:
            if clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
            scaler.step(optimizer)
            skipped.append(sum(v.item() for v in scaler._found_inf_per_device(optimizer).values()) > 0)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales, skipped, [p.detach().clone() for p in model.parameters()]


OPTIMIZERS = {
    "sgd-momentum": lambda m: [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)],
    "adamw-foreach": lambda m: [torch.optim.AdamW(m.parameters(), lr=1e-2, foreach=True)],
    # Fused: consumes grad_scale/found_inf on the device (the scaler's no-sync path).
    "adam-fused": lambda m: [torch.optim.Adam(m.parameters(), lr=1e-2, fused=True)],
    "sgd-fused": lambda m: [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, fused=True)],
    # Two optimizers per iteration, each owning part of the model.
    "two-optimizers": lambda m: [torch.optim.SGD(list(m[0].parameters()) + list(m[2].parameters()), lr=0.05),
                                 torch.optim.Adam(m[4].parameters(), lr=1e-2, fused=True)],
}


@pytest.mark.parametrize("clip", [None, 0.5], ids=["no-clip", "unscale-and-clip"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_differential_against_torch_grad_scaler(name, clip):
    config = dict(init_scale=2.0 ** 12, growth_interval=3)
    theirs = train(torch.amp.GradScaler("cpu", **config), OPTIMIZERS[name], clip=clip)
    ours_scaler = ampkit.GradScaler("cpu", **config)
    ours = train(ours_scaler, OPTIMIZERS[name], clip=clip)
    assert ours[0] == theirs[0], "scale history differs"
    assert ours[1] == theirs[1], "skipped steps differ"
    assert sum(ours[1]) >= len(CORRUPTED)  # the test exercises skipping
    assert max(ours[0]) > config["init_scale"]  # ... and growing
    for a, b in zip(ours[2], theirs[2]):
        assert torch.equal(a, b)  # bitwise: same fp32 arithmetic in the same order
    assert ours_scaler.skipped_steps.item() == sum(ours[1])
    assert ours_scaler.overflow_events.item() == len(CORRUPTED)


def test_found_inf_and_counters_are_device_tensors():
    scaler = ampkit.GradScaler("cpu", init_scale=4.0)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert scaler.found_inf is None
    for step, (x, y) in enumerate(batches(3)):
        optimizer.zero_grad()
        scaler.scale(F.mse_loss(model(x), y)).backward()
        if step == 1:
            model[0].bias.grad[0] = NAN
        scaler.step(optimizer)
        scaler.update()
        assert isinstance(scaler.found_inf, torch.Tensor) and scaler.found_inf.dtype == torch.float32
        assert (scaler.found_inf.item() > 0) == (step == 1)
    assert scaler.skipped_steps.dtype == torch.int64 and scaler.skipped_steps.item() == 1
    assert scaler.overflow_events.item() == 1


class _NoHostReads:
    """Makes every Python-level device->host read raise while active."""

    names = ("item", "tolist", "__bool__", "__float__", "__int__")

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in self.names}

        def forbidden(*args, **kwargs):
            raise AssertionError("a host read happened inside step()/update()")

        for name in self.names:
            setattr(torch.Tensor, name, forbidden)

    def __exit__(self, *exc):
        for name, method in self.saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("explicit_unscale", [False, True])
def test_fused_optimizer_step_reads_nothing_back(explicit_unscale):
    scaler = ampkit.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    for step, (x, y) in enumerate(batches(6)):
        optimizer.zero_grad()
        scaler.scale(F.mse_loss(model(x), y)).backward()
        if step == 2:
            model[2].weight.grad[0, 0] = INF
        before = [p.detach().clone() for p in model.parameters()]
        with _NoHostReads():
            if explicit_unscale:
                scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert changed == (step != 2)
        assert not hasattr(optimizer, "grad_scale") and not hasattr(optimizer, "found_inf")
    assert scaler.skipped_steps.item() == 1


def test_fused_unscale_norm_matches_torch_clip():
    scaler = ampkit.GradScaler("cpu", init_scale=2.0 ** 10)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batches(1)[0]
    scaler.scale(F.mse_loss(model(x), y)).backward()
    scaled = [p.grad.clone() for p in model.parameters()]
    norm = scaler.unscale_(optimizer, compute_norm=True)
    assert norm.dtype == torch.float32 and norm.dim() == 0
    # The grads were unscaled exactly as torch's scaler does it ...
    inv_scale = torch.tensor(2.0 ** -10, dtype=torch.float32)
    for before, p in zip(scaled, model.parameters()):
        assert torch.equal(p.grad, before * inv_scale)
    # ... and the norm is theirs: double accumulation, so within fp32 rounding of the exact value.
    exact = torch.linalg.vector_norm(torch.cat([p.grad.double().flatten() for p in model.parameters()])).item()
    assert norm.item() == pytest.approx(exact, rel=1e-6)
    assert norm.item() == pytest.approx(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item(),
                                        rel=1e-5)
    torch.nn.utils.clip_grads_with_norm_(model.parameters(), 0.1, norm)
    scaler.step(optimizer)
    scaler.update()


def test_fp16_and_bf16_grads_are_unscaled():
    # torch's scaler refuses fp16 grads; ampkit's unscales them (one rounding from fp32).
    for dtype in (torch.float16, torch.bfloat16):
        model = torch.nn.Linear(8, 4).to(dtype)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = ampkit.GradScaler("cpu", init_scale=2.0 ** 8)
        loss = model(torch.randn(3, 8, dtype=dtype)).float().square().mean()
        scaler.scale(loss).backward()
        scaled = [p.grad.clone() for p in model.parameters()]
        scaler.unscale_(optimizer)
        for before, p in zip(scaled, model.parameters()):
            assert p.grad.dtype == dtype
            assert torch.equal(p.grad, (before.float() * 2.0 ** -8).to(dtype))
        scaler.step(optimizer)
        scaler.update()


def test_hysteresis_and_bounds_in_the_scaler():
    scaler = ampkit.GradScaler("cpu", init_scale=64.0, growth_interval=1, hysteresis=2, min_scale=16.0,
                               max_scale=128.0)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    history = []
    for step, (x, y) in enumerate(batches(9)):
        optimizer.zero_grad()
        scaler.scale(F.mse_loss(model(x), y)).backward()
        if step in (1, 3, 4, 5, 6):
            model[0].weight.grad[0, 0] = INF
        scaler.step(optimizer)
        scaler.update()
        history.append(scaler.get_scale())
    # clean: grow; lone overflow: absorbed; runs of two or more: back off, never below 16; cap 128.
    assert history == [128.0, 128.0, 128.0, 128.0, 64.0, 32.0, 16.0, 32.0, 64.0]


# ---- the state machine ----

def _scaled_backward(scaler, model, x=None):
    x = torch.randn(2, 16) if x is None else x
    scaler.scale(model(x).square().mean()).backward()


def test_unscale_twice_is_an_error():
    scaler, model = ampkit.GradScaler("cpu"), make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _scaled_backward(scaler, model)
    scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match=r"unscale_\(\) has already been called on this optimizer"):
        scaler.unscale_(optimizer)
    scaler.step(optimizer)
    with pytest.raises(RuntimeError, match=r"unscale_\(\) is being called after step\(\)"):
        scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match=r"step\(\) has already been called since the last update\(\)"):
        scaler.step(optimizer)
    scaler.update()


def test_step_after_unscale_uses_the_unscaled_grads():
    scaler, model = ampkit.GradScaler("cpu", init_scale=8.0), make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    _scaled_backward(scaler, model)
    scaler.unscale_(optimizer)
    grads = [p.grad.clone() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(optimizer)  # must not unscale a second time
    for b, g, p in zip(before, grads, model.parameters()):
        assert torch.equal(p.detach(), b - g)


def test_closures_are_rejected():
    scaler, model = ampkit.GradScaler("cpu"), make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _scaled_backward(scaler, model)
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(optimizer, closure=lambda: 0.0)
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(optimizer, lambda: 0.0)


def test_step_on_an_optimizer_without_grads_is_an_error():
    scaler, model = ampkit.GradScaler("cpu"), make_model()
    scaler.scale(torch.ones(()))
    for optimizer in (torch.optim.SGD(model.parameters(), lr=0.1),
                      torch.optim.Adam(model.parameters(), lr=0.1, fused=True)):
        with pytest.raises(RuntimeError, match="no inf checks were recorded for this optimizer: none of its "
                                               "parameters has a .grad"):
            scaler.step(optimizer)
        # Nothing was consumed: once grads exist, the same iteration goes on normally.
        _scaled_backward(scaler, model)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


def test_calls_out_of_order_are_errors():
    scaler, model = ampkit.GradScaler("cpu"), make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match=r"Attempted step but the scale was never initialised"):
        scaler.step(optimizer)
    with pytest.raises(RuntimeError, match=r"Attempted update but the scale was never initialised"):
        scaler.update()
    _scaled_backward(scaler, model)
    with pytest.raises(RuntimeError, match=r"no inf checks were recorded prior to update\(\)"):
        scaler.update()


def test_update_with_new_scale():
    scaler, model = ampkit.GradScaler("cpu"), make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _scaled_backward(scaler, model)
    scaler.step(optimizer)
    scaler.update(1024.0)
    assert scaler.get_scale() == 1024.0
    _scaled_backward(scaler, model)
    scaler.step(optimizer)
    scaler.update(torch.tensor([8.0]))
    assert scaler.get_scale() == 8.0
    for bad, error, message in ((0.0, ValueError, "new_scale must be a finite number > 0, got 0.0"),
                                (INF, ValueError, "new_scale must be a finite number > 0, got inf"),
                                (torch.ones(2), ValueError, "new_scale must be a float or a one-element tensor"),
                                ("2", TypeError, "new_scale must be a float or a tensor, got str")):
        with pytest.raises(error, match=message):
            scaler.update(bad)


def test_disabled_scaler_is_transparent():
    scaler, model = ampkit.GradScaler("cpu", enabled=False), make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(2, 16)).square().mean()
    assert scaler.scale(loss) is loss
    loss.backward()
    scaler.unscale_(optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(optimizer)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    scaler.update()
    assert not scaler.is_enabled() and scaler.get_scale() == 1.0 and scaler.state_dict() == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_cuda_scaler_without_a_gpu_warns_and_disables():
    with pytest.warns(UserWarning, match="CUDA is not available"):
        scaler = ampkit.GradScaler("cuda")
    assert not scaler.is_enabled()


def test_scale_of_lists_and_tuples():
    scaler = ampkit.GradScaler("cpu", init_scale=4.0)
    a, b = torch.ones(2), torch.full((3,), 2.0)
    out = scaler.scale([a, (b, a)])
    assert isinstance(out, list) and isinstance(out[1], tuple)
    assert torch.equal(out[0], a * 4) and torch.equal(out[1][0], b * 4)
    with pytest.raises(ValueError, match="outputs must be a Tensor or an iterable of Tensors"):
        scaler.scale(3.0)


BAD_CONFIGS = [
    (dict(growth_factor=1.0), ValueError, "growth_factor must be a finite number > 1, got 1.0"),
    (dict(growth_factor=0.9), ValueError, "growth_factor must be a finite number > 1, got 0.9"),
    (dict(backoff_factor=1.0), ValueError, "backoff_factor must be in (0, 1), got 1.0"),
    (dict(backoff_factor=0.0), ValueError, "backoff_factor must be in (0, 1), got 0.0"),
    (dict(backoff_factor=-0.5), ValueError, "backoff_factor must be in (0, 1), got -0.5"),
    (dict(growth_interval=0), ValueError, "growth_interval must be an int in [1, 2**31-1], got 0"),
    (dict(growth_interval=-5), ValueError, "growth_interval must be an int in [1, 2**31-1], got -5"),
    (dict(growth_interval=2.5), TypeError, "growth_interval must be an int, got float"),
    (dict(init_scale=0.0), ValueError, "init_scale must be a finite number > 0, got 0.0"),
    (dict(init_scale=NAN), ValueError, "init_scale must be a finite number > 0, got nan"),
    (dict(hysteresis=0), ValueError, "hysteresis must be an int in [1, 2**31-1], got 0"),
    (dict(min_scale=-1.0), ValueError, "min_scale must be a finite number >= 0 or None, got -1.0"),
    (dict(max_scale=0.0), ValueError, "max_scale must be a number > 0 or None, got 0.0"),
    (dict(min_scale=8.0, max_scale=4.0), ValueError, "min_scale (8.0) must not exceed max_scale (4.0)"),
    (dict(device="tpu"), ValueError, "device must be 'cuda' or 'cpu', got 'tpu'"),
]


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[str(c[0]) for c in BAD_CONFIGS])
def test_bad_configuration_is_a_clear_error(case):
    overrides, error, message = case
    kwargs = dict(device="cpu")
    kwargs.update(overrides)
    with pytest.raises(error) as info:
        ampkit.GradScaler(**kwargs)
    assert message in str(info.value)


def test_setters_validate():
    scaler = ampkit.GradScaler("cpu")
    with pytest.raises(ValueError, match="growth_factor must be a finite number > 1"):
        scaler.set_growth_factor(1.0)
    with pytest.raises(ValueError, match="backoff_factor must be in"):
        scaler.set_backoff_factor(2.0)
    with pytest.raises(ValueError, match="growth_interval must be an int in"):
        scaler.set_growth_interval(0)
    scaler.set_growth_factor(3.0)
    scaler.set_backoff_factor(0.25)
    scaler.set_growth_interval(7)
    assert (scaler.get_growth_factor(), scaler.get_backoff_factor(), scaler.get_growth_interval()) == (3.0, 0.25, 7)


# ---- one home for each rule: the options, the reciprocal ----

def _update_scale_op(**options):
    config = dict(growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, hysteresis=1, min_scale=0.0,
                  max_scale=3.4e38)
    config.update(options)
    torch.ops.ampkit.update_scale_(torch.ones(1), torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32),
                                   torch.zeros(1), *config.values())


SHARED_RULES = [
    (dict(growth_factor=1.0), "growth_factor"), (dict(growth_factor=INF), "growth_factor"),
    (dict(backoff_factor=NAN), "backoff_factor"), (dict(backoff_factor=1.0), "backoff_factor"),
    (dict(growth_interval=0), "growth_interval"), (dict(growth_interval=2**31), "growth_interval"),
    (dict(hysteresis=-1), "hysteresis"), (dict(min_scale=INF), "min_scale"), (dict(max_scale=-2.0), "max_scale"),
    (dict(min_scale=3.0, max_scale=2.0), "must not exceed max_scale"),
]


@pytest.mark.parametrize("options, argument", SHARED_RULES, ids=[str(o) for o, _ in SHARED_RULES])
def test_the_python_scaler_and_the_op_refuse_the_same_options(options, argument):
    # One contract (C++, ampkit/contracts.h): the same values are refused by the Python scaler, its
    # setters and the update_scale_ op, each naming the argument.
    with pytest.raises(ValueError, match=re.escape(argument)):
        ampkit.GradScaler("cpu", **options)
    with pytest.raises(ValueError, match=re.escape(argument)):
        _update_scale_op(**options)
    accepted = dict(growth_factor=4.0, backoff_factor=0.25, growth_interval=2**31 - 1, hysteresis=3, min_scale=1.0,
                    max_scale=INF)
    ampkit.GradScaler("cpu", **accepted)
    _update_scale_op(**accepted)


@pytest.mark.parametrize("value", [1.0, 1e16, 1e300, -0.0, -1e-05, -2.5e-07, 12345.678, 1.0000000000000002,
                                   123456789012345678.0, -0.0001, 0.1 + 0.2 + 1, INF, -INF, NAN, 1e15, 2.0**70])
def test_messages_show_values_as_python_writes_them(value):
    # The check runs in C++; the value in its message reads as Python's repr() of it.
    with pytest.raises(ValueError) as info:
        ampkit.GradScaler("cpu", backoff_factor=value)
    assert str(info.value).endswith(f"GradScaler: backoff_factor must be in (0, 1), got {value!r}")


@pytest.mark.parametrize("scale", [65536.0, 3.0, 7.0, 1e-30, 3.4e38, 0.1, 1.0])
def test_reciprocal_scale_is_torchs_inv_scale(scale):
    # torch.amp.GradScaler.unscale_: the reciprocal in double, rounded once to float32.
    for shape in ((), (1,)):
        tensor = torch.full(shape, scale)
        result = torch.ops.ampkit.reciprocal_scale(tensor)
        assert result.dtype == torch.float32 and result.shape == tensor.shape
        assert torch.equal(result, tensor.double().reciprocal().float())


# ---- checkpoints ----

def _run_a_few_steps(scaler, steps=7):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step, (x, y) in enumerate(batches(steps)):
        optimizer.zero_grad()
        scaler.scale(F.mse_loss(model(x), y)).backward()
        if step in (2, 3):
            model[0].weight.grad[0, 0] = INF
        scaler.step(optimizer)
        scaler.update()


def test_state_dict_round_trips():
    scaler = ampkit.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2, hysteresis=2, max_scale=2.0 ** 20)
    _run_a_few_steps(scaler)
    state = scaler.state_dict()
    assert state["_growth_tracker"] == 1 and state["skipped_steps"] == 2 and state["overflow_events"] == 2
    restored = ampkit.GradScaler("cpu")
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    # Loaded into a scaler whose tensors exist already: they are overwritten in place.
    live = ampkit.GradScaler("cpu")
    live.scale(torch.ones(()))
    counter = live.skipped_steps
    live.load_state_dict(state)
    assert live.state_dict() == state and counter.item() == 2


def test_state_dicts_are_exchangeable_with_torch():
    config = dict(init_scale=2.0 ** 10, growth_interval=2)
    torch_scaler = torch.amp.GradScaler("cpu", **config)
    _run_a_few_steps(torch_scaler)
    ours = ampkit.GradScaler("cpu")
    ours.load_state_dict(torch_scaler.state_dict())
    for key, value in torch_scaler.state_dict().items():
        assert ours.state_dict()[key] == value
    back = torch.amp.GradScaler("cpu")
    back.load_state_dict(ours.state_dict())
    assert back.state_dict() == torch_scaler.state_dict()


def _valid_state():
    scaler = ampkit.GradScaler("cpu")
    scaler.scale(torch.ones(()))
    return scaler.state_dict()


MALFORMED = [
    ("missing scale", lambda s: s.pop("scale"), ValueError, "state_dict is missing ['scale']"),
    ("scale a string", lambda s: s.update(scale="big"), TypeError, "scale must be a float, got str"),
    ("scale zero", lambda s: s.update(scale=0.0), ValueError, "scale must be a finite number > 0, got 0.0"),
    ("scale inf", lambda s: s.update(scale=INF), ValueError, "scale must be a finite number > 0, got inf"),
    ("growth_factor 1", lambda s: s.update(growth_factor=1.0), ValueError, "growth_factor must be a finite number > 1"),
    ("backoff_factor 2", lambda s: s.update(backoff_factor=2.0), ValueError, "backoff_factor must be in (0, 1)"),
    ("growth_interval 0", lambda s: s.update(growth_interval=0), ValueError, "growth_interval must be an int in"),
    ("tracker negative", lambda s: s.update(_growth_tracker=-1), ValueError, "'_growth_tracker'] must be >= 0, got -1"),
    ("tracker a float", lambda s: s.update(_growth_tracker=1.5), TypeError, "'_growth_tracker'] must be an int, got "
                                                                             "float"),
    ("tracker beyond int32", lambda s: s.update(_growth_tracker=2 ** 31), ValueError, "must fit int32"),
    ("hysteresis 0", lambda s: s.update(hysteresis=0), ValueError, "hysteresis must be an int in"),
    ("min above max", lambda s: s.update(min_scale=4.0, max_scale=2.0), ValueError, "must not exceed max_scale"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_state_dict_is_a_clear_error_and_changes_nothing(case):
    _, corrupt, error, message = case
    scaler = ampkit.GradScaler("cpu", init_scale=123.0)
    before = scaler.state_dict()
    state = _valid_state()
    corrupt(state)
    with pytest.raises(error) as info:
        scaler.load_state_dict(state)
    assert message in str(info.value)
    assert scaler.state_dict() == before


def test_state_dict_that_is_not_a_dict_or_is_empty():
    scaler = ampkit.GradScaler("cpu")
    with pytest.raises(TypeError, match="state_dict must be a dict, got list"):
        scaler.load_state_dict([("scale", 1.0)])
    with pytest.raises(RuntimeError, match="The source state dict is empty"):
        scaler.load_state_dict({})


def test_pickling():
    scaler = ampkit.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2, hysteresis=3)
    _run_a_few_steps(scaler)
    restored = pickle.loads(pickle.dumps(scaler))
    assert restored.state_dict() == scaler.state_dict()
    _run_a_few_steps(restored)
    _run_a_few_steps(scaler)
    assert restored.state_dict() == scaler.state_dict()
    assert copy.deepcopy(scaler).state_dict() == scaler.state_dict()


def test_pickling_mid_iteration_is_an_error():
    scaler, model = ampkit.GradScaler("cpu"), make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _scaled_backward(scaler, model)
    scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match="may only be pickled at the beginning of an iteration"):
        pickle.dumps(scaler)


# ---- the GPU machine ----

@pytest.mark.cuda
def test_cuda_fused_step_and_update_never_sync():
    scaler = ampkit.GradScaler("cuda", init_scale=2.0 ** 8, growth_interval=2)
    model = make_model().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    for step, (x, y) in enumerate(batches(5)):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x.cuda()), y.cuda())
        scaler.scale(loss).backward()
        torch.cuda.set_sync_debug_mode("error")
        try:
            norm = scaler.unscale_(optimizer, compute_norm=True)
            scaler.step(optimizer)
            scaler.update()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert math.isfinite(norm.item())
    assert scaler.skipped_steps.item() == 0


@pytest.mark.cuda
def test_cuda_matches_cpu_run():
    config = dict(init_scale=2.0 ** 12, growth_interval=3)
    cpu = train(ampkit.GradScaler("cpu", **config), OPTIMIZERS["sgd-momentum"])

    # Same scale history and skips; parameters close (GEMMs differ between devices).
    scaler = ampkit.GradScaler("cuda", **config)
    model = make_model().cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scales = []
    for step, (x, y) in enumerate(batches(40)):
        optimizer.zero_grad()
        scaler.scale(F.mse_loss(model(x.cuda()), y.cuda())).backward()
        if step in CORRUPTED:
            [model[0], model[2], model[4]][step % 3].weight.grad[1, 2] = CORRUPTED[step]
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
    assert scales == cpu[0]
