"""ampkit.AdaptivePrecision and Trainer(adaptive=...) on the CPU with fp16 autocast: per-module promotion
of an overflowing layer, resume, warm-up and fallback, underflow-guided dtype, per-op promotion, no
host read in the step path, state validation, and the example."""
from __future__ import annotations

import collections
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn import functional as F

import ampkit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_example():
    """examples/python/train_adaptive.py: its data and its overflowing model are the ones tested here."""
    spec = importlib.util.spec_from_file_location("train_adaptive", os.path.join(REPO, "examples", "python",
                                                                                   "train_adaptive.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EXAMPLE = _load_example()
OVERFLOW_GAIN = _EXAMPLE.OVERFLOW_GAIN  # the boom layer's outputs reach ~1e5 > 65,504; its weights fit fp16
digits = _EXAMPLE.load_data
overflowing_mlp = _EXAMPLE.build_model  # (seed=0, gain=OVERFLOW_GAIN)


def custom_step(controller, model, optimizer, scaler, inputs, targets):
    """One step of a custom loop under the controller (autocast, scaled backward, step, update)."""
    optimizer.zero_grad()
    with controller.autocast():
        loss = F.cross_entropy(model(inputs), targets)
    scaler.scale(loss).backward()
    controller.after_backward(loss)
    scaler.step(optimizer)
    scaler.update()


def quiet(**kwargs):
    return {"progress": False, "self_check": False, "batch_size": 64, "seed": 0, **kwargs}


class OutputDtypes:
    """Forward hooks recording, per module name, the dtype of each training-mode output."""

    def __init__(self, model):
        self.seen = collections.defaultdict(list)
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in model.named_children()]

    def _hook(self, name):
        def hook(module, args, output):
            if module.training:
                self.seen[name].append(output.dtype)
        return hook


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(autouse=True)
def flush_denormals():
    # The overflowing layer's huge weights make the FP32 backward produce subnormals, which are
    # 5-10x slower on x86 CPUs; flushing them keeps the tests fast and changes no comparison (every
    # run in a test, FP32 and AMP alike, flushes).
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


# ---- (1) the overflowing layer ----

def test_plain_fp16_stops_with_the_consecutive_skip_error(data):
    train, _ = data
    trainer = ampkit.Trainer(overflowing_mlp(), amp="fp16", log_every=10, **quiet())
    with pytest.raises(RuntimeError, match="50 consecutive steps had a non-finite loss"):
        trainer.fit(train, epochs=4)


def test_adaptive_promotes_exactly_the_overflowing_layer_and_matches_fp32(data):
    train, test = data
    epochs = 16  # both runs settle (fewer epochs leave a run-to-run spread of about one point)
    reference = ampkit.Trainer(overflowing_mlp(), amp="fp32", log_every=10, **quiet())
    reference.fit(train, epochs=epochs)
    fp32_accuracy = reference.evaluate(test)["accuracy"]

    trainer = ampkit.Trainer(overflowing_mlp(), amp="fp16", adaptive=True, log_every=10, **quiet())
    dtypes = OutputDtypes(trainer.model)
    trainer.fit(train, epochs=epochs)
    changes = trainer.history.precision_changes
    assert [(c.target, c.from_dtype, c.to_dtype) for c in changes] == [("boom", "float16", "float32")]
    assert "non-finite" in changes[0].reason
    # Within the first few logging points (every 10 steps, and at the end of each 23-step epoch): window 1
    # sees the skips and turns blame on, windows 2 (steps 11-20) and 3 (21-23) blame the layer.
    assert changes[0].step == 23
    after = trainer.history.skipped[changes[0].step:]
    assert sum(after) / len(after) < 0.02, f"{sum(after)} of {len(after)} steps skipped after the promotion"
    accuracy = trainer.evaluate(test)["accuracy"]
    # One point of the 360-image test set is 3.6 images.
    assert abs(accuracy - fp32_accuracy) <= 0.01, (accuracy, fp32_accuracy)
    # The other layers still run in fp16, the promoted one in fp32 from the promotion on.
    step = changes[0].step
    assert set(dtypes.seen["boom"][:step]) == {torch.float16} and set(dtypes.seen["boom"][step:]) == {torch.float32}
    for name in ("fc", "head"):
        assert set(dtypes.seen[name]) == {torch.float16}, name
    assert trainer.adaptive.promoted_modules == ["boom"]
    assert ampkit.autocasting.module_policy(trainer.model.boom) == torch.float32
    assert ampkit.autocasting.module_policy(trainer.model.fc) is None


def test_a_promotion_past_the_skip_limit_gets_its_chance_and_the_progress_line_says_so(data, capsys):
    # Trainer defaults (log_every=20), 90 steps per epoch: window 1 (steps 1-20) sees the skips, windows
    # 2 and 3 blame the layer, so the promotion comes at step 60, after the 50th consecutive skip.
    # Without the controller's change at that logging point the trainer would stop there.
    train, _ = data
    trainer = ampkit.Trainer(overflowing_mlp(), amp="fp16", adaptive=True, **quiet(batch_size=16, progress=True))
    trainer.fit(train, epochs=1)
    (change,) = trainer.history.precision_changes
    assert (change.step, change.target) == (60, "boom")
    assert not any(trainer.history.skipped[60:])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "ampkit precision change at step 60: boom float16 -> float32" in text
    assert "fp32 modules boom" in text  # the epoch summary line
    assert "precision=boom fp16->fp32" in text  # the progress bar's postfix


def test_demotion_after_clean_steps_and_backoff(data):
    # Overflow only while the gain is on: the module is promoted, demoted after 20 clean steps, and
    # (the overflow back) promoted again with a doubled wait.
    train, _ = data
    model = overflowing_mlp()
    trainer = ampkit.Trainer(model, amp="fp16", adaptive={"demote_after": 20, "max_skip_rate": None},
                             log_every=10, **quiet())
    trainer.fit(train, epochs=4)
    kinds = [(c.target, c.to_dtype) for c in trainer.history.precision_changes]
    assert kinds[:3] == [("boom", "float32"), ("boom", "float16"), ("boom", "float32")], kinds
    assert trainer.adaptive.state_dict()["promoted"]["boom"]["demote_after"] == 40


# ---- (2) resume ----

def test_resume_before_a_promotion_is_bitwise_equal_with_the_same_decisions(tmp_path, data):
    train, _ = data
    options = dict(amp="fp16", adaptive={"blame": "always"}, log_every=30, **quiet())
    # log_every=30 > 23 steps per epoch: epoch 1 closes one blamed window (1 of the 2 needed), so the
    # checkpoint is taken before the promotion, which comes at step 30 in epoch 2.
    straight = ampkit.Trainer(overflowing_mlp(), **options)
    straight.fit(train, epochs=3)
    first = ampkit.Trainer(overflowing_mlp(), **options)
    first.fit(train, epochs=1)
    assert first.history.precision_changes == []
    first.save(tmp_path / "before.pt")
    resumed = ampkit.Trainer(overflowing_mlp(), **options).resume(tmp_path / "before.pt")
    resumed.fit(train, epochs=3)
    assert [c.step for c in straight.history.precision_changes] == [30]
    assert resumed.history.precision_changes == straight.history.precision_changes
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert str(resumed.history.loss) == str(straight.history.loss)  # NaN losses of skipped steps included
    assert resumed.adaptive.state_dict() == straight.adaptive.state_dict()
    # A checkpoint of a promoted run restores the module policy on a fresh model.
    straight.save(tmp_path / "after.pt")
    fresh = ampkit.Trainer(overflowing_mlp(), **options).resume(tmp_path / "after.pt")
    assert ampkit.autocasting.module_policy(fresh.model.boom) == torch.float32
    state = torch.load(tmp_path / "after.pt", weights_only=True)  # plain data only
    assert state["adaptive"]["promoted"] == {"boom": {"clean": 0, "demote_after": None}}


def test_damaged_adaptive_state_is_refused_whole(tmp_path, data):
    train, _ = data
    trainer = ampkit.Trainer(overflowing_mlp(), amp="fp16", adaptive=True, log_every=10, **quiet())
    trainer.fit(train, epochs=1)
    trainer.save(tmp_path / "good.pt")
    state = torch.load(tmp_path / "good.pt", weights_only=True)
    for damage, message in [
        (lambda s: s["adaptive"]["promoted"].update(nowhere={"clean": 0, "demote_after": None}),
         "'promoted' names 'nowhere'"),
        (lambda s: s["adaptive"].update(active="float8"), "'active' must be"),
        (lambda s: s["adaptive"].pop("windows"), "missing entries \\['windows'\\]"),
        (lambda s: s["history"]["precision_changes"].append({"step": "x"}), "precision_changes\\[1\\]"),
        (lambda s: s.update(adaptive=None), "saved without adaptive precision"),
    ]:
        broken = {**state, "adaptive": {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                                        for k, v in state["adaptive"].items()},
                  "history": {**state["history"], "precision_changes": list(state["history"]["precision_changes"])}}
        damage(broken)
        torch.save(broken, tmp_path / "bad.pt")
        victim = ampkit.Trainer(overflowing_mlp(), amp="fp16", adaptive=True, log_every=10, **quiet())
        with pytest.raises((TypeError, ValueError), match=message):
            victim.resume(tmp_path / "bad.pt")
        assert victim.adaptive.promoted_modules == [] and victim.global_step == 0
    plain = ampkit.Trainer(overflowing_mlp(), amp="fp16", log_every=10, **quiet())
    with pytest.raises(ValueError, match="saved with adaptive precision"):
        plain.resume(tmp_path / "good.pt")


# ---- (3) schedule and fallback ----

def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(collections.OrderedDict(fc=nn.Linear(64, 32), act=nn.ReLU(), head=nn.Linear(32, 10)))


@pytest.mark.parametrize("schedule, expected_step, reason", [
    ({"warmup_steps": 20}, 20, "warm-up of 20 steps"),
    ({"warmup_epochs": 1}, 23, "warm-up of 1 epochs"),
    ({"warmup_loss_change": 0.5}, 20, "loss changed by"),
])
def test_warm_up_trains_in_fp32_then_the_amp_dtype(data, schedule, expected_step, reason):
    train, _ = data
    trainer = ampkit.Trainer(small_mlp(), amp="fp16", adaptive=schedule, log_every=10, **quiet())
    dtypes = OutputDtypes(trainer.model)
    trainer.fit(train, epochs=2)
    (change,) = trainer.history.precision_changes
    assert (change.target, change.from_dtype, change.to_dtype) == ("<model>", "float32", "float16")
    assert reason in change.reason
    # The loss change rule needs two windows: the first possible switch is at the second logging point.
    assert change.step == expected_step
    assert set(dtypes.seen["fc"][:change.step]) == {torch.float32}
    assert set(dtypes.seen["fc"][change.step:]) == {torch.float16}


def test_skip_rate_fallback_goes_to_bf16_with_a_warning(data):
    train, _ = data
    trainer = ampkit.Trainer(overflowing_mlp(), amp="fp16", log_every=10, **quiet(
        adaptive={"modules": False, "max_skip_rate": 0.5, "fallback_windows": 2}))
    dtypes = OutputDtypes(trainer.model)
    with pytest.warns(RuntimeWarning, match="falling back from float16 to bfloat16"):
        trainer.fit(train, epochs=2)
    (change,) = trainer.history.precision_changes
    assert (change.step, change.target, change.from_dtype, change.to_dtype) == (20, "<model>", "float16", "bfloat16")
    assert set(dtypes.seen["boom"][20:]) == {torch.bfloat16}  # bf16 has fp32's range: no more overflow
    assert sum(trainer.history.skipped[20:]) == 0


class FailsBelowFloat32(nn.Module):
    """NaN whenever its input is not float32: a stand-in for a computation that needs fp32."""

    def forward(self, x):
        return x * torch.where(torch.tensor(x.dtype == torch.float32), 1.0, float("nan")).to(x.dtype)


def test_fallback_goes_from_fp16_to_bf16_to_fp32(data):
    train, _ = data
    torch.manual_seed(0)
    model = nn.Sequential(collections.OrderedDict(fc=nn.Linear(64, 32), fragile=FailsBelowFloat32(),
                                                  head=nn.Linear(32, 10)))
    trainer = ampkit.Trainer(model, amp="fp16", log_every=10, **quiet(
        adaptive={"modules": False, "max_skip_rate": 0.5, "fallback_windows": 1}))
    dtypes = OutputDtypes(trainer.model)
    with pytest.warns(RuntimeWarning) as warned:
        trainer.fit(train, epochs=2)
    assert [str(w.message).rsplit("; ", 1)[1] for w in warned] == [
        "falling back from float16 to bfloat16", "falling back from bfloat16 to float32"]
    assert [(c.step, c.from_dtype, c.to_dtype) for c in trainer.history.precision_changes] == [
        (10, "float16", "bfloat16"), (20, "bfloat16", "float32")]
    assert trainer.adaptive.active_dtype is None
    assert set(dtypes.seen["fc"][10:20]) == {torch.bfloat16} and set(dtypes.seen["fc"][20:]) == {torch.float32}
    assert not any(trainer.history.skipped[20:]) and all(torch.isfinite(torch.tensor(trainer.history.loss[20:])))


# ---- (4) underflow-guided dtype ----

def tiny_loss(outputs, targets):
    # True gradients of ~1e-10: representable in fp16 only thanks to the loss scale (2^16), below
    # fp16's smallest subnormal (6e-8) once unscaled.
    return F.cross_entropy(outputs, targets) * 1e-9


@pytest.mark.parametrize("prefer_bf16", [True, False])
def test_persistent_fp16_underflow_prefers_bf16_or_raises_the_scale_floor(data, prefer_bf16):
    train, _ = data
    trainer = ampkit.Trainer(small_mlp(), loss_fn=tiny_loss, amp="fp16", log_every=5, **quiet(
        scaler_options={"growth_interval": 10 ** 6},
        adaptive={"underflow_threshold": 0.5, "underflow_windows": 2, "sample_every": 1,
                  "prefer_bf16": prefer_bf16}))
    dtypes = OutputDtypes(trainer.model)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(train, epochs=1)
    (change,) = trainer.history.precision_changes
    assert change.step == 10 and "would flush to zero in float16" in change.reason
    if prefer_bf16:
        assert (change.target, change.to_dtype) == ("<model>", "bfloat16")
        assert set(dtypes.seen["fc"][10:]) == {torch.bfloat16}
    else:
        assert (change.target, change.to_dtype) == ("<loss scale>", "float16")
        assert trainer.scaler.state_dict()["min_scale"] == 2.0 ** 16
        assert set(dtypes.seen["fc"]) == {torch.float16}
    # No gradient was altered: the weights moved (AdamW normalises the tiny gradients) as they would.
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())


# ---- (5) per-op promotion ----

class OverflowingFunctional(nn.Module):
    """No submodules: a linear whose output overflows fp16, a layer norm, a linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(128, 64) * 0.1)
        self.w_boom = nn.Parameter(torch.rand(128, 128) * 2e4)
        self.w2 = nn.Parameter(torch.randn(10, 128) * 0.1)

    def forward(self, x):
        h = F.relu(F.linear(x, self.w1))
        h = F.layer_norm(F.linear(h, self.w_boom), (128,))
        return F.linear(F.relu(h), self.w2)


def test_per_op_promotion_moves_the_overflowing_op_to_the_fp32_list(data):
    train, _ = data
    trainer = ampkit.Trainer(OverflowingFunctional(), amp="fp16", log_every=5, **quiet(
        adaptive={"modules": False, "ops": True, "max_skip_rate": None}))
    outputs = []
    trainer.model.register_forward_hook(lambda m, a, out: outputs.append(out.dtype) if m.training else None)
    trainer.fit(train, epochs=1)
    (change,) = trainer.history.precision_changes
    # Window 1 (steps 1-5) overflows and arms a sampled step (step 6), likewise window 2 (step 11):
    # blamed in 2 sampled steps -> promoted at the logging point of step 15.
    assert (change.step, change.target, change.from_dtype, change.to_dtype) == (15, "op:aten::linear", "float16",
                                                                                  "float32")
    assert trainer.adaptive.policy.list_of("linear") == "deny"
    assert set(outputs[15:]) == {torch.float32} and set(outputs[:15]) == {torch.float16}
    assert sum(trainer.history.skipped[15:]) == 0


# ---- (6) no host read in the step path ----

@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("blame", ["always", "after_non_finite"])
def test_the_controller_step_path_reads_nothing_back_to_the_host(blame, device):
    # FakeTensorMode tensors have no data: any read (.item(), bool(), .tolist(), nonzero) raises.
    # Both step paths: with blame (hooks, sums) and the clean-run one (the loss alone); fake CUDA
    # tensors need no GPU (as in test_step_without_host_reads.py).
    previous_device = torch.get_default_device()
    try:
        with FakeTensorMode():
            torch.set_default_device(device)
            model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))
            controller = ampkit.AdaptivePrecision(model, device, torch.float16, ops=True, underflow_threshold=0.1,
                                                  sample_every=1, blame=blame)
            assert len(controller._hooks) == (3 if blame == "always" else 0)  # Linear, LayerNorm, Linear
            controller._op_armed = True  # the sampled diagnostic step's path too
            inputs, targets = torch.randn(8, 16), torch.randint(0, 4, (8,))
            for _ in range(3):
                with controller.autocast():
                    loss = F.cross_entropy(model(inputs).float(), targets)
                for param in model.parameters():
                    param.grad = torch.randn_like(param)
                controller.after_backward(loss)
            assert controller._op_pending, "the sampled diagnostic step did not run"
            assert loss.device.type == device
            # The check has teeth: the logging point does read, and raises in this mode.
            with pytest.raises(Exception, match="data-dependent|item|local_scalar_dense|tolist|cannot"):
                controller.update(3)
    finally:
        torch.set_default_device(previous_device)


# ---- construction and state ----

def test_bad_arguments_are_refused_with_the_argument_named():
    model = small_mlp()
    for kwargs, error, message in [
        ({"dtype": torch.float32}, ValueError, "dtype must be torch.float16 or torch.bfloat16"),
        ({"promote_after": 4, "window": 3}, ValueError, "promote_after must be <= window"),
        ({"max_skip_rate": 1.5}, ValueError, "max_skip_rate must be in \\(0, 1\\), got 1.5"),
        ({"demote_after": 0}, ValueError, "demote_after must be >= 1, got 0"),
        ({"warmup_steps": 2.5}, TypeError, "warmup_steps must be an int, got float"),
        ({"device_type": "xla"}, ValueError, "device_type must be 'cpu' or 'cuda'"),
    ]:
        with pytest.raises(error, match=message):
            ampkit.AdaptivePrecision(model, **kwargs)
    with pytest.raises(ValueError, match="adaptive needs a low-precision amp mode"):
        ampkit.Trainer(model, amp="fp32", adaptive=True, **quiet())
    with pytest.raises(TypeError, match="adaptive must be a bool"):
        ampkit.Trainer(model, amp="fp16", adaptive="yes", **quiet())
    with pytest.raises(ValueError, match="built for another model"):
        ampkit.Trainer(model, amp="fp16", adaptive=ampkit.AdaptivePrecision(small_mlp()), **quiet())


def test_custom_loop_freeze_and_state_round_trip(data):
    (inputs, targets), _ = data
    model = overflowing_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = ampkit.GradScaler("cpu")
    controller = ampkit.AdaptivePrecision(model, "cpu", torch.float16, scaler=scaler, promote_after=1, window=1)
    controller.freeze()
    for step in range(1, 9):
        custom_step(controller, model, optimizer, scaler, inputs[:64], targets[:64])
        if step % 4 == 0:
            assert controller.update(step) == []  # frozen: no decision however much it overflows
    assert controller.changes == [] and controller.promoted_modules == []
    controller.unfreeze()
    with controller.autocast():
        F.cross_entropy(model(inputs[:64]), targets[:64]).backward()
    controller.after_backward()
    (change,) = controller.update(9)
    assert change.target == "boom"
    state = controller.state_dict()
    other = ampkit.AdaptivePrecision(overflowing_mlp(), "cpu", torch.float16)
    other.load_state_dict(state)
    assert other.promoted_modules == ["boom"] and other.state_dict()["changes"] == state["changes"]
    with pytest.raises(ValueError, match="'modules' are another model's"):
        ampkit.AdaptivePrecision(small_mlp(), "cpu", torch.float16).load_state_dict(state)


def test_a_custom_loop_with_torch_grad_scaler(data):
    # torch's GradScaler has no device overflow counter: the clean-run signal is the loss alone,
    # which a forward overflow makes NaN; blame follows from the next window as with ampkit's.
    (inputs, targets), _ = data
    model = overflowing_mlp()
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu")
    controller = ampkit.AdaptivePrecision(model, "cpu", torch.float16, scaler=scaler, underflow_threshold=0.5,
                                          sample_every=1)
    changes = []
    for step in range(1, 31):
        custom_step(controller, model, optimizer, scaler, inputs[:64], targets[:64])
        if step % 10 == 0:
            changes += controller.update(step)
    assert [(c.step, c.target) for c in changes] == [(30, "boom")]
    assert controller.state_dict()["min_scale"] is None


# ---- (8) the example ----

@pytest.mark.slow
def test_the_adaptive_example_runs_quickly(tmp_path):
    environment = {**os.environ, "PYTHONPATH": os.path.join(REPO, "python")}  # this checkout's ampkit
    result = subprocess.run([sys.executable, os.path.join(REPO, "examples", "python", "train_adaptive.py"), "--quick"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Logging every 10 steps: window 1 sees the skips, windows 2 and 3 (the epoch's last 3 steps) blame the layer.
    assert "adaptive decision: step 23: boom float16 -> float32" in result.stdout
    assert (tmp_path / "adaptive_history.png").read_bytes()[:4] == b"\x89PNG"


# ---- on a GPU: the real step, backward included ----

@pytest.mark.cuda
def test_on_cuda_the_step_never_synchronises_and_the_layer_is_promoted():
    # Under torch.cuda.set_sync_debug_mode("error") any synchronising call raises; only update(),
    # outside the mode, reads. blame="always" and ops=True put the hooks, the sums and a sampled
    # diagnostic step in the measured path.
    (inputs, targets), _ = digits()
    model = overflowing_mlp().cuda()
    optimizer = ampkit.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = ampkit.GradScaler("cuda")
    controller = ampkit.AdaptivePrecision(model, "cuda", torch.float16, scaler=scaler, blame="always", ops=True)
    x, y = inputs[:64].cuda(), targets[:64].cuda()
    changes = []
    for window in range(3):
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                custom_step(controller, model, optimizer, scaler, x, y)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        changes += controller.update(5 * (window + 1))
    assert [(c.step, c.target) for c in changes] == [(10, "boom")]


class _Block(nn.Module):
    """A container with a parameter of its own next to a child layer."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(8, 8)
        self.gain = nn.Parameter(torch.ones(8))

    def forward(self, x):
        return self.inner(x) * self.gain


@pytest.mark.parametrize("poisoned", ["block", "block.inner"])
def test_a_containers_own_parameters_are_blamed_on_it_and_a_childs_on_the_child(poisoned):
    torch.manual_seed(0)
    model = nn.Sequential(collections.OrderedDict(block=_Block(), head=nn.Linear(8, 2)))
    controller = ampkit.AdaptivePrecision(model, "cpu", torch.float16, blame="always", promote_after=1, window=1)
    assert controller.module_names == ["block", "block.inner", "head"]
    with controller.autocast():
        F.cross_entropy(model(torch.randn(4, 8)).float(), torch.tensor([0, 1, 0, 1])).backward()
    param = model.block.gain if poisoned == "block" else model.block.inner.weight
    param.grad[0] = float("inf")
    controller.after_backward()
    (change,) = controller.update(1)
    assert change.target == poisoned and change.to_dtype == "float32"
