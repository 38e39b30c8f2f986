"""ampkit.integrations.lightning.AmpkitPrecision inside real Lightning training on the CPU.

A small MLP learns sklearn's digits through ``lightning.Trainer`` with the plugin: bf16 next to
Lightning's own bf16-mixed and fp32, fp16 with ampkit's GradScaler (an injected inf gradient is
skipped), the ampkit ops counted while a step runs, clipping by norm against torch's
clip_grad_norm_, the scaler's state through a Lightning checkpoint, and bad arguments.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import ampkit

L = pytest.importorskip("lightning")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from ampkit.integrations.lightning import AmpkitPrecision  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    # Lightning's advice for real runs (DataLoader workers, small logging intervals) does not apply here.
    "ignore:.*does not have many workers.*", "ignore:.*number of training batches.*",
    "ignore:.*GPU available but not used.*", "ignore:.*TPU available but not used.*",
    "ignore:.*but have no `val_dataloader`.*",
)

EPOCHS = 8
BATCH = 64
# The accuracy band every AMP run must reach on the 360 held-out digits, and how far from each other
# (and from fp32) the runs may land: 8 epochs of this MLP reach ~96-98 %; 3 points is 11 digits.
MIN_ACCURACY = 0.90
MAX_ACCURACY_GAP = 0.03
INJECT_AT_BATCH = 5


def digits_loaders():
    digits = sklearn_datasets.load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    targets = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    train, val = order[:-360], order[-360:]
    train_set = torch.utils.data.TensorDataset(inputs[train], targets[train])
    val_set = torch.utils.data.TensorDataset(inputs[val], targets[val])
    return (torch.utils.data.DataLoader(train_set, batch_size=BATCH, shuffle=True,
                                        generator=torch.Generator().manual_seed(1)),
            torch.utils.data.DataLoader(val_set, batch_size=360))


class DigitsMLP(L.LightningModule):
    """optimizer: 'torch' (torch.optim.AdamW on fp32 weights), 'ampkit' (ampkit.optim.AdamW on fp32
    weights) or 'ampkit_master' (fp16/bf16 weights, ampkit.optim.AdamW with FP32 masters)."""

    def __init__(self, optimizer: str = "torch", master_dtype: torch.dtype = torch.float16,
                 inject_inf_at: int | None = None, lr: float = 3e-3):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        self.optimizer_kind = optimizer
        self.master_dtype = master_dtype
        self.inject_inf_at = inject_inf_at
        self.lr = lr
        self.batch_index = -1
        self.linear_output_dtypes: set[torch.dtype] = set()
        self.net[0].register_forward_hook(lambda _m, _i, out: self.linear_output_dtypes.add(out.dtype))

    def forward(self, inputs):
        return self.net(inputs)

    def training_step(self, batch, batch_idx):
        self.batch_index = batch_idx
        inputs, targets = batch
        return nn.functional.cross_entropy(self(inputs), targets)

    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        accuracy = (self(inputs).argmax(-1) == targets).float().mean()
        self.log("val_acc", accuracy)

    def on_after_backward(self):
        if self.current_epoch == 0 and self.batch_index == self.inject_inf_at:
            with torch.no_grad():
                self.net[2].weight.grad[0, 0] = float("inf")

    def configure_optimizers(self):
        if self.optimizer_kind == "torch":
            return torch.optim.AdamW(self.parameters(), lr=self.lr)
        if self.optimizer_kind == "ampkit":
            return ampkit.optim.AdamW(self.parameters(), lr=self.lr, master_weights=False)
        assert self.optimizer_kind == "ampkit_master"
        ampkit.optim.to_low_precision(self, self.master_dtype)
        return ampkit.optim.AdamW(self.parameters(), lr=self.lr, master_weights=True)


def make_trainer(tmp_path, epochs=EPOCHS, **kwargs):
    options = dict(default_root_dir=tmp_path, max_epochs=epochs, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                   num_sanity_val_steps=0, deterministic=False)
    options.update(kwargs)
    return L.Trainer(**options)


def fit_and_score(tmp_path, model, epochs=EPOCHS, **trainer_options):
    """Trains `model` and returns (held-out accuracy under the trainer's precision, trainer)."""
    train, val = digits_loaders()
    trainer = make_trainer(tmp_path, epochs=epochs, **trainer_options)
    trainer.fit(model, train)
    accuracy = trainer.validate(model, val, verbose=False)[0]["val_acc"]
    return accuracy, trainer


# ---- bf16: next to Lightning's bf16-mixed and fp32 ----

def test_bf16_plugin_matches_lightning_bf16_mixed_and_fp32(tmp_path):
    plugin = AmpkitPrecision("bf16")
    ampkit_model = DigitsMLP()
    ampkit_accuracy, _ = fit_and_score(tmp_path / "ampkit", ampkit_model, plugins=[plugin])
    lightning_model = DigitsMLP()
    lightning_accuracy, _ = fit_and_score(tmp_path / "lightning", lightning_model, precision="bf16-mixed")
    fp32_model = DigitsMLP()
    fp32_accuracy, _ = fit_and_score(tmp_path / "fp32", fp32_model, precision="32-true")
    print(f"held-out accuracy: ampkit bf16 {ampkit_accuracy:.4f}, Lightning bf16-mixed {lightning_accuracy:.4f}, "
          f"fp32 {fp32_accuracy:.4f}")
    assert plugin.device_type == "cpu" and plugin.scaler is None
    # Autocast ran: the first Linear produced bf16 under both AMP modes and fp32 without.
    assert ampkit_model.linear_output_dtypes == {torch.bfloat16}
    assert lightning_model.linear_output_dtypes == {torch.bfloat16}
    assert fp32_model.linear_output_dtypes == {torch.float32}
    for accuracy in (ampkit_accuracy, lightning_accuracy, fp32_accuracy):
        assert accuracy >= MIN_ACCURACY
    assert abs(ampkit_accuracy - lightning_accuracy) <= MAX_ACCURACY_GAP
    assert abs(ampkit_accuracy - fp32_accuracy) <= MAX_ACCURACY_GAP
    assert plugin.stats() == {"dtype": "bfloat16", "scale": 1.0, "skipped_steps": 0, "overflow_events": 0}


def test_the_plugin_policy_decides_what_autocast_casts(tmp_path):
    # torch.autocast cannot keep linear in fp32 on the CPU; an ampkit Policy can. A model whose
    # first Linear still runs in bf16 under this plugin would mean the policy was not used.
    policy = ampkit.Policy.default("cpu", torch.bfloat16).deny("linear")
    model = DigitsMLP()
    make_trainer(tmp_path, epochs=1, limit_train_batches=2, plugins=[AmpkitPrecision(policy=policy)]).fit(
        model, digits_loaders()[0])
    assert model.linear_output_dtypes == {torch.float32}
    model = DigitsMLP()
    make_trainer(tmp_path, epochs=1, limit_train_batches=2, plugins=[AmpkitPrecision(policy="mixed_bfloat16")]).fit(
        model, digits_loaders()[0])
    assert model.linear_output_dtypes == {torch.bfloat16}


# ---- fp16 with the scaler ----

@pytest.mark.parametrize("optimizer", ["torch", "ampkit_master"])
def test_fp16_trains_with_the_scaler_and_skips_an_injected_inf(tmp_path, optimizer):
    # A fixed scale (no growth within the run) so the expected history is exact: 2**10 until the
    # injected overflow, then one back-off to 2**9.
    scaler = ampkit.GradScaler("cpu", init_scale=2.0**10, growth_interval=10**6)
    plugin = AmpkitPrecision("fp16", scaler=scaler)
    model = DigitsMLP(optimizer=optimizer, inject_inf_at=INJECT_AT_BATCH)
    seen = {}

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx == INJECT_AT_BATCH:
                seen["before"] = [p.detach().clone() for p in module.parameters()]
                optimizer_state = trainer.optimizers[0].state
                seen["steps_before"] = [optimizer_state[p]["step"].clone() for p in module.parameters()]

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx in (INJECT_AT_BATCH - 1, INJECT_AT_BATCH):
                seen[batch_idx] = (float(plugin.loss_scale), int(plugin.skipped_steps))
            if trainer.current_epoch == 0 and batch_idx == INJECT_AT_BATCH:
                seen["after"] = [p.detach().clone() for p in module.parameters()]
                optimizer_state = trainer.optimizers[0].state
                seen["steps_after"] = [optimizer_state[p]["step"].clone() for p in module.parameters()]

    accuracy, _ = fit_and_score(tmp_path, model, plugins=[plugin], callbacks=[Watch()])
    stats = plugin.stats()
    print(f"fp16 ({optimizer}): held-out accuracy {accuracy:.4f}, {stats}")
    assert model.linear_output_dtypes == {torch.float16}
    if optimizer == "ampkit_master":
        assert all(p.dtype == torch.float16 for p in model.parameters())
        assert all(m.dtype == torch.float32 for m in model.trainer.optimizers[0].master_params())
    assert accuracy >= MIN_ACCURACY
    # The injected step changed nothing: parameters bit for bit, and no optimizer step was counted.
    for before, after in zip(seen["before"], seen["after"]):
        assert torch.equal(before, after)
    for before, after in zip(seen["steps_before"], seen["steps_after"]):
        assert torch.equal(before, after)
    assert seen[INJECT_AT_BATCH - 1] == (2.0**10, 0)
    assert seen[INJECT_AT_BATCH] == (2.0**9, 1)
    assert stats == {"dtype": "float16", "scale": 2.0**9, "skipped_steps": 1, "overflow_events": 1}
    assert plugin.state_dict()["scale"] == 2.0**9


def test_readouts_are_device_tensors(tmp_path):
    plugin = AmpkitPrecision("fp16")
    assert plugin.loss_scale is None  # nothing scaled yet
    make_trainer(tmp_path, epochs=1, limit_train_batches=2, plugins=[plugin]).fit(DigitsMLP(), digits_loaders()[0])
    for value in (plugin.loss_scale, plugin.skipped_steps, plugin.overflow_events):
        assert isinstance(value, torch.Tensor) and value.dim() == 0
    assert plugin.loss_scale.dtype == torch.float32 and plugin.skipped_steps.dtype == torch.int64


# ---- ampkit's path ran ----

class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ampkit_ops: dict[str, int] = {}
        self.matmul_dtypes: set[torch.dtype] = set()
        self.aten_ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        namespace, name = func.name().split("::", 1)
        if namespace == "ampkit":
            name = name.split(".")[0]
            self.ampkit_ops[name] = self.ampkit_ops.get(name, 0) + 1
        else:
            self.aten_ops.add(name.split(".")[0])
        if namespace != "ampkit" and name.split(".")[0] in ("addmm", "mm") and isinstance(out, torch.Tensor):
            self.matmul_dtypes.add(out.dtype)
        return out


@pytest.mark.parametrize("dtype,expected_ops", [
    # fp16 + clipping + ampkit optimizer with masters: one unscale pass (with the norm), the fused
    # master step, the on-device scale update.
    ("fp16", {"unscale_and_check_", "master_adam_step_", "update_scale_"}),
    # bf16: no scaler ops, the fused step only.
    ("bf16", {"master_adam_step_"}),
])
def test_ampkit_ops_run_inside_a_lightning_step(tmp_path, dtype, expected_ops):
    mode = CountOps()

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 1:
                mode.__enter__()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 1:
                mode.__exit__(None, None, None)

    low = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    model = DigitsMLP(optimizer="ampkit_master", master_dtype=low)
    make_trainer(tmp_path, epochs=1, limit_train_batches=3, gradient_clip_val=1.0, callbacks=[Record()],
                 plugins=[AmpkitPrecision(dtype)]).fit(model, digits_loaders()[0])
    print(f"{dtype}: ampkit ops in one step {mode.ampkit_ops}, matmul output dtypes {mode.matmul_dtypes}")
    assert expected_ops <= set(mode.ampkit_ops)
    if dtype == "bf16":
        assert "unscale_and_check_" not in mode.ampkit_ops and "update_scale_" not in mode.ampkit_ops
        assert "linalg_vector_norm" in mode.aten_ops  # no unscale pass to take the norm from
    else:
        # Clipping made the unscale pass the one that checks and computes the norm: once per step,
        # and no separate norm over the gradients.
        assert mode.ampkit_ops["unscale_and_check_"] == 1
        assert "linalg_vector_norm" not in mode.aten_ops
    assert mode.matmul_dtypes == {low}  # forward and backward matmuls all ran in the low dtype


# ---- clipping ----

CLIP = 0.05  # well below the digits MLP's gradient norms (~0.3-2), so every step is clipped


@pytest.mark.parametrize("dtype,optimizer", [("fp16", "torch"), ("fp16", "ampkit_master"), ("bf16", "ampkit")])
def test_clip_by_norm_equals_torch_clip_grad_norm(tmp_path, dtype, optimizer):
    """The gradients the step used against torch.nn.utils.clip_grad_norm_ applied to the unscaled
    gradients. Tolerances: fp32 gradients rtol 1e-5 (the fused norm sums in another order than
    torch's, a few fp32 ulps); fp16 gradients (master weights) rtol 2e-3, atol 1e-6 (the clipped
    gradient is written back in fp16: half an fp16 ulp is 4.9e-4 relative, and values near fp16's
    subnormal range lose more)."""
    records = []

    class Clipped(DigitsMLP):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            # torch's clipping applied to copies of the unscaled gradients (fp32, as torch computes it).
            holders = [nn.Parameter(torch.empty_like(p, dtype=torch.float32)) for p in self.parameters()]
            for holder, param in zip(holders, self.parameters()):
                holder.grad = param.grad.detach().float().clone()
            norm = torch.nn.utils.clip_grad_norm_(holders, CLIP)
            records.append({"norm": float(norm), "reference": [h.grad for h in holders]})
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            records[-1]["used"] = [p.grad.detach().float().clone() for p in self.parameters()]

    model = Clipped(optimizer=optimizer, master_dtype=torch.float16)
    make_trainer(tmp_path, epochs=1, limit_train_batches=4, gradient_clip_val=CLIP,
                 plugins=[AmpkitPrecision(dtype)]).fit(model, digits_loaders()[0])
    assert len(records) == 4
    fp16_grads = optimizer == "ampkit_master"
    tolerance = dict(rtol=2e-3, atol=1e-6) if fp16_grads else dict(rtol=1e-5, atol=1e-8)
    for record in records:
        assert record["norm"] > 2 * CLIP  # clipping really scaled the gradients down
        for used, reference in zip(record["used"], record["reference"]):
            torch.testing.assert_close(used, reference, **tolerance)
        clipped_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in record["used"]]))
        assert abs(float(clipped_norm) - CLIP) <= CLIP * (2e-3 if fp16_grads else 1e-5)


def test_clip_by_value_clips_the_unscaled_gradients(tmp_path):
    clip_value = 1e-3
    records = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            records.append(max(float(p.grad.abs().max()) for p in module.parameters()))

    plugin = AmpkitPrecision("fp16")
    make_trainer(tmp_path, epochs=1, limit_train_batches=3, gradient_clip_val=clip_value,
                 gradient_clip_algorithm="value", callbacks=[Watch()], plugins=[plugin]).fit(
        DigitsMLP(optimizer="ampkit_master"), digits_loaders()[0])
    # The scale is 2**16: clipping scaled gradients by value would leave them at exactly clip_value
    # and the step would then divide them by 2**16; clipping the unscaled ones leaves clip_value.
    assert records == [pytest.approx(clip_value, rel=1e-3)] * 3
    assert int(plugin.skipped_steps) == 0


def test_manual_optimization_scales_clips_and_steps(tmp_path):
    """manual_backward scales the loss; LightningModule.clip_gradients unscales (norm from that pass)
    and hands the coefficient to the ampkit optimizer's step, which writes the clipped gradients back."""
    norms_after_step = []

    class Manual(DigitsMLP):
        def __init__(self):
            super().__init__(optimizer="ampkit_master")
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            optimizer.zero_grad()
            inputs, targets = batch
            self.manual_backward(nn.functional.cross_entropy(self(inputs), targets))
            self.clip_gradients(optimizer, gradient_clip_val=CLIP, gradient_clip_algorithm="norm")
            optimizer.step()
            grads = [p.grad.float() for p in self.parameters()]
            norms_after_step.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    plugin = AmpkitPrecision("fp16")
    make_trainer(tmp_path, epochs=1, limit_train_batches=3, plugins=[plugin]).fit(Manual(), digits_loaders()[0])
    # fp16 gradients written back: the clipped norm within 2e-3 relative (see the clipping test).
    assert norms_after_step == [pytest.approx(CLIP, rel=2e-3)] * 3
    assert plugin.stats() == {"dtype": "float16", "scale": 2.0**16, "skipped_steps": 0, "overflow_events": 0}


# ---- checkpoints ----

def test_checkpoint_save_and_resume_restore_the_scale(tmp_path):
    def plugin():
        return AmpkitPrecision("fp16", scaler=ampkit.GradScaler("cpu", init_scale=2.0**10, growth_interval=10**6))

    first = plugin()
    model = DigitsMLP(inject_inf_at=INJECT_AT_BATCH)
    trainer = make_trainer(tmp_path, epochs=1, limit_train_batches=8, plugins=[first])
    trainer.fit(model, digits_loaders()[0])
    assert first.get_scale() == 2.0**9
    path = tmp_path / "amp.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["AmpkitPrecision"]
    assert saved["scale"] == 2.0**9 and saved["skipped_steps"] == 1

    resumed = plugin()
    scale_at_start = []

    class Watch(L.Callback):
        def on_train_start(self, trainer, module):
            scale_at_start.append(resumed.get_scale())

    assert resumed.get_scale() == 2.0**10
    make_trainer(tmp_path, epochs=2, limit_train_batches=8, plugins=[resumed], callbacks=[Watch()]).fit(
        DigitsMLP(), digits_loaders()[0], ckpt_path=path)
    assert scale_at_start == [2.0**9]
    assert resumed.stats() == {"dtype": "float16", "scale": 2.0**9, "skipped_steps": 1, "overflow_events": 1}


def test_bf16_ignores_a_scaler_state_with_a_warning():
    plugin = AmpkitPrecision("bf16")
    assert plugin.state_dict() == {}
    plugin.load_state_dict({})
    with pytest.warns(RuntimeWarning, match="scaler state is ignored"):
        plugin.load_state_dict({"scale": 512.0})


# ---- bad arguments ----

@pytest.mark.parametrize("kwargs,error,match", [
    ({"dtype": "fp8"}, ValueError, r"dtype must be one of .* got 'fp8'"),
    ({"dtype": torch.float32}, ValueError, r"dtype must be torch.float16 or torch.bfloat16, got torch.float32"),
    ({"dtype": 16}, TypeError, r"dtype must be a str .* got int"),
    ({}, ValueError, r"dtype must be given .* got dtype=None and policy=None"),
    ({"dtype": "bf16", "scaler": "yes"}, TypeError, r"scaler must be an ampkit.GradScaler or None, got builtins.str"),
    ({"dtype": "bf16", "policy": "float32"}, ValueError, r"policy name must be one of .* got 'float32'"),
    ({"dtype": "bf16", "policy": "mixed_float16"}, ValueError,
     r"dtype is torch.bfloat16 but the policy's dtype is torch.float16"),
    ({"dtype": "bf16", "policy": 3}, TypeError, r"policy must be an ampkit.Policy.* got int"),
    ({"dtype": "bf16", "device": "xla"}, ValueError, r"device: device_type must be cpu or cuda, got xla \(got 'xla'\)"),
])
def test_bad_arguments_raise_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        AmpkitPrecision(**kwargs)


def test_bad_combinations_raise():
    with pytest.raises(ValueError, match="bf16 takes no scaler"):
        AmpkitPrecision("bf16", scaler=ampkit.GradScaler("cpu"))
    with pytest.raises(TypeError, match="torch.amp.grad_scaler.GradScaler"):
        AmpkitPrecision("fp16", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ValueError, match="policy is for device 'cuda' but device is 'cpu'"):
        AmpkitPrecision(policy=ampkit.Policy.default("cuda", torch.float16), device="cpu")


def test_a_cuda_policy_on_a_cpu_model_fails_at_connect(tmp_path):
    plugin = AmpkitPrecision(policy=ampkit.Policy.default("cuda", torch.float16))
    with pytest.raises(ValueError, match="policy is for device 'cuda' but the model trains on 'cpu'"):
        make_trainer(tmp_path, epochs=1, limit_train_batches=1, plugins=[plugin]).fit(DigitsMLP(), digits_loaders()[0])


def test_lbfgs_with_fp16_scaling_is_refused(tmp_path):
    class WithLBFGS(DigitsMLP):
        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters())

    with pytest.raises(ValueError, match="does not work with torch.optim.LBFGS"):
        make_trainer(tmp_path, epochs=1, limit_train_batches=1, plugins=[AmpkitPrecision("fp16")]).fit(
            WithLBFGS(), digits_loaders()[0])


def test_import_ampkit_does_not_import_lightning():
    code = "import sys, ampkit, ampkit.integrations; assert 'lightning' not in sys.modules, 'lightning imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
