"""check_amp: the self-check a trainer runs before it turns mixed precision on.

It answers two questions on the target device, and says why when the answer is no:
1. does the device support the low-precision dtype at all (fp16 tensor cores, bf16 support)?
2. does the model (or a small reference model) give the same outputs under the autocast policy as
   in FP32, within a tolerance set by the dtype's precision?
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from .autocasting import autocast as default_autocast

# Largest relative deviation (max |amp - fp32| / max |fp32|) accepted from the self-check. A
# product of K terms rounded to a p-bit mantissa is off by about sqrt(K) * 2^-p relative; the
# reference model's widest reduction is K = 256, so fp16 (p = 11) gives ~8e-3 and bf16 (p = 8)
# ~6e-2 at worst. The bounds leave a factor ~2 for the few layers the error passes through.
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 1e-1}


@dataclasses.dataclass(frozen=True)
class AmpCheck:
    """The self-check's verdict."""

    ok: bool
    device: str
    dtype: torch.dtype
    reason: str
    max_relative_error: float | None = None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        detail = "" if self.max_relative_error is None else f" (max relative error {self.max_relative_error:.2e})"
        return f"AMP check {verdict} on {self.device} with {str(self.dtype).replace('torch.', '')}: {self.reason}{detail}"


def reference_model() -> nn.Module:
    """A small conv + MLP model touching the ops AMP changes most: conv, matmul, norm, softmax."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(256, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 10), nn.Softmax(dim=-1),
    )


def dtype_support(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether `device` can run autocast in `dtype`, and why not if it cannot."""
    if dtype not in TOLERANCE:
        return False, f"dtype must be torch.float16 or torch.bfloat16, got {dtype}"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return False, f"{name} (sm_{major}{minor}) has no bf16 support (needs sm_80 or newer)"
        if dtype == torch.float16 and major < 7:
            return False, f"{name} (sm_{major}{minor}) has no fp16 tensor cores (needs sm_70 or newer)"
        return True, f"{name} (sm_{major}{minor}) supports {dtype}"
    if device.type == "cpu":
        try:
            with torch.autocast("cpu", dtype=dtype):
                out = torch.mm(torch.ones(4, 4), torch.ones(4, 4))
        except RuntimeError as error:  # an autocast build without this dtype on CPU
            return False, f"CPU autocast rejects {dtype}: {error}"
        if out.dtype != dtype:
            return False, f"CPU autocast ran mm in {out.dtype}, not {dtype}"
        return True, f"CPU autocast supports {dtype}"
    return False, f"device type {device.type!r} is not supported by ampkit's AMP (cpu or cuda)"


@torch.no_grad()
def check_amp(model: nn.Module | None = None, device: str | torch.device | None = None,
              dtype: torch.dtype | None = None, example_input: torch.Tensor | None = None,
              tolerance: float | None = None,
              autocast: Callable[..., object] | None = None) -> AmpCheck:
    """Runs `model` (default: a small reference model) in FP32 and under autocast and compares.

    `device` defaults to CUDA when available; `dtype` to fp16 on CUDA and bf16 on the CPU.
    `example_input` is required for a user model. `autocast(device_type=..., dtype=...)` is the
    region to test (default: ampkit.autocast with the global policy). Never raises for a
    failed check: the verdict carries the reason.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"check_amp: model must be a torch.nn.Module or None, got {type(model).__name__}")
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                  or not math.isfinite(tolerance) or tolerance <= 0):
        # A NaN tolerance would make every comparison pass.
        raise ValueError(f"check_amp: tolerance must be a finite number > 0 or None, got {tolerance!r}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype if dtype is not None else (torch.float16 if device.type == "cuda" else torch.bfloat16)
    supported, why = dtype_support(device, dtype)
    if not supported:
        return AmpCheck(False, str(device), dtype, why)
    region = autocast or default_autocast
    if model is None:
        generator = torch.Generator().manual_seed(0)
        model = reference_model()
        example_input = torch.randn(8, 3, 16, 16, generator=generator)
    elif example_input is None:
        raise ValueError("check_amp: example_input is required when a model is given")
    model = model.to(device)
    was_training = model.training
    model.eval()
    try:
        inputs = example_input.to(device)
        expected = model(inputs).float()
        with region(device_type=device.type, dtype=dtype):
            got = model(inputs).float()
    finally:
        model.train(was_training)
    if not torch.isfinite(got).all():
        return AmpCheck(False, str(device), dtype, "the model's outputs under autocast are not finite (overflow)")
    scale = expected.abs().max().clamp_min(1e-12)
    error = ((got - expected).abs().max() / scale).item()
    limit = TOLERANCE[dtype] if tolerance is None else tolerance
    if error > limit:
        return AmpCheck(False, str(device), dtype,
                        f"outputs differ from FP32 by more than the tolerance {limit:.1e}", error)
    return AmpCheck(True, str(device), dtype, f"{why}; outputs match FP32 within {limit:.1e}", error)
