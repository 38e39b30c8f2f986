"""No host read in a training step, checked without a GPU.

Under torch's FakeTensorMode tensors carry no data, so any operation that needs a value on the
host (``.item()``, ``bool(tensor)``, ``.tolist()``, a data-dependent shape) raises instead of
syncing. Running ampkit's whole step on fake CUDA tensors — autocast forward with an ampkit
FusedLinear, ``GradScaler.scale``/``unscale_``/``step``/``update`` with ``ampkit.optim.AdamW``
on FP32 masters — therefore proves the step's Python and dispatch path never reads a device
value back. (Backward needs a real CUDA context, so gradients are set directly; the GPU machine
runs the full step under ``torch.cuda.set_sync_debug_mode("error")`` in test_cuda_step.py.)
"""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn import functional as F

import ampkit


def _scaler(device: str, monkeypatch) -> ampkit.GradScaler:
    if device == "cuda" and not torch.cuda.is_available():
        # The scaler disables itself where CUDA is absent (as torch's does); fake CUDA tensors
        # need it enabled. Only that check is bypassed, only while it is constructed.
        with monkeypatch.context() as patch:
            patch.setattr(torch.cuda, "is_available", lambda: True)
            scaler = ampkit.GradScaler(device, init_scale=2.0**12, growth_interval=2, hysteresis=2)
    else:
        scaler = ampkit.GradScaler(device, init_scale=2.0**12, growth_interval=2, hysteresis=2)
    assert scaler.is_enabled()
    return scaler


@pytest.mark.parametrize("device, low", [("cuda", torch.float16), ("cpu", torch.bfloat16)])
@pytest.mark.parametrize("optimizer_class", [ampkit.optim.AdamW, ampkit.optim.SGD])
@pytest.mark.parametrize("unscale_first", [True, False], ids=["unscale_clip_step", "step"])
def test_training_step_reads_nothing_back_to_the_host(device, low, optimizer_class, unscale_first, monkeypatch):
    previous_device = torch.get_default_device()
    try:
        with FakeTensorMode():
            torch.set_default_device(device)
            model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32),
                                  ampkit.nn.FusedLinear(32, 32, activation="gelu"), nn.Linear(32, 4))
            ampkit.optim.to_low_precision(model, low)
            lr = torch.full((), 1e-3)  # a device tensor: a schedule may change it without a sync
            kwargs = {"momentum": 0.9} if optimizer_class is ampkit.optim.SGD else {}
            optimizer = optimizer_class(model.parameters(), lr=lr, **kwargs)
            scaler = _scaler(device, monkeypatch)
            inputs, targets = torch.randn(8, 16), torch.randint(0, 4, (8,))
            for _ in range(3):
                with ampkit.autocast(device, dtype=low):
                    logits = model(inputs)
                loss = F.cross_entropy(logits.float(), targets)
                scaled = scaler.scale(loss)
                assert scaled.device.type == device
                for param in model.parameters():
                    param.grad = torch.randn_like(param)
                if unscale_first:
                    norm = scaler.unscale_(optimizer, compute_norm=True)
                    clip = (1.0 / (norm + 1e-6)).clamp(max=1.0)  # a device-side clip coefficient
                    scaler.step(optimizer, clip_coef=clip)
                else:  # the optimizer unscales in its own pass
                    scaler.step(optimizer)
                scaler.update()
            assert logits.dtype == low and model[0].weight.dtype == low
            low_params = [p for p in model.parameters() if p.dtype == low]
            assert len(low_params) == 6  # the LayerNorm stays fp32, without a master copy
            assert all(optimizer.state[p]["master"].dtype == torch.float32 for p in low_params)
            # The check has teeth: an API that does read the host raises in this mode.
            with pytest.raises(Exception, match="data-dependent|item|local_scalar_dense"):
                scaler.get_scale()
    finally:
        torch.set_default_device(previous_device)


@pytest.mark.parametrize("lr_shape", [(), (1,)], ids=["0-dim", "1-element"])
@pytest.mark.parametrize("optimizer_class, hyper, name", [
    (ampkit.optim.SGD, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2}, "momentum"),
    (ampkit.optim.SGD, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2}, "weight_decay"),
    (ampkit.optim.AdamW, {"betas": (0.9, 0.999), "eps": 1e-8}, "eps"),
    (ampkit.optim.Adam, {"betas": (0.9, 0.999), "weight_decay": 1e-2}, "betas"),
])
def test_device_lr_steps_without_host_reads_and_a_tensor_hyper_parameter_is_refused(
        optimizer_class, hyper, name, lr_shape):
    # On fake CUDA tensors: a device lr (0-dim or one element) steps with no host read; a device
    # tensor then set into the group for a hyper-parameter the op takes as a double (a sync on
    # every step, an error under graph capture) raises the clear TypeError, not a host read.
    previous_device = torch.get_default_device()
    try:
        with FakeTensorMode():
            torch.set_default_device("cuda")
            params = [nn.Parameter(torch.randn(33, 7, dtype=torch.float16)), nn.Parameter(torch.randn(5))]
            lr = torch.full(lr_shape, 1e-3)
            optimizer = optimizer_class(params, lr=lr, **hyper)
            for _ in range(2):
                for param in params:
                    param.grad = torch.randn_like(param)
                optimizer.step()
            assert optimizer.param_groups[0]["lr"] is lr
            group = optimizer.param_groups[0]
            if name == "betas":
                group["betas"] = (torch.full((), 0.9), group["betas"][1])
                name = "betas[0]"
            else:
                group[name] = torch.full((), group[name])
            assert group["lr"].device.type == "cuda"
            with pytest.raises(TypeError, match=rf"ampkit\.optim\.{optimizer_class.__name__}: {re.escape(name)} of "
                                                r"group 0 must be a Python float \(a tensor would be read on the "
                                                r"host every step\); got a torch\.float32 tensor of shape \(\) on "
                                                r"cuda"):
                optimizer.step()
    finally:
        torch.set_default_device(previous_device)
