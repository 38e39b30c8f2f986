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
