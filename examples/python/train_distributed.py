"""ampkit with PyTorch's distributed engines: an MLP on scikit-learn's digits, on CPU processes (gloo).

    torchrun --nproc-per-node 2 examples/python/train_distributed.py                  # FSDP2
    torchrun --nproc-per-node 2 examples/python/train_distributed.py --engine ddp
    torchrun --nproc-per-node 2 examples/python/train_distributed.py --engine ddp --bf16-compress
    torchrun --nproc-per-node 4 examples/python/train_distributed.py --checkpoint /tmp/digits-dcp
    torchrun --nproc-per-node 2 examples/python/train_distributed.py --checkpoint /tmp/digits-dcp  # resumes

Every engine uses the same three ampkit pieces, unchanged from a one-process script: ``ampkit.autocast``
(bfloat16), ``ampkit.GradScaler`` (finds the mesh from FSDP2's DTensor gradients by itself, so every
rank skips the same steps) and ``ampkit.optim.AdamW``. With FSDP2 the parameters stay float32 and
``MixedPrecisionPolicy(param_dtype=bfloat16)`` casts them for compute: the sharded float32 parameters
are the master weights, and ampkit's optimizer keeps no second copy. ``--checkpoint`` saves model and
optimizer with torch.distributed.checkpoint (DCP) after training, and resumes from it when it exists;
DCP reshards, so a checkpoint saved on 4 processes loads on 2.
"""
from __future__ import annotations

import argparse
import os
import sys


def build_model():
    from torch import nn

    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def wrap(model, engine: str, bf16_compress: bool):
    import torch
    import torch.distributed as dist

    if engine == "ddp":
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
        if bf16_compress:  # gradients all-reduced in bfloat16: half the traffic
            model.register_comm_hook(dist.group.WORLD, bf16_compress_hook)
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mp_policy=policy)
    return fully_shard(model, mp_policy=policy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("fsdp2", "ddp"), default="fsdp2")
    parser.add_argument("--bf16-compress", action="store_true", help="DDP: bf16_compress_hook")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--checkpoint", default=None, help="DCP directory: resume from it if present, save to it")
    args = parser.parse_args()

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict)

    import ampkit
    import ampkit.distributed

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial model on every rank
    # The digits as 64-feature rows with the 80/20 stratified split, as the adaptive example loads them.
    from train_adaptive import load_data

    (train_x, train_y), (test_x, test_y) = load_data()
    model = wrap(build_model(), args.engine, args.bf16_compress)
    optimizer = ampkit.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-2)
    scaler = ampkit.GradScaler("cpu", init_scale=2.0**12)  # bf16 needs no scaling; shown for fp16 on GPUs

    start_epoch = 0
    resuming = args.checkpoint is not None and os.path.exists(os.path.join(args.checkpoint, ".metadata"))
    if resuming:
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
                 "progress": {"epoch": 0}}
        dcp.load(state, checkpoint_id=args.checkpoint)
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
        scaler.load_state_dict(torch.load(os.path.join(args.checkpoint, "scaler.pt")))
        start_epoch = state["progress"]["epoch"]

    for epoch in range(start_epoch, start_epoch + args.epochs):
        # Each rank its own slice of a per-epoch shuffle (what DistributedSampler does).
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch))[rank::world]
        total, count = torch.zeros(()), 0
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            index = order[start:start + args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            with ampkit.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(train_x[index]), train_y[index])
            scaler.scale(loss).backward()
            norm = scaler.unscale_(optimizer, compute_norm=True)  # the whole model's norm, sharded or not
            optimizer_step_options = {"clip_coef": torch.clamp(1.0 / (norm + 1e-6), max=1.0)}
            scaler.step(optimizer, **optimizer_step_options)
            scaler.update()
            total += loss.detach().float()
            count += 1
        dist.all_reduce(total)
        with torch.no_grad(), ampkit.autocast("cpu", dtype=torch.bfloat16):
            accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
        if rank == 0:
            print(f"epoch {epoch}: loss {total.item() / (count * world):.4f}  test accuracy {accuracy:.3f}  "
                  f"scale {scaler.get_scale():g}", flush=True)

    if args.engine == "fsdp2" and rank == 0:
        copies = ampkit.distributed.fp32_copies(model, optimizer)
        print(f"FP32 copies of the weights held: {copies} (sharded over {world} processes)")
    if args.checkpoint is not None:
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
                 "progress": {"epoch": start_epoch + args.epochs}}
        dcp.save(state, storage_writer=dcp.FileSystemWriter(args.checkpoint, overwrite=True))
        if rank == 0:
            torch.save(scaler.state_dict(), os.path.join(args.checkpoint, "scaler.pt"))
            print(f"saved {'resumed ' if resuming else ''}checkpoint to {args.checkpoint}")
    dist.barrier()
    if dist.get_backend() == "gloo":
        # Every collective has completed. gloo's teardown can abort a process whose peer closed its
        # connections first ("terminate called without an active exception", seen on busy CPUs), so
        # a gloo run leaves directly; NCCL runs tear down normally.
        sys.stdout.flush()
        os._exit(0)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
