"""Autocast with op lists you control: ``ampkit.Policy``, ``ampkit.autocast``, Keras-style global and
per-module policies, and ``ampkit.explain``.

This is the module ``ampkit.autocasting``; the package exports its public names, so
``ampkit.autocast`` is the region class (like ``torch.autocast``), never this module.

A :class:`Policy` says, for one device type (``"cpu"`` or ``"cuda"``), which lower-precision dtype
(``torch.float16`` or ``torch.bfloat16``) to use and which ops go in which list:

* ``allow``: run in the lower-precision dtype;
* ``deny``: run in float32;
* ``promote``: run in the widest floating dtype among the inputs;
* ``passthrough``: no cast at all (also what happens to an op named in no list).

``Policy.default("cuda", torch.float16)`` starts from torch 2.11's own lists for that device; edits
return new policies (policies are immutable values)::

    policy = ampkit.Policy.default("cuda", torch.float16).allow("bmm").deny("softmax", "layer_norm")
    with ampkit.autocast("cuda", policy=policy):
        ...

Op names: ``"mm"``, ``"aten::softmax.int"``, ``"ampkit::fused_linear"``, any registered op. A name
without an overload means every overload of the op that does not mutate an argument; name one
overload (``"aten::mm.out"``) to get exactly that one.

How it works, and what it costs: the first time a policy is used, ampkit registers its own kernels
on the AutocastCPU/AutocastCUDA dispatch keys (over aten's) for every op torch routes on that
device and every op the policy names. Entering and leaving a region afterwards only flips
thread-local state, as ``torch.autocast`` does. Inside a plain ``torch.autocast`` region (no ampkit
region current on the thread) ampkit's kernels apply torch's own routing, so ``torch.autocast``
behaves exactly as without ampkit; :func:`uninstall` removes ampkit's kernels altogether.

A ``torch.autocast`` nested inside an ampkit region changes the enabled flag and dtype, not the lists:
the ampkit policy of the enclosing region keeps routing ops.

Threads: regions are per thread; policies (and the global policy) are shared. Replacing the global
policy while another thread is inside a region is safe: that thread keeps the policy it entered with
until it leaves; regions entered afterwards see the new one. Do not call :func:`uninstall` while
other threads run ops inside autocast regions.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from . import _native

_LISTS = ("allow", "deny", "promote", "passthrough")
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float64: "float64"}
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _device_name(device_type: str | torch.device) -> str:
    if device_type == "cpu" or device_type == "cuda":  # the common spelling, without parsing (once a step)
        return device_type
    if not isinstance(device_type, (str, torch.device)):
        raise TypeError(f"device_type must be 'cpu' or 'cuda', got {type(device_type).__name__}")
    try:
        kind = torch.device(device_type).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        # ampkit's autocast layer exists for these two; torch.device() also accepts "xla", "meta", ...
        raise ValueError(f"device_type must be cpu or cuda, got {kind or device_type}")
    return kind


def _dtype_name(dtype: torch.dtype) -> str:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be torch.float16 or torch.bfloat16, got {type(dtype).__name__}")
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    return _DTYPE_NAMES[dtype]


def _device_and_amp_dtype(device_type: str | torch.device, dtype: torch.dtype | None) -> tuple[str, torch.dtype]:
    """'cpu'/'cuda' and the lower-precision dtype; None means torch's default (CPU bf16, CUDA fp16)."""
    device = _device_name(device_type)
    if dtype is None:
        dtype = torch.bfloat16 if device == "cpu" else torch.float16
    return device, dtype


def _names(ops: Iterable[str], where: str) -> list[str]:
    if isinstance(ops, str):
        ops = [ops]
    names = list(ops)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{where}: op names must be strings, got {type(name).__name__} ({name!r})")
    return names


class Policy:
    """Autocast op lists for one device type. Immutable: edits return a new policy."""

    __slots__ = ("_impl", "_fixed")

    def __init__(
        self,
        device_type: str = "cuda",
        dtype: torch.dtype = torch.float16,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        promote: Sequence[str] = (),
        passthrough: Sequence[str] = (),
    ) -> None:
        """Exactly these lists (start from :meth:`default` to get torch's). An op in two lists, an
        unknown op, or a dtype other than float16/bfloat16 raises ``ValueError``."""
        self._impl = _native.new_policy(
            _device_name(device_type),
            _dtype_name(dtype),
            _names(allow, "Policy(allow=...)"),
            _names(deny, "Policy(deny=...)"),
            _names(promote, "Policy(promote=...)"),
            _names(passthrough, "Policy(passthrough=...)"),
        )

    @classmethod
    def _wrap(cls, impl) -> "Policy":
        policy = cls.__new__(cls)
        policy._impl = impl
        return policy

    @classmethod
    def default(cls, device_type: str = "cuda", dtype: torch.dtype | None = None) -> "Policy":
        """torch 2.11's own lists for ``device_type``; dtype defaults to torch's (CPU bf16, CUDA fp16)."""
        device, dtype = _device_and_amp_dtype(device_type, dtype)
        return cls._wrap(_native.torch_default_policy(device, _dtype_name(dtype)))

    @classmethod
    def for_this_machine(cls, device_type: str = "cuda", dtype: torch.dtype | None = None) -> "Policy":
        """:meth:`default` fitted to this machine: a call of an allowed op that this machine runs
        slower in ``dtype`` than in float32 runs in float32 (:func:`slow_in_lower_precision` says which
        ops, for which shapes, and why): faster, and at least as accurate. The lists stay torch's and
        edits keep the fitting (:attr:`fitted_to_machine`); :func:`explain` shows such a call as
        ``allow (fp32 on this machine)``. Nothing changes where nothing is slow (CUDA; CPUs with
        AMX). The rules read the hardware and the call's shapes, never a timer, so every run routes
        alike."""
        device, dtype = _device_and_amp_dtype(device_type, dtype)
        return cls._wrap(_native.for_this_machine_policy(device, _dtype_name(dtype)))

    def allow(self, *ops: str) -> "Policy":
        """A copy with ``ops`` moved to the allow list (run in the lower-precision dtype)."""
        return Policy._wrap(self._impl.allow(_names(ops, "Policy.allow")))

    def deny(self, *ops: str) -> "Policy":
        """A copy with ``ops`` moved to the deny list (run in float32)."""
        return Policy._wrap(self._impl.deny(_names(ops, "Policy.deny")))

    def promote(self, *ops: str) -> "Policy":
        """A copy with ``ops`` moved to the promote list (run in the widest input dtype)."""
        return Policy._wrap(self._impl.promote(_names(ops, "Policy.promote")))

    def passthrough(self, *ops: str) -> "Policy":
        """A copy with ``ops`` moved to the passthrough list (inputs untouched)."""
        return Policy._wrap(self._impl.passthrough(_names(ops, "Policy.passthrough")))

    def with_dtype(self, dtype: torch.dtype) -> "Policy":
        return Policy._wrap(self._impl.with_dtype(_dtype_name(dtype)))

    def _fixed_facts(self) -> tuple[str, torch.dtype, int]:
        """(device type, dtype, native address): fixed for this immutable policy, so read once. A
        region is opened every training step, when a native call costs tens of microseconds."""
        try:
            return self._fixed
        except AttributeError:
            self._fixed = (self._impl.device_type(), _DTYPES[self._impl.dtype()], _native.policy_address(self._impl))
            return self._fixed

    @property
    def device_type(self) -> str:
        return self._fixed_facts()[0]

    @property
    def fitted_to_machine(self) -> bool:
        """Made by :meth:`for_this_machine` (or edited from such a policy): its machine rules apply."""
        return bool(self._impl.fitted_to_machine())

    @property
    def dtype(self) -> torch.dtype:
        return self._fixed_facts()[1]

    def list_of(self, op: str) -> str | None:
        """'allow', 'deny', 'promote', 'passthrough', or None when the op is in no list."""
        return self._impl.list_of(op)

    def ops(self, list_name: str) -> list[str]:
        """Fully qualified names in one list, sorted."""
        if list_name not in _LISTS:
            raise ValueError(f"list_name must be one of {', '.join(_LISTS)}, got {list_name!r}")
        return self._impl.ops(list_name)

    def install(self) -> "Policy":
        """Register this policy's kernels now rather than on first use."""
        _native.autocast_install(self._impl)
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self._impl.equals(other._impl)

    def __hash__(self) -> int:
        return hash((self.device_type, self._impl.dtype(), tuple(tuple(self.ops(name)) for name in _LISTS)))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(self.ops(name))}" for name in _LISTS)
        fitted = ", fitted to this machine" if self.fitted_to_machine else ""
        return f"ampkit.Policy({self.device_type!r}, {self.dtype}, {sizes}{fitted})"


def slow_in_lower_precision(device_type: str = "cpu", dtype: torch.dtype | None = None) -> list[tuple[str, str, str]]:
    """``[(op, when, reason), ...]``: the calls :meth:`Policy.for_this_machine` runs in float32 on this
    machine. On a CPU without packed ``dtype`` GEMMs (no AMX), torch's flash attention
    (``aten::scaled_dot_product_attention``) runs an unpacked low-precision path: in float16 always
    slower than float32, in bfloat16 slower when key length x head dim <= 16384 (every call on a CPU
    without AVX512-BF16)."""
    device, dtype = _device_and_amp_dtype(device_type, dtype)
    return _native.slow_in_lower_precision(device, _dtype_name(dtype))


def uninstall() -> None:
    """Remove every kernel ampkit registered on the autocast keys: aten's are back, and torch.autocast
    runs without ampkit in the path. Policies used later install again."""
    _native.autocast_uninstall()


def is_installed(device_type: str = "cpu") -> bool:
    return _native.autocast_is_installed(_device_name(device_type))


# ---- Keras-style global policy ----

def set_global_policy(policy: str | Policy | None) -> None:
    """``"mixed_float16"`` / ``"mixed_bfloat16"``: torch's default lists in that dtype for CPU and CUDA;
    ``"float32"``: regions that name neither a policy nor a dtype do not autocast; a :class:`Policy`:
    used for its device type; ``None``: back to no global policy."""
    if policy is None:
        _native.clear_global_policy()
    elif isinstance(policy, Policy):
        _native.set_global_policy(policy._impl)
    elif isinstance(policy, str):
        _native.set_global_policy_name(policy)
    else:
        raise TypeError(
            f"set_global_policy expects 'mixed_float16', 'mixed_bfloat16', 'float32', a Policy or None, "
            f"got {type(policy).__name__}"
        )


def global_policy(device_type: str = "cuda") -> Policy | str | None:
    """The global policy for ``device_type``: a Policy, ``"float32"``, or None when none is set."""
    device = _device_name(device_type)
    if _native.global_policy_is_float32(device):
        return "float32"
    impl = _native.global_policy(device)
    return None if impl is None else Policy._wrap(impl)


# ---- regions ----

class autocast:  # noqa: N801  (named like torch.autocast, which it replaces)
    """``with ampkit.autocast("cuda", dtype=torch.float16, policy=None, enabled=True):``, or as a decorator.

    Which lists apply: ``policy`` if given; else the global policy for the device if it has ``dtype``
    (or ``dtype`` is None); else torch's default lists in ``dtype`` (None: torch's default dtype for
    the device). With a global ``"float32"`` policy, a region naming neither a policy nor a dtype does
    not autocast. Nestable; an inner ``enabled=False`` region runs in float32 as with torch.
    """

    def __init__(
        self,
        device_type: str = "cuda",
        dtype: torch.dtype | None = None,
        policy: Policy | None = None,
        enabled: bool = True,
    ) -> None:
        self._device_type = _device_name(device_type)
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"policy must be an ampkit.Policy or None, got {type(policy).__name__}")
        policy_address = 0
        if policy is not None:
            policy_device, policy_dtype, policy_address = policy._fixed_facts()
            if policy_device != self._device_type:
                raise ValueError(f"policy is for {policy_device} but the region is for {self._device_type}")
            if dtype is not None and dtype != policy_dtype:
                raise ValueError(f"dtype {dtype} differs from the policy's dtype {policy_dtype}; use policy.with_dtype()")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        dtype_name = None if dtype is None else _dtype_name(dtype)
        if dtype_name not in _native.REGION_DTYPE_CODES:
            raise ValueError(f"ampkit autocast: dtype must be float16 or bfloat16, got {dtype_name}")
        # Fixed here, as the native call takes them: read-only attributes below. self._policy keeps
        # the native policy alive for as long as its address may be entered.
        self._dtype, self._policy, self._enabled = dtype, policy, enabled
        self._operands = (policy_address, _native.REGION_DEVICE_CODES[self._device_type],
                          _native.REGION_DTYPE_CODES[dtype_name], enabled)
        # The depths this object's open regions have on each thread's stack: one object may be
        # entered on several threads at once (a module-level region, or nested re-entry).
        self._depths: dict[int, list[int]] = {}

    device_type = property(lambda self: self._device_type, doc="'cpu' or 'cuda'.")
    dtype = property(lambda self: self._dtype, doc="The dtype asked for (None: the policy's or the default).")
    policy = property(lambda self: self._policy, doc="The Policy asked for, or None.")
    enabled = property(lambda self: self._enabled)

    def __enter__(self) -> "autocast":
        depth = _native.region_enter(*self._operands)
        self._depths.setdefault(threading.get_ident(), []).append(depth)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        depths = self._depths.get(threading.get_ident())
        if not depths:
            raise RuntimeError("ampkit.autocast: leaving a region that this thread did not enter with this object (a "
                               "region must be left on the thread that entered it)")
        _native.region_exit(depths[-1])  # popped only once left: a refused exit leaves the region open
        depths.pop()

    # The install helpers, reachable from the public class too: ampkit.autocast.uninstall().
    uninstall = staticmethod(uninstall)
    is_installed = staticmethod(is_installed)

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self:  # re-entrant, per thread: a recursive or concurrent call opens its own region
                return fn(*args, **kwargs)

        return wrapper


# ---- per-module policy ----

def _cast_floating(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floating(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floating(v, dtype) for k, v in value.items()}
    return value


def _module_device(module: torch.nn.Module, args: tuple) -> str:
    for parameter in module.parameters():
        return parameter.device.type
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.device.type
    return "cpu"


def set_module_policy(module: torch.nn.Module, policy: Policy | torch.dtype | None) -> torch.nn.Module:
    """Run ``module``'s forward under its own policy (Keras-style per-layer dtype).

    ``policy``: a :class:`Policy`; a dtype (float16/bfloat16: torch's default lists in that dtype,
    for the device of the module's parameters); ``torch.float32``: autocast off inside the module and
    floating inputs cast to float32 (e.g. keep a head in fp32 inside a bf16 region); None: remove the
    module policy. Returns the module.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if policy is not None and not isinstance(policy, (Policy, torch.dtype)):
        raise TypeError(f"policy must be an ampkit.Policy, a torch.dtype or None, got {type(policy).__name__}")
    if isinstance(policy, torch.dtype) and policy not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"a module policy dtype must be torch.float16, torch.bfloat16 or torch.float32, got {policy}")
    original = module.__dict__.get("_ampkit_original_forward", None)
    if original is None:
        original = module.forward
    if policy is None:
        module.__dict__.pop("_ampkit_original_forward", None)
        module.__dict__.pop("_ampkit_policy", None)
        module.__dict__.pop("forward", None)
        return module

    @functools.wraps(original)
    def forward(*args, **kwargs):
        if isinstance(policy, Policy):
            with autocast(policy.device_type, policy=policy):
                return original(*args, **kwargs)
        device = _module_device(module, args)
        if policy == torch.float32:
            with autocast(device, enabled=False):
                return original(*_cast_floating(args, torch.float32), **_cast_floating(kwargs, torch.float32))
        with autocast(device, dtype=policy):
            return original(*args, **kwargs)

    module.__dict__["_ampkit_original_forward"] = original
    module.__dict__["_ampkit_policy"] = policy
    module.forward = forward
    return module


def module_policy(module: torch.nn.Module) -> Policy | torch.dtype | None:
    return module.__dict__.get("_ampkit_policy", None)


# ---- explain ----

@dataclass(frozen=True)
class OpRecord:
    op: str
    list: str
    inputs: tuple
    outputs: tuple


class Explanation(list):
    """The ops ``explain`` saw, in call order, as :class:`OpRecord`; ``str()`` gives a table."""

    result: Any = None

    def __str__(self) -> str:
        rows = [("op", "list", "inputs", "outputs")] + [
            (r.op, r.list, ", ".join(r.inputs), ", ".join(r.outputs)) for r in self
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def explain(
    fn: Callable,
    *args: Any,
    device_type: str = "cpu",
    dtype: torch.dtype | None = None,
    policy: Policy | None = None,
    **kwargs: Any,
) -> Explanation:
    """Run ``fn(*args, **kwargs)`` in an ``ampkit.autocast`` region and list every op that reached
    ampkit's autocast kernels: its name, the list that routed it, its input dtypes (before casting)
    and output dtypes. Ops torch routes and ops the policy names reach those kernels; an op in no list
    of either runs untouched and is not listed. ``.result`` holds what ``fn`` returned."""
    if not callable(fn):
        raise TypeError(f"explain expects a callable first, got {type(fn).__name__}")
    if policy is not None:
        device_type = policy.device_type
    recording = _native.new_recording()
    with autocast(device_type, dtype=dtype, policy=policy):
        recording.start()
        try:
            result = fn(*args, **kwargs)
        finally:
            records = recording.stop()
    explanation = Explanation(OpRecord(op, route, tuple(inputs), tuple(outputs)) for op, route, inputs, outputs in records)
    explanation.result = result
    return explanation
