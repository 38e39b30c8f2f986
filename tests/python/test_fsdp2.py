"""ampkit under FSDP2 (torch.distributed.fsdp.fully_shard): real gloo processes on the CPU.

One spawned world per world size runs several trainings one after the other, each twice: with
torch's classes (torch.autocast, torch.amp.GradScaler, torch.optim) and with ampkit's. Gradients
and parameters are DTensors sharded over the ranks (uneven shards on 4 ranks: a 10-row layer
splits 3/3/3/1), so ampkit's list ops run through ampkit.distributed's DTensor handlers.

Checked, per world size (2 and 4) and for HSDP (a 2x2 mesh, replicate + shard):
* the scale history is torch's, step for step, and an inf put into one rank's gradient shard at
  INJECT_STEP makes every rank skip that step (torch's scaler reduces found_inf over the mesh too);
* the full parameters after STEPS steps are torch's within rtol 1e-4;
* ``unscale_(compute_norm=True)`` returns the norm of the unsharded gradients (``full_tensor()``)
  and the one torch's ``get_total_norm`` computes on the sharded ones;
* masters and optimizer state are DTensors with each parameter's mesh and placements.

DCP: a run checkpointed with torch.distributed.checkpoint on 4 ranks and resumed on 2 ends bitwise
equal to the 4-rank run that never stopped (every rank trains on the same batch and gradients are
bfloat16 values, whose sums over 2 or 4 ranks are exact in float32 and divided by a power of two,
so the trajectory does not depend on the number of ranks).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 8
INJECT_STEP = 3  # an inf in the last rank's gradient shard only, at this step
BATCH = 32
# Parameters are compared within rtol 1e-4 (the acceptance bar); atol 1e-6 covers weights that
# pass near zero, where a relative bound means nothing. Both runs do the same float32 arithmetic
# on bfloat16 gradients; what differs is the summation order inside the fused kernels.
RTOL, ATOL = 1e-4, 1e-6


def digits_batches(rank: int, steps: int, same_on_every_rank: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    targets = torch.tensor(digits.target, dtype=torch.int64)
    offset = 0 if same_on_every_rank else rank * steps * BATCH
    spans = [slice(offset + s * BATCH, offset + (s + 1) * BATCH) for s in range(steps)]
    return [(inputs[span], targets[span]) for span in spans]


def build_model(round_to_bf16: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    if round_to_bf16:  # the starting point of a bfloat16 model, held in float32
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.to(torch.bfloat16).float())
    return model


def shard(model: torch.nn.Module, mesh, mp_policy) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = model.to(mesh.device_type)
    kwargs = {"mesh": mesh}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, **kwargs)
    return fully_shard(model, **kwargs)


def make_run(impl: str, variant: str, mesh):
    """(model, optimizer, scaler, autocast) for one training. `variant`:
    "fp32": float32 parameters, FSDP2 casts to bfloat16 for compute (reduce in float32); ampkit's
            optimizer keeps no master (FSDP2's sharded float32 parameters are the masters);
    "masters": ampkit: a bfloat16 model sharded as it is, FP32 masters in the optimizer; torch:
            the same starting values in float32, FSDP2 casting to bfloat16 (reduce in bfloat16);
    "sgd": as "fp32" with SGD and momentum."""
    import ampkit
    from torch.distributed.fsdp import MixedPrecisionPolicy

    bf16 = torch.bfloat16
    if variant == "masters" and impl == "ampkit":
        model = shard(ampkit.optim.to_low_precision(build_model(), bf16), mesh, None)
    elif variant == "masters":
        model = shard(build_model(round_to_bf16=True), mesh, MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16))
    else:
        model = shard(build_model(), mesh, MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=torch.float32))
    optim = ampkit.optim if impl == "ampkit" else torch.optim
    if variant == "sgd":
        optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    scaler_class = ampkit.GradScaler if impl == "ampkit" else torch.amp.GradScaler
    scaler = scaler_class(mesh.device_type, init_scale=2.0**12, growth_interval=2)
    autocast = ampkit.autocast if impl == "ampkit" else torch.autocast
    return model, optimizer, scaler, lambda: autocast(mesh.device_type, dtype=bf16)


def train(impl: str, variant: str, mesh, batches, inject_rank: int, inject: str = "grad") -> dict:
    """`inject`: "grad" puts the inf into `inject_rank`'s gradient shard after FSDP2's reduction (only
    the found_inf reduction can tell the other ranks); "input" into its batch, so the overflow
    happens in its backward and reaches the others through the gradient reduction."""
    from torch.distributed.tensor import DTensor

    model, optimizer, scaler, autocast = make_run(impl, variant, mesh)
    params = list(model.parameters())
    scales, skipped, norms, unsharded_norms = [], [], [], []
    for step, (inputs, targets) in enumerate(batches):
        inputs, targets = inputs.to(mesh.device_type), targets.to(mesh.device_type)
        if inject == "input" and step == INJECT_STEP and dist.get_rank() == inject_rank:
            inputs = inputs.clone()
            inputs[0, 0] = float("inf")
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        if inject == "grad" and step == INJECT_STEP and dist.get_rank() == inject_rank:
            params[0].grad.to_local().view(-1)[0] = float("inf")
        if impl == "ampkit":
            norm = scaler.unscale_(optimizer, compute_norm=True)
        else:
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]).full_tensor()
        full_grads = [p.grad.full_tensor() for p in params]
        flat = torch.cat([g.double().reshape(-1) for g in full_grads])
        unsharded_norms.append(torch.linalg.vector_norm(flat).float().cpu())
        norms.append(norm.detach().cpu())
        scaler.step(optimizer)
        # What this rank's scaler decided (both classes keep it per optimizer until update()).
        skipped.append(any(bool(flag.item()) for flag in scaler._found_inf_per_device(optimizer).values()))
        scaler.update()
        scales.append(scaler.get_scale())
    result = {"scales": scales, "skipped": skipped, "norms": torch.stack(norms),
              "unsharded_norms": torch.stack(unsharded_norms),
              "params": [p.full_tensor().cpu() for p in params],
              # The float32 weights: ampkit's masters where it keeps them, else the parameters.
              "weights": [(optimizer.state[p]["master"] if "master" in optimizer.state[p] else p).full_tensor()
                          .cpu() for p in params]}
    if impl == "ampkit":
        layouts = []
        for param in params:
            state = optimizer.state[param]
            for key, value in state.items():
                if key == "step":
                    continue
                layouts.append((key, isinstance(value, DTensor) and value.device_mesh == param.device_mesh
                                and value.placements == param.placements and value.shape == param.shape))
        result["state_layouts"] = layouts
        result["state_keys"] = sorted({key for state in optimizer.state.values() for key in state})
        from ampkit.distributed import fp32_copies
        result["fp32_copies"] = fp32_copies(model, optimizer)
    return result


def direct_op_calls(mesh) -> dict:
    """torch.ops.ampkit.* called on DTensors by hand: results and refusals."""
    import ampkit
    import ampkit.distributed  # noqa: F401  (registers the DTensor handlers)
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    out = {}
    full = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    sharded = distribute_tensor(full.clone(), mesh, [Shard(0)])
    if dist.get_rank() == 1:
        sharded.to_local()[0, 0] = float("nan")  # in rank 1's rows only
    found_inf = ampkit.multi_tensor_scale_([sharded], scale=0.5)
    out["scaled"] = sharded.full_tensor()
    out["scale_found_inf"] = found_inf.clone()
    # The scale's ops on replicated DTensors: run locally, one value on every rank.
    scale = distribute_tensor(torch.tensor(1024.0), mesh, [Replicate()])
    out["reciprocal"] = torch.ops.ampkit.reciprocal_scale(scale).to_local().clone()
    growth = distribute_tensor(torch.zeros((), dtype=torch.int32), mesh, [Replicate()])
    hysteresis = distribute_tensor(torch.zeros((), dtype=torch.int32), mesh, [Replicate()])
    torch.ops.ampkit.update_scale_(scale, growth, hysteresis, torch.ones(()), 2.0, 0.5, 10)
    out["backed_off"] = scale.to_local().clone()
    errors = {}
    replicated = distribute_tensor(full.clone(), mesh, [Replicate()])
    grads = distribute_tensor(full.clone(), mesh, [Shard(0)])
    one = torch.ones(1)
    for label, call in (
        ("mismatch", lambda: torch.ops.ampkit.master_sgd_step_(
            [replicated], [], [grads], [], [torch.zeros(())], one, one, one, None, 0.0, 0.0, 0.0, False, False)),
        ("partial", lambda: torch.ops.ampkit.unscale_and_check_(
            [DTensor.from_local(torch.ones(2), mesh, [Partial()])], torch.zeros(1), one)),
        ("partial scale", lambda: torch.ops.ampkit.update_scale_(
            DTensor.from_local(torch.tensor(8.0), mesh, [Partial()]), growth, hysteresis, torch.ones(()),
            2.0, 0.5, 10)),
    ):
        try:
            call()
            errors[label] = None
        except ValueError as error:
            errors[label] = str(error)
    out["errors"] = errors
    return out


def parity_world(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    layouts = {"flat": init_device_mesh("cpu", (world,))}
    if world == 4:
        layouts["hsdp"] = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    variants = ("fp32", "masters", "sgd") if world == 2 else ("fp32", "masters")
    results = {}
    batches = digits_batches(rank, STEPS)
    for layout, mesh in layouts.items():
        for variant in (variants if layout == "flat" else ("fp32",)):
            for impl in ("torch", "ampkit"):
                # Under HSDP torch's scaler reduces found_inf over the shard dimension only, so the
                # inf is injected where a real overflow happens (in the backward, before the
                # replicas' all-reduce) for the comparison; ampkit alone is also run with it in
                # one replica's reduced gradient, which it must still skip on every rank.
                results[(layout, variant, impl)] = train(impl, variant, mesh, batches, inject_rank=world - 1,
                                                         inject="grad" if layout == "flat" else "input")
    if "hsdp" in layouts:
        results[("hsdp", "late-inf", "ampkit")] = train("ampkit", "fp32", layouts["hsdp"], batches,
                                                        inject_rank=world - 1)
    if world == 2:
        results["direct"] = direct_op_calls(layouts["flat"])
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    # Every collective has completed once all ranks pass the barrier; leave without gloo's
    # teardown, which can abort a rank whose peer closed first (see test_distributed.py).
    dist.barrier()
    os._exit(0)


def spawn(target, world: int, tmp_path, name: str, *extra) -> list:
    out_dir = tmp_path / name
    out_dir.mkdir()
    mp.start_processes(target, args=(world, str(tmp_path / f"init-{name}"), str(out_dir), *extra), nprocs=world,
                       join=True, start_method="spawn")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_fsdp2_matches_torch_and_skips_together(world, tmp_path):
    ranks = spawn(parity_world, world, tmp_path, f"parity{world}")
    keys = [key for key in ranks[0] if key[2] == "ampkit" and key[1] != "late-inf"]
    assert len(keys) == 3
    if world == 4:  # HSDP, an inf in one replica's reduced gradient: every rank skips it all the same
        for results in ranks:
            late = results[("hsdp", "late-inf", "ampkit")]
            assert [s for s, flag in enumerate(late["skipped"]) if flag] == [INJECT_STEP]
            assert late["scales"] == ranks[0][("hsdp", "fp32", "ampkit")]["scales"]
            for mine, reference in zip(late["params"], ranks[0][("hsdp", "late-inf", "ampkit")]["params"]):
                assert torch.equal(mine, reference)
    if world == 2:
        for results in ranks:
            direct = results["direct"]
            expected = torch.arange(12, dtype=torch.float32).reshape(6, 2) * 0.5
            expected[3, 0] = float("nan")  # rank 1 holds rows 3..5
            torch.testing.assert_close(direct["scaled"], expected, equal_nan=True)
            assert direct["scale_found_inf"].item() == 1.0  # on both ranks: MAX over the mesh
            assert "grads[0] has placements (Shard(dim=0),)" in direct["errors"]["mismatch"]
            assert "params[0] has placements (Replicate(),)" in direct["errors"]["mismatch"]
            assert "Partial" in direct["errors"]["partial"] and "grads[0]" in direct["errors"]["partial"]
            assert direct["reciprocal"].item() == 1 / 1024 and direct["backed_off"].item() == 512
            assert "one value per model" in direct["errors"]["partial scale"]
    for layout, variant, _ in keys:
        label = f"{layout}/{variant}"
        for rank, results in enumerate(ranks):
            ours, theirs = results[(layout, variant, "ampkit")], results[(layout, variant, "torch")]
            # Every rank skipped exactly the injected step, as torch's scaler did.
            assert [s for s, flag in enumerate(ours["skipped"]) if flag] == [INJECT_STEP], (label, rank)
            assert theirs["skipped"] == ours["skipped"], (label, rank)
            assert ours["scales"] == theirs["scales"], (label, rank)
            assert ours["scales"] == ranks[0][(layout, variant, "ampkit")]["scales"]
            for index, (mine, reference) in enumerate(zip(ours["weights"], theirs["weights"])):
                assert mine.dtype == reference.dtype == torch.float32
                torch.testing.assert_close(mine, reference, rtol=RTOL, atol=ATOL,
                                           msg=f"{label} rank {rank} param {index}")
            for index, (mine, reference) in enumerate(zip(ours["params"], theirs["params"])):
                # The model copy is the float32 weight rounded once: bfloat16's half-ulp (2**-9).
                torch.testing.assert_close(mine.float(), reference.to(mine.dtype).float(), rtol=2**-8, atol=ATOL)
            # The norm of the sharded gradients is the norm of the whole model's: float32 sums of
            # squares in another order, so within a few ulps (rtol 1e-5).
            finite = [s for s in range(STEPS) if s != INJECT_STEP]
            torch.testing.assert_close(ours["norms"][finite], ours["unsharded_norms"][finite], rtol=1e-5, atol=0)
            # torch's get_total_norm works in the gradients' dtype: bfloat16 ones ("masters") give
            # a bfloat16 norm, good to bfloat16's half-ulp.
            theirs_rtol = 2**-8 if theirs["norms"].dtype == torch.bfloat16 else RTOL
            torch.testing.assert_close(ours["norms"][finite], theirs["norms"][finite].float(), rtol=theirs_rtol, atol=0)
            assert not torch.isfinite(ours["norms"][INJECT_STEP])
            # Masters and state: DTensors with the parameter's mesh and placements.
            assert ours["state_layouts"] and all(ok for _, ok in ours["state_layouts"]), ours["state_layouts"]
            assert ("master" in ours["state_keys"]) == (variant == "masters"), ours["state_keys"]
            assert ours["fp32_copies"] == 1, label


# ---- DCP: save on 4 ranks, load on 2 ----

CHECKPOINT_STEP = 4  # steps 0..3 before the checkpoint, 4..7 after it
RESUMED_INJECT_STEP = 6  # a skipped step after the resume: the restored step counters must hold


def dcp_run(mesh):
    """A bfloat16 model sharded by FSDP2, gradients reduced in float32; ampkit's AdamW with masters."""
    import ampkit
    from torch.distributed.fsdp import MixedPrecisionPolicy

    model = shard(ampkit.optim.to_low_precision(build_model(), torch.bfloat16), mesh,
                  MixedPrecisionPolicy(reduce_dtype=torch.float32))
    optimizer = ampkit.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    scaler = ampkit.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    return model, optimizer, scaler


def dcp_steps(model, optimizer, scaler, steps: range, batches) -> list[float]:
    import ampkit

    scales = []
    for step in steps:
        inputs, targets = batches[step]
        optimizer.zero_grad(set_to_none=True)
        with ampkit.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        if step == RESUMED_INJECT_STEP and dist.get_rank() == dist.get_world_size() - 1:
            next(model.parameters()).grad.to_local().view(-1)[0] = float("inf")
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales


def full_state(model, optimizer) -> dict:
    """Every parameter and every optimizer state tensor, gathered whole (a collective)."""
    from torch.distributed.tensor import DTensor

    def whole(value):
        return value.full_tensor() if isinstance(value, DTensor) else value.clone()

    params = list(model.parameters())
    return {"params": [whole(p) for p in params],
            "state": [{key: whole(value) for key, value in optimizer.state[p].items()} for p in params]}


def dcp_save_world(rank: int, world: int, init_file: str, out_dir: str, checkpoint_dir: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    batches = digits_batches(rank, STEPS, same_on_every_rank=True)
    model, optimizer, scaler = dcp_run(init_device_mesh("cpu", (world,)))
    scales = dcp_steps(model, optimizer, scaler, range(CHECKPOINT_STEP), batches)
    dcp.save({"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=checkpoint_dir)
    if rank == 0:
        torch.save(scaler.state_dict(), os.path.join(checkpoint_dir, "scaler.pt"))
    at_checkpoint = full_state(model, optimizer)
    # The run that never stopped.
    scales += dcp_steps(model, optimizer, scaler, range(CHECKPOINT_STEP, STEPS), batches)
    result = full_state(model, optimizer)
    result["scales"] = scales
    result["at_checkpoint"] = at_checkpoint
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    os._exit(0)


def dcp_load_world(rank: int, world: int, init_file: str, out_dir: str, checkpoint_dir: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
        set_optimizer_state_dict)
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    batches = digits_batches(rank, STEPS, same_on_every_rank=True)
    model, optimizer, scaler = dcp_run(init_device_mesh("cpu", (world,)))
    with torch.no_grad():  # other values everywhere: all that is restored must come from the checkpoint
        torch.manual_seed(1234 + rank)
        for param in model.parameters():
            param.to_local().normal_()
            for key, value in optimizer.state[param].items():
                if key == "step":
                    value.fill_(99)
                else:
                    value.to_local().uniform_(0, 1)
    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    try:  # the flattened form loses the origin: refused (before anything changes), saying why
        set_optimizer_state_dict(model, optimizer, get_optimizer_state_dict(model, optimizer, options=flat),
                                 options=flat)
        flattened_error = None
    except ValueError as error:
        flattened_error = str(error)
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=checkpoint_dir)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    scaler.load_state_dict(torch.load(os.path.join(checkpoint_dir, "scaler.pt")))
    restored = full_state(model, optimizer)
    scales = dcp_steps(model, optimizer, scaler, range(CHECKPOINT_STEP, STEPS), batches)
    result = full_state(model, optimizer)
    result["scales"] = scales
    result["restored"] = restored
    result["flattened_error"] = flattened_error
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    os._exit(0)


@pytest.mark.slow
def test_dcp_save_on_4_ranks_resume_on_2_is_bitwise_the_uninterrupted_run(tmp_path):
    checkpoint_dir = tmp_path / "checkpoint"
    never_stopped = spawn(dcp_save_world, 4, tmp_path, "save", str(checkpoint_dir))
    resumed = spawn(dcp_load_world, 2, tmp_path, "load", str(checkpoint_dir))
    reference = never_stopped[0]
    assert reference["scales"][RESUMED_INJECT_STEP] == reference["scales"][RESUMED_INJECT_STEP - 1] / 2
    for result in never_stopped + resumed:
        assert result["scales"][-(STEPS - CHECKPOINT_STEP):] == reference["scales"][CHECKPOINT_STEP:]
        for mine, theirs in zip(result["params"], reference["params"]):
            assert mine.dtype == torch.bfloat16 and torch.equal(mine, theirs)
        for mine, theirs in zip(result["state"], reference["state"]):
            assert mine.keys() == theirs.keys() == {"step", "master", "exp_avg", "exp_avg_sq"}
            for key in mine:
                assert torch.equal(mine[key], theirs[key]), key
    assert "flatten_optimizer_state_dict=True" in resumed[0]["flattened_error"]
    # What the 2 ranks loaded is, bit for bit, what the 4 ranks saved (they started from noise).
    for result in resumed:
        restored, saved = result["restored"], reference["at_checkpoint"]
        assert all(torch.equal(a, b) for a, b in zip(restored["params"], saved["params"]))
        for mine, theirs in zip(restored["state"], saved["state"]):
            assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
    assert int(resumed[0]["restored"]["state"][0]["step"]) == CHECKPOINT_STEP


def test_import_ampkit_leaves_torch_distributed_tensor_alone():
    """import ampkit does not import DTensor, and ampkit.distributed is loaded only once a DTensor reaches
    an ampkit op (torch's autograd imports torch.distributed.tensor by itself on the first backward)."""
    import subprocess
    import sys

    code = ("import sys, ampkit, torch\n"
            "assert 'torch.distributed.tensor' not in sys.modules\n"
            "model = torch.nn.Linear(4, 2)\n"
            "optimizer = ampkit.optim.AdamW(model.parameters())\n"
            "model(torch.randn(3, 4)).sum().backward(); optimizer.step()\n"
            "ampkit.nn.FusedLinear(4, 2)(torch.randn(3, 4))\n"
            "print('ampkit.distributed' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def nccl_world(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """FSDP2 over NCCL on the GPUs: the torch/ampkit comparison, then one more ampkit step under
    torch.cuda.set_sync_debug_mode("error"), which raises on any device-to-host read."""
    from torch.distributed.device_mesh import init_device_mesh

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh("cuda", (world,))
    batches = digits_batches(rank, STEPS)
    results = {("flat", variant, impl): train(impl, variant, mesh, batches, inject_rank=world - 1)
               for variant in ("fp32", "masters") for impl in ("torch", "ampkit")}
    model, optimizer, scaler, autocast = make_run("ampkit", "masters", mesh)
    inputs, targets = (t.cuda() for t in batches[0])
    with autocast():
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    scaler.scale(loss).backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        scaler.unscale_(optimizer, compute_norm=True)
        scaler.step(optimizer)
        scaler.update()
        results["sync_error"] = None
    except RuntimeError as error:
        results["sync_error"] = str(error)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    os._exit(0)


@pytest.mark.cuda
@pytest.mark.slow
def test_fsdp2_over_nccl_matches_torch_without_host_reads(tmp_path):
    world = min(torch.cuda.device_count(), 2)  # NCCL needs one GPU per rank; 1 still runs the path
    ranks = spawn(nccl_world, world, tmp_path, "nccl")
    for rank, results in enumerate(ranks):
        assert results["sync_error"] is None, results["sync_error"]
        for variant in ("fp32", "masters"):
            ours, theirs = results[("flat", variant, "ampkit")], results[("flat", variant, "torch")]
            assert [s for s, flag in enumerate(ours["skipped"]) if flag] == [INJECT_STEP]
            assert ours["scales"] == theirs["scales"] and ours["skipped"] == theirs["skipped"]
            # cuBLAS and ampkit's CUDA kernels sum in other orders than the CPU: rtol 1e-4 still holds
            # for these 8 AdamW steps (each step moves a weight by at most lr).
            for mine, reference in zip(ours["weights"], theirs["weights"]):
                torch.testing.assert_close(mine, reference, rtol=RTOL, atol=ATOL)


def test_every_ampkit_op_has_a_dtensor_rule():
    """A new op reaches DTensors only once ampkit.distributed knows it: list ops by their row lists,
    the rest as replicated-only ops; composite ops decompose into aten ops DTensor runs itself."""
    import ampkit.distributed as ampkit_distributed
    from conftest import registered_ampkit_ops

    covered = (set(ampkit_distributed._ROW_LISTS) | set(ampkit_distributed._LINEAR_OPS)
               | set(ampkit_distributed._MLP_OPS) | set(ampkit_distributed._SCALE_OPS))
    missing = []
    for name in registered_ampkit_ops():
        op = getattr(torch.ops.ampkit, name).default
        composite = torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")
        if name not in covered and not composite:
            missing.append(name)
        lists = [a.name for a in op._schema.arguments if str(a.type).startswith("List[Tensor")]
        if lists:  # a list op: every list argument named as rows or step counters
            rows, scalars, _ = ampkit_distributed._ROW_LISTS.get(name, ((), (), None))
            assert set(lists) <= set(rows) | set(scalars), (name, lists)
    assert not missing, f"ops without a DTensor rule in ampkit.distributed: {missing}"
