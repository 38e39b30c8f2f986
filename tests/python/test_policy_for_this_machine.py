"""Policy.for_this_machine: torch's autocast lists, less the ops this machine runs slower in low
precision, which go to the deny (fp32) list; and where ampkit uses it (Trainer, AdaptivePrecision).

On a CPU without AMX, torch's flash attention has no packed bf16/fp16 path: on the AVX512-BF16 CPU
this was built on its forward+backward took 2.3x (bf16) and 6x (fp16) the fp32 time
(benchmarks/bench_attention_precision.py), so there the policy keeps attention in fp32."""
from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ampkit

LISTS = ("allow", "deny", "promote", "passthrough")
LOW = (torch.bfloat16, torch.float16)
SDPA = "aten::scaled_dot_product_attention"


def attention_is_slow_here(dtype: torch.dtype) -> bool:
    return any(op == SDPA for op, _ in ampkit.slow_in_lower_precision("cpu", dtype))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", LOW)
def test_it_is_torchs_lists_with_the_slow_ops_moved_to_deny(device, dtype):
    fitted, default = ampkit.Policy.for_this_machine(device, dtype), ampkit.Policy.default(device, dtype)
    slow = {op for op, _ in ampkit.slow_in_lower_precision(device, dtype)}
    assert fitted.dtype == dtype and fitted.device_type == device
    for name in LISTS:
        assert set(fitted.ops(name)) == set(default.ops(name)) - slow | (slow if name == "deny" else set()), name
    for op, reason in ampkit.slow_in_lower_precision(device, dtype):
        assert default.list_of(op) == "allow" and fitted.list_of(op) == "deny"
        assert str(dtype).replace("torch.", "") in reason and "flash attention" in reason
    if device == "cuda":
        assert not slow and fitted == default


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AMX rule is x86's")
def test_attention_is_slow_exactly_on_cpus_without_amx():
    # torch packs bf16 GEMMs for AMX-BF16 tiles and fp16 ones for AMX-FP16; without them its flash
    # attention takes the unpacked low-precision path.
    assert attention_is_slow_here(torch.bfloat16) == (not torch.cpu._is_amx_tile_supported())
    assert attention_is_slow_here(torch.float16) == (not torch.cpu._is_amx_fp16_supported())


def test_defaults_follow_the_device_and_bad_arguments_are_refused():
    assert ampkit.Policy.for_this_machine("cpu").dtype == torch.bfloat16
    assert ampkit.Policy.for_this_machine("cuda").dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        ampkit.Policy.for_this_machine("cpu", torch.float32)
    with pytest.raises(ValueError, match="device_type"):
        ampkit.slow_in_lower_precision("mps", torch.bfloat16)


def qkv(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 16, 8, generator=generator).to(dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("dtype", LOW)
def test_attention_runs_in_fp32_where_it_is_slow_and_in_low_precision_elsewhere(dtype):
    """Under the fitted policy attention gets fp32 copies of its bf16/fp16 inputs: the output and
    the input gradients are those of fp32 attention on the same values, bit for bit (the gradients
    rounded once to the inputs' dtype, as autocast's cast backward rounds them)."""
    q, k, v = qkv(dtype)
    grad_out = torch.randn(2, 3, 16, 8, generator=torch.Generator().manual_seed(1))
    with ampkit.autocast("cpu", policy=ampkit.Policy.for_this_machine("cpu", dtype)):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if not attention_is_slow_here(dtype):
        assert out.dtype == dtype
        return
    assert out.dtype == torch.float32
    out.backward(grad_out)
    reference_inputs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    reference = F.scaled_dot_product_attention(*reference_inputs, is_causal=True)
    reference.backward(grad_out)
    assert torch.equal(out, reference)
    for ours, theirs in zip((q, k, v), reference_inputs):
        assert ours.grad.dtype == dtype and torch.equal(ours.grad, theirs.grad.to(dtype))
    # torch's lists (Policy.default) run it in the low-precision dtype.
    with ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu", dtype)):
        assert F.scaled_dot_product_attention(q, k, v, is_causal=True).dtype == dtype


def test_explain_names_the_list_that_kept_attention_in_fp32():
    q, k, v = qkv(torch.bfloat16)
    records = ampkit.explain(lambda: F.scaled_dot_product_attention(q, k, v), device_type="cpu",
                             policy=ampkit.Policy.for_this_machine("cpu", torch.bfloat16))
    (record,) = [r for r in records if r.op.startswith(SDPA)]
    assert record.list == ("deny" if attention_is_slow_here(torch.bfloat16) else "allow")


class TinyAttention(nn.Module):
    """Embedding -> one self-attention -> head; records the dtype attention returned."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.qkv, self.head = nn.Linear(8, 8), nn.Linear(8, 24), nn.Linear(8, 3)
        self.attention_dtypes: list[torch.dtype] = []

    def forward(self, x):
        q, k, v = self.qkv(self.embed(x)).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        self.attention_dtypes.append(attended.dtype)
        return self.head(attended.transpose(1, 2).flatten(-2).mean(1))


def test_trainer_and_adaptive_precision_start_from_this_machines_policy():
    x = torch.randn(64, 5, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    expected = torch.float32 if attention_is_slow_here(torch.bfloat16) else torch.bfloat16
    for adaptive in (None, True):
        model = TinyAttention()
        trainer = ampkit.Trainer(model, amp=True, batch_size=32, progress=False, self_check=False, adaptive=adaptive)
        trainer.fit((x, y), epochs=1)
        assert model.attention_dtypes and set(model.attention_dtypes) == {expected}, adaptive
    controller = ampkit.AdaptivePrecision(TinyAttention(), "cpu", torch.bfloat16)
    assert controller.policy == ampkit.Policy.for_this_machine("cpu", torch.bfloat16)
