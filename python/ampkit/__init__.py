"""ampkit: mixed-precision training for PyTorch.

Every numeric step is a call into ``torch.ops.ampkit.*`` (registered by the compiled library);
this package adds the ergonomics.
"""
from __future__ import annotations

import torch as _torch

from ._loader import load_compiled as _load_compiled

_C, _BUILD_INFO = _load_compiled()

__version__: str = _BUILD_INFO["version"]

from .ops import multi_tensor_scale_  # noqa: E402
# autocast policies (issue 6)
from .autocast import (  # noqa: E402
    Policy,
    autocast,
    explain,
    global_policy,
    set_global_policy,
    set_module_policy,
)

# ---- dynamic loss scaling (GradScaler) ----
from .grad_scaler import GradScaler  # noqa: E402


def build_info() -> dict:
    """How this ampkit was built: version, torch it was compiled against, CUDA kernels and archs."""
    info = dict(_C.build_info())
    info["cuda_architectures"] = [a for a in info["cuda_architectures"].replace(";", " ").split() if a]
    info["torch_runtime"] = _torch.__version__
    return info


__all__ = ["__version__", "build_info", "multi_tensor_scale_"]
__all__ += ["GradScaler"]

# ---- FP32-master-weight optimizers (issue 4) ----
from . import optim  # noqa: E402

# ---- fused linear (issue 5) ----
from . import nn  # noqa: E402
from .nn import FusedLinear, FusedMLP, fuse_linear_activations, fused_linear, fused_mlp  # noqa: E402

__all__ += ["nn", "FusedLinear", "fuse_linear_activations", "fused_linear"]
# autocast policies (issue 6)
__all__ += ["Policy", "autocast", "explain", "global_policy", "set_global_policy", "set_module_policy"]
# ---- amp=True: trainer, self-check, diagnostics (issue 7) ----
from .self_check import AmpCheck, check_amp  # noqa: E402
from .trainer import Trainer, TrainHistory, plot_history  # noqa: E402

__all__ += ["AmpCheck", "check_amp", "Trainer", "TrainHistory", "plot_history"]
__all__ += ["nn", "FusedLinear", "FusedMLP", "fuse_linear_activations", "fused_linear", "fused_mlp"]
