"""Modules on ampkit's fused linear: ``FusedLinear``, ``FusedMLP`` and a pass that fuses
``Linear -> ReLU/GELU (-> Linear)`` in existing models.

The numerics are ``torch.ops.ampkit.fused_linear``: fp32 accumulation of fp16/bf16 operands, the
bias and the activation applied in fp32 before one rounding (on CUDA in the cuBLASLt epilogue).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from . import _native
from .multi_tensor import enable_dtensor_ops_for

# "none", "relu", "gelu" (tanh approximation): the names fused_linear's C++ check accepts.
ACTIVATIONS = _native.fused_linear_activations()


def _check_activation(activation: str) -> None:
    """The op's own check (same rule, same message), before any parameter is allocated."""
    if not isinstance(activation, str):
        raise TypeError(f"FusedLinear: activation must be a str, got {type(activation).__name__}")
    _native.check_fused_linear_activation("FusedLinear", activation)


def fused_linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 activation: str = "none") -> torch.Tensor:
    """``activation(input @ weight.T + bias)``; activation "none", "relu" or "gelu" (tanh approximation).

    Same arguments as ``torch.nn.functional.linear`` plus the activation; differentiable, runs under
    ``torch.autocast`` (fp32 inputs run in the autocast dtype) and ``torch.compile``.
    """
    enable_dtensor_ops_for((input, weight))
    return torch.ops.ampkit.fused_linear(input, weight, bias, activation)


def fused_mlp(input: torch.Tensor, weight1: torch.Tensor, bias1: Optional[torch.Tensor], weight2: torch.Tensor,
              bias2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(F.gelu(F.linear(input, weight1, bias1), approximate="tanh"), weight2, bias2)`` as one op.

    On CUDA the backward takes the GELU gradient and ``bias1``'s gradient out of the second
    layer's data-gradient GEMM (cuBLASLt DGELU_BGRAD epilogue) instead of separate kernels.
    """
    enable_dtensor_ops_for((input, weight1))
    return torch.ops.ampkit.fused_mlp(input, weight1, bias1, weight2, bias2)


class FusedLinear(nn.Linear):
    """``nn.Linear`` followed by an activation, as one fused op.

    Parameters are named, shaped and initialised as ``nn.Linear``'s, so ``load_state_dict`` takes an
    ``nn.Linear`` state dict unchanged. It is an ``nn.Linear`` subclass so that code which shards
    linear layers by type (torch's ``ColwiseParallel`` / ``RowwiseParallel``) takes it; the fused op
    runs on the resulting DTensors (see ``ampkit.distributed``).
    """

    __constants__ = ["in_features", "out_features", "activation"]

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "none",
                 device=None, dtype=None) -> None:
        nn.Module.__init__(self)  # nn.Linear's own __init__ would allocate before the checks below
        _check_activation(activation)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"FusedLinear: {name} must be an int, got {type(value).__name__}")
            if value < 0:
                raise ValueError(f"FusedLinear: {name} must be >= 0, got {value}")
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
        # On DTensors (a replicated layer in a DTensor model) ampkit.distributed runs the op.
        enable_dtensor_ops_for((input, self.weight))
        return torch.ops.ampkit.fused_linear(input, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation={self.activation}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: str = "none") -> "FusedLinear":
        """A FusedLinear sharing ``linear``'s parameters (no copy: the optimizer's references stay valid)."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        _check_activation(activation)
        fused.in_features = linear.in_features
        fused.out_features = linear.out_features
        fused.activation = activation
        fused.weight = linear.weight
        if linear.bias is not None:
            fused.bias = linear.bias
        else:
            fused.register_parameter("bias", None)
        return fused


class FusedMLP(nn.Module):
    """``fc1 -> GELU(tanh) -> fc2`` (the transformer MLP block) as one ``fused_mlp`` op.

    ``fc1`` and ``fc2`` are plain ``nn.Linear`` modules holding the parameters, so the state dict
    keys are ``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_linears(cls, fc1: nn.Linear, fc2: nn.Linear) -> "FusedMLP":
        """A FusedMLP around two existing Linear layers (their parameters are shared, not copied)."""
        if fc1.out_features != fc2.in_features:
            raise ValueError(f"FusedMLP: fc2.in_features ({fc2.in_features}) must equal fc1.out_features "
                             f"({fc1.out_features})")
        mlp = cls.__new__(cls)
        nn.Module.__init__(mlp)
        mlp.fc1 = fc1
        mlp.fc2 = fc2
        return mlp

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        enable_dtensor_ops_for((input, self.fc1.weight))
        return torch.ops.ampkit.fused_mlp(input, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)


def _activation_name(module: nn.Module, include_exact_gelu: bool) -> Optional[str]:
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.GELU):
        if module.approximate == "tanh" or include_exact_gelu:
            return "gelu"
    return None


def fuse_linear_activations(model: nn.Module, include_exact_gelu: bool = False, mlp: bool = True) -> int:
    """Fuses, in place, the layers of every ``nn.Sequential`` in ``model``:

    * ``nn.Linear -> nn.GELU -> nn.Linear`` (with ``mlp=True``, and matching sizes) becomes one
      ``FusedMLP`` (whose backward also fuses the GELU gradient into a GEMM);
    * any other ``nn.Linear`` directly followed by ``nn.ReLU`` / ``nn.GELU`` becomes a ``FusedLinear``.

    Replaced modules become ``nn.Identity``; parameters are shared, never copied, so an optimizer
    built before still updates them. Returns how many groups were fused.

    Only consecutive modules of a Sequential are fused: there each one's output provably feeds the
    next and nothing else. ``nn.GELU()`` (exact, erf) differs from the fused tanh approximation by
    up to ~1e-3; it is fused only with ``include_exact_gelu=True``.
    """
    fused = 0
    for container in list(model.modules()):
        if not isinstance(container, nn.Sequential):
            continue
        modules = container._modules
        names = list(modules.keys())
        i = 0
        while i + 1 < len(names):
            first, activation = modules[names[i]], modules[names[i + 1]]
            # Exact nn.Linear only: a subclass may change forward.
            name = _activation_name(activation, include_exact_gelu) if type(first) is nn.Linear else None
            if name is None:
                i += 1
                continue
            second = modules[names[i + 2]] if i + 2 < len(names) else None
            if (mlp and name == "gelu" and type(second) is nn.Linear and second.in_features == first.out_features):
                modules[names[i]] = FusedMLP.from_linears(first, second)
                modules[names[i + 1]] = nn.Identity()
                modules[names[i + 2]] = nn.Identity()
                i += 3
            else:
                modules[names[i]] = FusedLinear.from_linear(first, name)
                modules[names[i + 1]] = nn.Identity()
                i += 2
            fused += 1
    return fused


__all__ = ["ACTIVATIONS", "FusedLinear", "FusedMLP", "fuse_linear_activations", "fused_linear", "fused_mlp"]
