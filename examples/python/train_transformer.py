"""A small GPT-style character language model on a locally generated corpus, trained in FP32 and
with AMP (fused bias+GELU linear layers, low-precision weights with FP32 master weights), side by
side: validation loss and perplexity, time, tokens per second.

The AMP run must reach a validation loss within LOSS_GAP of the FP32 run's (relative): the
low-precision weights and activations cost a little precision, the FP32 masters keep the updates.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

import torch

import ampkit
from tiny_gpt import CharDataset, TinyGPT, generate_corpus, language_model_loss, perplexity

LOSS_GAP = 0.05


def run(amp, train, val, vocabulary, context, epochs, device, width, layers):
    torch.manual_seed(0)
    model = TinyGPT(vocabulary, context, width=width, layers=layers, fused=amp is not False)
    trainer = ampkit.Trainer(model, amp=amp, master_weights=amp is not False, device=device, lr=3e-3,
                             weight_decay=0.01, batch_size=32, grad_clip=1.0, loss_fn=language_model_loss,
                             progress=False, self_check=False)
    start = time.perf_counter()
    trainer.fit(train, epochs=epochs)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    val_loss = trainer.evaluate(val)["loss"]
    tokens = train[0].numel() * epochs
    return {"mode": trainer.amp_mode, "val_loss": val_loss, "perplexity": perplexity(val_loss), "seconds": seconds,
            "tokens_per_s": tokens / seconds, "skipped": sum(trainer.history.skipped)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny corpus and model (smoke test; no loss check)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    context = 64
    corpus = generate_corpus(20_000 if args.quick else 200_000)
    data = CharDataset(corpus, context)
    train, val = data.split()
    width, layers, epochs = (64, 1, 1) if args.quick else (128, 2, 3)
    results = [run(amp, train, val, len(data.vocabulary), context, epochs, args.device, width, layers)
               for amp in (False, True)]
    print(f"\ntiny GPT ({layers} layers, width {width}), {len(corpus):,} characters, {epochs} epochs on {args.device}")
    print(f"{'mode':5} {'val loss':>8} {'perplexity':>10} {'seconds':>8} {'tokens/s':>9} {'skipped':>7}")
    for r in results:
        print(f"{r['mode']:5} {r['val_loss']:8.4f} {r['perplexity']:10.3f} {r['seconds']:8.2f} {r['tokens_per_s']:9.0f} {r['skipped']:7d}")
    fp32, amp = results
    if args.quick:
        return 0
    close = amp["val_loss"] <= fp32["val_loss"] * (1 + LOSS_GAP)
    print(f"AMP validation loss within {LOSS_GAP:.0%} of FP32: {'PASS' if close else 'FAIL'}")
    return 0 if close else 1


if __name__ == "__main__":
    sys.exit(main())
