"""A CNN on scikit-learn's handwritten digits (8x8 images, 1797 samples, shipped offline),
trained in FP32 and with `amp=True`, side by side: accuracy, time, peak memory, and a PNG of
the AMP run's loss, loss scale and skipped steps.

Accuracy parity is the point: both runs must reach ACCURACY_FLOOR on the held-out 20% and differ
by at most ACCURACY_GAP (a 360-image test set moves 0.3% per image; the gap allows ~7 images).

Each mode trains in a process of its own (so its peak memory is its own), and the two take turns
epoch by epoch (which one goes first alternates), so a load that comes and goes on the machine
falls on both alike; the time ratio is the ratio of the median epoch times.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

ACCURACY_FLOOR = 0.95
ACCURACY_GAP = 0.02


def build_model():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def load_data():
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=0.2, random_state=0, stratify=digits.target)
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


def peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def train_one(amp: str, epochs: int, device: str, plot_path: str | None, turns, queue) -> None:
    """Runs in its own process: one epoch each time the parent hands it a turn."""
    import torch

    import ampkit

    torch.manual_seed(0)
    train, test = load_data()
    model = build_model()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline_rss = peak_rss_mb()
    trainer = ampkit.Trainer(model, amp=amp, device=device, lr=2e-3, batch_size=64, seed=0, progress=False)
    epoch_seconds = []
    for epoch in range(1, epochs + 1):
        turns.get()
        start = time.perf_counter()
        trainer.fit(train, epochs=epoch)  # trains up to `epoch` epochs in total: one more
        if device == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - start)
        queue.put(("epoch", epoch_seconds[-1]))
    metrics = trainer.evaluate(test)
    peak = (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else peak_rss_mb() - baseline_rss
    if plot_path:
        ampkit.plot_history(plot_path, trainer.history)
    queue.put(("done", {"amp": trainer.amp_mode, "accuracy": metrics["accuracy"], "loss": metrics["loss"],
                        "seconds": sum(epoch_seconds), "epoch_seconds": epoch_seconds, "peak_mb": peak,
                        "skipped": sum(trainer.history.skipped),
                        "check": str(trainer.amp_check) if trainer.amp_check else "-"}))


def receive(queue, kind: str, process):
    """The next message of `kind` from a training process; None if it died first."""
    import queue as queues

    while True:
        try:
            got, value = queue.get(timeout=5)
        except queues.Empty:
            if not process.is_alive():
                return None
            continue
        if got == kind:
            return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 epochs (a smoke test; the accuracy band is not checked)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--plot", default="digits_amp_history.png")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    epochs = args.epochs or (2 if args.quick else 25)
    context = multiprocessing.get_context("spawn")
    runs = []
    for amp, plot in (("fp32", None), (True, args.plot)):
        turns, queue = context.Queue(), context.Queue()
        process = context.Process(target=train_one, args=(amp, epochs, device, plot, turns, queue))
        process.start()
        runs.append((amp, process, turns, queue))
    results = []
    try:
        for epoch in range(epochs):
            for amp, process, turns, queue in (runs if epoch % 2 == 0 else runs[::-1]):
                turns.put(epoch)
                if receive(queue, "epoch", process) is None:
                    print(f"training with amp={amp} failed (exit code {process.exitcode})", file=sys.stderr)
                    return 1
        for amp, process, _, queue in runs:
            result = receive(queue, "done", process)
            process.join()
            if result is None or process.exitcode != 0:
                print(f"training with amp={amp} failed (exit code {process.exitcode})", file=sys.stderr)
                return 1
            results.append(result)
    finally:
        for _, process, _, _ in runs:
            if process.is_alive():
                process.terminate()

    memory = "peak GPU memory allocated" if device == "cuda" else "peak RSS growth while training"
    print(f"\nhandwritten digits CNN, {epochs} epochs on {device} (memory: {memory})")
    print(f"{'mode':6} {'test accuracy':>13} {'test loss':>9} {'seconds':>8} {'memory MB':>9} {'skipped':>7}")
    for r in results:
        print(f"{r['amp']:6} {r['accuracy']:13.4f} {r['loss']:9.4f} {r['seconds']:8.2f} {r['peak_mb']:9.1f} {r['skipped']:7d}")
    print(f"self-check: {results[1]['check']}")
    fp32, amp = results
    median_ratio = statistics.median(amp["epoch_seconds"]) / statistics.median(fp32["epoch_seconds"])
    print(f"AMP/FP32 time ratio: {median_ratio:.2f}x (median epoch, modes interleaved epoch by epoch; total "
          f"{amp['seconds'] / fp32['seconds']:.2f}x); history plot: {os.path.abspath(args.plot)}")
    if args.quick:
        return 0
    in_band = min(fp32["accuracy"], amp["accuracy"]) >= ACCURACY_FLOOR and abs(fp32["accuracy"] - amp["accuracy"]) <= ACCURACY_GAP
    print(f"accuracy band (both >= {ACCURACY_FLOOR}, gap <= {ACCURACY_GAP}): {'PASS' if in_band else 'FAIL'}")
    return 0 if in_band else 1


if __name__ == "__main__":
    sys.exit(main())
