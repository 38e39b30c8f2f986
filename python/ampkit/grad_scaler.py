"""Dynamic loss scaling: ``ampkit.GradScaler``, a drop-in replacement for ``torch.amp.GradScaler``.

Same constructor arguments (plus ``hysteresis``, ``min_scale``, ``max_scale``), same methods, same
per-optimizer state machine and the same arithmetic, so a training script that uses torch's
scaler gets the same scale history and the same parameters after swapping the class. The numeric
work is two ops: ``torch.ops.ampkit.unscale_and_check_`` (one pass over the grads: unscale, inf/NaN
check, optionally the global L2 norm; fp32, fp16, bf16 and fp64 grads mixed freely, fp64 ones in
double as torch's scaler does) and ``torch.ops.ampkit.update_scale_`` (the scale update, on the scale's device).

Host synchronisation
--------------------
Nothing is read back to the host except where the API says so:

* ``step(optimizer)`` with an optimizer that consumes ``found_inf`` on the device (one with
  ``_step_supports_amp_scaling = True``: ampkit's optimizers, torch's ``Adam/AdamW/SGD(fused=True)``)
  never syncs: the scaler sets ``optimizer.grad_scale`` and ``optimizer.found_inf`` and the
  optimizer unscales and skips on the device.
* ``step(optimizer)`` with any other optimizer falls back to torch's behaviour: one ``.item()`` on
  ``found_inf`` to decide on the host whether to call ``optimizer.step()``.
* ``get_scale()``, ``state_dict()`` and pickling read the scale (as torch's do).

Whether a step was skipped is observable without a sync: ``found_inf`` (the last iteration's
flag), ``skipped_steps`` and ``overflow_events`` are tensors on the scale's device.

Differences from torch's scaler (all opt-in or strictly more permissive):

* ``hysteresis=N`` backs off only after N consecutive overflowing iterations (DeepSpeed/Megatron
  style); ``min_scale``/``max_scale`` bound the scale. The defaults reproduce torch exactly.
* fp16 gradients may be unscaled (torch refuses; ampkit's kernel multiplies in fp32 and rounds
  once, and ampkit's optimizers keep fp32 master weights).
* ``unscale_(optimizer, compute_norm=True)`` returns the global L2 norm of the unscaled grads
  from the same pass, for ``torch.nn.utils.clip_grads_with_norm_``.
* closures are rejected whether passed by keyword or position; bad arguments raise
  ``ValueError``/``TypeError`` (torch raises ``AssertionError`` for some).
* the scale never becomes 0: where torch's would underflow after ~150 consecutive back-offs,
  ampkit's keeps the smallest positive float32.
"""
from __future__ import annotations

import numbers
import warnings
from collections import abc, defaultdict
from enum import Enum
from typing import Any, Iterable, Mapping, Optional, Union

import torch

from . import _native
from .multi_tensor import enable_dtensor_ops_for

__all__ = ["GradScaler", "OptState"]

_FLT_MAX = 3.4028234663852886e38
_INT32_MAX = 2**31 - 1


class OptState(Enum):
    READY = 0
    UNSCALED = 1
    STEPPED = 2


# Top-level (not a lambda) so that a GradScaler stays picklable.
def _refresh_per_optimizer_state() -> dict[str, Any]:
    return {"stage": OptState.READY, "found_inf_per_device": {}}


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int64(name: str, value: int) -> int:
    """A Python int crosses into C++ as an int64; a larger one could not be passed at all."""
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"GradScaler: {name} must be an int in [1, 2**31-1], got {value}")
    return int(value)


def _check_config(init_scale, growth_factor, backoff_factor, growth_interval, hysteresis, min_scale, max_scale):
    """Raises TypeError/ValueError naming the argument, the expectation and the value. The types are
    checked here (what crosses into C++); the values by the C++ contract the C++ GradScaler and the
    update_scale_ op use too (ampkit/contracts.h), so each rule has one home."""
    for name, value in (("init_scale", init_scale), ("growth_factor", growth_factor),
                        ("backoff_factor", backoff_factor)):
        if not _is_real(value):
            raise TypeError(f"GradScaler: {name} must be a float, got {type(value).__name__}")
    for name, value in (("growth_interval", growth_interval), ("hysteresis", hysteresis)):
        if not _is_int(value):
            raise TypeError(f"GradScaler: {name} must be an int, got {type(value).__name__}")
    for name, value in (("min_scale", min_scale), ("max_scale", max_scale)):
        if value is not None and not _is_real(value):
            raise TypeError(f"GradScaler: {name} must be a float or None, got {type(value).__name__}")
    _native.check_grad_scaler_options(
        "GradScaler", "init_scale", float(init_scale), float(growth_factor), float(backoff_factor),
        _int64("growth_interval", growth_interval), _int64("hysteresis", hysteresis),
        None if min_scale is None else float(min_scale), None if max_scale is None else float(max_scale))


class GradScaler:
    """Dynamic loss scaling with the interface and semantics of ``torch.amp.GradScaler``.

    Args:
        device: "cuda" or "cpu", as for torch's scaler ("cuda" without a GPU warns and disables).
        init_scale, growth_factor, backoff_factor, growth_interval, enabled: as torch's.
        hysteresis: back off only after this many consecutive overflowing iterations (1: every
            overflow, torch's behaviour). Clean iterations reset the count.
        min_scale, max_scale: bounds for the scale (None: unbounded).
        process_group: a torch.distributed process group over which the inf/NaN check is reduced
            (MAX) before every step, so all ranks skip the same steps and keep the same scale.
            Needed when each rank holds part of the gradients as plain tensors (hand-made
            ZeRO-style sharding). Not needed with DDP (the gradients are all-reduced) nor with
            FSDP2 or tensor parallelism: DTensor gradients carry their mesh, and the check and the
            norm are reduced over it (ampkit.distributed). The reduction is an all_reduce on the
            device: no host sync.

    Example (identical to torch's)::

        scaler = ampkit.GradScaler("cuda")
        for inputs, target in data:
            optimizer.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = loss_fn(model(inputs), target)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    """

    def __init__(
        self,
        device: str = "cuda",
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
        hysteresis: int = 1,
        min_scale: Optional[float] = None,
        max_scale: Optional[float] = None,
        process_group: Any = None,
    ) -> None:
        if isinstance(device, torch.device):
            device = device.type
        if device not in ("cuda", "cpu"):
            raise ValueError(f"GradScaler: device must be 'cuda' or 'cpu', got {device!r}")
        _check_config(init_scale, growth_factor, backoff_factor, growth_interval, hysteresis, min_scale, max_scale)
        if process_group is not None and not isinstance(process_group, torch.distributed.ProcessGroup):
            raise TypeError(f"GradScaler: process_group must be a torch.distributed.ProcessGroup or None, "
                            f"got {type(process_group).__name__}")
        if not isinstance(enabled, bool):
            raise TypeError(f"GradScaler: enabled must be a bool, got {type(enabled).__name__}")
        self._process_group = process_group
        self._device = device
        self._enabled = enabled
        if self._device == "cuda" and self._enabled and not torch.cuda.is_available():
            warnings.warn("ampkit.GradScaler is enabled, but CUDA is not available.  Disabling.", stacklevel=2)
            self._enabled = False
        self._init_scale = float(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._hysteresis = int(hysteresis)
        self._min_scale = None if min_scale is None else float(min_scale)
        self._max_scale = None if max_scale is None else float(max_scale)
        # Device tensors, created on the device of the first scaled output (as torch does).
        self._scale: Optional[torch.Tensor] = None
        self._growth_tracker: Optional[torch.Tensor] = None
        self._hysteresis_tracker: Optional[torch.Tensor] = None
        self._skipped_steps: Optional[torch.Tensor] = None
        self._overflow_events: Optional[torch.Tensor] = None
        self._last_found_inf: Optional[torch.Tensor] = None
        # Host copies used to (re)create them lazily: after construction, load_state_dict, unpickling.
        self._init_growth_tracker = 0
        self._init_hysteresis_tracker = 0
        self._init_skipped_steps = 0
        self._init_overflow_events = 0
        self._per_optimizer_states: dict[int, dict[str, Any]] = defaultdict(_refresh_per_optimizer_state)

    # ---- lazily created device state ----

    def _lazy_init(self, device: torch.device) -> None:
        self._scale = torch.full((), self._init_scale, dtype=torch.float32, device=device)
        self._growth_tracker = torch.full((), self._init_growth_tracker, dtype=torch.int32, device=device)
        self._hysteresis_tracker = torch.full((), self._init_hysteresis_tracker, dtype=torch.int32, device=device)
        self._skipped_steps = torch.full((), self._init_skipped_steps, dtype=torch.int64, device=device)
        self._overflow_events = torch.full((), self._init_overflow_events, dtype=torch.int64, device=device)

    def _require_scale(self, funcname: str) -> torch.Tensor:
        if self._scale is None:
            raise RuntimeError(f"Attempted {funcname} but the scale was never initialised. This may indicate your "
                               "script did not use scaler.scale(loss or outputs) earlier in the iteration.")
        return self._scale

    # ---- the training-loop API ----

    def scale(self, outputs: Union[torch.Tensor, Iterable[torch.Tensor]]):
        """Multiplies a tensor (or an iterable of tensors) by the scale; identity when disabled."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, torch.Tensor):
            if self._scale is None:
                self._lazy_init(outputs.device)
            return outputs * self._scale.to(device=outputs.device, non_blocking=True)

        per_device: dict[torch.device, torch.Tensor] = {}

        def apply_scale(value):
            if isinstance(value, torch.Tensor):
                if self._scale is None:
                    self._lazy_init(value.device)
                if value.device not in per_device:
                    per_device[value.device] = self._scale.to(device=value.device, non_blocking=True)
                return value * per_device[value.device]
            if isinstance(value, abc.Iterable) and not isinstance(value, (str, bytes)):
                scaled = map(apply_scale, value)
                if isinstance(value, (list, tuple)):
                    return type(value)(scaled)
                return scaled
            raise ValueError(f"outputs must be a Tensor or an iterable of Tensors, got {type(value).__name__}")

        return apply_scale(outputs)

    def _unscale_grads_(self, optimizer, inv_scale: torch.Tensor, found_inf: torch.Tensor, compute_norm: bool):
        """One unscale_and_check_ call per device (dtypes may mix). Returns ({device: found_inf}, norm)."""
        per_device_grads: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if not isinstance(param, torch.Tensor):
                        raise TypeError(f"GradScaler: optimizer params must be tensors, got {type(param).__name__}")
                    if param.grad is None:
                        continue
                    if param.grad.is_sparse:
                        # Duplicate indices would be summed later; in fp16 that sum can overflow, so
                        # check the coalesced values (as torch does).
                        if param.grad.dtype is torch.float16:
                            param.grad = param.grad.coalesce()
                        to_unscale = param.grad._values()
                    else:
                        to_unscale = param.grad
                    per_device_grads[to_unscale.device].append(to_unscale)

            found_inf_per_device: dict[torch.device, torch.Tensor] = {}
            norms = []
            for grads in per_device_grads.values():
                # DTensor gradients (FSDP2, tensor parallelism): the op reduces found_inf (MAX) and
                # the norm's squares (SUM) over their mesh, so no process group is needed.
                enable_dtensor_ops_for(grads)
            for device, grads in per_device_grads.items():
                device_found_inf = torch.zeros_like(found_inf, device=device)
                device_inv_scale = inv_scale.to(device=device, non_blocking=True)
                norm = torch.zeros((), dtype=torch.float32, device=device) if compute_norm else None
                torch.ops.ampkit.unscale_and_check_(grads, device_found_inf, device_inv_scale, norm)
                found_inf_per_device[device] = device_found_inf
                if norm is not None:
                    norms.append(norm)
            if self._process_group is not None:
                # One flag per rank, reduced with MAX: every rank sees an overflow anywhere, and every
                # rank joins the collective, even one that holds no gradient this iteration.
                combined = torch.zeros_like(found_inf)
                for device_found_inf in found_inf_per_device.values():
                    combined += device_found_inf.to(combined.device, non_blocking=True)
                torch.distributed.all_reduce(combined, op=torch.distributed.ReduceOp.MAX, group=self._process_group)
                found_inf_per_device = {combined.device: combined}
        total_norm = None
        if compute_norm:
            if not norms:
                total_norm = torch.zeros((), dtype=torch.float32, device=found_inf.device)
            elif len(norms) == 1:
                total_norm = norms[0].to(found_inf.device, non_blocking=True)
            else:
                total_norm = torch.linalg.vector_norm(torch.stack([n.to(found_inf.device) for n in norms]))
        return found_inf_per_device, total_norm

    def unscale_(self, optimizer, compute_norm: bool = False) -> Optional[torch.Tensor]:
        """Divides the optimizer's gradients by the scale, in place, checking them for inf/NaN.

        Optional (``step`` unscales if this was not called); at most once per optimizer per
        iteration, before ``step``. With ``compute_norm=True`` returns the global L2 norm of the
        unscaled gradients (a float32 tensor on the scale's device, computed in the same pass),
        ready for ``torch.nn.utils.clip_grads_with_norm_``. Never syncs with the host.
        """
        if not self._enabled:
            return None
        scale = self._require_scale("unscale_")
        optimizer_state = self._per_optimizer_states[id(optimizer)]
        if optimizer_state["stage"] is OptState.UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if optimizer_state["stage"] is OptState.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        # torch's rule (reciprocal in fp64, rounded once), so results match torch bitwise.
        inv_scale = torch.ops.ampkit.reciprocal_scale(scale)
        found_inf = torch.zeros((), dtype=torch.float32, device=scale.device)
        optimizer_state["found_inf_per_device"], norm = self._unscale_grads_(optimizer, inv_scale, found_inf,
                                                                             compute_norm)
        optimizer_state["stage"] = OptState.UNSCALED
        return norm

    def _check_inf_per_device(self, optimizer) -> dict:
        """Checks the (still scaled) grads without changing them: inv_scale 1 makes the op read-only."""
        scale = self._require_scale("_check_inf_per_device")
        unit = torch.ones((), dtype=torch.float32, device=scale.device)
        found_inf = torch.zeros((), dtype=torch.float32, device=scale.device)
        found, _ = self._unscale_grads_(optimizer, unit, found_inf, False)
        self._per_optimizer_states[id(optimizer)]["found_inf_per_device"] = found
        return found

    def _found_inf_per_device(self, optimizer) -> dict:
        return self._per_optimizer_states[id(optimizer)]["found_inf_per_device"]

    def _combined_found_inf(self, optimizer_state, device: torch.device) -> torch.Tensor:
        found = [f.to(device, non_blocking=True) for f in optimizer_state["found_inf_per_device"].values()]
        if not found:
            # Nothing was unscaled, so the optimizer may go back to the start of its iteration.
            optimizer_state["stage"] = OptState.READY
            raise RuntimeError("step(): no inf checks were recorded for this optimizer: none of its parameters has a "
                               ".grad (did backward() run on the scaled loss before step()?)")
        combined = found[0]
        for other in found[1:]:
            combined = combined + other
        return combined

    def step(self, optimizer, *args: Any, **kwargs: Any):
        """Unscales (unless ``unscale_`` ran) and calls ``optimizer.step(*args, **kwargs)`` unless
        the gradients hold inf/NaN. Returns what ``optimizer.step`` returns (None when skipped).

        No host sync when the optimizer has ``_step_supports_amp_scaling`` (ampkit's optimizers,
        torch's fused Adam/AdamW/SGD): it receives ``grad_scale`` and ``found_inf`` and skips on the
        device. Any other optimizer costs one ``.item()`` (torch's behaviour). Closures are rejected.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"GradScaler.step: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs or (args and callable(args[0])):
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        scale = self._require_scale("step")
        optimizer_state = self._per_optimizer_states[id(optimizer)]
        if optimizer_state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")

        if getattr(optimizer, "_step_supports_amp_scaling", False):
            # The optimizer unscales (when grad_scale is set) and skips on the device.
            if optimizer_state["stage"] is OptState.READY:
                self._check_inf_per_device(optimizer)
            found_inf = self._combined_found_inf(optimizer_state, scale.device)
            optimizer.grad_scale = (getattr(optimizer, "grad_scale", None)
                                    if optimizer_state["stage"] is OptState.UNSCALED
                                    else scale * getattr(optimizer, "grad_scale", 1))
            optimizer.found_inf = found_inf
            try:
                retval = optimizer.step(*args, **kwargs)
            finally:
                del optimizer.grad_scale
                del optimizer.found_inf
            optimizer_state["stage"] = OptState.STEPPED
            self._skipped_steps += (found_inf > 0).to(torch.int64)
            return retval

        if optimizer_state["stage"] is OptState.READY:
            self.unscale_(optimizer)
        found_inf = self._combined_found_inf(optimizer_state, scale.device)
        retval = None
        # The one host sync of the fallback path: a plain optimizer cannot skip on its own.
        if found_inf.item() == 0:
            retval = optimizer.step(*args, **kwargs)
        else:
            self._skipped_steps += 1
        optimizer_state["stage"] = OptState.STEPPED
        return retval

    def update(self, new_scale: Optional[Union[float, torch.Tensor]] = None) -> None:
        """Updates the scale from this iteration's inf checks (or sets ``new_scale``), on the device."""
        if not self._enabled:
            return
        scale = self._require_scale("update")
        found_infs = [found_inf.to(device=scale.device, non_blocking=True)
                      for state in self._per_optimizer_states.values()
                      for found_inf in state["found_inf_per_device"].values()]
        if new_scale is not None:
            if isinstance(new_scale, torch.Tensor):
                if new_scale.device.type != scale.device.type or new_scale.numel() != 1 or new_scale.requires_grad:
                    raise ValueError("update(): new_scale must be a float or a one-element tensor on the scaler's "
                                     f"device ({scale.device}) with requires_grad=False, got shape "
                                     f"{tuple(new_scale.shape)} on {new_scale.device}, requires_grad="
                                     f"{new_scale.requires_grad}")
                scale.copy_(new_scale.reshape(()))
            elif _is_real(new_scale):
                _native.check_scale_value("update()", "new_scale", float(new_scale))
                scale.fill_(float(new_scale))
            else:
                raise TypeError(f"update(): new_scale must be a float or a tensor, got {type(new_scale).__name__}")
        else:
            if not found_infs:
                raise RuntimeError("update(): no inf checks were recorded prior to update(): call scaler.step("
                                   "optimizer) (or scaler.unscale_(optimizer)) in this iteration first")
            combined = found_infs[0]
            for other in found_infs[1:]:
                combined = combined + other
            torch.ops.ampkit.update_scale_(
                scale, self._growth_tracker, self._hysteresis_tracker, combined, self._growth_factor,
                self._backoff_factor, self._growth_interval, self._hysteresis,
                0.0 if self._min_scale is None else self._min_scale,
                _FLT_MAX if self._max_scale is None else self._max_scale)
            self._overflow_events += (combined > 0).to(torch.int64)
            self._last_found_inf = combined
        self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)

    # ---- observing the scaler without a sync ----

    @property
    def found_inf(self) -> Optional[torch.Tensor]:
        """Float32 tensor on the scale's device, > 0 when the last update()'s iteration found inf/NaN
        (its optimizer steps were skipped); None before the first update()."""
        return self._last_found_inf

    @property
    def skipped_steps(self) -> torch.Tensor:
        """Int64 tensor on the scale's device: optimizer steps skipped so far (one per optimizer)."""
        if self._skipped_steps is None:
            return torch.tensor(self._init_skipped_steps, dtype=torch.int64)
        return self._skipped_steps

    @property
    def overflow_events(self) -> torch.Tensor:
        """Int64 tensor on the scale's device: iterations whose gradients held inf/NaN."""
        if self._overflow_events is None:
            return torch.tensor(self._init_overflow_events, dtype=torch.int64)
        return self._overflow_events

    def get_scale_async(self) -> Optional[torch.Tensor]:
        """The scale as a tensor on its device, without a sync (None while disabled or unused)."""
        return self._scale if self._enabled else None

    # ---- torch.amp.GradScaler's accessors ----

    def get_scale(self) -> float:
        """The current scale as a Python float (1.0 when disabled). Syncs with the device."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else float(self._scale.item())

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        _check_config(1.0, new_factor, 0.5, 1, 1, None, None)
        self._growth_factor = float(new_factor)

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        _check_config(1.0, 2.0, new_factor, 1, 1, None, None)
        self._backoff_factor = float(new_factor)

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        _check_config(1.0, 2.0, 0.5, new_interval, 1, None, None)
        self._growth_interval = int(new_interval)

    def get_hysteresis(self) -> int:
        return self._hysteresis

    def _get_growth_tracker(self) -> int:
        if not self._enabled:
            return 0
        return self._init_growth_tracker if self._growth_tracker is None else int(self._growth_tracker.item())

    def _get_hysteresis_tracker(self) -> int:
        if not self._enabled:
            return 0
        return self._init_hysteresis_tracker if self._hysteresis_tracker is None else int(
            self._hysteresis_tracker.item())

    def is_enabled(self) -> bool:
        return self._enabled

    # ---- checkpoints ----

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state as Python values (torch's five keys plus ampkit's); {} when disabled.
        Syncs with the device. Loadable by torch.amp.GradScaler too (it reads its own keys)."""
        if not self._enabled:
            return {}
        return {
            "scale": self.get_scale(),
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": self._get_growth_tracker(),
            "hysteresis": self._hysteresis,
            "_hysteresis_tracker": self._get_hysteresis_tracker(),
            "min_scale": self._min_scale,
            "max_scale": self._max_scale,
            "skipped_steps": int(self.skipped_steps.item()),
            "overflow_events": int(self.overflow_events.item()),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Loads a state_dict() of this class or of torch.amp.GradScaler. Everything is validated
        before anything changes; a malformed dict raises TypeError/ValueError naming the entry
        (an empty one raises an error that is both a ValueError and torch's RuntimeError)."""
        if not self._enabled:
            return
        if not isinstance(state_dict, abc.Mapping):
            raise TypeError(f"load_state_dict: state_dict must be a dict, got {type(state_dict).__name__}")
        if len(state_dict) == 0:
            raise _EmptyStateDictError("The source state dict is empty, possibly because it was saved from a "
                                       "disabled instance of GradScaler.")
        unknown = [key for key in state_dict if key not in _STATE_DICT_DEFAULTS]
        if unknown:
            # A key this class does not write is a damaged or foreign dict, not something to ignore.
            raise ValueError(f"load_state_dict: state_dict has unexpected entries {', '.join(sorted(map(repr, unknown)))}; "
                             f"expected the keys written by GradScaler.state_dict(): {list(_STATE_DICT_DEFAULTS)}")
        missing = [key for key in _STATE_DICT_REQUIRED if key not in state_dict]
        if missing:
            raise ValueError(f"load_state_dict: state_dict is missing {missing}; expected the keys written by "
                             f"GradScaler.state_dict(): {list(_STATE_DICT_REQUIRED)} (+ ampkit's optional extras)")
        values = {key: default for key, default in _STATE_DICT_DEFAULTS.items() if key not in _STATE_DICT_REQUIRED}
        values.update(state_dict)
        for key in ("_growth_tracker", "_hysteresis_tracker", "skipped_steps", "overflow_events"):
            if not _is_int(values[key]):
                raise TypeError(f"load_state_dict: state_dict[{key!r}] must be an int, got "
                                f"{type(values[key]).__name__}")
            if values[key] < 0:
                raise ValueError(f"load_state_dict: state_dict[{key!r}] must be >= 0, got {values[key]}")
        for key in ("_growth_tracker", "_hysteresis_tracker"):
            if values[key] > _INT32_MAX:
                raise ValueError(f"load_state_dict: state_dict[{key!r}] must fit int32, got {values[key]}")
        for key in ("skipped_steps", "overflow_events"):
            if values[key] > _INT64_MAX:
                raise ValueError(f"load_state_dict: state_dict[{key!r}] must fit int64, got {values[key]}")
        try:
            _check_config(values["scale"], values["growth_factor"], values["backoff_factor"],
                          values["growth_interval"], values["hysteresis"], values["min_scale"], values["max_scale"])
        except (TypeError, ValueError) as error:
            message = str(error).replace("GradScaler: init_scale", "GradScaler: scale")
            raise type(error)(f"load_state_dict: invalid state_dict: {message}") from None
        if not _FLT_TRUE_MIN <= values["scale"] <= _FLT_MAX:
            # The scale lives in a float32 tensor: beyond this range it would become inf or 0.
            raise ValueError(f"load_state_dict: state_dict['scale'] must be a float32 value in "
                             f"[{_FLT_TRUE_MIN}, {_FLT_MAX}], got {values['scale']}")

        self._init_scale = float(values["scale"])
        self._growth_factor = float(values["growth_factor"])
        self._backoff_factor = float(values["backoff_factor"])
        self._growth_interval = int(values["growth_interval"])
        self._hysteresis = int(values["hysteresis"])
        self._min_scale = None if values["min_scale"] is None else float(values["min_scale"])
        self._max_scale = None if values["max_scale"] is None else float(values["max_scale"])
        self._init_growth_tracker = int(values["_growth_tracker"])
        self._init_hysteresis_tracker = int(values["_hysteresis_tracker"])
        self._init_skipped_steps = int(values["skipped_steps"])
        self._init_overflow_events = int(values["overflow_events"])
        if self._scale is not None:
            # In place, so tensors handed out earlier (skipped_steps, ...) stay the scaler's own.
            self._scale.fill_(self._init_scale)
            self._growth_tracker.fill_(self._init_growth_tracker)
            self._hysteresis_tracker.fill_(self._init_hysteresis_tracker)
            self._skipped_steps.fill_(self._init_skipped_steps)
            self._overflow_events.fill_(self._init_overflow_events)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._enabled:
            if len(self._per_optimizer_states) != 0:
                raise RuntimeError("A GradScaler instance may only be pickled at the beginning of an iteration, or "
                                   "at the end after scaler.update().")
            # Device tensors travel as Python values and are re-created lazily after unpickling.
            state["_init_scale"] = self.get_scale()
            state["_init_growth_tracker"] = self._get_growth_tracker()
            state["_init_hysteresis_tracker"] = self._get_hysteresis_tracker()
            state["_init_skipped_steps"] = int(self.skipped_steps.item())
            state["_init_overflow_events"] = int(self.overflow_events.item())
            for key in ("_scale", "_growth_tracker", "_hysteresis_tracker", "_skipped_steps", "_overflow_events",
                        "_last_found_inf"):
                state[key] = None
        # A process group belongs to this process: an unpickled scaler has none until it is given one.
        state["_process_group"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_process_group", None)


# ---- checkpoint loading ----

_FLT_TRUE_MIN = 2.0**-149  # the smallest positive float32 (a subnormal)
_INT64_MAX = 2**63 - 1

# What state_dict() writes: torch's five keys (required, so torch's dicts load) and ampkit's
# extras, with the values that reproduce torch's behaviour when they are absent.
_STATE_DICT_REQUIRED = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
_STATE_DICT_DEFAULTS: dict[str, Any] = {
    "scale": None, "growth_factor": None, "backoff_factor": None, "growth_interval": None, "_growth_tracker": None,
    "hysteresis": 1, "_hysteresis_tracker": 0, "min_scale": None, "max_scale": None, "skipped_steps": 0,
    "overflow_events": 0,
}


class _EmptyStateDictError(ValueError, RuntimeError):
    """An empty state_dict: a ValueError like every other refusal, and the RuntimeError torch raises."""
