"""``AmpkitPrecision``: a Lightning precision plugin that trains with ampkit's autocast, loss scaling
and fused optimizer path.

    import lightning as L
    from ampkit.integrations.lightning import AmpkitPrecision

    trainer = L.Trainer(plugins=[AmpkitPrecision("fp16")], gradient_clip_val=1.0)
    trainer.fit(model)

What one optimizer step does (automatic optimization):

1. the closure runs first (forward under ``ampkit.autocast``, loss scaled in ``pre_backward``,
   backward), as in Lightning's own ``MixedPrecision``;
2. with fp16 the gradients are unscaled by ``ampkit.GradScaler.unscale_`` (one pass that also checks
   for inf/NaN and, when clipping by norm, computes the global norm). An optimizer that unscales in
   its own step (``ampkit.optim``, torch's fused optimizers) is not unscaled here unless gradients
   are clipped: its fused step does it, so ``on_before_optimizer_step`` then sees scaled gradients;
3. Lightning's ``on_before_optimizer_step`` and gradient-clipping hooks run. Clipping by norm uses
   the norm from step 2; an ``ampkit.optim`` optimizer gets the clip coefficient as
   ``step(clip_coef=...)`` (applied inside its fused pass), any other optimizer has its gradients
   multiplied (``torch.nn.utils.clip_grads_with_norm_``). Clipping by value clips the unscaled
   gradients (``torch.nn.utils.clip_grad_value_``);
4. ``scaler.step(optimizer)`` (skipped on the device after an overflow for optimizers that support
   it, one host read for the others, exactly as ``ampkit.GradScaler`` documents) and
   ``scaler.update()``.

bf16 needs no loss scaling (fp32's exponent range), like Lightning's ``bf16-mixed``: steps 2 and 4
are plain ``optimizer.step``; clipping works the same way.

The scaler's state is checkpointed by Lightning through ``state_dict()``/``load_state_dict()``.
``skipped_steps``, ``overflow_events`` and ``loss_scale`` are device tensors (no sync);
``get_scale()`` and ``stats()`` read them back when asked.

Importing this module needs the ``lightning`` package (``pip install lightning``).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Generator, Optional, Union

import torch
from torch import Tensor

try:
    import lightning.pytorch as pl
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.utilities import GradClipAlgorithmType
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("ampkit.integrations.lightning needs the 'lightning' package: pip install lightning") from error

from .. import optim as ampkit_optim
from ..autocasting import Policy, _device_name, autocast
from ..grad_scaler import GradScaler

__all__ = ["AmpkitPrecision"]

_DTYPE_NAMES = {
    "fp16": torch.float16, "float16": torch.float16, "16-mixed": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
}
# Keras-style policy names: torch's default op lists (or the global policy) in that dtype.
_POLICY_NAMES = {"mixed_float16": torch.float16, "mixed_bfloat16": torch.bfloat16}
# torch.nn.utils.clip_grad_norm_'s rule: coef = min(1, max_norm / (norm + eps)).
_CLIP_EPS = 1e-6


def _resolve_dtype(dtype: Any) -> Optional[torch.dtype]:
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"AmpkitPrecision: dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES:
            raise ValueError(f"AmpkitPrecision: dtype must be one of {sorted(_DTYPE_NAMES)} or torch.float16/"
                             f"torch.bfloat16, got {dtype!r}")
        return _DTYPE_NAMES[dtype.lower()]
    raise TypeError(f"AmpkitPrecision: dtype must be a str ('fp16', 'bf16') or a torch.dtype, "
                    f"got {type(dtype).__name__}")


def _resolve_device(device: Any) -> Optional[str]:
    """'cpu' or 'cuda' (ampkit's autocast devices) by ampkit.autocast's own rule, None for None."""
    if device is None:
        return None
    try:
        return _device_name(device)
    except (TypeError, ValueError) as error:
        raise type(error)(f"AmpkitPrecision: device: {error} (got {device!r})") from None


class AmpkitPrecision(Precision):
    """Mixed precision for ``lightning.pytorch.Trainer`` through ampkit.

    Args:
        dtype: 'fp16' / 'float16' / '16-mixed' / torch.float16, or 'bf16' / 'bfloat16' / 'bf16-mixed' /
            torch.bfloat16. May be omitted when ``policy`` says it.
        policy: an ``ampkit.Policy`` (its op lists decide what autocast casts; its device type must be
            the training device's), or a Keras-style name ('mixed_float16', 'mixed_bfloat16'), or None
            (``ampkit.autocast``'s rule: the global policy for the device if it has this dtype, else
            torch's default lists).
        device: 'cpu' or 'cuda' for autocast; None (default): the device of the model's parameters,
            read when Lightning connects the plugin.
        scaler: an ``ampkit.GradScaler`` for fp16 (e.g. with hysteresis or another init_scale);
            None: a default one (torch's defaults). bf16 takes no scaler.
    """

    def __init__(self, dtype: Union[str, torch.dtype, None] = None, *, policy: Union[Policy, str, None] = None,
                 device: Union[str, torch.device, None] = None, scaler: Optional[GradScaler] = None) -> None:
        resolved = _resolve_dtype(dtype)
        self._device_type = _resolve_device(device)
        if isinstance(policy, str):
            if policy not in _POLICY_NAMES:
                raise ValueError(f"AmpkitPrecision: policy name must be one of {sorted(_POLICY_NAMES)}, got {policy!r} "
                                 "(for fp32 training leave the plugin out)")
            policy_dtype = _POLICY_NAMES[policy]
            self._policy: Optional[Policy] = None
        elif isinstance(policy, Policy):
            policy_dtype = policy.dtype
            self._policy = policy
            if self._device_type is not None and policy.device_type != self._device_type:
                raise ValueError(f"AmpkitPrecision: policy is for device {policy.device_type!r} but device is "
                                 f"{self._device_type!r}")
        elif policy is None:
            policy_dtype = None
            self._policy = None
        else:
            raise TypeError(f"AmpkitPrecision: policy must be an ampkit.Policy, 'mixed_float16', 'mixed_bfloat16' "
                            f"or None, got {type(policy).__name__}")
        if resolved is None and policy_dtype is None:
            raise ValueError("AmpkitPrecision: dtype must be given ('fp16' or 'bf16') unless policy names it, "
                             "got dtype=None and policy=None")
        if resolved is not None and policy_dtype is not None and resolved != policy_dtype:
            raise ValueError(f"AmpkitPrecision: dtype is {resolved} but the policy's dtype is {policy_dtype}")
        self.dtype: torch.dtype = resolved or policy_dtype
        # Lightning reads `precision` for display and size estimates; these are its names for the modes.
        self.precision = "16-mixed" if self.dtype == torch.float16 else "bf16-mixed"

        if scaler is not None and not isinstance(scaler, GradScaler):
            raise TypeError(f"AmpkitPrecision: scaler must be an ampkit.GradScaler or None, got "
                            f"{type(scaler).__module__}.{type(scaler).__name__} (the fused clipping path needs "
                            "ampkit's unscale_(compute_norm=True))")
        if scaler is not None and self.dtype == torch.bfloat16:
            raise ValueError(f"AmpkitPrecision: bf16 takes no scaler (bf16 has fp32's exponent range), got {scaler!r}")
        if scaler is None and self.dtype == torch.float16:
            # The scale's tensors live where the first scaled loss lives; the device named here only
            # decides whether a missing GPU disables the scaler, so an unknown device means "cpu".
            scaler = GradScaler("cuda" if self._device_type == "cuda" else "cpu")
        self.scaler: Optional[GradScaler] = scaler
        # Per optimizer (by id) for the current iteration: the norm from the unscale pass (None when
        # it was unscaled without one) and the clip coefficient waiting for an ampkit optimizer's step.
        self._unscaled: dict[int, Optional[Tensor]] = {}
        self._pending_clip_coef: dict[int, Tensor] = {}

    # ---- description and readouts (device tensors: no host sync) ----

    @property
    def device_type(self) -> Optional[str]:
        """'cpu' or 'cuda' once known (given, or read from the model when Lightning connects)."""
        return self._device_type

    @property
    def policy(self) -> Optional[Policy]:
        return self._policy

    def _scaling(self) -> bool:
        return self.scaler is not None and self.scaler.is_enabled()

    @property
    def loss_scale(self) -> Optional[Tensor]:
        """The current loss scale as a device tensor (None with bf16 or before the first step)."""
        return self.scaler.get_scale_async() if self._scaling() else None

    @property
    def skipped_steps(self) -> Tensor:
        """Int64 tensor: optimizer steps skipped for inf/NaN gradients so far (0 with bf16)."""
        return self.scaler.skipped_steps if self._scaling() else torch.zeros((), dtype=torch.int64)

    @property
    def overflow_events(self) -> Tensor:
        """Int64 tensor: iterations whose gradients held inf/NaN so far (0 with bf16)."""
        return self.scaler.overflow_events if self._scaling() else torch.zeros((), dtype=torch.int64)

    def get_scale(self) -> float:
        """The loss scale as a Python float (1.0 with bf16). Syncs with the device."""
        return self.scaler.get_scale() if self._scaling() else 1.0

    def stats(self) -> dict[str, Any]:
        """{'dtype', 'scale', 'skipped_steps', 'overflow_events'} as Python values. Syncs with the device."""
        return {"dtype": str(self.dtype).replace("torch.", ""), "scale": self.get_scale(),
                "skipped_steps": int(self.skipped_steps.item()), "overflow_events": int(self.overflow_events.item())}

    def __repr__(self) -> str:
        policy = "default lists" if self._policy is None else repr(self._policy)
        return (f"AmpkitPrecision(dtype={self.dtype}, device={self._device_type}, policy={policy}, "
                f"scaler={'on' if self._scaling() else 'off'})")

    # ---- Lightning hooks ----

    def connect(self, model: torch.nn.Module, optimizers: list, lr_schedulers: list) -> tuple:
        parameter = next(model.parameters(), None)
        model_device = None if parameter is None else parameter.device.type
        if self._device_type is None:
            self._device_type = _resolve_device(model_device or "cpu")
        elif model_device is not None and model_device != self._device_type:
            raise ValueError(f"AmpkitPrecision: device is {self._device_type!r} but the model's parameters are on "
                             f"{model_device!r}")
        if self._policy is not None and self._policy.device_type != self._device_type:
            raise ValueError(f"AmpkitPrecision: policy is for device {self._policy.device_type!r} but the model "
                             f"trains on {self._device_type!r}")
        if self._scaling():
            for optimizer in optimizers:
                if isinstance(optimizer, torch.optim.LBFGS):
                    raise ValueError("AmpkitPrecision: fp16 loss scaling does not work with torch.optim.LBFGS (it "
                                     "re-evaluates the closure inside step()); use 'bf16' or another optimizer")
        return super().connect(model, optimizers, lr_schedulers)

    def autocast_context_manager(self) -> autocast:
        if self._device_type is None:
            raise RuntimeError("AmpkitPrecision: the device is not known yet: pass device='cpu'/'cuda', or let "
                               "lightning.Trainer connect the plugin to the model first")
        # With a Policy the policy carries the dtype; ampkit.autocast refuses a differing one.
        return autocast(self._device_type, dtype=None if self._policy is not None else self.dtype,
                        policy=self._policy)

    @contextlib.contextmanager
    def forward_context(self) -> Generator[None, None, None]:
        with self.autocast_context_manager():
            yield

    def pre_backward(self, tensor: Tensor, module: "pl.LightningModule") -> Tensor:  # type: ignore[override]
        if self._scaling():
            tensor = self.scaler.scale(tensor)
        return super().pre_backward(tensor, module)

    def optimizer_step(self, optimizer: Any, model: "pl.LightningModule", closure: Callable[[], Any],
                       **kwargs: Any) -> Any:  # type: ignore[override]
        if isinstance(optimizer, torch.optim.LBFGS):
            if self._scaling():
                raise ValueError("AmpkitPrecision: fp16 loss scaling does not work with torch.optim.LBFGS")
            # LBFGS re-evaluates the closure itself; Lightning's own path handles that.
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        key = id(optimizer)
        try:
            closure_result = closure()
            # In automatic optimization a training_step that returned None asks to skip this step.
            skip = closure_result is None and model.automatic_optimization
            if self._scaling() and not skip and key not in self._unscaled:
                self._unscale_before_hooks(optimizer, model)
            self._after_closure(model, optimizer)  # on_before_optimizer_step, then clipping
            if skip:
                return closure_result
            clip_coef = self._pending_clip_coef.get(key)
            if clip_coef is not None:
                kwargs = {**kwargs, "clip_coef": clip_coef}
            if self._scaling():
                self.scaler.step(optimizer, **kwargs)
                self.scaler.update()
            else:
                optimizer.step(**kwargs)
            return closure_result
        finally:
            self._unscaled.pop(key, None)
            self._pending_clip_coef.pop(key, None)

    def _unscale_before_hooks(self, optimizer: torch.optim.Optimizer, model: "pl.LightningModule") -> None:
        """Unscales before on_before_optimizer_step (so hooks and clipping see true gradients), with the
        global norm from the same pass when the trainer clips by norm. An optimizer that unscales in
        its own fused step is left scaled when nothing is clipped: that saves a pass."""
        trainer = model.trainer
        clip_val = trainer.gradient_clip_val if model.automatic_optimization else None
        clipping = clip_val is not None and clip_val > 0
        if not clipping and getattr(optimizer, "_step_supports_amp_scaling", False):
            return
        algorithm = trainer.gradient_clip_algorithm or GradClipAlgorithmType.NORM
        by_norm = clipping and algorithm == GradClipAlgorithmType.NORM
        self._unscaled[id(optimizer)] = self.scaler.unscale_(optimizer, compute_norm=by_norm)

    def clip_gradients(self, optimizer: torch.optim.Optimizer, clip_val: Union[int, float] = 0.0,
                       gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM) -> None:
        """Clips the unscaled gradients. Called by Lightning's configure_gradient_clipping hook (or by
        LightningModule.clip_gradients in manual optimization, before the optimizer's step)."""
        if clip_val is None or clip_val <= 0:
            return
        if isinstance(optimizer, LightningOptimizer):
            # In manual optimization the module hands over Lightning's wrapper; the scaler and the
            # step that follows see the optimizer inside it.
            optimizer = optimizer.optimizer
        algorithm = GradClipAlgorithmType(gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        key = id(optimizer)
        if self._scaling() and key not in self._unscaled:
            # Not unscaled yet (an optimizer that unscales in its step, or clipping called from a
            # custom hook): unscale now, with the norm from the same pass.
            self._unscaled[key] = self.scaler.unscale_(optimizer,
                                                        compute_norm=algorithm == GradClipAlgorithmType.NORM)
        if algorithm == GradClipAlgorithmType.VALUE:
            torch.nn.utils.clip_grad_value_(params, clip_value=clip_val)
            return
        norm = self._unscaled.get(key)
        if norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if isinstance(optimizer, ampkit_optim._MasterWeightOptimizer):
            # Applied inside the fused step: no pass over the gradients of its own.
            self._pending_clip_coef[key] = torch.clamp(clip_val / (norm + _CLIP_EPS), max=1.0)
        else:
            torch.nn.utils.clip_grads_with_norm_(params, clip_val, norm)

    # ---- checkpoints (Lightning stores this under the class name) ----

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state_dict() with fp16 ({} with bf16). Syncs with the device."""
        return self.scaler.state_dict() if self._scaling() else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._scaling():
            self.scaler.load_state_dict(state_dict)
        elif state_dict:
            warnings.warn("AmpkitPrecision: the checkpoint holds loss-scaler state but this plugin does not scale "
                          f"({self.dtype}); the scaler state is ignored", RuntimeWarning, stacklevel=2)
