"""Thin Python entry points over torch.ops.ampkit.*: argument conveniences only, no numerics."""
from __future__ import annotations

import importlib
import sys
from typing import Iterable, Sequence

import torch


def enable_dtensor_ops_for(tensors: Iterable[torch.Tensor]) -> None:
    """Loads ampkit.distributed, which registers ampkit's DTensor op handlers, when any of `tensors`
    is a DTensor. A DTensor can exist only once torch.distributed.tensor is imported, and after the
    first load there is nothing left to do: either way this costs a dict lookup or two and imports
    nothing (``import ampkit`` stays free of torch.distributed)."""
    if torch.compiler.is_compiling():
        return  # traced code: registration already happened in an eager call, or DTensors are not in use
    if "ampkit.distributed" in sys.modules:
        return
    dtensor_module = sys.modules.get("torch.distributed.tensor")
    if dtensor_module is not None and any(isinstance(t, dtensor_module.DTensor) for t in tensors):
        importlib.import_module(f"{__package__}.distributed")  # registers the handlers on import


def device_scalar(value: float | torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    """A one-element float32 tensor on `device` (a tensor is passed through unchanged)."""
    if isinstance(value, torch.Tensor):
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float or a one-element float32 tensor, got {type(value).__name__}")
    return torch.full((1,), float(value), dtype=torch.float32, device=device)


def _first_device(tensors: Sequence[torch.Tensor], name: str) -> torch.device:
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(tensors).__name__}")
    if len(tensors) == 0:
        raise ValueError(f"{name} must hold at least one tensor, got an empty list")
    for index, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}[{index}] must be a tensor, got {type(tensor).__name__}")
    return tensors[0].device


def multi_tensor_scale_(
    inputs: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor] | None = None,
    scale: float | torch.Tensor = 1.0,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor:
    """outputs[i] = inputs[i] * scale for every tensor in one pass (in place when outputs is None).

    Returns ``found_inf``: a one-element float32 tensor on the tensors' device that is 1.0 when
    any input element was inf or NaN. Nothing is read back to the host.
    """
    device = _first_device(inputs, "inputs")
    if outputs is None:
        outputs = inputs
    enable_dtensor_ops_for(inputs)
    scale_tensor = device_scalar(scale, device, "scale")
    if found_inf is None:
        found_inf = torch.zeros(1, dtype=torch.float32, device=device)
    torch.ops.ampkit.multi_tensor_scale_(list(inputs), list(outputs), scale_tensor, found_inf)
    return found_inf
