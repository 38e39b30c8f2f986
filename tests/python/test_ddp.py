"""ampkit under DDP (with and without the bf16 gradient-compression hook) and the amp=True Trainer
on models already wrapped by DDP or FSDP2: real gloo processes on the CPU, one spawned world.

DDP all-reduces plain gradients, so ampkit's scaler and optimizers need nothing distributed: the
runs are compared with torch's classes (torch.autocast, torch.amp.GradScaler, torch.optim.AdamW),
scale history equal and parameters within rtol 1e-4. The inf is put into one rank's batch, so it
arises in that rank's backward and reaches the others through DDP's all-reduce, as a real
overflow does.

Trainer: every rank trains on the same data, so DDP's and FSDP2's averaged gradients equal the
single-process ones (two equal float32 values summed and halved are exact) and a wrapped model must
end where the same Trainer run on an unwrapped copy (in the same process) ends.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from test_fsdp2 import ATOL, INJECT_STEP, RTOL, STEPS, build_model, digits_batches, shard, spawn

WORLD = 2


def ddp_train(impl: str, hook: bool, batches) -> dict:
    import ampkit
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(build_model())
    if hook:
        model.register_comm_hook(dist.group.WORLD, bf16_compress_hook)
    optim = ampkit.optim if impl == "ampkit" else torch.optim
    optimizer = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    scaler = (ampkit.GradScaler if impl == "ampkit" else torch.amp.GradScaler)("cpu", init_scale=2.0**12,
                                                                                growth_interval=2)
    autocast = ampkit.autocast if impl == "ampkit" else torch.autocast
    scales, skipped = [], []
    for step, (inputs, targets) in enumerate(batches):
        if step == INJECT_STEP and dist.get_rank() == WORLD - 1:
            inputs = inputs.clone()
            inputs[0, 0] = float("inf")
        optimizer.zero_grad(set_to_none=True)
        with autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        skipped.append(any(bool(flag.item()) for flag in scaler._found_inf_per_device(optimizer).values()))
        scaler.update()
        scales.append(scaler.get_scale())
    return {"scales": scales, "skipped": skipped, "params": [p.detach().clone() for p in model.parameters()]}


def trainer_run(wrap: str, inputs, targets) -> list[torch.Tensor]:
    """Trainer(amp=True, grad_clip) on the model wrapped by `wrap` ("ddp", "fsdp2" or "none")."""
    import ampkit
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.nn.parallel import DistributedDataParallel

    model = build_model()
    if wrap == "ddp":
        model = DistributedDataParallel(model)
    elif wrap == "fsdp2":
        model = shard(model, init_device_mesh("cpu", (WORLD,)), None)
    trainer = ampkit.Trainer(model, amp=True, device="cpu", lr=1e-2, batch_size=64, grad_clip=0.5,
                             progress=False, self_check=False)
    trainer.fit((inputs, targets), epochs=1)
    return [p.full_tensor() if isinstance(p, DTensor) else p.detach().clone() for p in model.parameters()]


def trainer_with_distributed_sampler(inputs, targets) -> list[list[int]]:
    """The Trainer on DDP with a DataLoader over a DistributedSampler: the sample indices each epoch
    hands this rank (the trainer must call set_epoch, or every epoch repeats epoch 0's order)."""
    import ampkit
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    seen = []

    class RecordingSampler(DistributedSampler):
        def __iter__(self):
            order = list(super().__iter__())
            seen.append(order)
            return iter(order)

    dataset = TensorDataset(inputs, targets)
    loader = DataLoader(dataset, batch_size=64, sampler=RecordingSampler(dataset, shuffle=True, seed=0))
    trainer = ampkit.Trainer(DistributedDataParallel(build_model()), amp=True, device="cpu", progress=False,
                             self_check=False)
    trainer.fit(loader, epochs=2)
    return seen


def ddp_world(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    batches = digits_batches(rank, STEPS)
    results = {(impl, hook): ddp_train(impl, hook, batches) for hook in (False, True) for impl in ("torch", "ampkit")}
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = torch.tensor(digits.data[:512], dtype=torch.float32) / 16.0
    targets = torch.tensor(digits.target[:512], dtype=torch.int64)
    for wrap in ("none", "ddp", "fsdp2"):
        results[("trainer", wrap)] = trainer_run(wrap, inputs, targets)
    results["sampler_epochs"] = trainer_with_distributed_sampler(inputs, targets)
    import ampkit

    try:
        ampkit.Trainer(torch.nn.parallel.DistributedDataParallel(build_model()), amp=True, master_weights=True,
                       device="cpu", progress=False, self_check=False)
        results["master_weights_error"] = None
    except ValueError as error:
        results["master_weights_error"] = str(error)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    os._exit(0)


@pytest.mark.slow
def test_ddp_and_the_trainer_on_wrapped_models(tmp_path):
    ranks = spawn(ddp_world, WORLD, tmp_path, "ddp")
    for rank, results in enumerate(ranks):
        for hook in (False, True):
            ours, theirs = results[("ampkit", hook)], results[("torch", hook)]
            label = f"rank {rank}, bf16 hook {hook}"
            assert [s for s, flag in enumerate(ours["skipped"]) if flag] == [INJECT_STEP], label
            assert ours["skipped"] == theirs["skipped"] and ours["scales"] == theirs["scales"], label
            for mine, reference in zip(ours["params"], theirs["params"]):
                torch.testing.assert_close(mine, reference, rtol=RTOL, atol=ATOL, msg=label)
            for mine, rank0 in zip(ours["params"], ranks[0][("ampkit", hook)]["params"]):
                assert torch.equal(mine, rank0), label
        # The hook changes the trajectory (bf16-rounded gradients): the comparison above saw it.
        assert not all(torch.equal(a, b) for a, b in zip(results[("ampkit", True)]["params"],
                                                         results[("ampkit", False)]["params"]))
        # The Trainer on a DDP- or FSDP2-wrapped model ends where it ends on the plain model: DDP
        # bitwise (the same kernels on the same gradients); FSDP2 to float32 rounding (it runs the
        # forward on all-gathered, differently laid-out weights).
        single = results[("trainer", "none")]
        for mine, reference in zip(results[("trainer", "ddp")], single):
            assert torch.equal(mine, reference)
        for mine, reference in zip(results[("trainer", "fsdp2")], single):
            torch.testing.assert_close(mine, reference, rtol=RTOL, atol=ATOL)
        epochs = results["sampler_epochs"]
        assert len(epochs) == 2 and epochs[0] != epochs[1]  # reshuffled: set_epoch was called
        for epoch in range(2):  # each rank its own half
            other = ranks[1 - rank]["sampler_epochs"][epoch]
            assert not set(epochs[epoch]) & set(other) and len(set(epochs[epoch]) | set(other)) == 512
        assert "master_weights=True" in results["master_weights_error"]
        assert "MixedPrecisionPolicy" in results["master_weights_error"]


@pytest.mark.slow
def test_the_distributed_example_trains_checkpoints_on_2_and_resumes_on_1(tmp_path):
    """examples/python/train_distributed.py under torchrun: FSDP2 on 2 processes with a DCP
    checkpoint, resumed on 1 process (DCP reshards), then DDP with the bf16 compression hook."""
    import subprocess
    import sys

    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python", "train_distributed.py")
    checkpoint = str(tmp_path / "dcp")

    def torchrun(processes: int, *args: str) -> list[str]:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   example, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return [line for line in result.stdout.splitlines() if line.startswith(("epoch", "FP32", "saved"))]

    first = torchrun(2, "--epochs", "4", "--checkpoint", checkpoint)
    assert [line.split(":")[0] for line in first[:4]] == ["epoch 0", "epoch 1", "epoch 2", "epoch 3"]
    assert "FP32 copies of the weights held: 1 (sharded over 2 processes)" in first
    resumed = torchrun(1, "--epochs", "1", "--checkpoint", checkpoint)
    assert resumed[0].startswith("epoch 4:") and resumed[-1].startswith("saved resumed checkpoint")
    # 5 epochs of a 64-128-128-10 MLP reach ~0.93-0.95 on the 360 held-out digits; 0.9 leaves margin.
    assert float(resumed[0].split("test accuracy")[1].split()[0]) > 0.9
    ddp = torchrun(2, "--engine", "ddp", "--bf16-compress", "--epochs", "2")
    assert [line.split(":")[0] for line in ddp] == ["epoch 0", "epoch 1"]
