"""A 500-step mixed-precision training run with injected non-finite gradients, checkpointing and
resume: the workload of tests/python/test_fault_injection.py.

A small MLP holds bf16 weights (``ampkit.optim.to_low_precision``); ``ampkit.optim.AdamW`` keeps
FP32 masters; ``ampkit.GradScaler`` does fp16-style dynamic loss scaling. At seeded random steps
(about 1 in 20) one gradient element is overwritten with inf, -inf or NaN after the backward pass.
For every step the script records whether the scaler skipped it and SHA-256 digests of the
masters, the model weights, the optimizer state (exp_avg, exp_avg_sq) and the step counters,
before and after ``scaler.step`` / ``scaler.update``, so the test can check bitwise that an
injected step changed nothing and a clean one changed the weights.

Usage (the test drives it):
    fault_injection_run.py --device cpu --out final.pt                       # uninterrupted
    fault_injection_run.py --checkpoint ck.pt --checkpoint-at 250 --kill-after-checkpoint
    fault_injection_run.py --checkpoint ck.pt --resume --out final.pt        # continues to the end

Checkpoints hold the model, the optimizer (masters and state included), the scaler, the step, the
RNG states and the records so far; they are written atomically (temporary file, fsync, rename,
fsync of the directory), so a kill at any moment leaves either the old file or the complete new one.
``load_checkpoint`` refuses a damaged file or one from another model with a ValueError and leaves
the running state as it was.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import sys

import torch
from torch import nn
from torch.nn import functional as F

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "python"))

import ampkit  # noqa: E402

CHECKPOINT_FORMAT = "ampkit.fault_injection/1"
INPUTS, OUTPUTS, BATCH = 16, 4, 32
INJECTION_RATE = 1 / 20
INJECTION_KINDS = (float("inf"), float("-inf"), float("nan"))


# ---- the run's pieces ----

def build(device: str, hidden: int = 32, seed: int = 0):
    """Model (bf16 weights), AdamW with FP32 masters, GradScaler: the same start for every run."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(INPUTS, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                          nn.Linear(hidden, OUTPUTS))
    ampkit.optim.to_low_precision(model, torch.bfloat16)
    model.to(device)
    optimizer = ampkit.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    # A small initial scale and a short growth interval, so the scale both grows and backs off
    # within 500 steps; max_scale keeps bf16 gradients far from a natural overflow, so every skip
    # is an injected one.
    scaler = ampkit.GradScaler(device, init_scale=2.0**8, growth_interval=10, max_scale=2.0**12)
    return model, optimizer, scaler


def injection_schedule(steps: int, seed: int, model: nn.Module) -> dict[int, tuple[int, int, float]]:
    """{step: (parameter index, flat element index, value)} for the poisoned steps; seeded, so every
    process of a run computes the same schedule."""
    chooser = random.Random(seed)
    sizes = [p.numel() for p in model.parameters()]
    schedule = {}
    for step in range(steps):
        if chooser.random() < INJECTION_RATE:
            param_index = chooser.randrange(len(sizes))
            schedule[step] = (param_index, chooser.randrange(sizes[param_index]), chooser.choice(INJECTION_KINDS))
    return schedule


def target_function(x: torch.Tensor) -> torch.Tensor:
    """What the MLP learns: a fixed smooth map (so the loss really decreases)."""
    return torch.stack([x[:, :4].sum(1).sin(), x[:, 4:8].prod(1).tanh(), (x[:, 8:12] ** 2).mean(1),
                        x[:, 12:].max(1).values], dim=1)


def _digest(tensors) -> str:
    hasher = hashlib.sha256()
    for tensor in tensors:
        data = tensor.detach().contiguous().cpu().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        hasher.update(str((tuple(tensor.shape), data.dtype)).encode())
        hasher.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return hasher.hexdigest()


def digests(model: nn.Module, optimizer) -> dict[str, str]:
    params = list(model.parameters())
    states = [optimizer.state[p] for p in params]
    return {
        "masters": _digest(optimizer.master_params()),
        "model": _digest(params),
        "optimizer_state": _digest([s[k] for s in states for k in ("exp_avg", "exp_avg_sq")]),
        "step_counters": _digest([s["step"] for s in states]),
    }


def running_state_digest(model, optimizer, scaler) -> str:
    """One digest of everything a failed load must leave alone (weights, optimizer, scaler)."""
    parts = digests(model, optimizer)
    parts["scaler"] = repr(sorted(scaler.state_dict().items()))
    parts["lr"] = repr([g["lr"] for g in optimizer.param_groups])
    return hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()


def train_step(model, optimizer, scaler, device: str, injection) -> dict:
    """One iteration; returns its record (whether skipped, the scale, digests before and after)."""
    inputs = torch.randn(BATCH, INPUTS).to(device)
    targets = target_function(inputs)
    optimizer.zero_grad(set_to_none=True)
    with ampkit.autocast(device, dtype=torch.bfloat16):
        loss = F.mse_loss(model(inputs).float(), targets)
    scaler.scale(loss).backward()
    if injection is not None:
        param_index, element, value = injection
        with torch.no_grad():
            list(model.parameters())[param_index].grad.view(-1)[element] = value
    before = digests(model, optimizer)
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return {"skipped": bool(scaler.found_inf.item() > 0), "scale": scale_before, "loss": float(loss.item()),
            "before": before, "after": digests(model, optimizer)}


# ---- checkpoints ----

def model_signature(model: nn.Module) -> dict[str, tuple]:
    return {name: (tuple(t.shape), str(t.dtype)) for name, t in model.state_dict().items()}


def save_checkpoint(path: str, model, optimizer, scaler, step: int, records: list) -> None:
    """Atomic: the complete file appears under `path` (after fsync) or nothing changes there."""
    state = {
        "format": CHECKPOINT_FORMAT, "signature": model_signature(model), "step": step,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "records": records,
    }
    directory = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}.tmp.{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)  # a failed save leaves no debris; `path` is untouched
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # the rename itself survives a crash
    finally:
        os.close(directory_fd)


def load_checkpoint(path: str, model, optimizer, scaler) -> tuple[int, list]:
    """Restores a save_checkpoint() file; returns (step, records). Raises ValueError, naming the file
    and the reason, for a damaged/foreign file; the running state is then exactly as before."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # a checkpoint cannot run code
    except Exception as error:  # truncated, not a torch file, unreadable
        raise ValueError(f"checkpoint {path!r} cannot be read (truncated or damaged?): "
                         f"{type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path!r} is not a {CHECKPOINT_FORMAT} checkpoint")
    mine, theirs = model_signature(model), state["signature"]
    if mine != theirs:
        differing = sorted(set(mine.items()) ^ set(theirs.items()))[:4]
        raise ValueError(f"checkpoint {path!r} is from another model: differing parameters {differing}")
    # Snapshot (real copies: state_dict() shares storage) so a failure half-way restores everything.
    model_backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer_backup = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    groups_backup = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    scaler_backup = scaler.state_dict()
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    except Exception as error:
        model.load_state_dict(model_backup)
        for param, saved in optimizer_backup.items():
            for key, value in saved.items():
                optimizer.state[param][key].copy_(value)
        for group, saved in zip(optimizer.param_groups, groups_backup):
            group.update(saved)
        if scaler_backup:
            scaler.load_state_dict(scaler_backup)
        raise ValueError(f"checkpoint {path!r} does not fit this run: {error}") from error
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["step"], state["records"]


# ---- the run ----

def run(device: str, steps: int, seed: int, checkpoint: str | None, checkpoint_at: int | None,
        kill_after_checkpoint: bool, resume: bool) -> tuple[nn.Module, object, list]:
    model, optimizer, scaler = build(device)
    schedule = injection_schedule(steps, seed, model)
    torch.manual_seed(seed + 1)  # the data stream
    start, records = 0, []
    if resume:
        start, records = load_checkpoint(checkpoint, model, optimizer, scaler)
    for step in range(start, steps):
        if checkpoint_at is not None and step == checkpoint_at:
            save_checkpoint(checkpoint, model, optimizer, scaler, step, records)
            if kill_after_checkpoint:
                print(f"checkpoint written at step {step}; killing this process", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        record = train_step(model, optimizer, scaler, device, schedule.get(step))
        record.update(step=step, injected=step in schedule)
        records.append(record)
    return model, optimizer, records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--checkpoint", help="checkpoint file (written at --checkpoint-at, read by --resume)")
    parser.add_argument("--checkpoint-at", type=int)
    parser.add_argument("--kill-after-checkpoint", action="store_true", help="SIGKILL itself once it is on disk")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", help="final weights, masters, optimizer state and per-step records (torch.save)")
    args = parser.parse_args()
    if (args.checkpoint_at is not None or args.resume) and not args.checkpoint:
        parser.error("--checkpoint-at and --resume need --checkpoint")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (CUDA runs)
    torch.set_num_threads(1)  # the same reduction order in every process: bitwise comparisons
    torch.use_deterministic_algorithms(True)
    model, optimizer, records = run(args.device, args.steps, args.seed, args.checkpoint, args.checkpoint_at,
                                    args.kill_after_checkpoint, args.resume)
    if args.out:
        result = {"model": {k: v.cpu() for k, v in model.state_dict().items()},
                  "masters": [m.cpu() for m in optimizer.master_params()],
                  "optimizer": optimizer.state_dict(), "records": records,
                  "schedule": injection_schedule(args.steps, args.seed, model)}
        temporary = f"{args.out}.tmp"
        torch.save(result, temporary)
        os.replace(temporary, args.out)
    skipped = sum(r["skipped"] for r in records)
    print(f"done: {len(records)} steps, {skipped} skipped, final loss {records[-1]['loss']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
