"""How a YOLO-style trainer wires one `amp=True` argument through ampkit.

The pieces a detector trainer needs, written out instead of hidden in ampkit.Trainer:
  1. the AMP self-check on the user's own model (fall back to FP32 with a warning when it fails),
  2. autocast around the forward pass and the loss,
  3. the loss scaler (unscale before clipping, step skipped on overflow, no host sync),
  4. an exponential moving average (EMA) of the weights, kept in FP32 whatever the model runs in.
The model and data are small stand-ins (a conv net on the handwritten digits); the wiring is the point.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))

import torch
from torch import nn

import ampkit


class ModelEMA:
    """FP32 exponential moving average of a model's weights, ramped up like YOLO's (decay grows
    from 0 to `decay` over the first steps so early, poor weights fade quickly)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, ramp: int = 200) -> None:
        self.ema = copy.deepcopy(model).float().eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates / self.ramp))
        for ema_value, value in zip(self.ema.state_dict().values(), model.state_dict().values()):
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(decay).add_(value.float(), alpha=1 - decay)
            else:
                ema_value.copy_(value)


def build_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.SiLU(),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def train(amp: bool, epochs: int, device: str) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1).div(16).to(device)
    labels = torch.tensor(digits.target).to(device)
    torch.manual_seed(0)
    model = build_model().to(device)

    # 1. The self-check, on the user's model with a real batch; a failure turns AMP off, loudly.
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    if amp:
        verdict = ampkit.check_amp(model, device=device, dtype=dtype, example_input=images[:32])
        print(verdict)
        if not verdict.ok:
            warnings.warn(f"{verdict}; training in FP32", RuntimeWarning)
            amp = False
    # 3. The scaler matters for fp16 only; disabled, its calls pass through, so the loop has one shape.
    scaler = ampkit.GradScaler(device, enabled=amp and dtype == torch.float16)
    optimizer = ampkit.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True, weight_decay=5e-4)
    ema = ModelEMA(model)
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch)).to(device)
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad(set_to_none=True)
            # 2. Autocast around forward and loss only; backward runs in the forward's dtypes.
            with ampkit.autocast(device_type=device, dtype=dtype, enabled=amp):
                loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # before clipping, so the threshold applies to true gradients
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            scaler.step(optimizer)      # skipped on the device when a gradient overflowed
            scaler.update()
            ema.update(model)           # 4. EMA in FP32
    with torch.no_grad():
        accuracy = (ema.ema(images).argmax(1) == labels).float().mean().item()
    return {"amp": amp, "dtype": str(dtype) if amp else "float32", "ema_train_accuracy": accuracy,
            "loss_scale": scaler.get_scale() if scaler.is_enabled() else 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    result = train(amp=True, epochs=1 if args.quick else 10, device=args.device)
    print(f"amp={result['amp']} ({result['dtype']}): EMA model accuracy {result['ema_train_accuracy']:.4f}, "
          f"final loss scale {result['loss_scale']:.0f}")


if __name__ == "__main__":
    main()
