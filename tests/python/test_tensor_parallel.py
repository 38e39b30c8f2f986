"""ampkit under tensor parallelism (ColwiseParallel + RowwiseParallel on DTensor), 2 gloo ranks.

FusedLinear in a tensor-parallel layer is refused, clearly: torch's ColwiseParallel/RowwiseParallel
shard nn.Linear and nn.Embedding only (their own NotImplementedError), and a FusedLinear whose
weights are sharded by hand gets ampkit's ValueError naming the placements it supports (every
operand Replicate). Why not a strategy: under RowwiseParallel the fused epilogue would add the
bias and apply the activation to each rank's partial sum, and the GELU backward's saved
pre-activations are laid out per GEMM, not per output column.

FusedLinear under FSDP2 trains (its all-gathered parameters are plain tensors) and ends where the
same steps in one process end. What trains under tensor parallelism: a TP MLP (nn.Linear, ColwiseParallel -> RowwiseParallel) followed by a replicated
FusedLinear head, with ampkit's autocast, GradScaler and AdamW, against the same model with
torch's classes: scale history equal, an inf in rank 1's shard of a Shard(0) gradient skipped on
both ranks, parameters within rtol 1e-4, and the norm of the mixed Shard/Replicate gradients equal
to the norm of the full gradients.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from test_fsdp2 import ATOL, INJECT_STEP, RTOL, STEPS, digits_batches, spawn

WORLD = 2


def build_tp_model(mesh, impl: str):
    import ampkit
    from torch.distributed.tensor import DTensor, Replicate, distribute_module
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                                ampkit.nn.FusedLinear(16, 10, activation="none"))
    if impl == "torch":  # torch's classes get an nn.Linear head with the same parameters
        head = torch.nn.Linear(16, 10)
        head.load_state_dict(model[3].state_dict())
        model[3] = head
    parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    distribute_module(model[3], mesh,
                      input_fn=lambda module, inputs, mesh: tuple(DTensor.from_local(x, mesh, [Replicate()])
                                                                  for x in inputs),
                      output_fn=lambda module, output, mesh: output.to_local())
    return model


def tp_train(impl: str, mesh, batches) -> dict:
    import ampkit

    model = build_tp_model(mesh, impl)
    params = list(model.parameters())
    optim = ampkit.optim if impl == "ampkit" else torch.optim
    optimizer = optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
    scaler = (ampkit.GradScaler if impl == "ampkit" else torch.amp.GradScaler)("cpu", init_scale=2.0**12,
                                                                                growth_interval=2)
    autocast = ampkit.autocast if impl == "ampkit" else torch.autocast
    scales, skipped, norms, full_norms = [], [], [], []
    for step, (inputs, targets) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        with autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        if step == INJECT_STEP and dist.get_rank() == 1:
            params[0].grad.to_local().view(-1)[0] = float("inf")
        if impl == "ampkit":
            norms.append(scaler.unscale_(optimizer, compute_norm=True).clone())
            full = torch.cat([p.grad.full_tensor().double().reshape(-1) for p in params])
            full_norms.append(torch.linalg.vector_norm(full).float())
        scaler.step(optimizer)
        skipped.append(any(bool(flag.item()) for flag in scaler._found_inf_per_device(optimizer).values()))
        scaler.update()
        scales.append(scaler.get_scale())
    return {"scales": scales, "skipped": skipped, "params": [p.full_tensor() for p in params],
            "placements": [tuple(p.grad.placements) for p in params] if impl == "ampkit" else None,
            "norms": torch.stack(norms) if norms else None, "full_norms": torch.stack(full_norms) if norms else None}


def refusals(mesh) -> dict:
    import ampkit
    from torch.distributed.tensor import Replicate, Shard, distribute_module, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    errors = {}
    try:
        parallelize_module(torch.nn.Sequential(ampkit.nn.FusedLinear(8, 4)), mesh, {"0": ColwiseParallel()})
        errors["style"] = None
    except NotImplementedError as error:
        errors["style"] = str(error)

    def colwise(name, module, mesh):  # ColwiseParallel's placements, by hand
        for key, param in list(module.named_parameters()):
            module.register_parameter(key, torch.nn.Parameter(distribute_tensor(param, mesh, [Shard(0)])))

    layer = distribute_module(ampkit.nn.FusedLinear(8, 4, activation="relu"), mesh, colwise)
    try:
        layer(distribute_tensor(torch.randn(3, 8), mesh, [Replicate()]))
        errors["sharded"] = None
    except ValueError as error:
        errors["sharded"] = str(error)
    return errors


def fused_model_steps(mesh, batches) -> list[torch.Tensor]:
    """FusedLinear layers trained with ampkit's classes, sharded by FSDP2 when `mesh` is given (its
    all-gathered parameters reach fused_linear as plain tensors), else in this process alone."""
    import ampkit
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    model = torch.nn.Sequential(ampkit.nn.FusedLinear(64, 32, activation="relu"), ampkit.nn.FusedLinear(32, 10))
    if mesh is not None:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in model:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    optimizer = ampkit.optim.AdamW(model.parameters(), lr=1e-2)
    for inputs, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        with ampkit.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return [p.full_tensor() if isinstance(p, DTensor) else p.detach().clone() for p in model.parameters()]


def tp_world(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    batches = digits_batches(0, STEPS, same_on_every_rank=True)  # tensor parallelism: one batch for all
    results = {impl: tp_train(impl, mesh, batches) for impl in ("torch", "ampkit")}
    results["errors"] = refusals(mesh)
    results["fsdp2_fused"] = fused_model_steps(mesh, batches)
    results["single_fused"] = fused_model_steps(None, batches)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    os._exit(0)


@pytest.mark.slow
def test_tensor_parallel_mlp_and_fused_linear_refusal(tmp_path):
    from torch.distributed.tensor import Replicate, Shard

    ranks = spawn(tp_world, WORLD, tmp_path, "tp")
    for rank, results in enumerate(ranks):
        ours, theirs = results["ampkit"], results["torch"]
        # Colwise weight and bias Shard(0), rowwise weight Shard(1), its bias and the head Replicate.
        assert ours["placements"] == [(Shard(0),), (Shard(0),), (Shard(1),), (Replicate(),), (Replicate(),),
                                      (Replicate(),)]
        assert [s for s, flag in enumerate(ours["skipped"]) if flag] == [INJECT_STEP], rank
        assert ours["skipped"] == theirs["skipped"] and ours["scales"] == theirs["scales"], rank
        for mine, reference in zip(ours["params"], theirs["params"]):
            torch.testing.assert_close(mine, reference, rtol=RTOL, atol=ATOL)
        finite = [s for s in range(STEPS) if s != INJECT_STEP]
        # Replicated gradients counted once, sharded ones summed over the ranks: float32 rounding.
        torch.testing.assert_close(ours["norms"][finite], ours["full_norms"][finite], rtol=1e-5, atol=0)
        # FusedLinear under FSDP2 trains as in one process: every rank has the same batch, so the
        # averaged gradient is the local one exactly; what differs is the bf16 cast's place (FSDP2
        # casts the parameters, autocast the single-process ones): the same rounding, so 1e-4 holds.
        for mine, reference in zip(results["fsdp2_fused"], results["single_fused"]):
            torch.testing.assert_close(mine, reference, rtol=RTOL, atol=ATOL)
        errors = results["errors"]
        assert "nn.Linear" in errors["style"]
        assert "weight (Shard(dim=0),)" in errors["sharded"] and "Replicate()" in errors["sharded"]
        assert "does not support sharded DTensor operands" in errors["sharded"]
