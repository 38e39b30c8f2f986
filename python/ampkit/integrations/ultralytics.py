"""ampkit as the mixed-precision engine of Ultralytics YOLO training: ``amp=True`` means ampkit.

Pass the trainer class to ``YOLO(...).train``::

    from ultralytics import YOLO
    from ampkit.integrations.ultralytics import AmpkitDetectionTrainer

    YOLO("yolov8n.yaml").train(data="coco8.yaml", amp=True, trainer=AmpkitDetectionTrainer)

With ``amp`` on (``True``, ``"fp16"`` or ``"bf16"``) on a CPU or CUDA device, the trainer

* runs the forward pass and the loss under ``ampkit.autocast`` (bf16 on the CPU, fp16 on CUDA for
  ``amp=True``; ``"fp16"``/``"bf16"`` pick the dtype). Ultralytics turns AMP off on the CPU; here
  it is on. The region is entered around the training model's call, the same span as Ultralytics'
  own autocast; the backward pass runs outside it, as torch recommends;
* uses ``ampkit.GradScaler`` where Ultralytics would create ``torch.amp.GradScaler`` (enabled for
  fp16; bf16 has float32's range and needs no loss scaling);
* replaces Ultralytics' AMP check, which downloads a pretrained model, by ``ampkit.check_amp`` on
  the model being trained (FP32 against the autocast policy on a seeded random batch); the verdict
  is logged and kept in ``trainer.amp_check``. A failed check turns AMP off, as Ultralytics does.

Everything else (optimizer, warmup, EMA, gradient clipping, validation, checkpoints, resume) is
Ultralytics' own. ``amp=False``/``"fp32"``, and devices other than CPU and CUDA (MPS, NPU, XPU),
leave ampkit out entirely and train exactly as the base trainer does.

Other tasks and custom policies: :func:`ampkit_trainer` builds the same thing on any Ultralytics
trainer class (segmentation, pose, ...) and takes an :class:`ampkit.Policy` or loss-scaler options.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

import ampkit
from ampkit.self_check import AmpCheck

try:
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import LOGGER, colorstr
    from ultralytics.utils.torch_utils import unwrap_model
except ImportError as error:  # pragma: no cover - exercised only without the package
    raise ImportError(
        "ampkit.integrations.ultralytics needs the ultralytics package: pip install ultralytics"
    ) from error

__all__ = ["AmpkitTrainerMixin", "AmpkitDetectionTrainer", "ampkit_trainer"]

_DEVICES = ("cpu", "cuda")
_AMP_OFF = (False, "fp32")
_EXPLICIT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (tensors, tuples, lists, dicts nested any way), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (list, tuple)) else ()
    return [tensor for value in values for tensor in _tensors(value)]


class _HeadOutputs(torch.nn.Module):
    """The YOLO model's outputs as one (batch, -1) float32 tensor, the form ``ampkit.check_amp`` compares.

    In eval mode Ultralytics' detection heads return ``(decoded, raw)``, ``raw`` a dict of the head's
    logits. The raw logits are compared when present: the decoded boxes of a freshly initialised
    model hardly depend on the features (the head's biases dominate), so they would hide an
    autocast error that the logits show."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.model(images)
        raw = [part for part in output if isinstance(part, Mapping)] if isinstance(output, (list, tuple)) else []
        tensors = [t for t in _tensors(raw[0] if raw else output) if t.is_floating_point()]
        if not tensors:
            raise TypeError(f"the AMP check needs a tensor among the model's outputs, got {type(output).__name__}")
        return torch.cat([t.float().reshape(t.shape[0], -1) for t in tensors], dim=1)


class AmpkitTrainerMixin:
    """Turns ``amp`` on an Ultralytics trainer into ampkit's autocast, GradScaler and check_amp.

    Put it before the Ultralytics trainer class: ``class T(AmpkitTrainerMixin, SegmentationTrainer)``.
    Class attributes configure it (:func:`ampkit_trainer` sets them): ``ampkit_policy`` (an
    ``ampkit.Policy`` whose device type matches the training device, or None for torch's default
    lists in the dtype ``amp`` asks for) and ``ampkit_scaler_options`` (keyword arguments for
    ``ampkit.GradScaler``, e.g. ``{"growth_interval": 200}``) and ``ampkit_check_tolerance`` (the
    largest relative deviation ``ampkit.check_amp`` accepts; None: its default for the dtype).

    After setup: ``amp_dtype`` (the autocast dtype, None when ampkit is out), ``amp_check`` (the
    ``ampkit.AmpCheck`` verdict, None when no check ran), ``scaler`` (an ``ampkit.GradScaler``).
    """

    ampkit_policy: ampkit.Policy | None = None
    ampkit_scaler_options: Mapping[str, Any] = {}
    ampkit_check_tolerance: float | None = None

    amp_dtype: torch.dtype | None = None
    amp_check: AmpCheck | None = None

    # ---- what amp asks for ----

    def _ampkit_dtype(self) -> torch.dtype | None:
        """The autocast dtype ``args.amp`` asks of ampkit on this device, None to leave ampkit out."""
        requested = self.args.amp
        if requested in _AMP_OFF:
            return None
        if self.device.type not in _DEVICES:
            LOGGER.warning(f"{colorstr('AMP: ')}ampkit runs on cpu or cuda, not {self.device.type}; "
                           "using Ultralytics' own AMP.")
            return None
        policy = self.ampkit_policy
        if policy is not None:
            if not isinstance(policy, ampkit.Policy):
                raise TypeError(f"ampkit_policy must be an ampkit.Policy or None, got {type(policy).__name__}")
            if policy.device_type != self.device.type:
                raise ValueError(f"ampkit_policy is for device type {policy.device_type!r}, but training runs "
                                 f"on {self.device.type!r}")
            explicit = _EXPLICIT_DTYPES.get(requested)
            if explicit is not None and explicit != policy.dtype:
                raise ValueError(f"amp={requested!r} asks for {explicit}, but ampkit_policy runs in {policy.dtype}")
            return policy.dtype
        if requested is True:
            return torch.float16 if self.device.type == "cuda" else torch.bfloat16
        if requested in _EXPLICIT_DTYPES:
            return _EXPLICIT_DTYPES[requested]
        raise ValueError(f"amp must be True, False, 'fp16', 'bf16' or 'fp32', got {requested!r}")

    def _ampkit_region(self, device_type: str, dtype: torch.dtype) -> ampkit.autocast:
        if self.ampkit_policy is not None:
            return ampkit.autocast(device_type, policy=self.ampkit_policy)
        return ampkit.autocast(device_type, dtype=dtype)

    # ---- Ultralytics overrides ----

    def _setup_train(self):
        dtype = self._ampkit_dtype()
        self._ampkit_hooks = []
        self._ampkit_resumed_scaler_state = None
        if dtype is None:
            self.amp_dtype, self.amp_check = None, None
            return super()._setup_train()
        if self.args.compile:
            raise ValueError(f"compile={self.args.compile!r} cannot be combined with ampkit's amp={self.args.amp!r}: "
                             "the compiled forward would bypass ampkit's autocast; set compile=False")
        requested = self.args.amp
        # With amp off during setup, Ultralytics skips its own check (it downloads a model) and builds a
        # disabled torch scaler; both are replaced below, before the first batch.
        self.args.amp = False
        try:
            super()._setup_train()
        finally:
            self.args.amp = requested
        self.amp_dtype = dtype
        self.amp_check = self._run_amp_check(dtype)
        self.amp = bool(self.amp_check)
        if not self.amp:
            # Ultralytics' own autocast reads args.amp too ("bf16" would turn it on whatever the check said).
            self.args.amp = False
        elif self.device.type == "cpu" and requested == "bf16":
            # Ultralytics' own autocast (still entered around ampkit's) refuses bf16 on the CPU; as a plain
            # flag it enables torch's CPU autocast, and ampkit's inner region sets the dtype and the lists.
            self.args.amp = True
        self.scaler = ampkit.GradScaler(
            self.device.type, enabled=self.amp and dtype == torch.float16, **dict(self.ampkit_scaler_options))
        if self._ampkit_resumed_scaler_state and self.scaler.is_enabled():
            self.scaler.load_state_dict(self._ampkit_resumed_scaler_state)
        if self.amp:
            self._enter_region_around_model_calls(dtype)

    def _load_checkpoint_state(self, ckpt):
        # Called during setup while the stand-in torch scaler is disabled (it ignores the state): keep the
        # saved scaler state for ampkit's scaler.
        self._ampkit_resumed_scaler_state = ckpt.get("scaler")
        return super()._load_checkpoint_state(ckpt)

    def _do_train(self):
        try:
            return super()._do_train()
        finally:
            for handle in getattr(self, "_ampkit_hooks", ()):
                handle.remove()
            self._ampkit_hooks = []

    # ---- the pieces ----

    def _run_amp_check(self, dtype: torch.dtype) -> AmpCheck:
        model = unwrap_model(self.model)
        size = int(self.args.imgsz)
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(2, 3, size, size, generator=generator)
        verdict = ampkit.check_amp(
            _HeadOutputs(model), device=self.device, dtype=dtype, example_input=images,
            tolerance=self.ampkit_check_tolerance,
            autocast=lambda device_type, dtype: self._ampkit_region(device_type, dtype))
        prefix = colorstr("AMP: ")
        if verdict:
            LOGGER.info(f"{prefix}ampkit {verdict}")
        else:
            LOGGER.warning(f"{prefix}ampkit {verdict}; training in FP32.")
        return verdict

    def _enter_region_around_model_calls(self, dtype: torch.dtype) -> None:
        """Forward hooks on the training model that enter an ampkit region before its forward and leave
        it after (also when the forward raises). The EMA copy and checkpoints never carry them: the
        EMA is copied before they are added, and they are removed when training ends."""
        open_regions: list[ampkit.autocast] = []
        device_type = self.device.type

        def enter(module, args):
            region = self._ampkit_region(device_type, dtype)
            region.__enter__()
            open_regions.append(region)

        def leave(module, args, output):
            open_regions.pop().__exit__(None, None, None)

        self._ampkit_hooks = [
            self.model.register_forward_pre_hook(enter),
            self.model.register_forward_hook(leave, always_call=True),
        ]


class AmpkitDetectionTrainer(AmpkitTrainerMixin, DetectionTrainer):
    """Ultralytics' ``DetectionTrainer`` with ``amp`` backed by ampkit (see the module docstring)."""


def ampkit_trainer(base: type = DetectionTrainer, policy: ampkit.Policy | None = None,
                   scaler_options: Mapping[str, Any] | None = None, check_tolerance: float | None = None) -> type:
    """A trainer class for ``YOLO(...).train(trainer=...)``: ``base`` (an Ultralytics trainer class)
    with ampkit behind ``amp``, autocasting with ``policy``, scaling with ``GradScaler(**scaler_options)``
    and accepting AMP when ``check_amp`` finds the outputs within ``check_tolerance``."""
    from ultralytics.engine.trainer import BaseTrainer

    if not (isinstance(base, type) and issubclass(base, BaseTrainer)):
        raise TypeError(f"ampkit_trainer: base must be an Ultralytics BaseTrainer subclass, got {base!r}")
    if policy is not None and not isinstance(policy, ampkit.Policy):
        raise TypeError(f"ampkit_trainer: policy must be an ampkit.Policy or None, got {type(policy).__name__}")
    if scaler_options is not None and not isinstance(scaler_options, Mapping):
        raise TypeError(f"ampkit_trainer: scaler_options must be a mapping or None, "
                        f"got {type(scaler_options).__name__}")
    options = dict(scaler_options or {})
    owned = sorted({"device", "enabled"} & set(options))
    if owned:
        raise ValueError(f"ampkit_trainer: scaler_options must not set {', '.join(owned)} (the trainer sets them "
                         f"from the device and amp), got {options!r}")
    if options:
        ampkit.GradScaler("cpu", **options)  # bad options fail here, naming the argument, not mid-setup
    if check_tolerance is not None and (isinstance(check_tolerance, bool) or not isinstance(check_tolerance, (int, float))
                                        or not math.isfinite(check_tolerance) or check_tolerance <= 0):
        raise ValueError(f"ampkit_trainer: check_tolerance must be a finite number > 0 or None, got {check_tolerance!r}")
    return type(f"Ampkit{base.__name__}", (AmpkitTrainerMixin, base),
                {"ampkit_policy": policy, "ampkit_scaler_options": options, "ampkit_check_tolerance": check_tolerance,
                 "__module__": __name__})
