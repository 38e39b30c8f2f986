"""Policy.for_this_machine: torch's autocast lists, fitted to this machine: a call of an allowed op
that this machine runs slower in low precision than in fp32 runs in fp32. Also where ampkit uses it
(Trainer, AdaptivePrecision).

On a CPU without AMX, torch's flash attention has no packed bf16/fp16 path. On the AVX512-BF16 CPU
this was built on (benchmarks/bench_attention_precision.py), its forward+backward took 1.9-8.5x
the fp32 time in fp16 at every shape, and in bf16 1.3-4.2x when key length x head dim < 16384,
0.88-1.45x at 16384 and 0.72-0.95x above: so fp16 attention always goes to fp32 there, bf16
attention only for short keys (<= 16384)."""
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
SHORT_KEYS = 16384  # key length x head dim at or below which bf16 attention goes to fp32 here


def attention_rule(dtype: torch.dtype) -> str | None:
    """When this machine runs attention in fp32 under the fitted policy: 'every call', the shape
    condition, or None."""
    rules = [when for op, when, _ in ampkit.slow_in_lower_precision("cpu", dtype) if op == SDPA]
    return rules[0] if rules else None


def fp32_here(dtype: torch.dtype, key_length: int, head_dim: int) -> bool:
    rule = attention_rule(dtype)
    return rule == "every call" or (rule is not None and key_length * head_dim <= SHORT_KEYS)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("dtype", LOW)
def test_it_is_torchs_lists_with_the_machine_rules_on(device, dtype):
    fitted, default = ampkit.Policy.for_this_machine(device, dtype), ampkit.Policy.default(device, dtype)
    assert fitted.dtype == dtype and fitted.device_type == device
    assert fitted.fitted_to_machine and not default.fitted_to_machine
    assert fitted != default and "fitted to this machine" in repr(fitted)
    for name in LISTS:
        assert fitted.ops(name) == default.ops(name), name
    # Edits keep the fitting.
    edited = fitted.deny("mm")
    assert edited.fitted_to_machine and edited.list_of("mm") == "deny"
    assert edited != default.deny("mm") and edited.ops("deny") == default.deny("mm").ops("deny")
    for op, when, reason in ampkit.slow_in_lower_precision(device, dtype):
        assert default.list_of(op) == "allow"
        assert str(dtype).replace("torch.", "") in reason and "flash attention" in reason and when
    if device == "cuda":
        assert not ampkit.slow_in_lower_precision(device, dtype)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AMX rules are x86's")
def test_the_rules_follow_the_cpus_matrix_units():
    capability = torch._C._cpu._get_cpu_capability()
    # torch packs bf16 GEMMs for AMX-BF16 tiles and fp16 ones for AMX-FP16.
    expected_bf16 = (None if capability["amx_bf16"] else
                     f"key length x head dim <= {SHORT_KEYS}" if capability["avx512_bf16"] else "every call")
    assert attention_rule(torch.bfloat16) == expected_bf16
    assert attention_rule(torch.float16) == (None if capability["amx_fp16"] else "every call")


def test_defaults_follow_the_device_and_bad_arguments_are_refused():
    assert ampkit.Policy.for_this_machine("cpu").dtype == torch.bfloat16
    assert ampkit.Policy.for_this_machine("cuda").dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        ampkit.Policy.for_this_machine("cpu", torch.float32)
    with pytest.raises(ValueError, match="device_type"):
        ampkit.slow_in_lower_precision("mps", torch.bfloat16)


def qkv(dtype, tokens, head_dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, tokens, head_dim, generator=generator).to(dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("tokens,head_dim", [(16, 8), (256, 64), (512, 32), (512, 64)])
def test_attention_runs_in_fp32_exactly_where_this_machine_is_slower_in_low_precision(dtype, tokens, head_dim):
    """Where the rule sends it to fp32, attention gets fp32 copies of its bf16/fp16 inputs: output
    and input gradients are those of fp32 attention on the same values, bit for bit (the gradients
    rounded once to the inputs' dtype, as autocast's cast backward rounds them). Elsewhere it runs
    in the low-precision dtype, as under torch's lists."""
    q, k, v = qkv(dtype, tokens, head_dim)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    with ampkit.autocast("cpu", policy=ampkit.Policy.for_this_machine("cpu", dtype)):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu", dtype)):
        assert F.scaled_dot_product_attention(q, k, v, is_causal=True).dtype == dtype
    if not fp32_here(dtype, tokens, head_dim):
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


def test_the_key_length_not_the_query_length_decides():
    """Cross-attention: 16 queries over 1024 keys of head dim 32 (32768 > 16384) stays bf16; 1024
    queries over 16 keys goes to fp32."""
    if attention_rule(torch.bfloat16) != f"key length x head dim <= {SHORT_KEYS}":
        pytest.skip("this CPU has no shape-dependent bf16 attention rule")
    generator = torch.Generator().manual_seed(0)
    few, many = (torch.randn(1, 2, n, 32, generator=generator).bfloat16() for n in (16, 1024))
    with ampkit.autocast("cpu", policy=ampkit.Policy.for_this_machine("cpu", torch.bfloat16)):
        assert F.scaled_dot_product_attention(few, many, many).dtype == torch.bfloat16
        assert F.scaled_dot_product_attention(many, few, few).dtype == torch.float32


def test_explain_says_when_the_machine_sent_an_allowed_call_to_fp32():
    q, k, v = qkv(torch.bfloat16, 16, 8)
    records = ampkit.explain(lambda: F.scaled_dot_product_attention(q, k, v), device_type="cpu",
                             policy=ampkit.Policy.for_this_machine("cpu", torch.bfloat16))
    (record,) = [r for r in records if r.op.startswith(SDPA)]
    assert record.list == ("allow (fp32 on this machine)" if fp32_here(torch.bfloat16, 16, 8) else "allow")
    assert record.outputs == (("float32",) if fp32_here(torch.bfloat16, 16, 8) else ("bfloat16",))


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
    expected = torch.float32 if fp32_here(torch.bfloat16, 5, 4) else torch.bfloat16
    for adaptive in (None, True):
        model = TinyAttention()
        trainer = ampkit.Trainer(model, amp=True, batch_size=32, progress=False, self_check=False, adaptive=adaptive)
        trainer.fit((x, y), epochs=1)
        assert model.attention_dtypes and set(model.attention_dtypes) == {expected}, adaptive
    controller = ampkit.AdaptivePrecision(TinyAttention(), "cpu", torch.bfloat16)
    assert controller.policy == ampkit.Policy.for_this_machine("cpu", torch.bfloat16)


def test_the_attention_benchmark_reports_the_policys_choice(tmp_path):
    """benchmarks/bench_attention_precision.py --quick: the figures behind the rules, and the dtype
    the fitted policy picked for each row (which must agree with the rules)."""
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "attention.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(repo, "python"),
                                                                      os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "bench_attention_precision.py", "--device", "cpu", "--quick", "--json", str(out)],
                   cwd=os.path.join(repo, "benchmarks"), env=env, check=True, capture_output=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    assert {row["dtype"] for row in rows} == {"bfloat16", "float16"}
    for row in rows:
        dtype = getattr(torch, row["dtype"])
        assert row["for_this_machine"] == ("float32" if fp32_here(dtype, 32, 16) else row["dtype"])
        assert row["fp32_ms"] > 0 and row["low_ms"] > 0
