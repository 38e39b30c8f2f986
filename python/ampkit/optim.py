"""FP32-master-weight optimizers: ``ampkit.optim.SGD``, ``Adam`` and ``AdamW``.

The model may hold its weights in float16 or bfloat16 (half the memory, no per-op weight casts);
the optimizer keeps an FP32 master copy of every low-precision parameter and FP32 state, and one
fused pass per step (``torch.ops.ampkit.master_sgd_step_`` / ``master_adam_step_``) reads the
gradient, unscales and clips it, updates master and state and writes the model copy back. float32
parameters need no master: they are updated in place. float64 parameters are updated in place in
double with float64 state, as torch does (their gradients are float64). All four dtypes may be
mixed in one model and one parameter group.

Formulas and defaults are torch.optim's, so on float32 parameters the results match
``torch.optim.SGD/Adam/AdamW`` up to rounding.

Loss scaling: the optimizers set ``_step_supports_amp_scaling``, so ``ampkit.GradScaler`` and
``torch.amp.GradScaler`` hand them ``grad_scale`` and ``found_inf`` instead of unscaling the
gradients themselves; the kernel multiplies by ``1 / grad_scale`` and skips the whole step on the
device when ``found_inf`` is set. Nothing in ``step()`` reads a value back to the host, so a step
can be captured in a CUDA graph when ``lr`` is a tensor.

Gradients after the step are the ones torch leaves: whenever a step applies a ``grad_scale`` (from a
GradScaler) or a ``clip_coef``, the same fused pass writes the unscaled (and clipped) gradient back
into ``.grad``, skipped overflow steps included (torch's ``GradScaler.unscale_`` has unscaled them
before it skips). Plain steps never write a gradient.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from . import _native
from .multi_tensor import enable_dtensor_ops_for

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Parameters of these dtypes get an FP32 master (with master_weights=True); float32 and float64
# parameters are their own masters.
_LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)


def _state_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype of a parameter's optimizer state: float64 for a float64 parameter (torch keeps state
    in the parameter's dtype and ampkit computes fp64 updates in double), FP32 otherwise."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32

# Normalisation layers keep fp32 weights by default: their statistics and affine parameters are
# small, and low precision there costs accuracy for no real memory saving.
DEFAULT_KEEP_FP32: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)

# A param group's copy of a state_dict's "ampkit" entry (see _MasterWeightOptimizer.state_dict).
_GROUP_ORIGIN_KEY = "ampkit_origin"

# Where to_low_precision() leaves a parameter's original fp32 values for the optimizer's master.
_PENDING_MASTER_ATTR = "_ampkit_fp32_master"


def to_low_precision(
    model: nn.Module,
    dtype: torch.dtype = torch.bfloat16,
    keep_fp32: tuple[type[nn.Module], ...] = DEFAULT_KEEP_FP32,
) -> nn.Module:
    """Turns `model` into the low-precision-weights form, in place, and returns it.

    Every float32 parameter and floating buffer of a module that is not an instance of one of
    `keep_fp32` is converted to `dtype` (float16 or bfloat16). The parameters stay the same
    ``nn.Parameter`` objects, so an optimizer built afterwards sees them; each remembers its exact
    fp32 values, which an ``ampkit.optim`` optimizer with ``master_weights=True`` takes as that
    parameter's master (so no precision is lost in the conversion). Run the forward pass under
    autocast so fp32 layers and low-precision layers meet in the right dtype.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_low_precision: model must be a torch.nn.Module, got {type(model).__name__}")
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"to_low_precision: dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    if not isinstance(keep_fp32, tuple) or not all(isinstance(t, type) for t in keep_fp32):
        raise TypeError(f"to_low_precision: keep_fp32 must be a tuple of module classes, got {keep_fp32!r}")
    for module in model.modules():
        if isinstance(module, keep_fp32):
            continue
        for param in module.parameters(recurse=False):
            if param.dtype != torch.float32:
                continue  # already converted (a tied weight) or deliberately another dtype
            setattr(param, _PENDING_MASTER_ATTR, param.detach().clone())
            param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer.dtype == torch.float32:
                setattr(module, name, buffer.to(dtype))
    return model


def is_flat_in_memory(tensor: torch.Tensor) -> bool:
    """True when the tensor's elements fill one run of memory with no gaps or overlaps: contiguous,
    channels_last, or any permutation of a contiguous tensor. The fused kernels walk such a tensor
    in storage order, so a parameter of any of these layouts is stepped in place."""
    if tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last):
        return True
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride()), key=lambda pair: pair[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _state_like(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Zeros for a master or a state tensor: with the parameter's strides when it is flat in memory
    (so the fused kernels walk parameter, gradient, master and state in one order, as torch.optim
    keeps its state in the parameter's layout), contiguous otherwise (the step then works on a dense
    copy of the parameter)."""
    memory_format = torch.preserve_format if is_flat_in_memory(param) else torch.contiguous_format
    return torch.zeros_like(param, dtype=dtype, memory_format=memory_format)


def _frozen(value: Any) -> Any:
    """A hyper-parameter as a value that compares equal only to the same value of the same type: a
    tensor by identity (also inside betas), lists and tuples item by item, True apart from 1."""
    if isinstance(value, torch.Tensor):
        return (torch.Tensor, id(value))
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_frozen(item) for item in value))
    return (type(value), value)


def _describe_tensor(value: torch.Tensor) -> str:
    """How an error message shows a tensor without reading a device value back to the host:
    a plain CPU tensor by its value, any other (a CUDA tensor, a fake one) by its metadata."""
    if type(value) in (torch.Tensor, nn.Parameter) and value.device.type == "cpu":
        return repr(value)
    return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"


def _host_value_error(label: str, expected: str, value: torch.Tensor) -> TypeError:
    """The error for a tensor where the op takes a host value: it would be read back every step."""
    return TypeError(f"{label} must be {expected} (a tensor would be read on the host every step); "
                     f"got {_describe_tensor(value)}")


def _host_number(name: str, value: Any, *, optimizer: str, where: str = "", tensor_ok: bool = False) -> float | None:
    """Checks the type of one numeric hyper-parameter before it crosses into C++, which checks its
    value (ampkit/contracts.h, the rule the C++ optimizers and the ops use too). Returns it as a
    float, or None for a tensor lr. Only `lr` may be a tensor (`tensor_ok`): the ops take it as a
    device tensor. The others are doubles in the op schemas, so a tensor there would be read back to
    the host on every step (a device sync, and an error under CUDA graph capture)."""
    label = f"ampkit.optim.{optimizer}: {name}{where}"
    if isinstance(value, torch.Tensor):
        if not tensor_ok:
            raise _host_value_error(label, "a Python float", value)
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{label} must be a float or a one-element float tensor, "
                             f"got a {value.dtype} tensor of shape {tuple(value.shape)}")
        return None  # a device tensor's value is not read on the host (that would sync)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{label} must be a float, got {type(value).__name__}")
    return float(value)


# _values_checked_by_the_op: the value checks are a C++ call (ampkit._native), which torch.compile cannot
# put in a graph. While compiling, the step's op checks the same contract (the same C++ function)
# when it runs; only lr, a tensor there, goes unchecked until the next eager check.


def _check_flag(name: str, value: Any, *, optimizer: str, where: str = "") -> None:
    """nesterov / maximize pick a code path on the host; a tensor there would be read every step."""
    if isinstance(value, torch.Tensor):
        raise _host_value_error(f"ampkit.optim.{optimizer}: {name}{where}", "a Python bool", value)


def _check_torch_keywords(optimizer: str, foreach: Any, fused: Any, capturable: Any, differentiable: Any) -> None:
    """torch.optim's implementation keywords. foreach, fused and capturable are accepted and choose
    nothing: every ampkit step is already one fused multi-tensor pass that never reads a value back to
    the host (so it can be captured in a CUDA graph). differentiable=True is refused: the update is
    an in-place kernel under no_grad, with no autograd formula to differentiate through."""
    for name, value, allowed in (("foreach", foreach, "None or a bool"), ("fused", fused, "None or a bool"),
                                 ("capturable", capturable, "a bool"), ("differentiable", differentiable, "a bool")):
        if not (isinstance(value, bool) or (value is None and allowed.startswith("None"))):
            raise TypeError(f"ampkit.optim.{optimizer}: {name} must be {allowed}, got {type(value).__name__}")
    if differentiable:
        raise ValueError(f"ampkit.optim.{optimizer}: differentiable=True is not supported: the step is one fused "
                         "in-place kernel under no_grad, which autograd cannot differentiate through; use "
                         "torch.optim with differentiable=True for that")


class _MasterWeightOptimizer(Optimizer):
    """What SGD, Adam and AdamW share: masters, state creation, scalars, the fused launch."""

    # torch.amp.GradScaler / ampkit.GradScaler set `grad_scale` and `found_inf` on the optimizer
    # and call step() directly instead of unscaling the gradients themselves.
    _step_supports_amp_scaling = True
    # FP32 state tensors of every parameter (besides "step" and "master").
    _state_keys: tuple[str, ...] = ()

    def __init__(self, params: Iterable, defaults: dict, master_weights: bool) -> None:
        if not isinstance(master_weights, bool):
            raise TypeError(f"ampkit.optim.{type(self).__name__}: master_weights must be a bool, "
                            f"got {type(master_weights).__name__}")
        self.master_weights = master_weights
        self._device_constants: dict[tuple[torch.device, float], torch.Tensor] = {}
        # The strides each parameter's state was last laid out for (see _state_in_layout), by id(param):
        # a tensor key would run Tensor.__hash__, a Python function, on every lookup of every step.
        self._state_strides: dict[int, tuple[int, ...]] = {}
        # Each group's hyper-parameters as last checked (see _check_group_if_changed), by id(group).
        self._checked_groups: dict[int, tuple] = {}
        super().__init__(params, defaults)

    # torch.optim.Optimizer pickles (and deep-copies) only defaults, state and param_groups; keep
    # master_weights too, and rebuild the caches, so a copied optimizer steps like the original.
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["master_weights"] = self.master_weights
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.master_weights = state.get("master_weights", True)
        self._device_constants = {}
        self._state_strides = {}
        self._checked_groups = {}

    # ---- groups and state ----

    def _check_group(self, group: dict, where: str = "", label: str | None = None) -> None:
        """Checks a group's hyper-parameters (TypeError/ValueError naming the value); `where` says
        which group (" of group 1"), `label` which entry point (default: the class name). Runs at
        construction, in add_param_group, in load_state_dict before anything changes, and at every
        step, so a value set into ``param_groups`` between steps is checked before it is used."""
        raise NotImplementedError

    def _state_keys_for(self, group: dict) -> tuple[str, ...]:
        return self._state_keys

    def _check_group_if_changed(self, group: dict, group_index: int) -> None:
        """_check_group, skipped when no hyper-parameter of the group changed since it last passed
        (the step's Python runs with every cache cold, after the backward pass). A tensor counts as
        unchanged while it is the same object: its value is never read here anyway."""
        if torch.compiler.is_compiling():  # traced: the check itself is what the graph keeps
            self._check_group(group, where=f" of group {group_index}")
            return
        snapshot = tuple((key, _frozen(value)) for key, value in group.items() if key != "params")
        if self._checked_groups.get(id(group)) == snapshot:
            return
        self._check_group(group, where=f" of group {group_index}")
        self._checked_groups[id(group)] = snapshot

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        name = type(self).__name__
        try:
            self._check_group(group, where=f" of group {len(self.param_groups) - 1}")
            devices = set()
            seen: set[int] = set()
            for index, param in enumerate(group["params"]):
                if id(param) in seen:
                    # torch only warns; a parameter listed twice here would be updated twice per step.
                    raise ValueError(f"ampkit.optim.{name}: params[{index}] of group {len(self.param_groups) - 1} "
                                     "appears twice in the group; pass each parameter once")
                seen.add(id(param))
                if param.dtype not in SUPPORTED_DTYPES:
                    raise TypeError(f"ampkit.optim.{name}: params[{index}] of group {len(self.param_groups) - 1} has "
                                    f"dtype {param.dtype}; supported: float32, float16, bfloat16, float64")
                devices.add(param.device)
            if len(devices) > 1:
                raise ValueError(f"ampkit.optim.{name}: the params of one group must be on one device, got "
                                 f"{sorted(str(d) for d in devices)}; put each device's params in its own group")
        except Exception:
            self.param_groups.pop()
            raise
        for param in group["params"]:
            self._init_state(param, group)

    def _init_state(self, param: torch.Tensor, group: dict) -> None:
        """Creates a parameter's state up front, so masters exist (and load) before the first step."""
        state = self.state[param]
        if state:
            return
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        pending = getattr(param, _PENDING_MASTER_ATTR, None)
        if pending is not None:
            delattr(param, _PENDING_MASTER_ATTR)
        if self.master_weights and param.dtype in _LOW_PRECISION_DTYPES:
            source = pending if pending is not None and pending.shape == param.shape else param.detach()
            state["master"] = _state_like(param, torch.float32).copy_(source)
        for key in self._state_keys_for(group):
            state[key] = _state_like(param, _state_dtype(param))

    def _state_in_layout(self, param: torch.Tensor) -> None:
        """Re-lays the parameter's master and state out in its current layout when it changed since
        they were made (``model.to(memory_format=torch.channels_last)`` after building the optimizer
        replaces ``param.data``): a one-time copy, after which the fused path applies again."""
        strides = param.stride()
        if self._state_strides.get(id(param)) == strides:
            return
        state = self.state[param]
        for key, value in state.items():
            if key != "step" and isinstance(value, torch.Tensor) and value.shape == param.shape \
                    and value.stride() != _state_like(param, value.dtype).stride():
                state[key] = _state_like(param, value.dtype).copy_(value)
        self._state_strides[id(param)] = strides

    def _kernel_operands(self, param: torch.Tensor, copy_backs: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameter and gradient the fused kernel steps. A flat parameter is stepped in place;
        a gradient in another memory order is copied into the parameter's order. A parameter that is
        not flat in memory (a strided slice) is stepped through a dense copy. Every copy is written
        back after the launch (`copy_backs`), the gradient too, since the step may write it."""
        grad = param.grad
        target = param
        if not is_flat_in_memory(param):
            target = param.detach().clone(memory_format=torch.contiguous_format)
            copy_backs.append((param, target))
        if grad.stride() != target.stride() and any(size > 1 for size in grad.shape):
            dense_grad = torch.empty_like(target, dtype=grad.dtype).copy_(grad)
            copy_backs.append((grad, dense_grad))
            grad = dense_grad
        return target, grad

    def master_params(self) -> list[torch.Tensor]:
        """The FP32 tensor each parameter's update is applied to, in param_groups order: its master,
        or the parameter itself when it is float32 (or master_weights=False)."""
        return [self.state[p].get("master", p) for group in self.param_groups for p in group["params"]]

    # ---- device scalars: built without reading anything back to the host ----

    def _constant(self, value: float, device: torch.device) -> torch.Tensor:
        key = (device, value)
        tensor = self._device_constants.get(key)
        if tensor is None:
            tensor = torch.full((1,), value, dtype=torch.float32, device=device)
            self._device_constants[key] = tensor
        return tensor

    @staticmethod
    def _as_device_scalar(value: float | torch.Tensor, device: torch.device,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.to(device=device, dtype=dtype, non_blocking=True).reshape(1)
        return torch.full((1,), float(value), dtype=dtype, device=device)

    def _inv_scale(self, device: torch.device) -> torch.Tensor:
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is None:
            return self._constant(1.0, device)
        # The scaler's rule (torch's bits), on the device.
        return torch.ops.ampkit.reciprocal_scale(grad_scale.to(device=device, non_blocking=True)).reshape(1)

    def _found_inf(self, device: torch.device) -> torch.Tensor | None:
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:
            return None
        return found_inf.to(device=device, dtype=torch.float32, non_blocking=True).reshape(1)

    # ---- the step ----

    @torch.no_grad()
    def step(self, closure=None, *, clip_coef: float | torch.Tensor | None = None):
        """One optimizer step. `clip_coef` (a float or a one-element tensor, e.g. from a gradient-norm
        clip computed on the device) multiplies every gradient in the same pass."""
        if clip_coef is not None and not isinstance(clip_coef, torch.Tensor) and (
                isinstance(clip_coef, bool) or not isinstance(clip_coef, (int, float))):
            raise TypeError(f"ampkit.optim.{type(self).__name__}.step: clip_coef must be a float or a one-element "
                            f"float tensor, got {type(clip_coef).__name__}")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        name = type(self).__name__
        # Every group first, so a bad value (a tensor momentum set into a group since the last step,
        # which would be read on the host) raises before any group has been updated.
        for group_index, group in enumerate(self.param_groups):
            self._check_group_if_changed(group, group_index)
        for group_index, group in enumerate(self.param_groups):
            buckets: dict[tuple, list[torch.Tensor]] = {}
            bucket_states: dict[tuple, list[dict]] = {}
            for index, param in enumerate(group["params"]):
                grad = param.grad
                if grad is None:
                    continue
                grad_dtype, param_dtype = grad.dtype, param.dtype
                if grad.is_sparse:
                    raise RuntimeError(f"ampkit.optim.{name}: params[{index}] of group {group_index} has a sparse "
                                       "gradient; sparse gradients are not supported")
                if (grad_dtype == torch.float64) != (param_dtype == torch.float64) or grad_dtype not in SUPPORTED_DTYPES:
                    supported = ("float64 (the dtype of the float64 param)" if param_dtype == torch.float64
                                 else "float32, float16, bfloat16")
                    raise TypeError(f"ampkit.optim.{name}: params[{index}] of group {group_index} has a {grad_dtype} "
                                    f"gradient; supported: {supported}")
                self._init_state(param, group)
                self._state_in_layout(param)
                state = self.state[param]
                key = (param.device, param_dtype, grad_dtype, "master" in state)
                if key in buckets:
                    buckets[key].append(param)
                    bucket_states[key].append(state)
                else:
                    buckets[key] = [param]
                    bucket_states[key] = [state]
            if not buckets:
                continue
            enable_dtensor_ops_for(p for params in buckets.values() for p in params)
            # The grads are left unscaled (and clipped) in the step's own pass wherever it applies a
            # scale or a clip, as torch leaves them; plain steps skip that write.
            write_back_grads = getattr(self, "grad_scale", None) is not None or clip_coef is not None
            for bucket_key, params in buckets.items():
                device, param_dtype, _, has_master = bucket_key
                # float64 params: lr in double, as torch's Python-float lr reaches their update.
                lr = self._as_device_scalar(group["lr"], device,
                                            torch.float64 if param_dtype == torch.float64 else torch.float32)
                clip = self._constant(1.0, device) if clip_coef is None else self._as_device_scalar(clip_coef, device)
                states = bucket_states[bucket_key]
                copy_backs: list[tuple[torch.Tensor, torch.Tensor]] = []
                operands = [self._kernel_operands(p, copy_backs) for p in params]
                self._launch(
                    group,
                    params=[target for target, _ in operands],
                    masters=[s["master"] for s in states] if has_master else [],
                    grads=[grad for _, grad in operands],
                    states=states,
                    scalars=(lr, self._inv_scale(device), clip, self._found_inf(device)),
                    write_back_grads=write_back_grads,
                )
                for original, dense_copy in copy_backs:
                    original.copy_(dense_copy)
        return loss

    def _launch(self, group, params, masters, grads, states, scalars, write_back_grads) -> None:
        raise NotImplementedError

    # ---- checkpoints ----

    def state_dict(self) -> dict[str, Any]:
        result = super().state_dict()
        origin = {"optimizer": type(self).__name__, "master_weights": self.master_weights}
        result["ampkit"] = origin
        # Also in every group: torch.distributed.checkpoint's get/set_optimizer_state_dict keep only
        # "state" and "param_groups" (with the groups' extra keys), so this copy is what says where
        # a state_dict that went through them comes from. load_state_dict takes it out again.
        for group in result["param_groups"]:
            group[_GROUP_ORIGIN_KEY] = dict(origin)
        return result

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state_dict of the same ampkit optimizer over a model of the same shapes. Every
        check runs before anything is changed (a malformed dict raises ValueError/TypeError naming
        the entry and changes nothing); masters and state are copied exactly."""
        name = type(self).__name__
        where = f"ampkit.optim.{name}.load_state_dict"
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError(f"{where}: expected an optimizer state_dict with 'state' "
                             f"and 'param_groups', got {type(state_dict).__name__}")
        state_dict = self._with_origin_from_groups(state_dict)
        origin = state_dict.get("ampkit")
        saved_name = origin.get("optimizer") if isinstance(origin, dict) else None
        if saved_name != name:
            found = f"ampkit.optim.{saved_name}" if isinstance(saved_name, str) else "a non-ampkit optimizer"
            hint = ""
            if origin is None and isinstance(state_dict.get("state"), dict) and any(
                    isinstance(key, str) for key in state_dict["state"]):
                # Parameter names as keys: it went through torch.distributed.checkpoint's helpers.
                hint = (" (or a torch.distributed.checkpoint dict made with flatten_optimizer_state_dict=True, "
                        "which drops the origin that ampkit.optim writes into each group: use the default, False)")
            raise ValueError(f"{where}: the state_dict comes from {found}{hint}, expected one from "
                             f"ampkit.optim.{name}")
        unexpected = sorted(map(repr, state_dict.keys() - {"state", "param_groups", "ampkit"}))
        unexpected += sorted(f"'ampkit'[{key!r}]" for key in origin.keys() - {"optimizer", "master_weights"})
        if unexpected:
            raise ValueError(f"{where}: the state_dict has unexpected entries {', '.join(unexpected)}")
        if not isinstance(origin.get("master_weights"), bool):
            raise TypeError(f"{where}: state_dict['ampkit']['master_weights'] must be a bool, got "
                            f"{type(origin.get('master_weights')).__name__}")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)):
            raise TypeError(f"{where}: state_dict['param_groups'] must be a list, got {type(saved_groups).__name__}")
        if not isinstance(saved_state, dict):
            raise TypeError(f"{where}: state_dict['state'] must be a dict, got {type(saved_state).__name__}")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{where}: the state_dict has {len(saved_groups)} parameter "
                             f"groups, this optimizer has {len(self.param_groups)}")
        id_to_param: dict[int, tuple[torch.Tensor, str]] = {}
        for group_index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            self._check_saved_group(saved, group, ("params", *self.defaults), group_index, where)
            for index, (saved_id, param) in enumerate(zip(saved["params"], group["params"])):
                if saved_id in id_to_param:
                    raise ValueError(f"{where}: param id {saved_id} appears twice in the state_dict's param_groups")
                id_to_param[saved_id] = (param, f"params[{index}] of group {group_index}")
        updates: list[tuple[torch.Tensor, torch.Tensor]] = []
        for saved_id, saved_param_state in saved_state.items():
            if self._is_param_id(saved_id) and saved_id in id_to_param:
                param, _ = id_to_param[saved_id]
            else:
                raise ValueError(f"{where}: state for param id {saved_id!r}, which no parameter group holds")
            state = self.state[param]
            if not isinstance(saved_param_state, dict):
                raise TypeError(f"{where}: the state of param id {saved_id} must be a dict, got "
                                f"{type(saved_param_state).__name__}")
            if set(saved_param_state.keys()) != set(state.keys()):
                raise ValueError(f"{where}: param id {saved_id} has state "
                                 f"{sorted(map(str, saved_param_state.keys()))} in the state_dict but "
                                 f"{sorted(state.keys())} here "
                                 "(a different optimizer configuration, master_weights or parameter dtype)")
            for key, value in saved_param_state.items():
                self._check_saved_state(key, value, state[key], f"state '{key}' of param id {saved_id}", where)
                updates.append((state[key], value))
        unsaved = [label for saved_id, (param, label) in id_to_param.items() if saved_id not in saved_state
                   and self.state[param]]
        if unsaved:
            raise ValueError(f"{where}: the state_dict has no state for {', '.join(unsaved[:3])}"
                             f"{' and more' if len(unsaved) > 3 else ''}; a state_dict of this optimizer holds "
                             "every parameter's")
        new_groups = []
        for group_index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            merged = dict(group)
            merged.update({k: v for k, v in saved.items() if k != "params"})
            self._check_group(merged, where=f" of group {group_index}", label=f"{name}.load_state_dict")
            self._check_saved_lr(merged["lr"], group_index, where)
            new_groups.append(merged)
        with torch.no_grad():
            for target, value in updates:
                target.copy_(value)
        for group, merged in zip(self.param_groups, new_groups):
            group.update(merged)

    @staticmethod
    def _with_origin_from_groups(state_dict: dict[str, Any]) -> dict[str, Any]:
        """The state_dict with the groups' copies of the origin taken out (into a new dict and new
        groups: the caller's stays as it was) and, where the top-level entry is missing (a dict that
        went through torch.distributed.checkpoint), the top-level entry rebuilt from them."""
        groups = state_dict.get("param_groups")
        if not isinstance(groups, (list, tuple)) or not any(
                isinstance(g, dict) and _GROUP_ORIGIN_KEY in g for g in groups):
            return state_dict
        origins = [g.get(_GROUP_ORIGIN_KEY) if isinstance(g, dict) else None for g in groups]
        result = dict(state_dict)
        result["param_groups"] = [{k: v for k, v in g.items() if k != _GROUP_ORIGIN_KEY} if isinstance(g, dict) else g
                                  for g in groups]
        if "ampkit" not in result:
            # Every group must carry the same origin; anything else is left for the checks to refuse.
            result["ampkit"] = origins[0] if all(o == origins[0] for o in origins) else None
        return result

    @staticmethod
    def _is_param_id(value: Any) -> bool:
        """An int (Optimizer.state_dict) or a parameter's name (torch.distributed.checkpoint's dicts)."""
        return isinstance(value, (int, str)) and not isinstance(value, bool)

    @staticmethod
    def _is_plain_data(value: Any, depth: int = 0) -> bool:
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes, torch.Tensor)):
            return True
        if depth < 8 and isinstance(value, (list, tuple)):
            return all(_MasterWeightOptimizer._is_plain_data(item, depth + 1) for item in value)
        if depth < 8 and isinstance(value, dict):
            return all(_MasterWeightOptimizer._is_plain_data(item, depth + 1)
                       for pair in value.items() for item in pair)
        return False

    @staticmethod
    def _check_saved_group(saved: Any, group: dict, required: tuple[str, ...], group_index: int, where: str) -> None:
        """A saved parameter group: a dict with the `required` keys (the hyper-parameters and
        "params", as many integer param ids as `group` has). Extra keys, such as an LR scheduler's
        initial_lr, are kept, as torch keeps them."""
        if not isinstance(saved, dict):
            raise TypeError(f"{where}: group {group_index} of the state_dict must be a dict, got "
                            f"{type(saved).__name__}")
        missing = [key for key in required if key not in saved]
        if missing:
            raise ValueError(f"{where}: group {group_index} of the state_dict is missing {missing}")
        non_text = [key for key in saved if not isinstance(key, str)]
        if non_text:
            raise TypeError(f"{where}: group {group_index} of the state_dict has non-string keys {non_text!r}")
        for key, value in saved.items():
            if key != "params" and not _MasterWeightOptimizer._is_plain_data(value):
                # Kept in the group, it would be pickled into the next checkpoint, which safe loading
                # (torch.load(weights_only=True)) would then refuse.
                raise TypeError(f"{where}: {key!r} of group {group_index} of the state_dict must be plain data "
                                f"(numbers, strings, tensors and lists/dicts of them), got {type(value).__name__}")
            if isinstance(group.get(key), bool) and not isinstance(value, bool):
                # nesterov, maximize: a flag stays a flag (a string "no" would be true).
                raise TypeError(f"{where}: {key!r} of group {group_index} of the state_dict must be a bool, got "
                                f"{type(value).__name__}")
        ids = saved["params"]
        if not isinstance(ids, (list, tuple)) or not all(_MasterWeightOptimizer._is_param_id(i) for i in ids):
            raise TypeError(f"{where}: 'params' of group {group_index} of the state_dict must be a list of int "
                            f"param ids (or parameter names), got {ids!r:.200}")
        if len(group["params"]) != len(ids):
            raise ValueError(f"{where}: group {group_index} of the state_dict has "
                             f"{len(ids)} params, this optimizer's has {len(group['params'])}")

    @staticmethod
    def _check_saved_state(key: str, value: Any, current: torch.Tensor, label: str, where: str) -> None:
        """One saved state tensor against the one it replaces: same shape and dtype (float32; float64
        for a float64 parameter's state), real data, finite values; the step counter a whole number
        >= 0, exp_avg_sq and max_exp_avg_sq >= 0."""
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}: {label} must be a tensor, got {type(value).__name__}")
        if value.shape != current.shape:
            raise ValueError(f"{where}: {label} has shape {tuple(value.shape)} in the state_dict, but the parameter "
                             f"needs {tuple(current.shape)} (a model of another shape?)")
        if value.dtype != current.dtype:
            raise TypeError(f"{where}: {label} must be a {current.dtype} tensor, got {value.dtype}")
        if value.layout != torch.strided or value.device.type == "meta":
            raise TypeError(f"{where}: {label} must be a dense tensor with data, got layout {value.layout} on "
                            f"{value.device}")
        # Loading may read values on the host; stepping never does. A non-finite or negative value
        # here would turn the parameter into inf/NaN on the next step.
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: {label} holds inf or NaN")
        if key == "step" and not bool(((value >= 0) & (value == value.floor())).all()):
            raise ValueError(f"{where}: {label} must be a whole number >= 0, got {value.tolist()}")
        if key in ("exp_avg_sq", "max_exp_avg_sq") and not bool((value >= 0).all()):
            raise ValueError(f"{where}: {label} must be >= 0 (a running mean of squares), got a negative value")

    @staticmethod
    def _check_saved_lr(lr: Any, group_index: int, where: str) -> None:
        """A tensor lr (whose value _check_group does not read) is read here: loading may sync."""
        if isinstance(lr, torch.Tensor) and lr.device.type != "meta":
            value = float(lr.detach().reshape(()).to("cpu"))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{where}: lr of group {group_index} must be a finite number >= 0, got {value}")

class SGD(_MasterWeightOptimizer):
    """torch.optim.SGD's update (momentum, dampening, nesterov, weight_decay, maximize) on FP32 masters."""

    def __init__(self, params: Iterable, lr: float | torch.Tensor = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, master_weights: bool = True, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None, capturable: bool = False) -> None:
        _check_torch_keywords("SGD", foreach, fused, capturable, differentiable)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize)
        self._check_group(defaults)
        super().__init__(params, defaults, master_weights)

    def _check_group(self, group: dict, where: str = "", label: str | None = None) -> None:
        label = label or "SGD"
        lr = _host_number("lr", group["lr"], optimizer=label, where=where, tensor_ok=True)
        momentum = _host_number("momentum", group["momentum"], optimizer=label, where=where)
        weight_decay = _host_number("weight_decay", group["weight_decay"], optimizer=label, where=where)
        dampening = _host_number("dampening", group["dampening"], optimizer=label, where=where)
        _check_flag("nesterov", group["nesterov"], optimizer=label, where=where)
        _check_flag("maximize", group["maximize"], optimizer=label, where=where)
        if not torch.compiler.is_compiling():  # see _values_checked_by_the_op
            _native.check_sgd_hyperparameters(f"ampkit.optim.{label}", where, lr, momentum, dampening, weight_decay,
                                          bool(group["nesterov"]))

    def _state_keys_for(self, group: dict) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _launch(self, group, params, masters, grads, states, scalars, write_back_grads) -> None:
        lr, inv_scale, clip, found_inf = scalars
        buffers = []
        if group["momentum"] != 0:
            for state, param in zip(states, params):
                if "momentum_buffer" not in state:  # momentum switched on after the state was made
                    state["momentum_buffer"] = _state_like(param, _state_dtype(param))
            buffers = [s["momentum_buffer"] for s in states]
        torch.ops.ampkit.master_sgd_step_(params, masters, grads, buffers, [s["step"] for s in states], lr, inv_scale,
                                          clip, found_inf, float(group["momentum"]), float(group["dampening"]),
                                          float(group["weight_decay"]), bool(group["nesterov"]),
                                          bool(group["maximize"]), write_back_grads)


class Adam(_MasterWeightOptimizer):
    """torch.optim.Adam's update (L2 weight decay added to the gradient) on FP32 masters; with
    ``amsgrad=True`` torch's AMSGrad variant (state "max_exp_avg_sq", the running maximum of
    exp_avg_sq, is the denominator's second moment)."""

    _state_keys = ("exp_avg", "exp_avg_sq")
    _decoupled_weight_decay = False

    def __init__(self, params: Iterable, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 master_weights: bool = True, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        _check_torch_keywords(type(self).__name__, foreach, fused, capturable, differentiable)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
        self._check_group(defaults)
        super().__init__(params, defaults, master_weights)

    def _check_group(self, group: dict, where: str = "", label: str | None = None) -> None:
        label = label or type(self).__name__
        lr = _host_number("lr", group["lr"], optimizer=label, where=where, tensor_ok=True)
        betas = group["betas"]
        if isinstance(betas, torch.Tensor):
            raise _host_value_error(f"ampkit.optim.{label}: betas{where}", "a pair of Python floats", betas)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"ampkit.optim.{label}: betas{where} must be a pair of floats, got {betas!r}")
        beta1 = _host_number("betas[0]", betas[0], optimizer=label, where=where)
        beta2 = _host_number("betas[1]", betas[1], optimizer=label, where=where)
        eps = _host_number("eps", group["eps"], optimizer=label, where=where)
        weight_decay = _host_number("weight_decay", group["weight_decay"], optimizer=label, where=where)
        _check_flag("maximize", group["maximize"], optimizer=label, where=where)
        _check_flag("amsgrad", group["amsgrad"], optimizer=label, where=where)
        if not torch.compiler.is_compiling():  # see _values_checked_by_the_op
            _native.check_adam_hyperparameters(f"ampkit.optim.{label}", where, lr, beta1, beta2, eps, weight_decay)

    def _state_keys_for(self, group: dict) -> tuple[str, ...]:
        return self._state_keys + (("max_exp_avg_sq",) if group["amsgrad"] else ())

    def _launch(self, group, params, masters, grads, states, scalars, write_back_grads) -> None:
        lr, inv_scale, clip, found_inf = scalars
        beta1, beta2 = group["betas"]
        max_exp_avg_sqs = []  # empty: plain Adam
        if group["amsgrad"]:
            for state in states:
                if "max_exp_avg_sq" not in state:  # amsgrad switched on after the state was made
                    state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
            max_exp_avg_sqs = [s["max_exp_avg_sq"] for s in states]
        torch.ops.ampkit.master_adam_step_(params, masters, grads, [s["exp_avg"] for s in states],
                                           [s["exp_avg_sq"] for s in states], max_exp_avg_sqs,
                                           [s["step"] for s in states], lr, inv_scale, clip, found_inf, float(beta1),
                                           float(beta2), float(group["eps"]), float(group["weight_decay"]),
                                           self._decoupled_weight_decay, bool(group["maximize"]), write_back_grads)


class AdamW(Adam):
    """torch.optim.AdamW's update (decoupled weight decay, default 1e-2) on FP32 masters."""

    _decoupled_weight_decay = True

    def __init__(self, params: Iterable, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 master_weights: bool = True, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, master_weights=master_weights, foreach=foreach, capturable=capturable,
                         differentiable=differentiable, fused=fused)


__all__ = ["SGD", "Adam", "AdamW", "to_low_precision", "DEFAULT_KEEP_FP32", "SUPPORTED_DTYPES"]
