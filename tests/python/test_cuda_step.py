"""No host sync in a training step, and the whole step in a CUDA graph. GPU only.

The step: an MLP with fp16 weights (``ampkit.optim.to_low_precision``; LayerNorm stays fp32) and
an ``ampkit.nn.FusedLinear`` layer, forward under ``ampkit.autocast("cuda", float16)``, backward
on ``scaler.scale(loss)``, ``ampkit.GradScaler`` unscale + inf/NaN check, ``ampkit.optim.AdamW``
FP32-master update (skipped on the device when an inf was found), ``scaler.update()``.

1. Under ``torch.cuda.set_sync_debug_mode("error")`` the step runs several times, one of them with
   an inf written into a gradient, without any synchronising CUDA call; afterwards (outside the
   debug mode) the injected step is seen to have been skipped and to have changed nothing.
2. The whole step (forward, backward, scaler, optimizer, scale update) is captured once with
   ``torch.cuda.graph`` after a side-stream warm-up (as torch's CUDA-graph docs describe), with
   static input buffers, a device-tensor lr and a static "poison" buffer added to one gradient
   (zeros, or an inf for the injected steps), and replayed N times. A second, identical model runs
   the same N steps eagerly. The masters, fp16 weights, Adam state, step counters, the loss scale
   and the skipped-step count must be equal BITWISE: the replay launches the same kernels on the
   same data in the same order as eager execution, and nothing in the step depends on the host.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import ampkit

pytestmark = pytest.mark.cuda

WIDTH, CLASSES, BATCH = 64, 10, 32
WARMUP, REPLAYS = 3, 12
INJECTED = {4, 9}  # replay indices whose gradients get an inf


def _build(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(),
        nn.LayerNorm(2 * WIDTH),
        ampkit.nn.FusedLinear(2 * WIDTH, 2 * WIDTH, activation="gelu"),
        nn.Linear(2 * WIDTH, CLASSES),
    ).cuda()
    ampkit.optim.to_low_precision(model, torch.float16)
    # lr as a device tensor: its value is read by the kernel, so it may change between replays.
    lr = torch.tensor(1e-3, dtype=torch.float32, device="cuda")
    optimizer = ampkit.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    scaler = ampkit.GradScaler("cuda", init_scale=2.0**12, growth_interval=4)
    poison = torch.zeros_like(model[0].weight)  # fp16, like that weight's gradient
    return model, optimizer, scaler, lr, poison


def _batches(count: int, seed: int = 1):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return [(torch.randn(BATCH, WIDTH, device="cuda", generator=generator),
             torch.randint(0, CLASSES, (BATCH,), device="cuda", generator=generator)) for _ in range(count)]


def _step(model, optimizer, scaler, poison, inputs, targets):
    """One full training step; touches no host value."""
    with ampkit.autocast("cuda", dtype=torch.float16):
        logits = model(inputs)
    loss = F.cross_entropy(logits.float(), targets)
    scaler.scale(loss).backward()
    model[0].weight.grad.add_(poison)  # zeros, or an inf on an injected step
    scaler.step(optimizer)
    scaler.update()
    return loss


def _snapshot(model, optimizer, scaler) -> dict:
    result = {f"param{i}": p.detach().clone() for i, p in enumerate(model.parameters())}
    for i, p in enumerate(model.parameters()):
        for key, value in optimizer.state[p].items():
            result[f"state{i}.{key}"] = value.clone()
    result["scale"] = scaler.get_scale_async().clone()
    result["skipped_steps"] = scaler.skipped_steps.clone()
    return result


def _assert_bitwise_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        other = actual[key]
        assert other.dtype == value.dtype and other.shape == value.shape, key
        same = torch.equal(other.view(torch.uint8), value.view(torch.uint8)) if value.dim() else torch.equal(other, value)
        if not same:
            diff = (other.double() - value.double()).abs().max().item()
            pytest.fail(f"{key} differs between CUDA-graph replay and eager execution (max |diff| {diff})")


def _inject(poison: torch.Tensor, on: bool) -> None:
    poison.zero_()
    if on:
        poison.view(-1)[0].fill_(float("inf"))


def test_training_step_has_no_host_sync():
    model, optimizer, scaler, _, poison = _build()
    batches = _batches(6)
    injected_step = 3
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        before_injection = None
        for index, (inputs, targets) in enumerate(batches):
            optimizer.zero_grad(set_to_none=True)
            _inject(poison, index == injected_step)
            if index == injected_step:
                before_injection = [m.clone() for m in optimizer.master_params()]
            _step(model, optimizer, scaler, poison, inputs, targets)
            if index == injected_step:
                after_injection = [m.clone() for m in optimizer.master_params()]
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    assert int(scaler.skipped_steps.item()) == 1
    assert int(scaler.overflow_events.item()) == 1
    for before, after in zip(before_injection, after_injection):
        assert torch.equal(before, after), "the step with an inf gradient changed a master weight"
    steps = {int(optimizer.state[p]["step"].item()) for p in model.parameters()}
    assert steps == {len(batches) - 1}, f"step counters {steps}, expected {len(batches) - 1} (one step skipped)"


def test_whole_step_cuda_graph_matches_eager():
    batches = _batches(WARMUP + REPLAYS)
    lr_at = {6: 5e-4}  # replay index -> new lr (a device-tensor write, seen by the captured kernels)

    # Eager reference: WARMUP + REPLAYS ordinary steps.
    model, optimizer, scaler, lr, poison = _build()
    for index, (inputs, targets) in enumerate(batches):
        replay_index = index - WARMUP
        if replay_index in lr_at:
            lr.fill_(lr_at[replay_index])
        _inject(poison, replay_index in INJECTED)
        optimizer.zero_grad(set_to_none=True)
        _step(model, optimizer, scaler, poison, inputs, targets)
    torch.cuda.synchronize()
    eager = _snapshot(model, optimizer, scaler)

    # Graphed: the same model from the same seed; warm-up on a side stream, capture, replay.
    model, optimizer, scaler, lr, poison = _build()
    static_inputs = torch.empty_like(batches[0][0])
    static_targets = torch.empty_like(batches[0][1])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for inputs, targets in batches[:WARMUP]:
            static_inputs.copy_(inputs)
            static_targets.copy_(targets)
            _inject(poison, False)
            optimizer.zero_grad(set_to_none=True)
            _step(model, optimizer, scaler, poison, static_inputs, static_targets)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    # The backward inside the capture allocates the grads from the graph's pool; every replay
    # rewrites them, so there is nothing to zero between replays.
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = _step(model, optimizer, scaler, poison, static_inputs, static_targets)
    for replay_index, (inputs, targets) in enumerate(batches[WARMUP:]):
        if replay_index in lr_at:
            lr.fill_(lr_at[replay_index])
        static_inputs.copy_(inputs)
        static_targets.copy_(targets)
        _inject(poison, replay_index in INJECTED)
        graph.replay()
    torch.cuda.synchronize()
    graphed = _snapshot(model, optimizer, scaler)

    assert torch.isfinite(static_loss).item()
    assert int(graphed["skipped_steps"].item()) == len(INJECTED), "the injected replays were not skipped"
    step_counts = {int(graphed[k].item()) for k in graphed if k.endswith(".step")}
    assert step_counts == {WARMUP + REPLAYS - len(INJECTED)}
    _assert_bitwise_equal(graphed, eager)
