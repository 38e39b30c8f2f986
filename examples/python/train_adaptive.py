"""Adaptive precision on scikit-learn's digits: an MLP with one Linear layer whose activations pass
fp16's largest value (65,504) before a LayerNorm brings them back, trained three ways on the CPU:

  fp32       the reference;
  fp16       plain AMP: every step overflows in the forward pass; loss scaling cannot help, and the
             trainer stops with its consecutive-skip error;
  adaptive   fp16 with ``adaptive=True``: ampkit blames the layer whose output went non-finite,
             moves exactly that layer to FP32 at a logging point, and the rest trains in fp16.

Prints the decision, the skip counts and the test accuracies, and writes the adaptive run's history
plot (the dashed line marks the promotion).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

# The overflowing layer's weights are scaled by this: its outputs reach ~1e5 (fp16 tops out at 65,504)
# while the weights themselves (|w| <= 0.09 * 5e5 = 44,000) still fit in fp16.
OVERFLOW_GAIN = 5e5
ACCURACY_GAP = 0.01  # adaptive vs FP32 on the 360-image test set: about 3 images


def build_model(seed: int = 0, gain: float = OVERFLOW_GAIN):
    """The MLP; `gain` scales the middle layer's weights (1.0: a model that never overflows)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(collections.OrderedDict(
        fc=nn.Linear(64, 128), act=nn.ReLU(), boom=nn.Linear(128, 128), norm=nn.LayerNorm(128),
        act2=nn.ReLU(), head=nn.Linear(128, 10)))
    with torch.no_grad():
        model.boom.weight.mul_(gain)
        model.boom.bias.zero_()
    return model


def load_data():
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=0.2, random_state=0, stratify=digits.target)
    return (inputs[train_idx], labels[train_idx]), (inputs[test_idx], labels[test_idx])


def train(amp: str, adaptive: bool, epochs: int, log_every: int = 10):
    import ampkit

    train_data, test_data = load_data()
    trainer = ampkit.Trainer(build_model(), amp=amp, adaptive=adaptive, batch_size=64, lr=1e-3, seed=0,
                             self_check=False, progress=False, log_every=log_every)
    start = time.perf_counter()
    error = None
    try:
        trainer.fit(train_data, epochs=epochs)
    except RuntimeError as failure:
        error = str(failure)
    seconds = time.perf_counter() - start
    accuracy = None if error else trainer.evaluate(test_data)["accuracy"]
    return trainer, accuracy, seconds, error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 epochs (a smoke test; the accuracy gap is not checked)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--plot", default="adaptive_history.png")
    args = parser.parse_args()
    import torch

    import ampkit

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    # The overflowing layer's huge weights make its FP32 backward produce subnormals, several times
    # slower on x86 CPUs; every run here flushes them alike.
    torch.set_flush_denormal(True)
    epochs = args.epochs or (3 if args.quick else 16)
    reference, reference_accuracy, reference_seconds, _ = train("fp32", False, epochs)
    plain, _, _, plain_error = train("fp16", False, epochs)
    adaptive, adaptive_accuracy, adaptive_seconds, adaptive_error = train("fp16", True, epochs)
    if adaptive_error:
        print(f"adaptive run failed: {adaptive_error}", file=sys.stderr)
        return 1
    history = adaptive.history
    print(f"\ndigits MLP with an overflowing layer, {epochs} epochs on the CPU")
    print(f"plain fp16: {'stopped: ' + plain_error[:110] if plain_error else 'finished (unexpected)'}")
    for change in history.precision_changes:
        print(f"adaptive decision: {change}")
    promoted_at = history.precision_changes[0].step if history.precision_changes else len(history.skipped)
    after = history.skipped[promoted_at:]
    print(f"skipped steps: {sum(history.skipped)} of {len(history.skipped)} "
          f"({sum(after)} of {len(after)} after the promotion)")
    print(f"test accuracy: fp32 {reference_accuracy:.4f} ({reference_seconds:.1f} s), adaptive fp16 "
          f"{adaptive_accuracy:.4f} ({adaptive_seconds:.1f} s)")
    path = ampkit.plot_history(args.plot, history)
    print(f"history plot: {os.path.abspath(path)}")
    ok = plain_error is not None and [c.target for c in history.precision_changes] == ["boom"]
    if not args.quick:
        ok = ok and abs(adaptive_accuracy - reference_accuracy) <= ACCURACY_GAP
        print(f"accuracy gap <= {ACCURACY_GAP}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
