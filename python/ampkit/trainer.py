"""Trainer: one `amp=True` switch for autocast, loss scaling and the fused optimizer path.

    trainer = ampkit.Trainer(model, amp=True)        # fp16 + loss scaling on CUDA, bf16 on CPU
    trainer.fit((x_train, y_train), epochs=10, val_data=(x_val, y_val))
    trainer.fit(train_loader, epochs=10, val_data=val_loader)   # a DataLoader, or any iterable of batches

The step order is the one mixed precision needs: forward under autocast, scaled backward,
unscale (before any gradient clipping), clip, optimizer step (skipped on the device when a
gradient overflowed), scale update. With grad_clip and an ampkit optimizer, unscale, the inf/NaN
check and the gradient norm are one pass, and the clip coefficient is applied inside the fused
optimizer step: two reads of the gradients per step in all. The host waits for the device only at
logging points.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import os
import sys
import time
import warnings
import weakref
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from . import optim as ampkit_optim
from .adaptive import AdaptivePrecision, PrecisionChange
from .autocasting import Policy, autocast
from .grad_scaler import GradScaler
from .self_check import AmpCheck, check_amp

# The smallest fp16 subnormal: unscaled gradient values below it become 0 in fp16.
FP16_SMALLEST_SUBNORMAL = 2.0 ** -24

_AMP_ALIASES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                "fp32": None, "float32": None}

_last_history: "weakref.ReferenceType[TrainHistory] | None" = None


def resolve_amp(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """amp=True -> fp16 on CUDA, bf16 on the CPU; 'bf16'/'fp16' as named; False/'fp32' -> None."""
    if amp is True:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if amp is False or amp is None:
        return None
    if isinstance(amp, str) and amp.lower() in _AMP_ALIASES:
        return _AMP_ALIASES[amp.lower()]
    raise ValueError(f"amp must be True, False, 'bf16', 'fp16' or 'fp32', got {amp!r}")


@dataclasses.dataclass
class TrainHistory:
    """What the trainer recorded, one entry per optimizer step unless stated."""

    loss: list[float] = dataclasses.field(default_factory=list)
    scale: list[float] = dataclasses.field(default_factory=list)
    skipped: list[bool] = dataclasses.field(default_factory=list)
    # Per epoch: a summary dict (epoch, loss, val metrics, seconds, samples/s, skipped steps).
    epochs: list[dict] = dataclasses.field(default_factory=list)
    # diagnose=True: for each skipped step, the first module (in registration order) whose gradient
    # was non-finite, and at logging points the fraction of gradient values that fp16 would flush to 0.
    first_non_finite: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    fp16_underflow_fraction: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    # adaptive=True: each precision decision (step, target, from_dtype, to_dtype, reason).
    precision_changes: list[PrecisionChange] = dataclasses.field(default_factory=list)

    @property
    def overflow_steps(self) -> list[int]:
        return [i for i, s in enumerate(self.skipped) if s]

    def overflow_report(self) -> dict[str, int]:
        """Module name -> number of skipped steps in which it was the first non-finite gradient."""
        report: dict[str, int] = {}
        for _, name in self.first_non_finite:
            report[name] = report.get(name, 0) + 1
        return dict(sorted(report.items(), key=lambda item: -item[1]))

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> "TrainHistory":
        """The inverse of state_dict(). Refuses (TypeError/ValueError naming the field) anything that
        state_dict() does not write; fields it lacks start empty."""
        if not isinstance(state, dict):
            raise TypeError(f"history: expected a dict, got {type(state).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(state) - fields
        if unknown:
            raise ValueError(f"history: unknown fields {sorted(map(str, unknown))}")
        for name, values in state.items():
            if not isinstance(values, (list, tuple)):
                raise TypeError(f"history: {name} must be a list, got {type(values).__name__}")
            accepts, description = _HISTORY_ENTRIES[name]
            for index, value in enumerate(values):
                if not accepts(value):
                    raise TypeError(f"history: {name}[{index}] must be {description}, got {value!r:.80}")
        history = cls(**{name: list(values) for name, values in state.items()})
        history.first_non_finite = [tuple(x) for x in history.first_non_finite]
        history.fp16_underflow_fraction = [tuple(x) for x in history.fp16_underflow_fraction]
        history.precision_changes = [x if isinstance(x, PrecisionChange) else PrecisionChange(**x)
                                     for x in history.precision_changes]
        return history


def _distributed_wrapper(model: nn.Module) -> str | None:
    """'DistributedDataParallel' or 'FSDP2 (fully_shard)' when `model` is wrapped by one, else None.
    FSDP2 is looked for only when it has been imported (a model can be sharded only then)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return "DistributedDataParallel"
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None and any(isinstance(module, fsdp.FSDPModule) for module in model.modules()):
        return "FSDP2 (fully_shard)"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_step_pair(value: Any, second: Callable[[Any], bool]) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], int)
            and not isinstance(value[0], bool) and second(value[1]))


# What each TrainHistory field holds, checked when a checkpoint's history is loaded.
_HISTORY_ENTRIES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "loss": (_is_number, "a float"),
    "scale": (_is_number, "a float"),
    "skipped": (lambda v: isinstance(v, bool), "a bool"),
    "epochs": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, (int, float))
                                                     for k, x in v.items()), "a dict of str -> number"),
    "first_non_finite": (lambda v: _is_step_pair(v, lambda x: isinstance(x, str)), "a (step, module name) pair"),
    "fp16_underflow_fraction": (lambda v: _is_step_pair(v, _is_number), "a (step, fraction) pair"),
    "precision_changes": (PrecisionChange.is_record, "a dict with step, target, from_dtype, to_dtype, reason"),
}


class Trainer:
    """Trains `model` with mixed precision behind one `amp` argument.

    amp: True (fp16 + dynamic loss scaling on CUDA, bf16 on the CPU), 'bf16', 'fp16', False/'fp32'.
    optimizer: an optimizer, a factory `params -> optimizer`, or None for ampkit.optim.AdamW(lr,
        weight_decay). With master_weights=True it must be a factory or None: the model is first
        put in low-precision weights and the optimizer holds the FP32 masters.
    self_check: run ampkit.check_amp first; on failure warn and train in FP32.
    max_consecutive_skips: raise when this many steps in a row overflowed (a loss that is NaN from
        the start would otherwise loop forever doing nothing), unless the adaptive controller
        changed the precision at the logging point that saw it (the count then starts again).
    adaptive: True (an ampkit.AdaptivePrecision with its defaults), an AdaptivePrecision built for
        this model, or a dict of its options: promotes what overflows to FP32 (and more) at logging
        points; its decisions go to history.precision_changes, the progress line and plot_history.
    """

    def __init__(self, model: nn.Module, optimizer: Any = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy, *,
                 amp: bool | str = True, device: str | torch.device | None = None, master_weights: bool = False,
                 lr: float = 1e-3, weight_decay: float = 0.01, batch_size: int = 64, grad_clip: float | None = None,
                 seed: int = 0, self_check: bool = True, check_input: torch.Tensor | None = None,
                 progress: bool = True, log_every: int = 20, diagnose: bool = False,
                 max_consecutive_skips: int = 50, scaler_options: dict | None = None,
                 adaptive: bool | dict | AdaptivePrecision = False) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for name, value in (("batch_size", batch_size), ("max_consecutive_skips", max_consecutive_skips)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device is {self.device} but CUDA is not available on this machine")
        self.dtype = resolve_amp(amp, self.device)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {grad_clip}")
        if max_consecutive_skips <= 0:
            raise ValueError(f"max_consecutive_skips must be positive, got {max_consecutive_skips}")
        if master_weights and self.dtype is None:
            raise ValueError("master_weights=True needs a low-precision amp mode ('bf16' or 'fp16'), got amp=fp32")
        wrapper = _distributed_wrapper(model)
        if master_weights and wrapper is not None:
            raise ValueError(
                f"master_weights=True cannot convert a model already wrapped by {wrapper}: its gradient "
                "buckets/shards are laid out for the dtype it was wrapped with. Keep the FP32 model and let the "
                "optimizer update it in place (master_weights=False; under FSDP2 with "
                "MixedPrecisionPolicy(param_dtype=torch.bfloat16) the FP32 shards are the masters), or convert it "
                "with ampkit.optim.to_low_precision before wrapping and pass an ampkit optimizer")
        if master_weights and optimizer is not None and not callable(optimizer):
            raise ValueError("with master_weights=True pass optimizer as a factory (params -> optimizer) or None: "
                             "the optimizer must be built after the model is converted")
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.grad_clip = grad_clip
        self.seed = seed
        self.progress = progress
        self.log_every = max(1, log_every)
        self.diagnose = diagnose
        self.max_consecutive_skips = max_consecutive_skips
        self.amp_check: AmpCheck | None = None

        if self.dtype is not None and self_check:
            self.amp_check = check_amp(None if check_input is None else self.model, self.device, self.dtype,
                                       example_input=check_input)
            if not self.amp_check.ok:
                warnings.warn(f"{self.amp_check}; training in FP32 instead", RuntimeWarning, stacklevel=2)
                self.dtype = None
                master_weights = False
        self.master_weights = master_weights
        if master_weights:
            ampkit_optim.to_low_precision(self.model, self.dtype)

        params = [p for p in self.model.parameters() if p.requires_grad]
        if optimizer is None:
            self.optimizer = ampkit_optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        elif isinstance(optimizer, torch.optim.Optimizer):
            self.optimizer = optimizer
        elif callable(optimizer):
            self.optimizer = optimizer(params)
        else:
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, a factory or None, got {type(optimizer).__name__}")
        # Loss scaling is for fp16's narrow exponent range; bf16 and fp32 share fp32's range.
        self.scaler = GradScaler(self.device.type, enabled=self.dtype == torch.float16, **(scaler_options or {}))
        self.adaptive = self._make_adaptive(adaptive)
        # Without adaptive precision: torch's lists, with the calls this machine runs slower in low
        # precision sent to fp32 (attention on a CPU without AMX).
        self._policy = (Policy.for_this_machine(self.device.type, self.dtype)
                        if self.adaptive is None and self.dtype is not None else None)
        self.history = TrainHistory()
        self.epoch = 0
        self.global_step = 0
        self._consecutive_skips = 0
        global _last_history
        _last_history = weakref.ref(self.history)

    # ---- description ----
    @property
    def amp_mode(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    def _make_adaptive(self, adaptive: Any) -> AdaptivePrecision | None:
        if adaptive is False or adaptive is None:
            return None
        if not isinstance(adaptive, (bool, dict, AdaptivePrecision)):
            raise TypeError(f"adaptive must be a bool, a dict of AdaptivePrecision options or an "
                            f"ampkit.AdaptivePrecision, got {type(adaptive).__name__}")
        if self.dtype is None:
            raise ValueError(f"adaptive needs a low-precision amp mode ('bf16' or 'fp16'), got amp={self.amp_mode}")
        if isinstance(adaptive, AdaptivePrecision):
            if adaptive.model is not self.model:
                raise ValueError("adaptive: the AdaptivePrecision was built for another model")
            if (adaptive.device_type, adaptive.amp_dtype) != (self.device.type, self.dtype):
                raise ValueError(f"adaptive: the AdaptivePrecision is for {adaptive.device_type}/{adaptive.amp_dtype}, "
                                 f"the trainer runs {self.device.type}/{self.dtype}")
            if adaptive.scaler is None:
                adaptive.scaler = self.scaler
            return adaptive
        options = {} if adaptive is True else dict(adaptive)
        options.setdefault("sample_every", self.log_every)
        return AdaptivePrecision(self.model, self.device.type, self.dtype, scaler=self.scaler, **options)

    def _region(self):
        if self.adaptive is not None:
            return self.adaptive.autocast()
        if self._policy is None:
            return autocast(device_type=self.device.type, enabled=False)
        return autocast(device_type=self.device.type, policy=self._policy)

    # ---- data ----
    # What fit() and evaluate() read. Tensors and Datasets are batched (and for training shuffled,
    # per (seed, epoch)) by the trainer with its batch_size; a DataLoader or any other iterable of
    # (inputs, targets) batches is read as it is, in its own order and batch sizes, once per epoch.

    def _batches(self, data: Any, name: str, shuffle: bool, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The (inputs, targets) batches of one pass over `data`, on the trainer's device."""
        kind = _data_kind(data, name)
        if kind == "tensors":
            inputs, targets = data
            order = self._sample_order(len(inputs), epoch) if shuffle else torch.arange(len(inputs))
            for start in range(0, len(inputs), self.batch_size):
                index = order[start:start + self.batch_size]
                yield self._to_device(inputs[index]), self._to_device(targets[index])
            return
        if kind == "dataset":
            generator = self._epoch_generator(epoch)
            batches = torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, generator=generator)
        elif kind == "iterable dataset":
            # An IterableDataset yields samples in its own order: batched here, never shuffled.
            batches = torch.utils.data.DataLoader(data, batch_size=self.batch_size)
        else:
            batches = data
            sampler = getattr(data, "sampler", None)
            if (shuffle and isinstance(data, torch.utils.data.DataLoader)
                    and callable(getattr(sampler, "set_epoch", None))):
                # A DistributedSampler shuffles per epoch only when told the epoch (each rank its part).
                sampler.set_epoch(epoch)
        for index, batch in enumerate(batches):
            inputs, targets = _check_batch(batch, name, index)
            yield self._to_device(inputs), self._to_device(targets)

    def _epoch_generator(self, epoch: int) -> torch.Generator:
        # A generator per (seed, epoch): resuming at an epoch replays the same order.
        return torch.Generator().manual_seed(self.seed * 100003 + epoch)

    def _sample_order(self, count: int, epoch: int) -> torch.Tensor:
        """The order in which training on a pair of tensors visits its `count` samples in `epoch`."""
        return torch.randperm(count, generator=self._epoch_generator(epoch))

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        # An asynchronous copy only from pinned host memory to the GPU: from pageable memory it would
        # be synchronous anyway, and a non_blocking copy to the CPU could be read before it lands.
        non_blocking = self.device.type == "cuda" and tensor.device.type == "cpu" and tensor.is_pinned()
        return tensor.to(self.device, non_blocking=non_blocking)

    def _batch_count(self, data: Any) -> int | None:
        """Batches per epoch, or None where `data` has no len() (a generator, an unsized iterable)."""
        kind = _data_kind(data, "data")
        if kind == "tensors":
            return math.ceil(len(data[0]) / self.batch_size)
        if kind == "dataset":
            return math.ceil(len(data) / self.batch_size)
        try:
            length = len(data)  # a DataLoader's len() is its number of batches; a list of batches', too
        except TypeError:
            return None
        return math.ceil(length / self.batch_size) if kind == "iterable dataset" else length

    # ---- one step ----
    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with self._region():
            loss = self.loss_fn(self.model(inputs), targets)
        self.scaler.scale(loss).backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.diagnose:
            self._record_diagnostics(params)
        if self.adaptive is not None:
            self.adaptive.after_backward(loss)
        step_options = {} if self.grad_clip is None else self._clip(params)
        self.scaler.step(self.optimizer, **step_options)
        self.scaler.update()
        return loss.detach().float()

    def _clip(self, params: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gradient-norm clipping with torch's rule, coef = min(1, grad_clip / (norm + 1e-6)), on the
        device. With loss scaling the norm comes out of the unscale pass (unscale, inf/NaN check and
        norm: one read of the gradients). An ampkit optimizer then takes the coefficient into its
        fused step (returned as step options), so clipping costs no pass of its own; any other
        optimizer gets its gradients multiplied here."""
        if self.scaler.is_enabled():
            norm = self.scaler.unscale_(self.optimizer, compute_norm=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
            if hasattr(norm, "full_tensor"):  # DTensor gradients (FSDP2, TP): the norm of the whole model
                norm = norm.full_tensor()
        if isinstance(self.optimizer, ampkit_optim._MasterWeightOptimizer):
            # torch.nn.utils.clip_grads_with_norm_'s arithmetic, without its multiply.
            return {"clip_coef": torch.clamp(self.grad_clip / (norm + 1e-6), max=1.0)}
        torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm, foreach=True)
        return {}

    def _record_diagnostics(self, params: Sequence[torch.Tensor]) -> None:
        """Which module's gradient went non-finite first, and how much of the gradient fp16 would lose."""
        flags = torch.stack([~torch.isfinite(p.grad).all() for p in params])
        self._pending_non_finite.append((self.global_step, flags))
        if self.global_step % self.log_every == 0:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
            total = sum(p.grad.numel() for p in params)
            tiny = sum(((p.grad.float().abs() / scale < FP16_SMALLEST_SUBNORMAL) & (p.grad != 0)).sum() for p in params)
            self.history.fp16_underflow_fraction.append((self.global_step, float(tiny) / max(total, 1)))

    def _flush(self, losses: list[torch.Tensor], skipped: list[torch.Tensor], scales: list[torch.Tensor],
               epochs_done: int | None = None) -> list[PrecisionChange]:
        """Moves the steps' device-side records to the history (one host sync for many steps), and
        lets the adaptive controller decide. Returns its new decisions."""
        if not losses:
            return []
        loss_values = torch.stack(losses).cpu().tolist()
        skip_values = [bool(v) for v in torch.stack(skipped).cpu().tolist()]
        scale_values = torch.stack(scales).cpu().tolist()
        first = self.global_step - len(losses)
        too_many_skips = None
        for offset, (loss, skip, scale) in enumerate(zip(loss_values, skip_values, scale_values)):
            self.history.loss.append(loss)
            self.history.skipped.append(skip)
            self.history.scale.append(scale)
            non_finite_step = skip or not math.isfinite(loss)
            self._consecutive_skips = self._consecutive_skips + 1 if non_finite_step else 0
            if self._consecutive_skips >= self.max_consecutive_skips and too_many_skips is None:
                too_many_skips = RuntimeError(
                    f"{self._consecutive_skips} consecutive steps had a non-finite loss or gradients (up to step "
                    f"{first + offset}); the loss is NaN/inf from the start or the model diverged: check the loss "
                    "function, the data and the learning rate")
        if self.diagnose:
            names = [name for name, p in self.model.named_parameters() if p.requires_grad]
            for step, flags in self._pending_non_finite:
                hits = flags.nonzero().flatten().tolist()
                if hits:
                    self.history.first_non_finite.append((step, names[hits[0]].rsplit(".", 1)[0]))
            self._pending_non_finite.clear()
        losses.clear(); skipped.clear(); scales.clear()
        changes = []
        if self.adaptive is not None:
            changes = self.adaptive.update(self.global_step, self.epoch if epochs_done is None else epochs_done)
            self.history.precision_changes.extend(changes)
        if too_many_skips is not None:
            if not changes:
                raise too_many_skips
            # A precision change at this logging point may be the cure: it gets a fresh count.
            self._consecutive_skips = 0
        return changes

    # ---- public API ----
    def fit(self, train_data: Any, epochs: int, val_data: Any = None) -> TrainHistory:
        """Trains until `epochs` epochs are done in total (a resumed trainer continues from its epoch).

        train_data and val_data: an (inputs, targets) pair of tensors or a torch Dataset (batched by the
        trainer, training data shuffled per epoch), or a DataLoader or any other iterable of
        (inputs, targets) batches (read as given, once per epoch). A one-shot iterator (a generator)
        lasts one pass, so it is refused when more than one epoch is left to train."""
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        from tqdm.auto import tqdm  # noqa: PLC0415

        epochs_left = max(epochs - self.epoch, 0)
        train_kind = _data_kind(train_data, "train_data")
        # Every argument is checked before the first step: nothing trains on a call that must fail.
        _check_passes(train_data, "train_data", epochs_left, epochs, self.epoch)
        if val_data is not None:
            _data_kind(val_data, "val_data")
            _check_passes(val_data, "val_data", epochs_left, epochs, self.epoch)
        # The sizes known before reading; any other input is checked for batches as it is read.
        known_samples = {"tensors": lambda: len(train_data[0]), "dataset": lambda: len(train_data)}.get(train_kind)
        if known_samples is not None and known_samples() == 0 and epochs_left:
            # An epoch over nothing would record a loss of 0 and look like a finished run.
            raise ValueError("train_data is empty: it must hold at least one sample")
        self._pending_non_finite: list[tuple[int, torch.Tensor]] = []
        while self.epoch < epochs:
            self.model.train()
            start = time.perf_counter()
            losses, skipped, scales = [], [], []
            skipped_before = sum(self.history.skipped)
            steps_before = self.global_step
            samples = 0  # counted from the batches themselves: a short last batch counts what it holds
            bar = tqdm(self._batches(train_data, "train_data", True, self.epoch), total=self._batch_count(train_data),
                       disable=not self.progress, desc=f"epoch {self.epoch + 1}/{epochs} [{self.amp_mode}]", leave=False)
            for inputs, targets in bar:
                loss = self._step(inputs, targets)
                samples += len(inputs)
                losses.append(loss)
                if self.scaler.is_enabled():
                    # Device tensors: read at the next logging point, so the step never waits.
                    skipped.append((self.scaler.found_inf > 0).reshape(()).clone())
                    scales.append(self.scaler.get_scale_async().reshape(()).clone())
                else:
                    skipped.append(torch.zeros((), dtype=torch.bool, device=self.device))
                    scales.append(torch.ones((), device=self.device))
                self.global_step += 1
                if self.global_step % self.log_every == 0:
                    changes = self._flush(losses, skipped, scales)
                    elapsed = time.perf_counter() - start
                    postfix = {"loss": f"{self.history.loss[-1]:.4f}", "scale": f"{self.history.scale[-1]:.0f}",
                               "skipped": sum(self.history.skipped) - skipped_before,
                               "samples_per_s": f"{samples / max(elapsed, 1e-9):.0f}"}
                    if self.history.precision_changes:
                        postfix["precision"] = _describe_change(self.history.precision_changes[-1])
                    bar.set_postfix(**postfix)
                    self._announce(changes, bar)
            self._announce(self._flush(losses, skipped, scales, epochs_done=self.epoch + 1), bar)
            bar.close()
            seconds = time.perf_counter() - start
            steps = self.global_step - steps_before
            if steps == 0:
                # Never a silent epoch of nothing: the summary would claim a finished epoch.
                raise ValueError(f"train_data is empty: it gave no batches in epoch {self.epoch + 1}; it must hold at "
                                 f"least one sample{_empty_reason(train_data)}")
            epoch_losses = self.history.loss[-steps:]
            finite = [v for v in epoch_losses if math.isfinite(v)]
            summary = {"epoch": self.epoch + 1, "loss": sum(finite) / max(len(finite), 1), "seconds": seconds,
                       "steps": steps, "samples": samples, "samples_per_s": samples / seconds,
                       "skipped_steps": sum(self.history.skipped) - skipped_before,
                       "scale": self.history.scale[-1] if self.history.scale else 1.0}
            if val_data is not None:
                summary.update({f"val_{k}": v for k, v in self._evaluate(val_data, "val_data").items()})
            self.history.epochs.append(summary)
            self.epoch += 1
            if self.progress:
                print(self.format_summary(summary, epochs), flush=True)
        return self.history

    def _announce(self, changes: list[PrecisionChange], bar: Any) -> None:
        """A precision decision gets a line of its own above the progress bar."""
        if self.progress:
            for change in changes:
                bar.write(f"ampkit precision change at {change}")

    def format_summary(self, summary: dict, epochs: int) -> str:
        parts = [f"epoch {summary['epoch']}/{epochs} [{self.amp_mode}]", f"loss {summary['loss']:.4f}"]
        if "val_loss" in summary:
            parts.append(f"val_loss {summary['val_loss']:.4f}")
        if "val_accuracy" in summary:
            parts.append(f"val_acc {summary['val_accuracy']:.4f}")
        parts += [f"{summary['samples_per_s']:.0f} samples/s", f"scale {summary['scale']:.0f}",
                  f"skipped {summary['skipped_steps']}"]
        if self.adaptive is not None and self.adaptive.promoted_modules:
            parts.append(f"fp32 modules {','.join(self.adaptive.promoted_modules)}")
        return "  ".join(parts)

    def evaluate(self, data: Any) -> dict[str, float]:
        """Mean loss, and accuracy when the model classifies (2-D outputs, integer targets), over one
        pass of `data`: anything fit() takes as train_data."""
        return self._evaluate(data, "data")

    @torch.no_grad()
    def _evaluate(self, data: Any, name: str) -> dict[str, float]:
        self.model.eval()
        total_loss, correct, count, classifies, batches = 0.0, 0, 0, False, 0
        try:
            for inputs, targets in self._batches(data, name, False, 0):
                with self._region():
                    outputs = self.model(inputs)
                    loss = self.loss_fn(outputs, targets)
                total_loss += float(loss) * len(inputs)
                classifies = outputs.dim() == 2 and not targets.is_floating_point()
                if classifies:
                    correct += int((outputs.argmax(dim=1) == targets).sum())
                count += len(inputs)
                batches += 1
        finally:
            self.model.train()
        if batches == 0 and isinstance(data, collections.abc.Iterator):
            # A used-up generator would otherwise report a loss of 0.
            raise ValueError(f"{name} is empty: it gave no batches{_empty_reason(data)}")
        result = {"loss": total_loss / max(count, 1)}
        if classifies:
            result["accuracy"] = correct / max(count, 1)
        return result

    def _signature(self) -> dict[str, tuple]:
        return {name: (tuple(t.shape), str(t.dtype)) for name, t in self.model.state_dict().items()}

    def save(self, path: str | os.PathLike) -> None:
        """Everything needed to continue bit for bit: model, optimizer, scaler, history, counters, RNG."""
        state = {
            "format": "ampkit.Trainer/1", "signature": self._signature(), "amp_mode": self.amp_mode,
            "master_weights": self.master_weights, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "history": self.history.state_dict(), "epoch": self.epoch, "global_step": self.global_step,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "adaptive": None if self.adaptive is None else self.adaptive.state_dict(),
        }
        temporary = f"{os.fspath(path)}.tmp"
        torch.save(state, temporary)
        os.replace(temporary, path)  # a crash mid-save never leaves a half-written checkpoint at `path`

    def resume(self, path: str | os.PathLike, *, weights_only: bool = True) -> "Trainer":
        """Loads a checkpoint written by save(). Refuses with a ValueError/TypeError naming the problem,
        and changes nothing, if the file is damaged, hostile or belongs to another model/configuration.

        The file is read with ``torch.load(weights_only=True)``: only tensors, numbers, strings and plain
        containers are unpickled (all that save() writes), so a checkpoint cannot run code; one that holds
        any other object is refused before anything in it runs. ``weights_only=False`` is the legacy full
        unpickler, an explicit opt-in for a file you wrote yourself and trust: it can run arbitrary code
        (it warns). The contents are checked the same way either way."""
        name = os.fspath(path)
        state = self._read_checkpoint(name, weights_only)
        history = self._check_checkpoint(name, state)
        # Load into the live objects only after every check; a failure puts them back as they were.
        model_backup = {k: v.clone() for k, v in self.model.state_dict().items()}
        restore_optimizer = _optimizer_restorer(self.optimizer)
        scaler_backup = self.scaler.state_dict()
        adaptive_backup = None if self.adaptive is None else self.adaptive.state_dict()
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            if self.adaptive is not None:
                self.adaptive.load_state_dict(state["adaptive"])
        except Exception as error:
            self.model.load_state_dict(model_backup)
            restore_optimizer()
            self.scaler.load_state_dict(scaler_backup)
            if self.adaptive is not None:
                self.adaptive.load_state_dict(adaptive_backup)
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(f"checkpoint {name!r} does not fit this trainer: {error}") from error
        self.history, self.epoch, self.global_step = history, state["epoch"], state["global_step"]
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        global _last_history
        _last_history = weakref.ref(self.history)
        return self

    @staticmethod
    def _read_checkpoint(name: str, weights_only: bool) -> Any:
        """torch.load with weights_only as asked, every failure as a ValueError naming the file."""
        if not isinstance(weights_only, bool):
            raise TypeError(f"Trainer.resume: weights_only must be a bool, got {type(weights_only).__name__}")
        if not weights_only:
            warnings.warn(f"Trainer.resume({name!r}, weights_only=False) unpickles the file with Python's full "
                          "pickle: a checkpoint from anyone else can run arbitrary code on this machine. Use it only "
                          "for a file you wrote yourself; Trainer.save() files load with the default "
                          "weights_only=True.", UserWarning, stacklevel=3)
        try:
            return torch.load(name, map_location="cpu", weights_only=weights_only)
        except Exception as error:  # truncated, not a torch file, unreadable, or refused by the safe unpickler
            message = str(error)
            if weights_only and "Weights only load failed" in message:
                # torch's own text suggests weights_only=False; keep only the reason.
                reason = " ".join(line.strip() for line in message.splitlines()[1:]
                                  if line.strip() and not line.startswith("Check the documentation"))
                raise ValueError(f"checkpoint {name!r} was refused by safe loading (weights_only=True): it holds "
                                 f"an object that is not a tensor or plain data ({reason}); nothing in it was run. "
                                 "Trainer.save() never writes one: if you wrote this file yourself and trust it, "
                                 "Trainer.resume(path, weights_only=False) loads it with the full unpickler") from None
            raise ValueError(f"checkpoint {name!r} cannot be read ({type(error).__name__}: {error})") from error

    def _check_checkpoint(self, name: str, state: Any) -> TrainHistory:
        """Every entry of a loaded checkpoint against this trainer, before anything is changed.
        Returns the checkpoint's history."""
        if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {name!r} is not an ampkit.Trainer checkpoint")
        missing = [key for key in _CHECKPOINT_ENTRIES if key not in state and key not in _OPTIONAL_ENTRIES]
        if missing:
            raise ValueError(f"checkpoint {name!r} is missing {missing}")
        unexpected = sorted(repr(key) for key in state if key not in _CHECKPOINT_ENTRIES)
        if unexpected:
            raise ValueError(f"checkpoint {name!r} has unexpected entries {', '.join(unexpected)}")
        for key, (expected, description) in _CHECKPOINT_ENTRIES.items():
            value = state.get(key)
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
                raise TypeError(f"checkpoint {name!r}: wrong type for {key!r}: expected {description}, "
                                f"got {type(value).__name__}")
        for key in ("epoch", "global_step"):
            if state[key] < 0:
                raise ValueError(f"checkpoint {name!r}: {key!r} must be >= 0, got {state[key]}")
        theirs = state["signature"]
        if not all(isinstance(k, str) and _is_signature_entry(v) for k, v in theirs.items()):
            raise TypeError(f"checkpoint {name!r}: wrong type for 'signature': expected a dict of "
                            "name -> (shape tuple, dtype name)")
        mine = self._signature()
        if mine != theirs:
            differing = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
            raise ValueError(f"checkpoint {name!r} is for another model: differing entries {differing}")
        if (state["amp_mode"], state["master_weights"]) != (self.amp_mode, self.master_weights):
            raise ValueError(f"checkpoint {name!r} was saved with amp={state['amp_mode']}, "
                             f"master_weights={state['master_weights']}; this trainer has amp={self.amp_mode}, "
                             f"master_weights={self.master_weights}")
        # The weights themselves, against the model (the signature above is only what the file claims).
        current = self.model.state_dict()
        if set(state["model"]) != set(current):
            differing = sorted(map(str, set(state["model"]) ^ set(current)))[:3]
            raise ValueError(f"checkpoint {name!r}: 'model' does not hold this model's entries: differing {differing}")
        for key, value in state["model"].items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"checkpoint {name!r}: wrong type for 'model.{key}': expected a tensor, "
                                f"got {type(value).__name__}")
            if ((value.shape, value.dtype) != (current[key].shape, current[key].dtype) or value.layout != torch.strided
                    or value.device.type == "meta"):
                raise ValueError(f"checkpoint {name!r}: 'model.{key}' is a {value.dtype} {value.layout} tensor of shape "
                                 f"{tuple(value.shape)} on {value.device}, the model needs a {current[key].dtype} "
                                 f"tensor of shape {tuple(current[key].shape)} with data")
        self._check_rng_states(name, state["rng_cpu"], state["rng_cuda"])
        theirs_adaptive = state.get("adaptive")
        if (theirs_adaptive is None) != (self.adaptive is None):
            raise ValueError(f"checkpoint {name!r} was saved {'without' if theirs_adaptive is None else 'with'} "
                             f"adaptive precision; this trainer has adaptive={self.adaptive is not None}")
        if self.adaptive is not None:
            try:
                self.adaptive.check_state_dict(theirs_adaptive)
            except (TypeError, ValueError) as error:
                raise type(error)(f"checkpoint {name!r}: 'adaptive': {error}") from None
        try:
            return TrainHistory.from_state_dict(state["history"])
        except (TypeError, ValueError) as error:
            raise type(error)(f"checkpoint {name!r}: {error}") from None

    @staticmethod
    def _check_rng_states(name: str, rng_cpu: torch.Tensor, rng_cuda: list | None) -> None:
        """The generator states, tried on a scratch generator: setting them comes last, after the
        model and optimizer have loaded, so it must not fail."""
        try:
            torch.Generator().set_state(rng_cpu)
        except Exception as error:
            raise ValueError(f"checkpoint {name!r}: 'rng_cpu' is not a CPU generator state ({error})") from None
        if rng_cuda is None or not torch.cuda.is_available():
            return
        if len(rng_cuda) > torch.cuda.device_count():
            raise ValueError(f"checkpoint {name!r}: 'rng_cuda' holds {len(rng_cuda)} CUDA generator states, this "
                             f"machine has {torch.cuda.device_count()} GPUs")
        for index, value in enumerate(rng_cuda):
            expected = torch.cuda.get_rng_state(index)
            if not isinstance(value, torch.Tensor) or value.dtype != expected.dtype or value.shape != expected.shape:
                raise ValueError(f"checkpoint {name!r}: 'rng_cuda[{index}]' must be a {expected.dtype} tensor of shape "
                                 f"{tuple(expected.shape)} (a CUDA generator state), got {value!r:.120}")


# ---- what fit() and evaluate() accept as data ----
# The two forms the trainer batches itself first; then (an error says which reading failed) the iterables.
_DATA_KINDS = "an (inputs, targets) pair of tensors or a torch Dataset"


def _is_tensor_pair(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(t, torch.Tensor) for t in value)


def _describe(value: Any) -> str:
    """A short description of a value for an error message: its type and enough of its contents."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} Tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(type(item).__name__ for item in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"a {type(value).__name__} of {len(value)} ({items})"
    if isinstance(value, collections.abc.Mapping):
        return f"a {type(value).__name__} with keys {list(value)[:4]!r:.80}"
    return f"{type(value).__name__} {value!r:.60}"


def _data_kind(data: Any, name: str) -> str:
    """'tensors', 'dataset', 'iterable dataset', 'iterator' (one pass only) or 'iterable' (a DataLoader,
    a list of batches, any re-iterable); a TypeError naming `name` for anything else."""
    if _is_tensor_pair(data):
        inputs, targets = data
        if len(inputs) != len(targets):
            raise ValueError(f"inputs and targets must have the same length, got {len(inputs)} and {len(targets)}")
        return "tensors"
    if isinstance(data, torch.utils.data.IterableDataset):
        return "iterable dataset"
    if isinstance(data, torch.utils.data.Dataset):
        return "dataset"
    if isinstance(data, (tuple, list)):
        # Not a pair of tensors: then it must be a sequence of batches. Checked whole, here, so that
        # a malformed list fails before any step and says both readings it failed.
        for index, batch in enumerate(data):
            if not _is_tensor_pair(batch):
                raise TypeError(f"{name} must be {_DATA_KINDS}, got {type(data).__name__} (and read as a "
                                f"{type(data).__name__} of (inputs, targets) batches, its batch {index} is not such a "
                                f"pair of tensors: got {_describe(batch)})")
        return "iterable"
    if (isinstance(data, (torch.Tensor, str, bytes, collections.abc.Mapping))
            or not isinstance(data, collections.abc.Iterable)):
        raise TypeError(f"{name} must be {_DATA_KINDS}, got {_describe(data)} (nor is that a DataLoader or "
                        "another iterable of (inputs, targets) batches)")
    return "iterator" if isinstance(data, collections.abc.Iterator) else "iterable"


def _check_batch(batch: Any, name: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch read from a DataLoader or iterable: an (inputs, targets) pair of tensors whose inputs
    have a batch dimension (its size is what throughput counts)."""
    if not _is_tensor_pair(batch):
        raise TypeError(f"{name}: batch {index} must be an (inputs, targets) pair of tensors, got {_describe(batch)}")
    inputs, targets = batch
    if inputs.dim() == 0:
        raise ValueError(f"{name}: batch {index} inputs must have a batch dimension, got a 0-dim tensor")
    return inputs, targets


def _check_passes(data: Any, name: str, passes: int, epochs: int, done: int) -> None:
    """A one-shot iterator is read once: refuse it up front when fit() needs more passes than one."""
    if passes > 1 and isinstance(data, collections.abc.Iterator):
        raise ValueError(f"{name} is a one-shot iterator ({type(data).__name__}): it can be read for one epoch, "
                         f"but fit(epochs={epochs}) has {passes} epochs left to run (the trainer has done {done}); "
                         "pass a re-iterable instead (a DataLoader, a list of batches, a Dataset, or an object "
                         "whose __iter__ starts a new pass), or call fit(..., epochs=trainer.epoch + 1) with a "
                         "fresh iterator for each epoch")


def _empty_reason(data: Any) -> str:
    if isinstance(data, collections.abc.Iterator):
        return f" ({type(data).__name__} is a one-shot iterator: it was already used up)"
    if isinstance(data, torch.utils.data.DataLoader) and data.drop_last:
        return " (the DataLoader has drop_last=True and fewer samples than one batch)"
    return ""


_CHECKPOINT_FORMAT = "ampkit.Trainer/1"
# Every entry Trainer.save() writes: the types it must have and how an error names them.
_CHECKPOINT_ENTRIES: dict[str, tuple[tuple[type, ...], str]] = {
    "format": ((str,), "a str"), "signature": ((dict,), "a dict"), "amp_mode": ((str,), "a str"),
    "master_weights": ((bool,), "a bool"), "model": ((dict,), "a dict of tensors"),
    "optimizer": ((dict,), "an optimizer state_dict"), "scaler": ((dict,), "a GradScaler state_dict"),
    "history": ((dict,), "a TrainHistory state_dict"), "epoch": ((int,), "an int"),
    "global_step": ((int,), "an int"), "rng_cpu": ((torch.Tensor,), "a uint8 tensor"),
    "rng_cuda": ((list, tuple, type(None)), "a list of uint8 tensors or None"),
    "adaptive": ((dict, type(None)), "an AdaptivePrecision state_dict or None"),
}
# Entries a checkpoint from before they existed may lack (read as None).
_OPTIONAL_ENTRIES = frozenset({"adaptive"})


def _is_signature_entry(value: Any) -> bool:
    """(shape tuple, dtype name): what Trainer._signature() writes for each state entry."""
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in value[0]) and isinstance(value[1], str))


def _optimizer_restorer(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """Returns a function that puts `optimizer` back as it is now: the same state and group objects,
    holding the same values. (A load_state_dict may copy into the state tensors, as ampkit's does, or
    replace them, as torch's does; either way the restore undoes it.)"""
    state, groups = optimizer.state, optimizer.param_groups
    saved_state = [(entries, {key: (value, value.clone() if isinstance(value, torch.Tensor) else value)
                              for key, value in entries.items()}) for entries in state.values()]
    saved_keys = list(state.keys())
    saved_groups = [(group, dict(group)) for group in groups]

    def restore() -> None:
        with torch.no_grad():
            state.clear()
            for param, (entries, values) in zip(saved_keys, saved_state):
                entries.clear()
                for key, (original, value) in values.items():
                    entries[key] = original.copy_(value) if isinstance(original, torch.Tensor) else original
                state[param] = entries
        for group, contents in saved_groups:
            group.clear()
            group.update(contents)
        optimizer.state, optimizer.param_groups = state, groups

    return restore


def _describe_change(change: PrecisionChange) -> str:
    short = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
    old, new = short.get(change.from_dtype, change.from_dtype), short.get(change.to_dtype, change.to_dtype)
    return f"{change.target} {old}->{new}"


def plot_history(path: str | os.PathLike, history: TrainHistory | Trainer | None = None) -> str:
    """Writes a PNG of loss, loss scale and skipped steps over steps (default: the latest trainer's)."""
    if isinstance(history, Trainer):
        history = history.history
    if history is None:
        history = _last_history() if _last_history is not None else None
        if history is None:
            raise ValueError("plot_history: no history given and no Trainer has run")
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    steps = list(range(len(history.loss)))
    figure, (loss_axis, scale_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    loss_axis.plot(steps, history.loss, linewidth=1, label="loss")
    skipped = history.overflow_steps
    if skipped:
        finite = [history.loss[s] if math.isfinite(history.loss[s]) else float("nan") for s in skipped]
        loss_axis.scatter(skipped, finite, color="red", s=12, zorder=3, label=f"skipped steps ({len(skipped)})")
    if all(v > 0 for v in history.loss if math.isfinite(v)):
        loss_axis.set_yscale("log")  # the late, small losses stay readable
    loss_axis.set_ylabel("training loss")
    loss_axis.legend(loc="upper right")
    loss_axis.grid(alpha=0.3)
    scale_axis.plot(steps, history.scale, color="tab:green", linewidth=1)
    for s in skipped:
        scale_axis.axvline(s, color="red", alpha=0.25, linewidth=0.8)
    scale_axis.set_yscale("log", base=2)
    if history.scale and not skipped and min(history.scale) == max(history.scale) == 1.0:
        scale_axis.text(0.5, 0.5, "no loss scaling (bf16 or fp32: fp32's exponent range)", transform=scale_axis.transAxes,
                        ha="center", va="center", color="gray")
    for index, change in enumerate(history.precision_changes):
        for axis in (loss_axis, scale_axis):
            axis.axvline(change.step, color="tab:purple", linestyle="--", linewidth=1,
                         label="precision change" if axis is loss_axis and index == 0 else None)
        loss_axis.annotate(_describe_change(change), xy=(change.step, 1.0), xycoords=("data", "axes fraction"),
                           xytext=(3, -12 - 11 * (index % 4)), textcoords="offset points", fontsize=7,
                           color="tab:purple")
    if history.precision_changes:
        loss_axis.legend(loc="upper right")
    scale_axis.set_ylabel("loss scale")
    scale_axis.set_xlabel("optimizer step")
    scale_axis.grid(alpha=0.3)
    figure.suptitle("ampkit training history")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return os.fspath(path)
