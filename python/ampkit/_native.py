"""The compiled parts the package reaches beyond ``torch.ops.ampkit``: ``libampkit_python.so``.

That library registers, with the dispatcher, the autocast policy objects as torch custom classes
(``torch.classes.ampkit_python.*``) and the build information, activation names and argument
contracts as ops (``torch.ops.ampkit_python.*``), and exports two plain C functions that open and
leave autocast regions, called through ctypes. It is loaded with ``torch.ops.load_library`` and
uses no Python C API, so one build serves every CPython that runs this torch. This module
gives those registrations Python names; nothing else in the package touches them directly.
"""
from __future__ import annotations

import ctypes
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARY = os.path.join(_HERE, "libampkit_python.so")


def load_library() -> None:
    """Loads libampkit_python.so (which loads libampkit.so beside it: torch.ops.ampkit.* appear)."""
    if not os.path.exists(LIBRARY):
        raise ImportError(f"ampkit's compiled library is missing ({LIBRARY} not found): build and install it with "
                          "`pip install --no-build-isolation -e .` from the repository, or run scripts/build.sh")
    torch.ops.load_library(LIBRARY)
    _bind_region_calls()


def _ops():
    return torch.ops.ampkit_python


def _classes():
    return torch.classes.ampkit_python


# ---- build information and diagnostics ----

def build_info() -> dict:
    version, torch_version, cuda, architectures = _ops().build_info()
    return {"version": version, "torch_version": torch_version, "cuda": cuda, "cuda_architectures": architectures}


def cpu_kernel_threads() -> int:
    return int(_ops().cpu_kernel_threads())


def fused_linear_activations() -> tuple[str, ...]:
    return tuple(_ops().fused_linear_activations())


def check_fused_linear_activation(caller: str, activation: str) -> None:
    _ops().check_fused_linear_activation(caller, activation)


def fused_epilogue_counts() -> dict:
    """Fused vs unfused epilogue GEMMs run by the CUDA fused_linear / fused_mlp kernels."""
    fused, unfused = _ops().fused_epilogue_counts()
    return {"fused": fused, "unfused": unfused}


def reset_fused_epilogue_counts() -> None:
    _ops().reset_fused_epilogue_counts()


# ---- argument contracts (ampkit/contracts.h): the same rules and messages as the C++ API ----

def check_grad_scaler_options(prefix: str, scale_name: str, scale: float, growth_factor: float,
                              backoff_factor: float, growth_interval: int, hysteresis: int,
                              min_scale: float | None, max_scale: float | None) -> None:
    _ops().check_grad_scaler_options(prefix, scale_name, scale, growth_factor, backoff_factor, growth_interval,
                                     hysteresis, min_scale, max_scale)


def check_scale_value(prefix: str, name: str, value: float) -> None:
    _ops().check_scale_value(prefix, name, value)


def check_sgd_hyperparameters(prefix: str, suffix: str, lr: float | None, momentum: float, dampening: float,
                              weight_decay: float, nesterov: bool) -> None:
    _ops().check_sgd_hyperparameters(prefix, suffix, lr, momentum, dampening, weight_decay, nesterov)


def check_adam_hyperparameters(prefix: str, suffix: str, lr: float | None, beta1: float, beta2: float, eps: float,
                               weight_decay: float) -> None:
    _ops().check_adam_hyperparameters(prefix, suffix, lr, beta1, beta2, eps, weight_decay)


# ---- autocast policies (devices and dtypes as strings: "cpu", "bfloat16") ----

def new_policy(device: str, dtype: str, allow: list[str], deny: list[str], promote: list[str],
               passthrough: list[str]):
    """An AutocastPolicy object: methods allow/deny/promote/passthrough/with_dtype (each returns a new
    one), device_type(), dtype(), list_of(op), ops(list), equals(other)."""
    return _classes().AutocastPolicy(device, dtype, allow, deny, promote, passthrough)


def torch_default_policy(device: str, dtype: str):
    return _ops().torch_default_policy(device, dtype)


def for_this_machine_policy(device: str, dtype: str):
    return _ops().for_this_machine_policy(device, dtype)


def slow_in_lower_precision(device: str, dtype: str) -> list[tuple[str, str, str]]:
    ops, whens, reasons = _ops().slow_in_lower_precision(device, dtype)
    return list(zip(ops, whens, reasons))


# ---- autocast regions: two plain C calls through ctypes (see ampkit_autocast_enter) ----

REGION_DEVICE_CODES = {"cpu": 0, "cuda": 1}
REGION_DTYPE_CODES = {None: 0, "float16": 1, "bfloat16": 2}
_REGION_ERRORS = {-1: ValueError, -2: TypeError, -3: RuntimeError}
_region_calls: dict = {}


def _bind_region_calls() -> None:
    library = ctypes.CDLL(LIBRARY)  # the handle torch.ops.load_library opened; CDLL releases the GIL
    enter, leave, error = library.ampkit_autocast_enter, library.ampkit_autocast_exit, library.ampkit_autocast_error
    enter.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32]
    enter.restype = ctypes.c_int64
    leave.argtypes = [ctypes.c_int64]
    leave.restype = ctypes.c_int64
    error.argtypes = []
    error.restype = ctypes.c_char_p
    _region_calls.update(enter=enter, exit=leave, error=error)


def _region_failure(status: int) -> Exception:
    message = _region_calls["error"]().decode("utf-8", errors="replace")
    return _REGION_ERRORS.get(status, RuntimeError)(message)


def region_enter(policy_address: int, device_code: int, dtype_code: int, enabled: bool) -> int:
    """Opens an autocast region on this thread (policy_address: policy_address() of a live policy,
    or 0); returns its depth, which region_exit takes."""
    depth = _region_calls["enter"](policy_address or None, device_code, dtype_code, int(enabled))
    if depth < 0:
        raise _region_failure(depth)
    return depth


def region_exit(depth: int) -> None:
    status = _region_calls["exit"](depth)
    if status < 0:
        raise _region_failure(status)


def policy_address(policy) -> int:
    return int(_ops().policy_address(policy))


def new_recording():
    """An ExplainRecording object: start(), stop() -> [(op, list, input dtypes, output dtypes)]."""
    return _classes().ExplainRecording()


def autocast_install(policy) -> None:
    _ops().autocast_install(policy)


def autocast_uninstall() -> None:
    _ops().autocast_uninstall()


def autocast_is_installed(device: str) -> bool:
    return _ops().autocast_is_installed(device)


def set_global_policy(policy) -> None:
    _ops().autocast_set_global_policy(policy)


def set_global_policy_name(name: str) -> None:
    _ops().autocast_set_global_policy_name(name)


def clear_global_policy() -> None:
    _ops().autocast_clear_global_policy()


def global_policy(device: str):
    """The global policy object for ``device``, or None."""
    return _ops().autocast_global_policy(device)


def global_policy_is_float32(device: str) -> bool:
    return _ops().autocast_global_policy_is_float32(device)


def torch_routes(device: str) -> list[tuple[str, str]]:
    """torch's own autocast routing as ampkit mirrors it: [(op, route)] for ops torch routes on ``device``."""
    return [tuple(route) for route in _ops().autocast_torch_routes(device)]
