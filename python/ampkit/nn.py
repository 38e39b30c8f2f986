"""Modules on ampkit's fused linear: ``FusedLinear`` and a pass that fuses ``Linear -> ReLU/GELU``.

The numerics are ``torch.ops.ampkit.fused_linear``: fp32 accumulation of fp16/bf16 operands, the
bias and the activation applied in fp32 before one rounding (on CUDA in the cuBLASLt epilogue).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

ACTIVATIONS = ("none", "relu", "gelu")


def fused_linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 activation: str = "none") -> torch.Tensor:
    """``activation(input @ weight.T + bias)``; activation "none", "relu" or "gelu" (tanh approximation).

    Same arguments as ``torch.nn.functional.linear`` plus the activation; differentiable, runs under
    ``torch.autocast`` (fp32 inputs run in the autocast dtype) and ``torch.compile``.
    """
    return torch.ops.ampkit.fused_linear(input, weight, bias, activation)


class FusedLinear(nn.Module):
    """``nn.Linear`` followed by an activation, as one fused op.

    Parameters are named, shaped and initialised as ``nn.Linear``'s, so ``load_state_dict`` takes an
    ``nn.Linear`` state dict unchanged.
    """

    __constants__ = ["in_features", "out_features", "activation"]

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "none",
                 device=None, dtype=None) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"FusedLinear: activation must be one of {', '.join(map(repr, ACTIVATIONS))} "
                             f"(gelu is the tanh approximation), got {activation!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's initialisation, so a fresh FusedLinear is distributed as a fresh nn.Linear.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.ops.ampkit.fused_linear(input, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation={self.activation}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: str = "none") -> "FusedLinear":
        """A FusedLinear sharing ``linear``'s parameters (no copy: the optimizer's references stay valid)."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        if activation not in ACTIVATIONS:
            raise ValueError(f"FusedLinear: activation must be one of {', '.join(map(repr, ACTIVATIONS))}, "
                             f"got {activation!r}")
        fused.in_features = linear.in_features
        fused.out_features = linear.out_features
        fused.activation = activation
        fused.weight = linear.weight
        if linear.bias is not None:
            fused.bias = linear.bias
        else:
            fused.register_parameter("bias", None)
        return fused


def _activation_name(module: nn.Module, include_exact_gelu: bool) -> Optional[str]:
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.GELU):
        if module.approximate == "tanh" or include_exact_gelu:
            return "gelu"
    return None


def fuse_linear_activations(model: nn.Module, include_exact_gelu: bool = False) -> int:
    """Replaces, in place, every ``nn.Linear`` directly followed by ``nn.ReLU`` / ``nn.GELU`` inside an
    ``nn.Sequential`` with a ``FusedLinear`` (sharing the Linear's parameters) and the activation
    with ``nn.Identity``. Returns how many pairs were fused.

    Only consecutive pairs of a Sequential are fused: there the Linear's output provably feeds
    the activation and nothing else. ``nn.GELU()`` (exact, erf) differs from the fused tanh
    approximation by up to ~1e-3; it is fused only with ``include_exact_gelu=True``.
    """
    fused = 0
    for container in list(model.modules()):
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules.keys())
        for first, second in zip(names, names[1:]):
            linear, activation = container._modules[first], container._modules[second]
            if type(linear) is not nn.Linear:  # subclasses may change forward; leave them alone
                continue
            name = _activation_name(activation, include_exact_gelu)
            if name is None:
                continue
            container._modules[first] = FusedLinear.from_linear(linear, name)
            container._modules[second] = nn.Identity()
            fused += 1
    return fused


__all__ = ["ACTIVATIONS", "FusedLinear", "fuse_linear_activations", "fused_linear"]
