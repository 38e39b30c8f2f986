"""ampkit: mixed-precision training for PyTorch.

Every numeric step is a call into ``torch.ops.ampkit.*`` (registered by the compiled library);
this package adds the ergonomics.
"""
from __future__ import annotations

import torch as _torch

from . import _native
from ._loader import load_compiled as _load_compiled

_BUILD_INFO = _load_compiled()

__version__: str = _BUILD_INFO["version"]

# The compiled library is loaded above; everything below builds on torch.ops.ampkit.*.
from . import nn, optim  # noqa: E402
from .autocasting import (  # noqa: E402
    Policy, autocast, explain, global_policy, set_global_policy, set_module_policy, slow_in_lower_precision,
)
from .grad_scaler import GradScaler  # noqa: E402
from .nn import FusedLinear, FusedMLP, fuse_linear_activations, fused_linear, fused_mlp  # noqa: E402
from .multi_tensor import multi_tensor_scale_  # noqa: E402
from .self_check import AmpCheck, check_amp  # noqa: E402
from .adaptive import AdaptivePrecision, PrecisionChange  # noqa: E402
from .trainer import Trainer, TrainHistory, plot_history  # noqa: E402


def build_info() -> dict:
    """How this ampkit was built: version, torch it was compiled against, CUDA kernels and archs."""
    info = _native.build_info()
    info["cuda_architectures"] = [a for a in info["cuda_architectures"].replace(";", " ").split() if a]
    info["torch_runtime"] = _torch.__version__
    # The threads a large loop of ampkit's CPU kernels runs on now (torch.set_num_threads).
    info["cpu_kernel_threads"] = _native.cpu_kernel_threads()
    return info


__all__ = [
    "__version__", "build_info",
    # loss scaling and the fused list ops
    "GradScaler", "multi_tensor_scale_",
    # FP32-master-weight optimizers
    "optim",
    # fused linear layers
    "nn", "FusedLinear", "FusedMLP", "fuse_linear_activations", "fused_linear", "fused_mlp",
    # autocast policies
    "Policy", "autocast", "explain", "global_policy", "set_global_policy", "set_module_policy",
    "slow_in_lower_precision",
    # amp=True: trainer, self-check, diagnostics
    "AmpCheck", "check_amp", "Trainer", "TrainHistory", "plot_history",
    # adaptive precision: promotes what overflows to FP32 while training
    "AdaptivePrecision", "PrecisionChange",
]
