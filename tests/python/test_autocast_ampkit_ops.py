"""ampkit's own ops (fused_linear, fused_mlp) obey ampkit policies like aten ops do, and keep
torch.autocast's linear-like behaviour outside them."""
from __future__ import annotations

import pytest
import torch

import ampkit


def inputs():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=generator) for shape in ((4, 8), (16, 8), (16,), (3, 16), (3,))]


def run(op, x, w1, b1, w2, b2):
    if op == "fused_linear":
        return ampkit.fused_linear(x, w1, b1, "gelu")
    return torch.ops.ampkit.fused_mlp(x, w1, b1, w2, b2)


@pytest.mark.parametrize("op", ["fused_linear", "fused_mlp"])
def test_default_policy_and_torch_autocast_run_it_in_low_precision(op):
    args = inputs()
    assert ampkit.Policy.default("cpu", torch.bfloat16).list_of(f"ampkit::{op}") == "allow"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        by_torch = run(op, *args)
    with ampkit.autocast("cpu", dtype=torch.bfloat16):
        by_ampkit = run(op, *args)
    expected = run(op, *[a.bfloat16() for a in args])
    assert by_torch.dtype == by_ampkit.dtype == torch.bfloat16
    assert torch.equal(by_torch, expected) and torch.equal(by_ampkit, expected)


@pytest.mark.parametrize("op", ["fused_linear", "fused_mlp"])
def test_edited_policies_route_it(op):
    args = inputs()
    name = f"ampkit::{op}"
    with ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu", torch.bfloat16).deny(name)):
        denied = run(op, *[a.bfloat16() for a in args])  # bf16 inputs are cast up to fp32
    assert denied.dtype == torch.float32
    assert torch.equal(denied, run(op, *[a.bfloat16().float() for a in args]))
    with ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu", torch.bfloat16).passthrough(name)):
        mixed = [args[0].bfloat16()] + args[1:]
        with pytest.raises((RuntimeError, TypeError)):
            run(op, *mixed)  # no cast: the op itself refuses mixed dtypes
        assert run(op, *args).dtype == torch.float32
    with ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu", torch.bfloat16).promote(name)):
        promoted = run(op, args[0].bfloat16(), *args[1:])
    assert promoted.dtype == torch.float32


def test_torch_autocast_is_unchanged_after_a_policy_named_it():
    args = inputs()
    with ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu", torch.bfloat16).deny("ampkit::fused_linear")):
        pass
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ampkit.fused_linear(*args[:3], "gelu").dtype == torch.bfloat16
