"""Adaptive precision: :class:`AdaptivePrecision` decides, while a model trains, what runs in FP32.

It acts on what ampkit already measures, with the tools ampkit already has:

* **per-module promotion** -- the first module (in execution order) whose forward output is
  non-finite, or else the first whose gradient is, is *blamed* for the step. A module blamed in
  ``promote_after`` of the last ``window`` logging windows moves to FP32 through
  :func:`ampkit.set_module_policy`; with ``demote_after`` it goes back after that many clean steps,
  and the wait doubles each time it has to be promoted again (backoff);
* **per-op promotion** (``ops=True``) -- an op kind that keeps producing non-finite low-precision
  outputs moves to the deny (fp32) list of the controller's :class:`ampkit.Policy`;
* **a precision schedule** -- FP32 for a warm-up (steps, epochs, or until the loss's relative change
  between logging windows falls below a threshold), then the AMP dtype; and a guard the other way:
  when the skip rate stays above ``max_skip_rate`` the controller falls back (fp16 -> bf16 where the
  device supports it -> FP32), with a warning;
* **underflow-guided dtype** -- when the fraction of gradient values that fp16 would flush to zero
  after unscaling stays above ``underflow_threshold``, prefer bf16 (where supported) or raise the
  loss scaler's ``min_scale``. No gradient value is ever changed.

Cost model: during a step the controller only *launches* device work and never reads a value back;
:meth:`AdaptivePrecision.update`, which the caller runs at its logging points, reads everything the
window recorded with one transfer and attributes blame on the host. On a clean run a step records
only its loss (the scaler's device counter of overflowed iterations covers the gradients). Blame
(a forward hook per module that can overflow, one float32 sum per hooked output and per gradient,
stacked into one vector per step) is gathered from the logging point after a non-finite step until
a window comes out clean, or on every step with ``blame="always"``. Decisions take effect at
logging points: with the default, a layer that overflows from the start is promoted at the third.

A change of policy is a new trace for ``torch.compile`` and CUDA graphs: :meth:`freeze` fixes the
decisions once they have settled.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .autocasting import Policy, autocast, set_module_policy

# The smallest fp16 subnormal: unscaled gradient values below it become 0 in fp16.
_FP16_SMALLEST_SUBNORMAL = 2.0 ** -24
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", None: "float32", torch.float32: "float32"}
_NAMED_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}
_STATE_VERSION = 1
# The whole-model decisions (schedule, fallback, underflow) name this target.
MODEL_TARGET = "<model>"
SCALE_TARGET = "<loss scale>"
OP_PREFIX = "op:"


@dataclasses.dataclass(frozen=True)
class PrecisionChange:
    """One decision: at optimizer step ``step``, ``target`` (a module name, ``op:<aten op>``,
    ``<model>`` or ``<loss scale>``) went from ``from_dtype`` to ``to_dtype`` (dtype names:
    'float16', 'bfloat16', 'float32'), for ``reason``."""

    step: int
    target: str
    from_dtype: str
    to_dtype: str
    reason: str

    def __str__(self) -> str:
        return f"step {self.step}: {self.target} {self.from_dtype} -> {self.to_dtype} ({self.reason})"

    @staticmethod
    def is_record(value: Any) -> bool:
        """True for a PrecisionChange or its dataclasses.asdict() form (what a checkpoint holds)."""
        if isinstance(value, PrecisionChange):
            return True
        return (isinstance(value, dict) and set(value) == {f.name for f in dataclasses.fields(PrecisionChange)}
                and isinstance(value["step"], int) and not isinstance(value["step"], bool)
                and all(isinstance(value[k], str) for k in ("target", "from_dtype", "to_dtype", "reason")))


# Elementwise modules that cannot produce a non-finite output from finite inputs.
_CANNOT_OVERFLOW = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Identity,
                    nn.Flatten, nn.Unflatten, nn.Softmax, nn.LogSoftmax, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _check_count(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"AdaptivePrecision: {name} must be an int{' or None' if allow_none else ''}, "
                        f"got {type(value).__name__} ({value!r:.40})")
    if value < minimum:
        raise ValueError(f"AdaptivePrecision: {name} must be >= {minimum}, got {value}")


def _check_fraction(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"AdaptivePrecision: {name} must be a float or None, got {type(value).__name__}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"AdaptivePrecision: {name} must be in (0, 1), got {value}")


def bf16_supported(device_type: str) -> bool:
    """Whether bf16 autocast is a sensible fallback on this device type."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return True


class _OpBlame(TorchFunctionMode):
    """Active only on a sampled diagnostic step: for each torch function whose output is a tensor in
    the low-precision dtype and whose op is in the policy's allow list, launches one float32 sum
    (non-finite iff the output is), kept on the device with the op's name."""

    def __init__(self, controller: "AdaptivePrecision") -> None:
        super().__init__()
        self.controller = controller

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = self.controller._allowed_op(func)
        if name is not None and isinstance(out, torch.Tensor) and out.dtype == self.controller._active:
            self.controller._op_names.append(name)
            self.controller._op_sums.append(out.detach().sum(dtype=torch.float32))
        return out


class _Region:
    """``with controller.autocast():`` -- the autocast region for the current decisions; records
    forward blame when the model trains, and runs the sampled op diagnostic when one is armed."""

    __slots__ = ("controller", "region", "recording", "sampling", "mode")

    def __init__(self, controller: "AdaptivePrecision") -> None:
        self.controller = controller

    def __enter__(self) -> "_Region":
        controller = self.controller
        self.region = controller._current_region()
        self.recording = controller.model.training and torch.is_grad_enabled()
        self.sampling = self.recording and controller._op_armed and controller._active is not None
        self.region.__enter__()
        self.mode = None
        if self.sampling:
            controller._op_armed = False
            controller._op_names, controller._op_sums = [], []
            self.mode = _OpBlame(controller)
            self.mode.__enter__()
        if self.recording:
            controller._fwd_sums, controller._fwd_order = [], []
        controller._recording = self.recording
        return self

    def __exit__(self, *exc_info: Any) -> None:
        controller = self.controller
        controller._recording = False
        try:
            if self.mode is not None:
                self.mode.__exit__(*exc_info)
                controller._close_op_sample()
        finally:
            self.region.__exit__(*exc_info)


class AdaptivePrecision:
    """Moves what overflows to FP32 (and back) while ``model`` trains under autocast.

    From a custom loop::

        controller = ampkit.AdaptivePrecision(model, "cuda", torch.float16, scaler=scaler)
        for step, (x, y) in enumerate(loader):
            with controller.autocast():
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            controller.after_backward(loss)          # device work only
            scaler.step(optimizer); scaler.update()
            if step % 20 == 0:
                for change in controller.update(step):   # the one host read
                    print(change)

    Arguments (all keyword-only after ``dtype``):

    * ``modules``: per-module promotion on (default). ``promote_after`` of the last ``window``
      logging windows in which a module was blamed promote it (default 2 of 3). Blamable modules
      are the leaves, less elementwise ones that cannot turn finite inputs non-finite (ReLU, GELU...).
    * ``blame``: ``"after_non_finite"`` (default: gather blame only while steps go non-finite, so a
      clean run pays almost nothing) or ``"always"`` (every step; a module is blamed one window sooner).
    * ``demote_after``: clean steps (no non-finite step at all) after which a promoted module is
      tried in the AMP dtype again; doubled for a module each time it is promoted again. None: never.
    * ``ops``: per-op promotion. Blame reaches op level through a *sampled diagnostic step*: after a
      window with a non-finite step, the next training region runs under a TorchFunctionMode that
      launches one sum per low-precision op output. Checking every op of every step would cost a
      kernel per op on every step, and reading per op would cost a host sync per op; one sampled
      step per troubled window costs nothing on clean runs and still finds the op, because an op
      that overflows keeps overflowing.
    * ``warmup_steps`` / ``warmup_epochs`` / ``warmup_loss_change``: train in FP32 until the first
      logging point at which that many steps / epochs are done, or the loss's mean changed by less
      than this relative amount between two logging windows. Several given: the first one reached.
    * ``max_skip_rate``: fall back to a safer mode (fp16 -> bf16 where supported -> FP32, with a
      RuntimeWarning) when the share of non-finite steps stays above it for ``fallback_windows``
      logging windows in a row that saw no promotion. None: never.
    * ``underflow_threshold``: when the fraction of gradient values (sampled every ``sample_every``
      steps) that fp16 would flush to zero after unscaling stays above it for ``underflow_windows``
      windows: switch fp16 to bf16 if ``prefer_bf16`` and the device supports it, else raise the
      ``scaler``'s ``min_scale`` to the current scale. Gradients are never altered.
    """

    def __init__(self, model: nn.Module, device_type: str = "cpu", dtype: torch.dtype = torch.float16, *,
                 modules: bool = True, promote_after: int = 2, window: int = 3, demote_after: int | None = None,
                 ops: bool = False, warmup_steps: int = 0, warmup_epochs: int = 0,
                 warmup_loss_change: float | None = None, max_skip_rate: float | None = 0.25,
                 fallback_windows: int = 3, underflow_threshold: float | None = None, underflow_windows: int = 2,
                 prefer_bf16: bool = True, scaler: Any = None, sample_every: int = 20,
                 blame: str = "after_non_finite") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"AdaptivePrecision: model must be a torch.nn.Module, got {type(model).__name__}")
        if device_type not in ("cpu", "cuda"):
            raise ValueError(f"AdaptivePrecision: device_type must be 'cpu' or 'cuda', got {device_type!r}")
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"AdaptivePrecision: dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        for name, value in (("modules", modules), ("ops", ops), ("prefer_bf16", prefer_bf16)):
            if not isinstance(value, bool):
                raise TypeError(f"AdaptivePrecision: {name} must be a bool, got {type(value).__name__}")
        _check_count("window", window, 1)
        _check_count("promote_after", promote_after, 1)
        if promote_after > window:
            raise ValueError(f"AdaptivePrecision: promote_after must be <= window ({window}), got {promote_after}")
        _check_count("demote_after", demote_after, 1, allow_none=True)
        _check_count("warmup_steps", warmup_steps, 0)
        _check_count("warmup_epochs", warmup_epochs, 0)
        _check_count("fallback_windows", fallback_windows, 1)
        _check_count("underflow_windows", underflow_windows, 1)
        _check_count("sample_every", sample_every, 1)
        _check_fraction("warmup_loss_change", warmup_loss_change)
        _check_fraction("max_skip_rate", max_skip_rate)
        _check_fraction("underflow_threshold", underflow_threshold)
        if blame not in ("after_non_finite", "always"):
            raise ValueError(f"AdaptivePrecision: blame must be 'after_non_finite' or 'always', got {blame!r}")
        self.blame = blame
        self.model, self.device_type, self.amp_dtype = model, device_type, dtype
        self.modules, self.ops = modules, ops
        self.promote_after, self.window, self.demote_after = promote_after, window, demote_after
        self.warmup_steps, self.warmup_epochs, self.warmup_loss_change = warmup_steps, warmup_epochs, warmup_loss_change
        self.max_skip_rate, self.fallback_windows = max_skip_rate, fallback_windows
        self.underflow_threshold, self.underflow_windows = underflow_threshold, underflow_windows
        self.prefer_bf16, self.scaler, self.sample_every = prefer_bf16, scaler, sample_every

        # The modules that can be blamed: the leaves (a container's output is its last child's), less
        # the elementwise ones that cannot turn finite inputs into a non-finite output (an overflow
        # there is always inherited, so hooking them would only add cost).
        # A container with parameters of its own (a block's gain, a model's head weight) is
        # blamable too: its own computation can overflow, and its gradients are its own.
        leaves = [(name, m) for name, m in model.named_modules()
                  if not any(m.children()) or next(m.parameters(recurse=False), None) is not None]
        blamable = [(name, m) for name, m in leaves if not isinstance(m, _CANNOT_OVERFLOW)]
        whole_model = not blamable
        if whole_model:  # nothing else can be blamed: the model as one
            blamable = [("", model)]
        self.module_names = [name for name, _ in blamable]
        self._modules = [m for _, m in blamable]
        # Each parameter's owning blamable module (its own parameters only, or everything for a
        # model blamed as one), for gradient blame.
        self._params: list[tuple[nn.Parameter, int]] = []
        for i, module in enumerate(self._modules):
            for param in module.parameters(recurse=whole_model):
                if param.requires_grad:
                    self._params.append((param, i))
        self._device = next((p.device for p in model.parameters()), torch.device(device_type))
        self._hooks: list = []
        self._blaming = False
        self._last_overflow_events = self._overflow_events_now_known()
        self._set_blaming(blame == "always")

        # Per step, one device vector [forward output sums (execution order), gradient sums, loss],
        # kept un-read until the logging point; the host keeps which module each entry belongs to.
        self._recording = False
        self._fwd_sums: list[torch.Tensor] = []
        self._fwd_order: list[int] = []
        self._pending: list[torch.Tensor] = []
        self._pending_layout: list[tuple[list[int], list[int], bool]] = []
        self._underflow_pending: list[torch.Tensor] = []
        self._calls = 0
        self._window = self._empty_window()
        self._no_loss = torch.zeros(0, device=self._device)
        # Sampled op diagnostics.
        self._op_armed = False
        self._op_names: list[str] = []
        self._op_sums: list[torch.Tensor] = []
        self._op_pending: list[tuple[list[str], torch.Tensor]] = []
        self._allowed_cache: dict[Any, str | None] = {}
        self._region: autocast | None = None

        # Decisions (host state; all of it is in state_dict()).
        self._active: torch.dtype | None = None if self._in_warmup() else dtype
        self._warmup_done = not self._in_warmup()
        self._policy = Policy.for_this_machine(device_type, dtype)
        self._denied_ops: list[str] = []
        self._promoted: dict[str, dict[str, int | None]] = {}  # name -> {"clean": steps, "demote_after": m}
        self._backoff: dict[str, int] = {}
        self._windows: collections.deque = collections.deque(maxlen=window)
        self._op_windows: collections.deque = collections.deque(maxlen=window)
        self._skip_streak = 0
        self._underflow_streak = 0
        self._previous_loss: float | None = None
        self.frozen = False
        self.changes: list[PrecisionChange] = []

    def _in_warmup(self) -> bool:
        return bool(self.warmup_steps or self.warmup_epochs or self.warmup_loss_change)

    # ---- what the step runs ----
    @property
    def active_dtype(self) -> torch.dtype | None:
        """The dtype training regions autocast to now; None while in FP32 (warm-up or last-resort fallback)."""
        return self._active

    @property
    def policy(self) -> Policy:
        """The op lists regions use: the AMP dtype's defaults plus the ops promoted so far."""
        return self._policy

    @property
    def promoted_modules(self) -> list[str]:
        return sorted(self._promoted)

    def autocast(self) -> "_Region":
        """The autocast region for the current decisions. In training mode it also records forward blame."""
        return _Region(self)

    def _current_region(self) -> autocast:
        if self._region is None:  # rebuilt only when a decision changes it
            if self._active is None:
                self._region = autocast(self.device_type, enabled=False)
            else:
                policy = self._policy if self._policy.dtype == self._active else self._policy.with_dtype(self._active)
                self._region = autocast(self.device_type, policy=policy)
        return self._region

    def _set_blaming(self, on: bool) -> None:
        """Blame costs a hook per module and a sum per output and gradient: it is gathered on every
        step only with blame='always'; by default from the logging point after a non-finite step
        until a window comes out clean (a clean run pays for neither hooks nor sums)."""
        on = on or self.blame == "always"
        if on == self._blaming:
            return
        if on:
            self._hooks = [m.register_forward_hook(self._make_hook(i)) for i, m in enumerate(self._modules)]
        else:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []
        self._blaming = on

    def _scale_tensor(self) -> torch.Tensor | None:
        """The scaler's scale as a device tensor (ampkit's or torch's GradScaler), None without scaling."""
        if self.scaler is None or not self.scaler.is_enabled():
            return None
        read = getattr(self.scaler, "get_scale_async", None) or getattr(self.scaler, "_get_scale_async", None)
        return None if read is None else read()

    def _overflow_events(self) -> torch.Tensor | None:
        """The scaler's device counter of iterations with inf/NaN gradients, where it has one."""
        if self.scaler is None or not self.scaler.is_enabled():
            return None
        return getattr(self.scaler, "overflow_events", None)

    def _overflow_events_now_known(self) -> int:
        # At construction (no step has run): the counter's starting value, from the host.
        scaler = self.scaler
        if scaler is None or getattr(scaler, "_overflow_events", None) is not None:
            return 0 if scaler is None else int(scaler._overflow_events.item())
        return int(getattr(scaler, "_init_overflow_events", 0))

    def _make_hook(self, index: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self._recording:
                return
            tensor = output if isinstance(output, torch.Tensor) else next(
                (t for t in (output if isinstance(output, (tuple, list)) else ()) if isinstance(t, torch.Tensor)), None)
            if tensor is None or not tensor.is_floating_point():
                return
            # A float32 sum of an fp16/bf16/fp32 output is non-finite iff the output holds an inf or
            # a NaN (finite fp16/bf16 values cannot sum past float32's range): one cheap kernel.
            self._fwd_sums.append(tensor.detach().sum(dtype=torch.float32))
            self._fwd_order.append(index)
        return hook

    def _allowed_op(self, func: Any) -> str | None:
        """The qualified aten name of `func` when the current policy runs it in low precision."""
        try:
            return self._allowed_cache[func]
        except (KeyError, TypeError):
            pass
        name = getattr(func, "__name__", "").strip("_")
        qualified = None
        if name:
            try:
                if self._policy.list_of(name) == "allow":
                    qualified = name if "::" in name else f"aten::{name}"
            except (ValueError, RuntimeError):
                qualified = None
        try:
            self._allowed_cache[func] = qualified
        except TypeError:
            pass
        return qualified

    def _close_op_sample(self) -> None:
        if self._op_sums:
            non_finite = ~torch.isfinite(torch.stack(self._op_sums))
            first = non_finite & (non_finite.cumsum(0) == 1)
            self._op_pending.append((self._op_names, first))
        self._op_names, self._op_sums = [], []

    def after_backward(self, loss: torch.Tensor | None = None) -> None:
        """After backward, before the optimizer step: launches the step's gradient blame (a float32
        sum per gradient, stacked with the forward sums and the loss into one vector) and, every
        ``sample_every`` calls, the underflow measurement. Never waits for the device."""
        if loss is not None and (not isinstance(loss, torch.Tensor) or loss.numel() != 1):
            raise ValueError(f"AdaptivePrecision.after_backward: loss must be a one-element tensor, got "
                             f"{type(loss).__name__ if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}")
        owners = []
        if self._blaming:
            sums = self._fwd_sums
            for param, owner in self._params:
                if param.grad is not None:
                    sums.append(param.grad.detach().sum(dtype=torch.float32))
                    owners.append(owner)
            if loss is not None:
                sums.append(loss.detach().reshape(()).float())
            if sums:
                self._pending.append(torch.stack(sums))
                self._pending_layout.append((self._fwd_order, owners, loss is not None))
        else:  # the loss alone; gradient overflows are counted by the scaler's device counter
            self._pending.append(loss.detach() if loss is not None else self._no_loss)
            self._pending_layout.append(([], [], loss is not None))
        if (self.underflow_threshold is not None and self._calls % self.sample_every == 0
                and any(p.grad is not None for p, _ in self._params)):
            self._underflow_pending.append(self._underflow_fraction())
        self._fwd_sums, self._fwd_order = [], []
        self._calls += 1

    def _underflow_fraction(self) -> torch.Tensor:
        """Share of the nonzero gradient values that fp16 would flush to zero once unscaled."""
        scale = self._scale_tensor()
        if scale is not None:
            inv_scale = scale.double().reciprocal().float().reshape(())
        else:
            inv_scale = torch.ones((), device=self._device)
        tiny, total = torch.zeros((), device=self._device), 0
        for param, _ in self._params:
            grad = param.grad
            if grad is None:
                continue
            grad = grad.detach().float()
            tiny = tiny + ((grad.abs() * inv_scale < _FP16_SMALLEST_SUBNORMAL) & (grad != 0)).sum()
            total += grad.numel()
        return tiny / max(total, 1)

    # ---- logging points ----
    @staticmethod
    def _empty_window() -> dict:
        return {"steps": 0, "non_finite": 0, "blame": {}, "loss_sum": 0.0, "loss_count": 0, "underflow_sum": 0.0,
                "underflow_samples": 0, "op_flags": []}

    def _digest(self) -> None:
        """Reads the steps' device vectors (one transfer) into the host's window totals."""
        events = self._overflow_events() if self._pending else None
        if self._pending or self._underflow_pending or self._op_pending:
            values = torch.cat([v.reshape(-1).float() for v in self._pending + self._underflow_pending]
                               + [flags.reshape(-1).float() for _, flags in self._op_pending]
                               + ([] if events is None else [events.reshape(1).float()])).cpu().tolist()
        else:
            values = []
        window, offset = self._window, 0
        flagged = 0
        for forward, owners, has_loss in self._pending_layout:
            entries = values[offset:offset + len(forward) + len(owners) + has_loss]
            offset += len(entries)
            bad = [not math.isfinite(v) for v in entries[:len(forward) + len(owners)]]
            window["steps"] += 1
            if has_loss and not math.isfinite(entries[-1]):
                bad.append(True)
            if any(bad):
                flagged += 1
                first = bad.index(True)
                if first < len(forward) + len(owners):  # a non-finite loss alone blames no module
                    culprit = forward[first] if first < len(forward) else owners[first - len(forward)]
                    name = self.module_names[culprit]
                    window["blame"][name] = window["blame"].get(name, 0) + 1
            if has_loss and math.isfinite(entries[-1]):
                window["loss_sum"] += entries[-1]
                window["loss_count"] += 1
        for fraction in values[offset:offset + len(self._underflow_pending)]:
            window["underflow_sum"] += fraction
            window["underflow_samples"] += 1
        offset += len(self._underflow_pending)
        for names, _ in self._op_pending:
            flags = values[offset:offset + len(names)]
            offset += len(names)
            window["op_flags"].append([name for name, flag in zip(names, flags) if flag])
        overflowed = 0
        if events is not None:
            total = int(values[-1])
            overflowed, self._last_overflow_events = total - self._last_overflow_events, total
        # A step is non-finite if the forward/gradient/loss records say so or the scaler counted it.
        window["non_finite"] += max(flagged, overflowed)
        self._pending, self._pending_layout, self._underflow_pending, self._op_pending = [], [], [], []

    def update(self, step: int, epoch: int | None = None) -> list[PrecisionChange]:
        """Reads the window's device records (one transfer), decides, and returns the new changes.
        ``step``: the optimizer steps done so far; ``epoch``: the epochs completed (for warm-up in epochs)."""
        _check_count("update(step)", step, 0)
        _check_count("update(epoch)", epoch, 0, allow_none=True)
        self._digest()
        totals, self._window = self._window, self._empty_window()
        window = {"steps": totals["steps"], "non_finite": totals["non_finite"], "blamed": set(totals["blame"]),
                  "blamed_ops": {name for names in totals["op_flags"] for name in names},
                  "sampled_ops": bool(totals["op_flags"]),
                  "loss": totals["loss_sum"] / totals["loss_count"] if totals["loss_count"] else None,
                  "underflow": (totals["underflow_sum"] / totals["underflow_samples"]
                                if totals["underflow_samples"] else None)}
        if window["steps"] == 0:
            return []
        # Blame for the next window: on after a non-finite step, off after a clean window.
        self._set_blaming(window["non_finite"] > 0)
        if self.frozen:
            return []
        changes = self._decide(step, epoch, window)
        if changes:
            self._region = None
        return changes

    def _change(self, step: int, target: str, old: torch.dtype | None, new: torch.dtype | None,
                reason: str, new_changes: list) -> None:
        change = PrecisionChange(step, target, _DTYPE_NAMES[old], _DTYPE_NAMES[new], reason)
        self.changes.append(change)
        new_changes.append(change)

    def _decide(self, step: int, epoch: int | None, window: dict) -> list[PrecisionChange]:
        changes: list[PrecisionChange] = []
        if window["non_finite"] and self.ops:
            self._op_armed = True  # the next training region is a sampled diagnostic step
        if not self._warmup_done:
            self._decide_warmup(step, epoch, window, changes)
            self._previous_loss = window["loss"]
            return changes
        self._previous_loss = window["loss"]
        promoted = self._decide_modules(step, window, changes) if self.modules else False
        if self.ops and window["sampled_ops"]:
            promoted = self._decide_ops(step, window, changes) or promoted
        self._decide_fallback(step, window, promoted, changes)
        self._decide_underflow(step, window, changes)
        return changes

    def _decide_warmup(self, step: int, epoch: int | None, window: dict, changes: list) -> None:
        reasons = []
        if self.warmup_steps and step >= self.warmup_steps:
            reasons.append(f"warm-up of {self.warmup_steps} steps done")
        if self.warmup_epochs and epoch is not None and epoch >= self.warmup_epochs:
            reasons.append(f"warm-up of {self.warmup_epochs} epochs done")
        if (self.warmup_loss_change is not None and window["loss"] is not None and self._previous_loss
                and abs(window["loss"] - self._previous_loss) / abs(self._previous_loss) < self.warmup_loss_change):
            change = abs(window["loss"] - self._previous_loss) / abs(self._previous_loss)
            reasons.append(f"loss changed by {change:.2%} < {self.warmup_loss_change:.2%} between logging windows")
        if reasons:
            self._warmup_done = True
            self._active = self.amp_dtype
            self._change(step, MODEL_TARGET, None, self.amp_dtype, reasons[0], changes)

    def _decide_modules(self, step: int, window: dict, changes: list) -> bool:
        self._windows.append(frozenset(window["blamed"]))
        promoted = False
        for name in sorted(window["blamed"] - set(self._promoted)):
            hits = sum(name in w for w in self._windows)
            if hits >= self.promote_after:
                self._promote(name)
                self._change(step, name, self._active, torch.float32,
                             f"first non-finite output or gradient in {hits} of the last {len(self._windows)} "
                             "logging windows", changes)
                promoted = True
        # Demotion: clean steps since promotion; the window's steps all count only if none was non-finite.
        if self.demote_after is not None:
            for name, entry in sorted(self._promoted.items()):
                entry["clean"] = entry["clean"] + window["steps"] if window["non_finite"] == 0 else 0
                if entry["demote_after"] is not None and entry["clean"] >= entry["demote_after"]:
                    self._backoff[name] = 2 * entry["demote_after"]
                    self._demote(name)
                    self._change(step, name, torch.float32, self._active,
                                 f"{entry['clean']} clean steps in float32 (next wait after a new overflow: "
                                 f"{self._backoff[name]})", changes)
        return promoted

    def _promote(self, name: str) -> None:
        wait = self._backoff.get(name, self.demote_after)
        self._promoted[name] = {"clean": 0, "demote_after": wait}
        self._windows = collections.deque((w - {name} for w in self._windows), maxlen=self.window)
        set_module_policy(self._module(name), torch.float32)

    def _demote(self, name: str) -> None:
        del self._promoted[name]
        set_module_policy(self._module(name), None)

    def _module(self, name: str) -> nn.Module:
        return self._modules[self.module_names.index(name)]

    def _decide_ops(self, step: int, window: dict, changes: list) -> bool:
        self._op_windows.append(frozenset(window["blamed_ops"]))
        promoted = False
        for name in sorted(window["blamed_ops"] - set(self._denied_ops)):
            hits = sum(name in w for w in self._op_windows)
            if hits >= self.promote_after:
                self._denied_ops.append(name)
                self._policy = self._policy.deny(name)
                self._allowed_cache.clear()
                self._region = None
                self._op_windows = collections.deque((w - {name} for w in self._op_windows), maxlen=self.window)
                self._change(step, OP_PREFIX + name, self._active, torch.float32,
                             f"first non-finite op output in {hits} of the last {len(self._op_windows) or hits} "
                             "sampled diagnostic steps", changes)
                promoted = True
        return promoted

    def _decide_fallback(self, step: int, window: dict, promoted: bool, changes: list) -> None:
        if self.max_skip_rate is None or self._active is None:
            return
        rate = window["non_finite"] / window["steps"]
        if promoted or rate <= self.max_skip_rate:
            self._skip_streak = 0
            return
        self._skip_streak += 1
        if self._skip_streak < self.fallback_windows:
            return
        self._skip_streak = 0
        safer = torch.bfloat16 if self._active == torch.float16 and bf16_supported(self.device_type) else None
        reason = (f"{rate:.0%} of steps non-finite (> {self.max_skip_rate:.0%}) for {self.fallback_windows} "
                  "logging windows")
        warnings.warn(f"ampkit.AdaptivePrecision: {reason}; falling back from {_DTYPE_NAMES[self._active]} to "
                      f"{_DTYPE_NAMES[safer]}", RuntimeWarning, stacklevel=3)
        self._change(step, MODEL_TARGET, self._active, safer, reason, changes)
        self._active = safer

    def _decide_underflow(self, step: int, window: dict, changes: list) -> None:
        fraction = window["underflow"]
        if self.underflow_threshold is None or fraction is None or self._active != torch.float16:
            return
        if fraction <= self.underflow_threshold:
            self._underflow_streak = 0
            return
        self._underflow_streak += 1
        if self._underflow_streak < self.underflow_windows:
            return
        self._underflow_streak = 0
        reason = (f"{fraction:.1%} of gradient values would flush to zero in float16 (> "
                  f"{self.underflow_threshold:.1%}) for {self.underflow_windows} logging windows")
        if self.prefer_bf16 and bf16_supported(self.device_type):
            self._change(step, MODEL_TARGET, self._active, torch.bfloat16, reason, changes)
            self._active = torch.bfloat16
        elif self.scaler is not None and self.scaler.is_enabled() and hasattr(self.scaler, "_min_scale"):
            # ampkit's GradScaler has a floor (min_scale); torch's has none to raise.
            floor = self.scaler.get_scale()
            if self.scaler._min_scale is None or floor > self.scaler._min_scale:
                self.scaler._min_scale = floor
                self._change(step, SCALE_TARGET, self._active, self._active,
                             f"{reason}: the loss scale's floor is raised to {floor:g}", changes)

    # ---- compile, checkpoints ----
    def freeze(self) -> "AdaptivePrecision":
        """Fix the decisions (a policy change means a new torch.compile trace or CUDA graph). Blame
        is still gathered; update() reads and discards it."""
        self.frozen = True
        return self

    def unfreeze(self) -> "AdaptivePrecision":
        self.frozen = False
        return self

    def remove(self) -> None:
        """Takes the hooks off the model and removes the module policies the controller set."""
        self.blame = "after_non_finite"
        self._set_blaming(False)
        for name in list(self._promoted):
            self._demote(name)

    def state_dict(self) -> dict:
        """The decisions and the window in progress, as plain data (torch.load(weights_only=True) reads it).
        Reads the device records of the steps since the last logging point: call it at a logging
        point or a checkpoint, not every step."""
        self._digest()
        window = dict(self._window, blame=dict(self._window["blame"]),
                      op_flags=[list(names) for names in self._window["op_flags"]])
        return {
            "version": _STATE_VERSION, "modules": list(self.module_names), "amp_dtype": _DTYPE_NAMES[self.amp_dtype],
            "active": _DTYPE_NAMES[self._active], "warmup_done": self._warmup_done, "frozen": self.frozen,
            "denied_ops": list(self._denied_ops),
            "promoted": {name: dict(entry) for name, entry in self._promoted.items()},
            "backoff": dict(self._backoff), "windows": [sorted(w) for w in self._windows],
            "op_windows": [sorted(w) for w in self._op_windows], "skip_streak": self._skip_streak,
            "underflow_streak": self._underflow_streak, "previous_loss": self._previous_loss,
            "op_armed": self._op_armed, "calls": self._calls, "window": window, "blaming": self._blaming,
            "overflow_events": self._last_overflow_events,
            "min_scale": getattr(self.scaler, "_min_scale", None),
            "changes": [dataclasses.asdict(c) for c in self.changes],
        }

    def check_state_dict(self, state: Any) -> None:
        """Raises TypeError/ValueError naming the entry if `state` is not a state_dict() of a controller
        like this one (same model's modules, same AMP dtype). Changes nothing."""
        def fail(kind, message):
            raise kind(f"AdaptivePrecision state: {message}")

        if not isinstance(state, dict):
            fail(TypeError, f"expected a dict, got {type(state).__name__}")
        expected = set(_STATE_TYPES)
        if set(state) != expected:
            missing, unknown = sorted(expected - set(state)), sorted(map(str, set(state) - expected))
            fail(ValueError, f"missing entries {missing}, unexpected entries {unknown}")
        for key, (accepts, description) in _STATE_TYPES.items():
            if not accepts(state[key]):
                fail(TypeError, f"{key!r} must be {description}, got {state[key]!r:.80}")
        if state["version"] != _STATE_VERSION:
            fail(ValueError, f"'version' must be {_STATE_VERSION}, got {state['version']}")
        if state["modules"] != self.module_names:
            fail(ValueError, f"'modules' are another model's: {state['modules'][:4]} vs {self.module_names[:4]}")
        if state["amp_dtype"] != _DTYPE_NAMES[self.amp_dtype]:
            fail(ValueError, f"'amp_dtype' is {state['amp_dtype']}, this controller's is "
                             f"{_DTYPE_NAMES[self.amp_dtype]}")
        for key in ("promoted", "backoff"):
            for name in state[key]:
                if name not in self.module_names:
                    fail(ValueError, f"{key!r} names {name!r}, which is not a module of this model")
        for names in state["windows"]:
            if not set(names) <= set(self.module_names):
                unknown = sorted(set(names) - set(self.module_names))
                fail(ValueError, f"'windows' names modules not in this model: {unknown}")
        for name in state["window"]["blame"]:
            if name not in self.module_names:
                fail(ValueError, f"'window' blames {name!r}, which is not a module of this model")
        for name in state["denied_ops"]:
            try:
                Policy.for_this_machine(self.device_type, self.amp_dtype).deny(name)
            except (ValueError, RuntimeError) as error:
                fail(ValueError, f"'denied_ops' holds {name!r}: {error}")

    def load_state_dict(self, state: dict) -> None:
        """Restores a state_dict(): decisions, module policies, op lists and the window in progress.
        Validated whole first (check_state_dict); a refused state changes nothing."""
        self.check_state_dict(state)
        for name in list(self._promoted):
            self._demote(name)
        self._policy = Policy.for_this_machine(self.device_type, self.amp_dtype)
        self._denied_ops = list(state["denied_ops"])
        if self._denied_ops:
            self._policy = self._policy.deny(*self._denied_ops)
        self._allowed_cache.clear()
        for name, entry in state["promoted"].items():
            self._promoted[name] = dict(entry)
            set_module_policy(self._module(name), torch.float32)
        self._backoff = dict(state["backoff"])
        self._active = _NAMED_DTYPES[state["active"]]
        self._warmup_done, self.frozen = state["warmup_done"], state["frozen"]
        self._windows = collections.deque((frozenset(w) for w in state["windows"]), maxlen=self.window)
        self._op_windows = collections.deque((frozenset(w) for w in state["op_windows"]), maxlen=self.window)
        self._skip_streak, self._underflow_streak = state["skip_streak"], state["underflow_streak"]
        self._previous_loss, self._op_armed = state["previous_loss"], state["op_armed"]
        self._calls = state["calls"]
        self._set_blaming(state["blaming"])
        self._last_overflow_events = state["overflow_events"]
        window = state["window"]
        self._window = dict(window, blame=dict(window["blame"]), op_flags=[list(n) for n in window["op_flags"]])
        self._pending, self._pending_layout, self._underflow_pending, self._op_pending = [], [], [], []
        self._region = None
        if self.scaler is not None and hasattr(self.scaler, "_min_scale") and state["min_scale"] is not None:
            self.scaler._min_scale = float(state["min_scale"])
        self.changes = [PrecisionChange(**c) for c in state["changes"]]


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_number_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           and math.isfinite(v) for v in value)


def _is_window(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == set(AdaptivePrecision._empty_window())
            and all(_is_int(value[k]) for k in ("steps", "non_finite", "loss_count", "underflow_samples"))
            and _is_number_list([value["loss_sum"], value["underflow_sum"]])
            and isinstance(value["blame"], dict)
            and all(isinstance(k, str) and _is_int(n, 1) for k, n in value["blame"].items())
            and isinstance(value["op_flags"], list) and all(_is_str_list(n) for n in value["op_flags"]))


def _is_promoted_entry(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == {"clean", "demote_after"} and _is_int(value["clean"])
            and (value["demote_after"] is None or _is_int(value["demote_after"], 1)))


# What each state_dict() entry holds, checked before anything is loaded.
_STATE_TYPES: dict[str, tuple[Any, str]] = {
    "version": (_is_int, "an int"),
    "modules": (_is_str_list, "a list of module names"),
    "amp_dtype": (lambda v: v in ("float16", "bfloat16"), "'float16' or 'bfloat16'"),
    "active": (lambda v: v in _NAMED_DTYPES, "'float16', 'bfloat16' or 'float32'"),
    "warmup_done": (lambda v: isinstance(v, bool), "a bool"),
    "frozen": (lambda v: isinstance(v, bool), "a bool"),
    "denied_ops": (_is_str_list, "a list of op names"),
    "promoted": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_promoted_entry(e)
                                                       for k, e in v.items()),
                 "a dict of module name -> {'clean': int, 'demote_after': int or None}"),
    "backoff": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_int(e, 1) for k, e in v.items()),
                "a dict of module name -> int"),
    "windows": (lambda v: isinstance(v, list) and all(_is_str_list(w) for w in v), "a list of lists of module names"),
    "op_windows": (lambda v: isinstance(v, list) and all(_is_str_list(w) for w in v), "a list of lists of op names"),
    "skip_streak": (_is_int, "an int >= 0"),
    "underflow_streak": (_is_int, "an int >= 0"),
    "previous_loss": (lambda v: v is None or (isinstance(v, float) and math.isfinite(v)), "a finite float or None"),
    "op_armed": (lambda v: isinstance(v, bool), "a bool"),
    "calls": (_is_int, "an int >= 0"),
    "blaming": (lambda v: isinstance(v, bool), "a bool"),
    "overflow_events": (_is_int, "an int >= 0"),
    "window": (lambda v: _is_window(v), "the window in progress: a dict of steps, non_finite, blame, loss_sum, "
               "loss_count, underflow_sum, underflow_samples, op_flags"),
    "min_scale": (lambda v: v is None or (isinstance(v, float) and v > 0), "a positive float or None"),
    "changes": (lambda v: isinstance(v, list) and all(PrecisionChange.is_record(c) for c in v),
                "a list of precision-change records"),
}
