"""GradScaler(process_group=...) on real torch.distributed (gloo, CPU processes).

ZeRO-style sharding: every rank owns a slice of the parameters, sees only its own slice's
gradient after the reduction, and broadcasts its slice after the step. An overflow injected on one
rank only must make EVERY rank skip that step; the scale histories must be identical and the
weights must stay identical across ranks. Without the process group the same run diverges
(the control case), which shows the test can fail.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 12
INJECT = {2: 1, 3: 0, 7: 1}  # step -> the only rank whose shard gradient overflows


def shard_run(rank: int, world: int, init_file: str, use_group: bool, out_dir: str) -> None:
    import ampkit  # the child inherits PYTHONPATH and sys.path from the test process

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    params = list(model.parameters())
    owned = [p for i, p in enumerate(params) if i % world == rank]
    optimizer = ampkit.optim.SGD(owned, lr=0.05, momentum=0.9)
    scaler = ampkit.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3,
                               process_group=dist.group.WORLD if use_group else None)
    generator = torch.Generator().manual_seed(100 + rank)
    scales, skipped = [], []
    for step in range(STEPS):
        x, y = torch.randn(16, 8, generator=generator), torch.randint(0, 4, (16,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(torch.nn.functional.cross_entropy(model(x), y)).backward()
        for i, p in enumerate(params):  # reduce-scatter: the owner keeps the averaged gradient
            dist.all_reduce(p.grad)
            p.grad.div_(world)
            if i % world != rank:
                p.grad = None
        if INJECT.get(step) == rank:
            owned[0].grad.view(-1)[0] = float("inf")
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
        skipped.append(bool(scaler.found_inf.item()))
        for i, p in enumerate(params):
            dist.broadcast(p.data, src=i % world)
    torch.save({"scales": scales, "skipped": skipped, "weights": [p.detach().clone() for p in params]},
               os.path.join(out_dir, f"rank{rank}.pt"))
    # Every collective has completed once both ranks pass the barrier, and the results are saved;
    # the process then leaves without running gloo's teardown, whose destructors can still abort
    # (std::terminate, SIGABRT) when the peer closes its connection first on a loaded machine.
    dist.barrier()
    os._exit(0)


def run_world(world: int, use_group: bool, tmp_path) -> list[dict]:
    out_dir = tmp_path / f"{world}-{use_group}"
    out_dir.mkdir()
    mp.start_processes(shard_run, args=(world, str(tmp_path / f"init-{world}-{use_group}"), use_group, str(out_dir)),
                       nprocs=world, join=True, start_method="spawn")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_an_overflow_on_one_rank_skips_the_step_on_every_rank(world, tmp_path):
    results = run_world(world, True, tmp_path)
    injected = [step for step, rank in INJECT.items() if rank < world]
    for result in results:
        assert [s for s, flag in enumerate(result["skipped"]) if flag] == sorted(injected)
        assert result["scales"] == results[0]["scales"]
        for w, w0 in zip(result["weights"], results[0]["weights"]):
            assert torch.equal(w, w0)
    # The scale backed off exactly at the injected steps (x0.5) and grew every 3 clean steps.
    assert results[0]["scales"][2] == 2.0 ** 9


@pytest.mark.slow
def test_without_the_process_group_ranks_disagree(tmp_path):
    results = run_world(2, False, tmp_path)
    assert results[0]["skipped"] != results[1]["skipped"]
    assert results[0]["scales"] != results[1]["scales"]
