"""ampkit.Trainer, check_amp and plot_history on the CPU (bf16, and fp16 with loss scaling)."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import ampkit
from ampkit.trainer import resolve_amp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def blobs(n=512, features=16, classes=4, seed=0):
    """A separable classification problem: class centres plus noise."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=generator) * 3
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + torch.randn(n, features, generator=generator), labels


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def quiet(**kwargs):
    return {"progress": False, "self_check": False, **kwargs}


@pytest.mark.parametrize("amp,device,expected", [
    (True, "cpu", torch.bfloat16), (True, "cuda", torch.float16), ("bf16", "cpu", torch.bfloat16),
    ("fp16", "cpu", torch.float16), ("FP16", "cuda", torch.float16), (False, "cpu", None), ("fp32", "cuda", None),
])
def test_amp_argument_resolves_to_a_dtype(amp, device, expected):
    assert resolve_amp(amp, torch.device(device)) == expected


@pytest.mark.parametrize("bad", ["fp8", "int8", 16, "half-ish"])
def test_unknown_amp_mode_is_refused(bad):
    with pytest.raises(ValueError, match=r"amp must be True, False, 'bf16', 'fp16' or 'fp32', got"):
        ampkit.Trainer(mlp(), amp=bad, **quiet())


def test_cpu_amp_true_trains_in_bf16_without_loss_scaling():
    x, y = blobs()
    trainer = ampkit.Trainer(mlp(), amp=True, batch_size=64, **quiet())
    assert trainer.amp_mode == "bf16" and not trainer.scaler.is_enabled()
    history = trainer.fit((x, y), epochs=5)
    assert len(history.loss) == 5 * 8 and len(history.epochs) == 5
    assert history.epochs[-1]["loss"] < 0.5 * history.epochs[0]["loss"]
    assert trainer.evaluate((x, y))["accuracy"] > 0.9


def test_fp16_on_cpu_uses_dynamic_loss_scaling():
    x, y = blobs()
    options = {"init_scale": 2.0 ** 8, "growth_interval": 4}
    trainer = ampkit.Trainer(mlp(), amp="fp16", batch_size=64, **quiet(scaler_options=options))
    assert trainer.amp_mode == "fp16" and trainer.scaler.is_enabled()
    trainer.fit((x, y), epochs=3)
    # The recorded history obeys the scaler's rule: x0.5 on a skipped step, x2 after 4 clean steps.
    history, clean, expected = trainer.history, 0, 2.0 ** 8
    for scale, skipped in zip(history.scale, history.skipped):
        if skipped:
            expected, clean = expected * 0.5, 0
        else:
            clean += 1
            if clean == 4:
                expected, clean = expected * 2.0, 0
        assert scale == expected
    assert max(history.scale) > 2.0 ** 8, "the scale never grew"
    assert trainer.evaluate((x, y))["accuracy"] > 0.8


def test_explicit_fp16_on_a_missing_cuda_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device is cuda but CUDA is not available"):
        ampkit.Trainer(mlp(), amp="fp16", device="cuda", progress=False)


class OffsetCancellation(nn.Module):
    """out = (x @ w + 1000) - 1000: exact in FP32, but bf16 rounds 1000 + small to a multiple of 4."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 4)
        with torch.no_grad():
            self.linear.weight.mul_(0.01)
            self.linear.bias.fill_(1000.0)

    def forward(self, x):
        return self.linear(x) - 1000.0


def test_self_check_failure_falls_back_to_fp32_with_a_warning():
    x, y = blobs()
    verdict = ampkit.check_amp(OffsetCancellation(), device="cpu", dtype=torch.bfloat16, example_input=x[:32])
    assert not verdict.ok and "differ from FP32" in verdict.reason
    with pytest.warns(RuntimeWarning, match="AMP check FAIL .* training in FP32 instead"):
        trainer = ampkit.Trainer(OffsetCancellation(), amp=True, check_input=x[:32], progress=False)
    assert trainer.amp_mode == "fp32"


def test_self_check_passes_on_the_reference_model():
    verdict = ampkit.check_amp(device="cpu")
    assert verdict.ok, str(verdict)
    assert verdict.max_relative_error is not None and verdict.max_relative_error < 0.1


def test_nan_loss_from_the_first_step_stops_with_a_clear_error():
    x, y = blobs(n=256)

    def nan_loss(outputs, targets):
        return nn.functional.cross_entropy(outputs, targets) * float("nan")

    for amp in ("fp16", "bf16"):
        trainer = ampkit.Trainer(mlp(), amp=amp, loss_fn=nan_loss, batch_size=8, log_every=4,
                                 max_consecutive_skips=6, **quiet())
        with pytest.raises(RuntimeError, match="consecutive steps had a non-finite loss or gradients"):
            trainer.fit((x, y), epochs=100)
        assert trainer.global_step < 32  # stopped within a few logging intervals, not after 100 epochs


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, amp):
    x, y = blobs()
    straight = ampkit.Trainer(mlp(), amp=amp, batch_size=32, **quiet())
    straight.fit((x, y), epochs=4)

    first = ampkit.Trainer(mlp(), amp=amp, batch_size=32, **quiet())
    first.fit((x, y), epochs=2)
    first.save(tmp_path / "ckpt.pt")
    resumed = ampkit.Trainer(mlp(seed=123), amp=amp, batch_size=32, **quiet()).resume(tmp_path / "ckpt.pt")
    resumed.fit((x, y), epochs=4)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert straight.history.scale == resumed.history.scale


def test_damaged_or_foreign_checkpoints_are_refused_and_change_nothing(tmp_path):
    x, y = blobs()
    trainer = ampkit.Trainer(mlp(), amp="bf16", **quiet())
    trainer.fit((x, y), epochs=1)
    trainer.save(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    other = ampkit.Trainer(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)), amp="bf16", **quiet())
    other.save(tmp_path / "other.pt")

    victim = ampkit.Trainer(mlp(seed=5), amp="bf16", **quiet())
    before = {k: v.clone() for k, v in victim.model.state_dict().items()}
    with pytest.raises(ValueError, match="cannot be read"):
        victim.resume(tmp_path / "truncated.pt")
    with pytest.raises(ValueError, match="is for another model"):
        victim.resume(tmp_path / "other.pt")
    fp32 = ampkit.Trainer(mlp(), amp=False, **quiet())
    with pytest.raises(ValueError, match="was saved with amp=bf16"):
        fp32.resume(tmp_path / "good.pt")
    for k, v in victim.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert victim.epoch == 0 and victim.global_step == 0


def test_diagnostics_name_the_module_whose_gradient_overflowed_first():
    x, y = blobs(n=128)
    model = mlp()
    poison_steps = {1, 3}
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] - 1 in poison_steps else grad

    model[2].weight.register_hook(poison)
    # A small initial scale, so the only overflows are the planted ones.
    trainer = ampkit.Trainer(model, amp="fp16", batch_size=32, diagnose=True, log_every=2,
                             **quiet(scaler_options={"init_scale": 2.0 ** 8}))
    trainer.fit((x, y), epochs=1)
    assert trainer.history.overflow_steps == [1, 3]
    assert trainer.history.overflow_report() == {"2": 2}
    assert trainer.history.fp16_underflow_fraction, "no underflow measurement recorded"
    assert all(0.0 <= f <= 1.0 for _, f in trainer.history.fp16_underflow_fraction)


def test_plot_history_writes_a_png(tmp_path):
    x, y = blobs(n=128)
    trainer = ampkit.Trainer(mlp(), amp="fp16", batch_size=16, **quiet())
    trainer.fit((x, y), epochs=2)
    path = ampkit.plot_history(tmp_path / "history.png")  # the latest trainer's history
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_bad_trainer_arguments():
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        ampkit.Trainer(mlp(), batch_size=0, **quiet())
    with pytest.raises(ValueError, match="master_weights=True needs a low-precision amp mode"):
        ampkit.Trainer(mlp(), amp=False, master_weights=True, **quiet())
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer, a factory or None, got int"):
        ampkit.Trainer(mlp(), optimizer=3, **quiet())
    trainer = ampkit.Trainer(mlp(), **quiet())
    with pytest.raises(TypeError, match="data must be an .inputs, targets. pair of tensors or a torch Dataset"):
        trainer.fit([1, 2, 3], epochs=1)


# ---- gradient clipping on the fused path ----

class GradientPasses(TorchDispatchMode):
    """Records, by op name, every op call that reads a gradient once backward has made all of them
    (post-accumulate-grad hooks tell when), and whether it took the gradients as a list (a
    multi-tensor pass over all of them) or one at a time."""

    def __init__(self, params):
        super().__init__()
        self.params = list(params)
        self.pending = set(range(len(self.params)))
        self.grads: set[int] | None = None  # the gradients' data pointers, once all exist
        self.calls: list[tuple[str, bool]] = []
        self.hooks = [p.register_post_accumulate_grad_hook(lambda _, i=i: self._accumulated(i))
                      for i, p in enumerate(self.params)]

    def _accumulated(self, index):
        self.pending.discard(index)
        if not self.pending:
            self.grads = {p.grad.data_ptr() for p in self.params}

    def __exit__(self, *exc):
        for hook in self.hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.grads is not None:
            pointers, as_list = set(), False
            for value in list(args) + list(kwargs.values()):
                if isinstance(value, torch.Tensor):
                    pointers.add(value.data_ptr())
                elif isinstance(value, (list, tuple)) and any(isinstance(t, torch.Tensor) for t in value):
                    as_list = True
                    pointers.update(t.data_ptr() for t in value if isinstance(t, torch.Tensor))
            if pointers & self.grads:
                self.calls.append((func._schema.name, as_list))
        return func(*args, **kwargs)


def clip_trainer(amp, grad_clip, optimizer=None, seed=0):
    trainer = ampkit.Trainer(mlp(seed), amp=amp, batch_size=64, grad_clip=grad_clip, optimizer=optimizer,
                             **quiet(scaler_options={"init_scale": 2.0 ** 8}))
    steps = []
    original = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        steps.append(kwargs.get("clip_coef"))
        return original(*args, **kwargs)

    trainer.optimizer.step = recording_step
    return trainer, steps


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_trainer_clips_in_two_passes_over_the_gradients(amp):
    # fp16 (loss scaling): unscale + inf/NaN check + norm in one unscale_and_check_ pass, the clip
    # coefficient applied inside master_adam_step_. bf16 (no scaler): one norm pass, then the step.
    # clip_grad_norm_ after unscale_ would add a norm pass and a multiply pass.
    x, y = blobs(n=64)
    trainer, _ = clip_trainer(amp, grad_clip=0.1)
    trainer._step(x, y)  # the first step sets up state; count the second
    with GradientPasses(trainer.model.parameters()) as log:
        trainer._step(x, y)
    first = "ampkit::unscale_and_check_" if amp == "fp16" else "aten::_foreach_norm"
    assert log.calls == [(first, True), ("ampkit::master_adam_step_", True)], log.calls


def reference_step(model, x, y, amp, max_norm, optimizer):
    """One step the torch way: scaled backward, unscale_, clip_grad_norm_, step. Returns the norm."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    scaler = ampkit.GradScaler("cpu", init_scale=2.0 ** 8, enabled=amp == "fp16")
    with ampkit.autocast("cpu", dtype=dtype):
        loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return norm


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
@pytest.mark.parametrize("max_norm", [0.05, 1e6], ids=["clipping", "below the limit"])
def test_amp_trainer_clip_equals_clip_grad_norm(amp, max_norm):
    x, y = blobs(n=64)
    trainer, coefficients = clip_trainer(amp, grad_clip=max_norm, optimizer=lambda p: ampkit.optim.SGD(p, lr=0.5))
    trainer._step(x, y)
    reference = mlp()
    norm = reference_step(reference, x, y, amp, max_norm, ampkit.optim.SGD(reference.parameters(), lr=0.5))
    expected = min(1.0, max_norm / (norm.item() + 1e-6))
    assert (expected < 0.5) == (max_norm == 0.05)  # the clip is active where it should be
    (coefficient,) = coefficients
    assert coefficient.dtype == torch.float32 and coefficient.numel() == 1
    # The norm comes from another summation order than torch's _foreach_norm: equal to rounding.
    torch.testing.assert_close(coefficient.item(), expected, rtol=1e-6, atol=0)
    if max_norm > 1:
        assert coefficient.item() == 1.0
    for ours, theirs in zip(trainer.model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_amp_trainer_with_a_torch_optimizer_clips_with_the_fused_norm():
    # A non-ampkit optimizer cannot take clip_coef: its gradients are multiplied by the coefficient
    # (clip_grads_with_norm_), with the norm still from the unscale pass.
    x, y = blobs(n=64)
    trainer, coefficients = clip_trainer("fp16", grad_clip=0.05, optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    trainer._step(x, y)
    assert coefficients == [None]
    reference = mlp()
    reference_step(reference, x, y, "fp16", 0.05, torch.optim.SGD(reference.parameters(), lr=0.5))
    for ours, theirs in zip(trainer.model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_fp16_training_with_grad_clip_skips_overflows_and_converges():
    # An overflowed step has a NaN norm, so a NaN clip coefficient: the step is skipped on the device
    # (found_inf) before the coefficient touches anything.
    x, y = blobs()
    model = mlp()
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] - 1 in (2, 5) else grad

    model[0].weight.register_hook(poison)
    trainer = ampkit.Trainer(model, amp="fp16", batch_size=64, grad_clip=1.0,
                             **quiet(scaler_options={"init_scale": 2.0 ** 8, "growth_interval": 4}))
    trainer.fit((x, y), epochs=3)
    assert trainer.history.overflow_steps == [2, 5] and max(trainer.history.scale) > 2.0 ** 8
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.evaluate((x, y))["accuracy"] > 0.8


def test_python_dash_m_ampkit_check_prints_a_verdict():
    result = subprocess.run([sys.executable, "-m", "ampkit", "check", "cpu"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "AMP check PASS on cpu with bfloat16" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_digits.py", "train_transformer.py", "yolo_style.py"])
def test_examples_run_with_a_short_setting(script, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "examples", "python", script), "--quick"],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if script == "train_digits.py":  # the two modes take turns epoch by epoch; the ratio is of medians
        assert "(median epoch, modes interleaved epoch by epoch; total " in result.stdout
