"""A checkpoint cannot run code, and a damaged one changes nothing.

* Hostile files: pickles whose ``__reduce__`` calls os.system / eval / exec / subprocess, written
  where Trainer.resume or ``torch.load`` meets them. Each would create a sentinel file; the tests
  assert it never appears and that the refusal is a ValueError naming the file.
* Hostile values handed to ``load_state_dict`` directly (objects carrying the same payloads): refused
  with a TypeError/ValueError, never pickled, copied or kept.
* Fuzzing (hypothesis, deterministic: derandomize=True, no example database) over Trainer checkpoint
  files (truncated and flipped bytes, entries deleted, added, retyped, reshaped, NaN/inf/negative,
  payloads planted anywhere) and over GradScaler / ampkit.optim state dicts. Every outcome is a
  clean load or a TypeError/ValueError that names the file or the entry point; after a refusal the
  trainer, scaler or optimizer is bitwise what it was; no payload ever runs. The number of cases per
  test is AMPKIT_FUZZ_EXAMPLES (default 60, bounded for CI).
"""
from __future__ import annotations

import copy
import hashlib
import io
import math
import os
import pickle
import subprocess
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import ampkit
from ampkit import optim as aoptim

FUZZ = settings(max_examples=int(os.environ.get("AMPKIT_FUZZ_EXAMPLES", "60")), deadline=None, derandomize=True,
                database=None, suppress_health_check=list(HealthCheck))


# ---- payloads: each creates SENTINEL if it ever runs ----

def _sentinel_dir() -> str:
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ampkit_checkpoint_safety_{os.getpid()}")
    os.makedirs(path, exist_ok=True)
    return path


SENTINEL = os.path.join(_sentinel_dir(), "payload_ran")


class SystemPayload:
    def __reduce__(self):
        return os.system, (f"touch {SENTINEL}",)


class EvalPayload:
    def __reduce__(self):
        return eval, (f"open({SENTINEL!r}, 'w').close()",)


class ExecPayload:
    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({SENTINEL!r}).touch()",)


class SubprocessPayload:
    def __reduce__(self):
        return subprocess.call, (["touch", SENTINEL],)


PAYLOADS = [SystemPayload, EvalPayload, ExecPayload, SubprocessPayload]


@pytest.fixture(autouse=True)
def no_payload_ran():
    if os.path.exists(SENTINEL):
        os.remove(SENTINEL)
    yield
    assert not os.path.exists(SENTINEL), "a checkpoint payload ran"


def assert_no_payload_ran():
    assert not os.path.exists(SENTINEL), "a checkpoint payload ran"


# ---- digests of everything a load may change ----

def _tensor_digest(value: torch.Tensor) -> str:
    value = value.detach().cpu().contiguous().reshape(-1)
    return f"{value.dtype}{tuple(value.shape)}" + hashlib.sha256(value.view(torch.uint8).numpy().tobytes()).hexdigest()


def _digest(value) -> object:
    if isinstance(value, torch.Tensor):
        return _tensor_digest(value)
    if isinstance(value, dict):
        return {str(k): _digest(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_digest(v) for v in value]
    return repr(value)


def optimizer_digest(optimizer) -> object:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return ([_digest({k: v for k, v in g.items() if k != "params"}) for g in optimizer.param_groups],
            [_digest(dict(optimizer.state[p])) for p in params], [_tensor_digest(p) for p in params])


def trainer_digest(trainer: ampkit.Trainer) -> object:
    return (_digest(trainer.model.state_dict()), optimizer_digest(trainer.optimizer), trainer.scaler.state_dict(),
            repr(trainer.history.state_dict()), trainer.epoch, trainer.global_step, _tensor_digest(torch.get_rng_state()))


# ---- a small trainer and its checkpoint ----

def blobs(n=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=generator)
    return x, (x[:, :4].sum(dim=1) > 0).long()


def make_trainer(seed=0, **options):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    return ampkit.Trainer(model, amp="fp16", master_weights=True, batch_size=32, progress=False, self_check=False,
                          **options)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    trainer = make_trainer()
    trainer.fit(blobs(), epochs=1)
    path = tmp_path_factory.mktemp("checkpoints") / "good.pt"
    trainer.save(path)
    return path


def refused(call, *, names: str) -> Exception | None:
    """Runs `call`; returns None when it succeeds, the error when it refuses. A refusal must be a
    TypeError/ValueError whose message contains `names` (the file or the entry point)."""
    try:
        call()
    except (TypeError, ValueError) as error:
        assert names in str(error), f"the error does not name {names!r}: {error}"
        return error
    return None


# ---- hostile checkpoints: refused before anything in them runs ----

@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.__name__ for p in PAYLOADS])
def test_trainer_refuses_a_hostile_checkpoint_before_it_runs(tmp_path, payload):
    victim = make_trainer(seed=3)
    before = trainer_digest(victim)
    hostile = tmp_path / "hostile.pt"
    # The shape found in the issue: the right format tag and a payload beside it.
    torch.save({"format": "ampkit.Trainer/1", "x": payload()}, hostile)
    with pytest.raises(ValueError, match=r"hostile\.pt' was refused by safe loading .*nothing in it was run"):
        victim.resume(hostile)
    assert_no_payload_ran()
    # A raw pickle (torch.load's legacy path) is refused the same way.
    hostile.write_bytes(pickle.dumps({"format": "ampkit.Trainer/1", "x": payload()}))
    with pytest.raises(ValueError, match="refused by safe loading"):
        victim.resume(hostile)
    assert_no_payload_ran()
    assert trainer_digest(victim) == before


@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.__name__ for p in PAYLOADS])
@pytest.mark.parametrize("entry", ["scaler", "optimizer", "model", "history"])
def test_a_payload_inside_a_real_checkpoint_is_refused(tmp_path, good_checkpoint, payload, entry):
    state = torch.load(good_checkpoint, weights_only=True)
    if entry == "optimizer":
        state["optimizer"]["param_groups"][0]["lr"] = payload()
    elif entry == "model":
        state["model"][next(iter(state["model"]))] = payload()
    else:
        state[entry]["x"] = payload()
    torch.save(state, tmp_path / "planted.pt")
    victim = make_trainer(seed=3)
    before = trainer_digest(victim)
    with pytest.raises(ValueError, match="refused by safe loading"):
        victim.resume(tmp_path / "planted.pt")
    assert_no_payload_ran()
    assert trainer_digest(victim) == before


@pytest.mark.parametrize("payload", PAYLOADS, ids=[p.__name__ for p in PAYLOADS])
def test_each_load_state_dict_entry_point_meets_payloads_refused(tmp_path, payload):
    """The way a state dict reaches load_state_dict from a file, torch.load, refuses the payload
    (weights_only=True, torch's default since 2.6, which ampkit relies on and its docs name); the
    same objects handed over directly are refused by the entry point without running."""
    scaler = ampkit.GradScaler("cpu")
    scaler.scale(torch.ones(()))
    model = nn.Linear(4, 2)
    optimizers = [aoptim.SGD(model.parameters(), lr=0.1, momentum=0.9), aoptim.Adam(model.parameters()),
                  aoptim.AdamW(model.parameters())]
    for target in [scaler, *optimizers]:
        state = target.state_dict()
        if isinstance(target, ampkit.GradScaler):
            state["scale"] = payload()
        else:
            state["state"][0]["step"] = payload()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with pytest.raises(pickle.UnpicklingError):
            torch.load(io.BytesIO(buffer.getvalue()))
        assert_no_payload_ran()
        before = target.state_dict() if isinstance(target, ampkit.GradScaler) else optimizer_digest(target)
        with pytest.raises((TypeError, ValueError), match="load_state_dict"):
            target.load_state_dict(state)
        assert_no_payload_ran()
        after = target.state_dict() if isinstance(target, ampkit.GradScaler) else optimizer_digest(target)
        assert after == before


def test_an_optimizer_keeps_only_plain_data_from_a_state_dict():
    """Extra group entries (an LR scheduler's initial_lr) are kept, so they must be plain data: an
    object kept there would be pickled into the next checkpoint, which safe loading then refuses."""
    optimizer = aoptim.AdamW(nn.Linear(4, 2).parameters())
    saved = optimizer.state_dict()
    saved["param_groups"][0]["initial_lr"] = 1e-3
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["initial_lr"] == 1e-3
    before = optimizer_digest(optimizer)
    for payload in PAYLOADS:
        saved["param_groups"][0]["note"] = [1, {"x": payload()}]
        with pytest.raises(TypeError, match=r"'note' of group 0 of the state_dict must be plain data"):
            optimizer.load_state_dict(saved)
    assert optimizer_digest(optimizer) == before


def test_legacy_unsafe_loading_is_an_explicit_opt_in_that_warns(good_checkpoint):
    trainer = make_trainer(seed=3)
    with pytest.warns(UserWarning, match="can run arbitrary code"):
        trainer.resume(good_checkpoint, weights_only=False)
    assert trainer.epoch == 1
    with pytest.raises(TypeError, match="weights_only must be a bool, got str"):
        trainer.resume(good_checkpoint, weights_only="no")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_trainer(seed=3).resume(good_checkpoint)  # the safe default is silent


def test_a_saved_checkpoint_loads_with_weights_only_and_resumes_bitwise(good_checkpoint):
    state = torch.load(good_checkpoint, weights_only=True)
    assert state["format"] == "ampkit.Trainer/1"
    resumed = make_trainer(seed=9).resume(good_checkpoint)
    assert resumed.epoch == 1 and resumed.global_step == 3
    reference = make_trainer()
    reference.fit(blobs(), epochs=1)
    assert _digest(resumed.model.state_dict()) == _digest(reference.model.state_dict())
    assert optimizer_digest(resumed.optimizer) == optimizer_digest(reference.optimizer)


# ---- clear errors for damaged checkpoints ----

def _resave(tmp_path, good_checkpoint, change, name="damaged.pt"):
    state = torch.load(good_checkpoint, weights_only=True)
    change(state)
    path = tmp_path / name
    torch.save(state, path)
    return path


def _first_state(state):
    return next(iter(state["optimizer"]["state"].values()))


DAMAGED = [
    ("missing signature", lambda s: s.pop("signature"), ValueError, "is missing ['signature']"),
    ("extra entry", lambda s: s.update(extra=1), ValueError, "has unexpected entries 'extra'"),
    ("scaler not a dict", lambda s: s.update(scaler=[1.0]), TypeError, "wrong type for 'scaler'"),
    ("epoch a string", lambda s: s.update(epoch="1"), TypeError, "wrong type for 'epoch': expected an int, got str"),
    ("epoch negative", lambda s: s.update(epoch=-1), ValueError, "'epoch' must be >= 0, got -1"),
    ("signature with lists", lambda s: s["signature"].update({k: list(v) for k, v in s["signature"].items()}),
     TypeError, "wrong type for 'signature'"),
    ("model weight reshaped", lambda s: s["model"].update({"0.weight": torch.zeros(8, 15)}), ValueError,
     "'model.0.weight' is a torch.float32 torch.strided tensor of shape (8, 15) on cpu, the model needs a "
     "torch.float16 tensor of shape (8, 16)"),
    ("model weight a float", lambda s: s["model"].update({"0.weight": 1.0}), TypeError,
     "wrong type for 'model.0.weight': expected a tensor, got float"),
    ("scale NaN", lambda s: s["scaler"].update(scale=math.nan), ValueError, "scale must be a finite number > 0, got nan"),
    ("scale beyond float32", lambda s: s["scaler"].update(scale=1e39), ValueError, "scale'] must be a float32 value"),
    ("growth tracker negative", lambda s: s["scaler"].update(_growth_tracker=-3), ValueError,
     "'_growth_tracker'] must be >= 0, got -3"),
    ("scaler extra key", lambda s: s["scaler"].update(evil=1), ValueError, "unexpected entries 'evil'"),
    ("step NaN", lambda s: _first_state(s)["step"].fill_(math.nan), ValueError, "state 'step' of param id 0 holds inf or NaN"),
    ("step negative", lambda s: _first_state(s)["step"].fill_(-2), ValueError, "must be a whole number >= 0, got -2.0"),
    ("exp_avg_sq negative", lambda s: _first_state(s)["exp_avg_sq"].fill_(-1), ValueError, "exp_avg_sq' of param id 0 must be >= 0"),
    ("master float64", lambda s: _first_state(s).update(master=_first_state(s)["master"].double()), TypeError,
     "state 'master' of param id 0 must be a torch.float32 tensor, got torch.float64"),
    ("master inf", lambda s: _first_state(s)["master"].view(-1)[0].fill_(math.inf), ValueError, "holds inf or NaN"),
    ("state missing", lambda s: s["optimizer"]["state"].pop(1), ValueError, "has no state for params[1] of group 0"),
    ("lr missing", lambda s: s["optimizer"]["param_groups"][0].pop("lr"), ValueError, "group 0 of the state_dict is missing ['lr']"),
    ("lr NaN tensor", lambda s: s["optimizer"]["param_groups"][0].update(lr=torch.tensor(math.nan)), ValueError,
     "lr of group 0 must be a finite number >= 0, got nan"),
    ("param ids duplicated", lambda s: s["optimizer"]["param_groups"][0].update(params=[0, 0, 1, 2]), ValueError,
     "param id 0 appears twice"),
    ("history loss a string", lambda s: s["history"].update(loss=["x"]), TypeError, "history: loss[0] must be a float"),
    ("history not a list", lambda s: s["history"].update(skipped=3), TypeError, "history: skipped must be a list, got int"),
    ("rng_cpu short", lambda s: s.update(rng_cpu=s["rng_cpu"][:10]), ValueError, "'rng_cpu' is not a CPU generator state"),
]


@pytest.mark.parametrize("case", DAMAGED, ids=[c[0] for c in DAMAGED])
def test_a_damaged_checkpoint_is_a_clear_error_and_changes_nothing(tmp_path, good_checkpoint, case):
    _, change, error, message = case
    path = _resave(tmp_path, good_checkpoint, change)
    victim = make_trainer(seed=3)
    victim.fit(blobs(seed=1), epochs=1)
    before = trainer_digest(victim)
    with pytest.raises(error) as info:
        victim.resume(path)
    assert "damaged.pt" in str(info.value) and message in str(info.value), str(info.value)
    assert trainer_digest(victim) == before


def test_a_refusal_after_the_model_loaded_rolls_everything_back(tmp_path, good_checkpoint):
    """A scaler that refuses its state after the model and optimizer loaded (a hand-made dict that
    passes the trainer's entry checks): both are put back, bit for bit."""
    path = _resave(tmp_path, good_checkpoint, lambda s: s["scaler"].update(hysteresis=0))
    victim = make_trainer(seed=3)
    victim.fit(blobs(seed=1), epochs=1)
    before = trainer_digest(victim)
    masters = victim.optimizer.master_params()
    with pytest.raises(ValueError, match=r"damaged\.pt' does not fit this trainer: .*hysteresis must be an int in"):
        victim.resume(path)
    assert trainer_digest(victim) == before
    assert all(a is b for a, b in zip(masters, victim.optimizer.master_params()))


def test_a_torch_optimizer_is_restored_after_a_refusal(tmp_path):
    """Trainer with a torch.optim optimizer (its load_state_dict replaces the state): the restore
    puts the same objects back."""
    def build(seed):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
        return ampkit.Trainer(model, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), amp="fp16", batch_size=32,
                              progress=False, self_check=False)

    source = build(0)
    source.fit(blobs(), epochs=1)
    source.save(tmp_path / "torch_optimizer.pt")
    state = torch.load(tmp_path / "torch_optimizer.pt", weights_only=True)
    state["scaler"]["growth_interval"] = 0
    torch.save(state, tmp_path / "bad.pt")
    victim = build(3)
    victim.fit(blobs(seed=1), epochs=1)
    before = trainer_digest(victim)
    with pytest.raises(ValueError, match="growth_interval must be an int in"):
        victim.resume(tmp_path / "bad.pt")
    assert trainer_digest(victim) == before
    victim.resume(tmp_path / "torch_optimizer.pt")
    assert victim.epoch == 1


# ---- fuzzing: checkpoint files ----

# Values a damaged or hostile entry may hold instead of the right one (fresh copies: a later
# damage step may edit a container in place).
WRONG_VALUES = st.sampled_from([
    math.nan, math.inf, -math.inf, -1.0, -1, 0, 0.0, 1e39, 1e-50, 2 ** 63, -(2 ** 63), True, None, "x", b"\x00",
    [], {}, (1, 2), [1.0, math.nan], {"a": 1},
]).map(copy.deepcopy) | st.sampled_from(["zeros", "nan", "neg", "wrong_dtype", "wrong_shape", "int"]).map(lambda kind: {
    "zeros": torch.zeros(3), "nan": torch.full((2,), math.nan), "neg": -torch.ones(()),
    "wrong_dtype": torch.zeros((), dtype=torch.float64), "wrong_shape": torch.zeros(1, 1, 1),
    "int": torch.zeros((), dtype=torch.int64)}[kind])


def _containers(value, path=()):
    """(path, container) for every dict and list inside `value`."""
    if isinstance(value, dict):
        yield path, value
        for key, item in value.items():
            yield from _containers(item, path + (key,))
    elif isinstance(value, list):
        yield path, value
        for index, item in enumerate(value):
            yield from _containers(item, path + (index,))


@st.composite
def structural_damage(draw, state):
    """Deletes, adds or replaces an entry anywhere in `state` (in place), with a wrong value or a payload."""
    containers = list(_containers(state))
    _, container = containers[draw(st.integers(0, len(containers) - 1))]
    keys = list(container.keys()) if isinstance(container, dict) else list(range(len(container)))
    action = draw(st.sampled_from(["replace", "delete", "add", "payload"]))
    if action == "add" or not keys:
        value = draw(WRONG_VALUES)
        if isinstance(container, dict):
            container[draw(st.sampled_from(["extra", 7, "scale", "lr", "master"]))] = value
        else:
            container.append(value)
        return f"add {value!r:.40}"
    key = keys[draw(st.integers(0, len(keys) - 1))]
    if action == "delete":
        del container[key]
        return f"delete {key!r}"
    if action == "payload":
        container[key] = draw(st.sampled_from(PAYLOADS))()
        return f"payload at {key!r}"
    value = draw(WRONG_VALUES)
    container[key] = value
    return f"replace {key!r} with {value!r:.40}"


@st.composite
def damaged_files(draw, data: bytes, state_bytes_of):
    kind = draw(st.sampled_from(["truncate", "flip", "structure", "structure", "raw_payload"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        damaged = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            damaged[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(damaged)
    if kind == "raw_payload":
        return pickle.dumps(draw(st.sampled_from(PAYLOADS))(), protocol=draw(st.integers(0, 5)))
    state = torch.load(io.BytesIO(data), weights_only=True)
    for _ in range(draw(st.integers(1, 3))):
        draw(structural_damage(state))
    return state_bytes_of(state)


def _to_bytes(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fuzz_victim(good_checkpoint):
    victim = make_trainer(seed=3)
    victim.fit(blobs(seed=1), epochs=1)
    return victim


@pytest.fixture(scope="module")
def fuzz_outcomes():
    outcomes = {"loaded": 0, "refused": 0}
    yield outcomes
    print(f"\ncheckpoint file fuzzing: {outcomes}")


def test_fuzz_trainer_checkpoint_files(tmp_path_factory, good_checkpoint, fuzz_victim, fuzz_outcomes):
    data = good_checkpoint.read_bytes()
    path = tmp_path_factory.mktemp("fuzz") / "fuzzed.pt"

    @FUZZ
    @given(damaged=damaged_files(data, _to_bytes))
    def check(damaged):
        path.write_bytes(damaged)
        before = trainer_digest(fuzz_victim)
        error = refused(lambda: fuzz_victim.resume(path), names="fuzzed.pt")
        assert_no_payload_ran()
        if error is not None:
            fuzz_outcomes["refused"] += 1
            assert trainer_digest(fuzz_victim) == before, f"refused ({error}) but the trainer changed"
        else:
            fuzz_outcomes["loaded"] += 1
            _assert_trainer_sane(fuzz_victim)

    check()


def _assert_trainer_sane(trainer: ampkit.Trainer) -> None:
    """What a load that was accepted must leave: a usable scaler and optimizer state."""
    scale = trainer.scaler.get_scale()
    assert math.isfinite(scale) and scale > 0
    for state in trainer.optimizer.state.values():
        for key, value in state.items():
            assert torch.isfinite(value).all(), key
    assert trainer.epoch >= 0 and trainer.global_step >= 0


# ---- fuzzing: state dicts handed to load_state_dict ----

def _scaler_state():
    scaler = ampkit.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3, hysteresis=2)
    scaler.scale(torch.ones(()))
    return scaler.state_dict()


def test_fuzz_grad_scaler_state_dicts():
    target = ampkit.GradScaler("cpu", init_scale=123.0)
    target.scale(torch.ones(()))
    counts = {"loaded": 0, "refused": 0}

    @FUZZ
    @given(st.data())
    def check(data):
        state = _scaler_state()
        for _ in range(data.draw(st.integers(1, 3))):
            data.draw(structural_damage(state))
        before = target.state_dict()
        error = refused(lambda: target.load_state_dict(state), names="load_state_dict")
        assert_no_payload_ran()
        if error is not None:
            counts["refused"] += 1
            assert target.state_dict() == before
        else:
            counts["loaded"] += 1
            scale = target.get_scale()
            assert math.isfinite(scale) and scale > 0
            assert target._get_growth_tracker() >= 0 and target._get_hysteresis_tracker() >= 0
            target.load_state_dict(before)

    check()
    print(f"\nGradScaler state_dict fuzzing: {counts}")
    assert counts["refused"] > 0


def _stepped_optimizer(cls, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    aoptim.to_low_precision(model, torch.float16)
    hyper = {"lr": 0.1, "momentum": 0.9} if cls is aoptim.SGD else {"lr": 1e-2}
    optimizer = cls(model.parameters(), **hyper)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()
    return optimizer


@pytest.mark.parametrize("cls", [aoptim.SGD, aoptim.Adam, aoptim.AdamW], ids=lambda c: c.__name__)
def test_fuzz_optimizer_state_dicts(cls):
    source = _stepped_optimizer(cls, 0).state_dict()
    target = _stepped_optimizer(cls, 1)
    counts = {"loaded": 0, "refused": 0}

    @FUZZ
    @given(st.data())
    def check(data):
        state = copy.deepcopy(source)
        for _ in range(data.draw(st.integers(1, 3))):
            data.draw(structural_damage(state))
        before = optimizer_digest(target)
        error = refused(lambda: target.load_state_dict(state), names="load_state_dict")
        assert_no_payload_ran()
        if error is not None:
            counts["refused"] += 1
            assert optimizer_digest(target) == before, f"refused ({error}) but the optimizer changed"
        else:
            counts["loaded"] += 1
            for param_state in target.state.values():
                for key, value in param_state.items():
                    assert value.dtype == torch.float32 and torch.isfinite(value).all(), key

    check()
    print(f"\n{cls.__name__} state_dict fuzzing: {counts}")
    assert counts["refused"] > 0
