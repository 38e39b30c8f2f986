"""ampkit autocast policies against torch.autocast.

Equality is exact (torch.equal) wherever ampkit claims to do what torch does: the same casts feed
the same aten kernels on the same inputs, so any difference at all is a routing bug. On CUDA the
dtypes are exact and the values within a stated bound (values_close): there the same kernel may
run another library algorithm in another process. Where a policy
is edited, the reference is the op run by hand on inputs cast as the list says, again exactly.
"""
from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import ampkit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import autocast_sweep  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


# Unit roundoff of each floating output dtype (complex: of its real parts).
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float32: 2.0 ** -24,
                 torch.float64: 2.0 ** -53, torch.complex64: 2.0 ** -24, torch.complex128: 2.0 ** -53}


def values_close(e: torch.Tensor, a: torch.Tensor) -> bool:
    """For results of the same aten kernel on the same inputs, computed in two processes on a GPU.
    The kernel may take another cuBLAS/cuDNN algorithm there (cuBLAS is bitwise reproducible only
    with one active stream; cuDNN's backward-data algorithms behind conv_transpose are not bitwise
    reproducible at all), i.e. another fp32 summation order with one final rounding to the output
    dtype. Each side's rounding is <= u |exact|, so 2 u |e| per element; the summation orders
    differ by <= k 2^-24 sum|terms| with k <= 64 terms of O(1) here, which 2^-16 (max|e| + 1)
    covers. A routing difference changes the dtype (checked exactly); an fp32 result computed from
    inputs rounded to 16 bits is off by ~2^-12 relative, far outside the fp32 bound."""
    if not (e.is_floating_point() or e.is_complex()):
        return torch.equal(e, a)
    wide = torch.complex128 if e.is_complex() else torch.float64
    e64, a64 = e.nan_to_num().to(wide), a.nan_to_num().to(wide)
    if e64.numel() == 0:
        return True
    bound = 2 * UNIT_ROUNDOFF[e.dtype] * e64.abs() + 2.0 ** -16 * (e64.abs().max() + 1)
    return bool(((a64 - e64).abs() <= bound).all()) and torch.equal(e.isnan(), a.isnan())


def same(expected, actual, exact: bool = True) -> bool:
    """Exact (torch.equal) on the CPU; on CUDA (exact=False) dtypes and shapes exactly and the
    values within values_close's bound."""
    if isinstance(expected, str) or isinstance(actual, str):
        # both must fail (torch's and ampkit's wording of a banned op differ)
        return isinstance(expected, str) and isinstance(actual, str)
    return len(expected) == len(actual) and all(
        e.dtype == a.dtype and e.shape == a.shape
        and (torch.equal(e.nan_to_num(), a.nan_to_num()) if exact else values_close(e, a))
        for e, a in zip(expected, actual)
    )


def differences(expected: dict, actual: dict, exact: bool = True) -> list[str]:
    out = []
    for name in expected:
        if not same(expected[name], actual[name], exact):
            describe = lambda r: r if isinstance(r, str) else [str(t.dtype) for t in r]  # noqa: E731
            out.append(f"{name}: torch {describe(expected[name])} ampkit {describe(actual[name])}")
    return out


def test_cuda_value_bound_accepts_another_summation_order_and_nothing_much_larger():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 64, generator=g), torch.randn(64, 4, generator=g)
    exact = a.double() @ b.double()
    forward = (a @ b).half()
    reversed_order = (a.flip(1) @ b.flip(0)).half()  # the same fp32 products summed the other way round
    assert values_close(forward, reversed_order) and values_close(a @ b, a.flip(1) @ b.flip(0))
    # fp16 result 3 units of rounding away: rejected
    assert not values_close(forward, (exact * (1 + 6 * 2.0 ** -11)).half())
    # fp32 result computed from inputs rounded to fp16 (a cast nobody asked for): rejected
    assert not values_close(a @ b, a.half().float() @ b.half().float())
    # NaN where the other has a number: rejected
    assert not values_close(forward, torch.where(forward > 1, float("nan"), forward.float()).half())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    """torch.autocast(cpu, bf16) results from a process that never loaded ampkit."""
    out = tmp_path_factory.mktemp("pristine") / "sweep.pt"
    subprocess.run([sys.executable, os.path.join(HERE, "autocast_sweep.py"), str(out)], check=True, cwd=HERE)
    return torch.load(out)


@pytest.fixture(autouse=True)
def no_global_policy():
    ampkit.set_global_policy(None)
    yield
    ampkit.set_global_policy(None)


def torch_region():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def ampkit_region(policy=None):
    return lambda: ampkit.autocast("cpu", dtype=None if policy else torch.bfloat16, policy=policy)


# ---------------------------------------------------------------- the default policy mirrors torch

def test_sweep_has_at_least_60_ops():
    assert len(autocast_sweep.CASES) >= 60


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["fp32_inputs", "bf16_inputs"])
def test_default_policy_matches_torch_autocast_on_cpu(pristine, input_dtype):
    actual = autocast_sweep.run_sweep(ampkit_region(), input_dtype)
    assert differences(pristine[input_dtype], actual) == []
    # The sweep is not vacuous: with bf16 inputs torch's fp32 list shows in the output dtypes,
    # with fp32 inputs its lower-precision list does.
    dtypes = {name: r[0].dtype for name, r in pristine[input_dtype].items() if not isinstance(r, str)}
    other = torch.float32 if input_dtype == torch.bfloat16 else torch.bfloat16
    assert sum(d == other for d in dtypes.values()) >= 15


@pytest.mark.cuda
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float16], ids=["fp32_inputs", "fp16_inputs"])
def test_default_policy_matches_torch_autocast_on_cuda(tmp_path, input_dtype):
    out = tmp_path / "sweep.pt"
    subprocess.run([sys.executable, os.path.join(HERE, "autocast_sweep.py"), str(out), "cuda"], check=True, cwd=HERE)
    pristine = torch.load(out)
    # Values within a tolerance, not bitwise: the pristine results come from another process, where
    # torch's cuBLAS/cuDNN may pick another algorithm for the same kernel (see values_close).
    actual = autocast_sweep.run_sweep(lambda: ampkit.autocast("cuda", dtype=torch.float16), input_dtype, "cuda")
    assert differences(pristine[input_dtype], actual, exact=False) == []
    with_ampkit = autocast_sweep.run_sweep(lambda: torch.autocast("cuda", dtype=torch.float16), input_dtype, "cuda")
    assert differences(pristine[input_dtype], with_ampkit, exact=False) == []


# ---- CUDA routing without a GPU: fake CUDA tensors (dtypes and shapes, no data) ----
# Torch's AutocastCUDA kernels and ampkit's route FakeTensorMode's CUDA tensors exactly as real
# ones, so the CUDA lists are checked here on every machine; values need the GPU (tests above).

@pytest.fixture(scope="module")
def pristine_fake_cuda(tmp_path_factory) -> dict:
    """torch's CUDA fp16 routing of the sweep on fake tensors, from a process that never loaded ampkit."""
    out = tmp_path_factory.mktemp("pristine_fake_cuda") / "sweep.pt"
    subprocess.run([sys.executable, os.path.join(HERE, "autocast_sweep.py"), str(out), "fake-cuda"], check=True,
                   cwd=HERE)
    return torch.load(out)


def signature_differences(expected: dict, actual: dict) -> list[str]:
    out = []
    for name in expected:
        e, a = expected[name], actual[name]
        if (isinstance(e, str) or isinstance(a, str)) and not (isinstance(e, str) and isinstance(a, str)):
            out.append(f"{name}: torch {e} ampkit {a}")
        elif not isinstance(e, str) and e != a:
            out.append(f"{name}: torch {e} ampkit {a}")
    return out


def fake_cuda_torch_region():
    return autocast_sweep.torch_routing("cuda", torch.float16)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float16], ids=["fp32_inputs", "fp16_inputs"])
def test_default_policy_matches_torch_cuda_routing_on_fake_tensors(pristine_fake_cuda, input_dtype):
    expected = pristine_fake_cuda[input_dtype]
    actual = autocast_sweep.run_sweep(lambda: ampkit.autocast("cuda", dtype=torch.float16), input_dtype, "cuda",
                                      fake=True)
    assert signature_differences(expected, actual) == []
    # torch's own CUDA routing is unchanged in a process with ampkit's kernels installed.
    with_ampkit = autocast_sweep.run_sweep(fake_cuda_torch_region, input_dtype, "cuda", fake=True)
    assert signature_differences(expected, with_ampkit) == []
    # Not vacuous: fp32 inputs show the lower-precision list, fp16 inputs the fp32 list.
    other = "torch.float16" if input_dtype == torch.float32 else "torch.float32"
    assert sum(not isinstance(r, str) and r[0][0] == other for r in expected.values()) >= 15


def test_edited_cuda_policy_and_uninstall_on_fake_tensors(pristine_fake_cuda):
    policy = ampkit.Policy.default("cuda", torch.float16).deny("mm").allow("softmax", "add")
    with FakeTensorMode():
        a, b = torch.randn(8, 16, device="cuda"), torch.randn(16, 4, device="cuda")
        assert a.is_cuda
        check_edited_cuda_policy(policy, a, b)
    # Edits on a CUDA policy leave torch's CUDA routing alone, installed or removed.
    policy.install()
    assert ampkit.autocast.is_installed("cuda")
    for input_dtype in (torch.float32, torch.float16):
        actual = autocast_sweep.run_sweep(fake_cuda_torch_region, input_dtype, "cuda", fake=True)
        assert signature_differences(pristine_fake_cuda[input_dtype], actual) == []
    ampkit.autocast.uninstall()
    assert not ampkit.autocast.is_installed("cuda")
    for input_dtype in (torch.float32, torch.float16):
        actual = autocast_sweep.run_sweep(fake_cuda_torch_region, input_dtype, "cuda", fake=True)
        assert signature_differences(pristine_fake_cuda[input_dtype], actual) == []


def check_edited_cuda_policy(policy, a, b):
    with ampkit.autocast("cuda", policy=policy):
        assert torch.mm(a, b).dtype == torch.float32
        assert torch.softmax(a, 1).dtype == torch.float16
        assert (a + a).dtype == torch.float16
        assert torch.matmul(a, b).dtype == torch.float16
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            F.binary_cross_entropy(torch.sigmoid(a), torch.rand_like(a))
    with ampkit.autocast("cuda", policy=policy.deny("binary_cross_entropy")):
        assert F.binary_cross_entropy(torch.sigmoid(a), torch.rand_like(a)).dtype == torch.float32


@pytest.mark.cuda
def test_edited_policy_on_cuda():
    a, b = torch.randn(8, 16, device="cuda"), torch.randn(16, 4, device="cuda")
    check_edited_cuda_policy(ampkit.Policy.default("cuda", torch.float16).deny("mm").allow("softmax", "add"), a, b)


def test_torch_autocast_unchanged_while_ampkit_is_installed_and_after_uninstall(pristine):
    ampkit.Policy.default("cpu").deny("mm").allow("add").install()
    assert ampkit.autocast.is_installed("cpu")
    for input_dtype in (torch.float32, torch.bfloat16):
        # Outside ampkit regions, ampkit's kernels apply torch's own routing.
        assert differences(pristine[input_dtype], autocast_sweep.run_sweep(torch_region, input_dtype)) == []
    ampkit.autocast.uninstall()
    assert not ampkit.autocast.is_installed("cpu")
    for input_dtype in (torch.float32, torch.bfloat16):
        assert differences(pristine[input_dtype], autocast_sweep.run_sweep(torch_region, input_dtype)) == []
    # ... and a policy used afterwards installs again.
    with ampkit.autocast("cpu", dtype=torch.bfloat16):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert ampkit.autocast.is_installed("cpu")


def test_default_lists_are_torchs_own_registrations():
    """The ops ampkit mirrors are exactly those torch registers on AutocastCPU/AutocastCUDA (checked
    in a process without ampkit), except two CUDA ops torch special-cases that ampkit leaves alone."""
    code = (
        "import torch, json; names = torch._C._dispatch_get_all_op_names();"
        "print(json.dumps({k: sorted(n for n in names if torch._C._dispatch_has_kernel_for_dispatch_key(n, k))"
        " for k in ('AutocastCPU', 'AutocastCUDA')}))"
    )
    import json

    registered = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    cpu = {name for name, _ in ampkit._native.torch_routes("cpu")}
    cuda = {name for name, _ in ampkit._native.torch_routes("cuda")}
    assert cpu == set(registered["AutocastCPU"])
    assert cuda == set(registered["AutocastCUDA"]) - {"aten::_cudnn_rnn"}
    default = ampkit.Policy.default("cpu")
    assert "aten::mm" in default.ops("allow") and "aten::cat" in default.ops("promote")
    assert "aten::layer_norm" not in default.ops("deny")  # torch does not list it on CPU
    cuda_default = ampkit.Policy.default("cuda")
    assert cuda_default.dtype == torch.float16
    assert {"aten::layer_norm", "aten::softmax.int", "aten::norm.Scalar"} <= set(cuda_default.ops("deny"))
    assert "aten::binary_cross_entropy" not in sum((cuda_default.ops(n) for n in ("allow", "deny", "promote", "passthrough")), [])


# ---------------------------------------------------------------- edited policies

def test_issue_example_policy():
    policy = ampkit.Policy.default("cuda", torch.float16).allow("bmm").deny("softmax", "layer_norm")
    assert policy.list_of("bmm") == "allow"
    assert policy.list_of("softmax") == "deny" and policy.list_of("aten::softmax.int") == "deny"
    assert policy.list_of("layer_norm") == "deny"
    assert policy.list_of("relu") is None


def test_op_moved_to_deny_runs_in_fp32():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    policy = ampkit.Policy.default("cpu", torch.bfloat16).deny("mm", "conv2d")
    with ampkit.autocast("cpu", policy=policy):
        out = torch.mm(a, b)
        out_low = torch.mm(a.bfloat16(), b.bfloat16())  # low-precision inputs are cast up too
        conv = F.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3))
    assert out.dtype == torch.float32 and torch.equal(out, torch.mm(a, b))
    assert out_low.dtype == torch.float32 and torch.equal(out_low, torch.mm(a.bfloat16().float(), b.bfloat16().float()))
    assert conv.dtype == torch.float32
    with ampkit.autocast("cpu", dtype=torch.bfloat16):  # the default policy is not affected
        assert torch.mm(a, b).dtype == torch.bfloat16


def test_known_op_added_to_allow_runs_in_low_precision():
    x = torch.randn(4, 16)
    policy = ampkit.Policy.default("cpu").allow("softmax", "layer_norm")  # torch leaves them alone on CPU
    with ampkit.autocast("cpu", policy=policy):
        s = torch.softmax(x, 1)
        n = F.layer_norm(x, (16,))
    assert s.dtype == torch.bfloat16 and torch.equal(s, torch.softmax(x.bfloat16(), 1))
    assert n.dtype == torch.bfloat16 and torch.equal(n, F.layer_norm(x.bfloat16(), (16,)))


def test_unknown_to_ampkit_op_added_to_allow_uses_the_boxed_path():
    a, b = torch.randn(64), torch.randn(64)
    policy = ampkit.Policy.default("cpu").allow("add", "tanh")
    with ampkit.autocast("cpu", policy=policy):
        s = a + b
        t = torch.tanh(a)
    assert s.dtype == torch.bfloat16 and torch.equal(s, a.bfloat16() + b.bfloat16())
    assert t.dtype == torch.bfloat16 and torch.equal(t, torch.tanh(a.bfloat16()))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # plain torch.autocast: untouched
        assert (a + b).dtype == torch.float32


def test_passthrough_ops_see_their_inputs_untouched():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    policy = ampkit.Policy.default("cpu").passthrough("mm")
    with ampkit.autocast("cpu", policy=policy):
        assert torch.equal(torch.mm(a, b), torch.mm(a, b.clone()))
        assert torch.mm(a, b).dtype == torch.float32
        assert torch.mm(a.bfloat16(), b.bfloat16()).dtype == torch.bfloat16
        with pytest.raises(RuntimeError):  # mixed dtypes reach mm as given, and mm refuses them
            torch.mm(a, b.bfloat16())
    explanation = ampkit.explain(torch.mm, a, b.bfloat16(), policy=policy.allow("mm"))
    assert explanation[0].inputs == ("float32", "bfloat16")


def test_promote_runs_in_the_widest_input_dtype():
    a, b = torch.randn(8, 16), torch.randn(16, 4).bfloat16()
    policy = ampkit.Policy.default("cpu").promote("mm")
    with ampkit.autocast("cpu", policy=policy):
        out = torch.mm(a, b)
        low = torch.mm(a.bfloat16(), b)
    assert out.dtype == torch.float32 and torch.equal(out, torch.mm(a, b.float()))
    assert low.dtype == torch.bfloat16


def test_policy_lists_and_moves():
    p = ampkit.Policy("cpu", torch.bfloat16, allow=["mm"], deny=["aten::softmax.int"], passthrough=["bmm"])
    assert p.ops("allow") == ["aten::mm", "aten::mm.dtype"] or p.ops("allow") == ["aten::mm"]
    assert p.ops("deny") == ["aten::softmax.int"] and p.list_of("aten::softmax.Dimname") is None
    q = p.deny("mm")
    assert q.list_of("aten::mm") == "deny" and p.list_of("aten::mm") == "allow"  # p unchanged
    assert q != p and q.allow("mm") == p
    assert p.with_dtype(torch.float16).dtype == torch.float16
    # An explicit policy routes only what it names: cat (torch promotes it) is left alone.
    with ampkit.autocast("cpu", policy=p):
        assert torch.cat([torch.ones(2), torch.ones(2).bfloat16()]).dtype == torch.float32  # native promotion
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
        assert torch.addmm(torch.ones(2), torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


# ---------------------------------------------------------------- unusual schemas (boxed path)

@pytest.fixture(scope="module")
def custom_op():
    """An op ampkit knows nothing about at compile time, with Tensor, Tensor? and Tensor[] inputs;
    it returns the dtypes it saw as a tensor of codes, so the test sees the casts."""
    lib = torch.library.Library("ampkit_autocast_test", "DEF")
    lib.define("seen(Tensor x, Tensor? y, Tensor[] zs, int n) -> Tensor")
    codes = {torch.float32: 0.0, torch.bfloat16: 1.0, torch.float16: 2.0, torch.int64: 3.0}

    def seen(x, y, zs, n):
        parts = [x] + ([y] if y is not None else []) + list(zs)
        return torch.tensor([codes[t.dtype] for t in parts])

    lib.impl("seen", seen, "CPU")
    yield torch.ops.ampkit_autocast_test.seen
    lib._destroy()


def test_boxed_path_casts_tensor_optional_and_list_arguments(custom_op):
    x, y, z, idx = torch.randn(2), torch.randn(2), torch.randn(2).bfloat16(), torch.arange(2)
    with ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu").allow("ampkit_autocast_test::seen")):
        assert custom_op(x, y, [z, idx], 3).tolist() == [1.0, 1.0, 1.0, 3.0]
        assert custom_op(x, None, [], 3).tolist() == [1.0]
    with ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu").deny("ampkit_autocast_test::seen")):
        assert custom_op(x.bfloat16(), y, [z, idx], 3).tolist() == [0.0, 0.0, 0.0, 3.0]
    with ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu").promote("ampkit_autocast_test::seen")):
        assert custom_op(x, y.bfloat16(), [z], 3).tolist() == [0.0, 0.0, 0.0]
        assert custom_op(x.bfloat16(), None, [z], 3).tolist() == [1.0, 1.0]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # not an ampkit region: untouched
        assert custom_op(x, y, [z], 3).tolist() == [0.0, 0.0, 1.0]


def test_tensor_list_outputs_out_variants_and_in_place_ops():
    x = torch.randn(4, 6)
    policy = ampkit.Policy.default("cpu").allow("unbind", "aten::mm.out", "aten::add_.Tensor").deny("split")
    with ampkit.autocast("cpu", policy=policy):
        parts = torch.unbind(x)
        assert all(p.dtype == torch.bfloat16 for p in parts)
        assert all(p.dtype == torch.float32 for p in torch.split(x.bfloat16(), 2))
        out = torch.empty(4, 4, dtype=torch.bfloat16)
        torch.mm(x, x.t(), out=out)  # inputs cast, the out= tensor written as given
        assert torch.equal(out, torch.mm(x.bfloat16(), x.bfloat16().t()))
        target = torch.zeros(4, 6)
        target.add_(x)  # self is written: never cast; the other operand is
        assert target.dtype == torch.float32 and torch.equal(target, x.bfloat16().float())


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "build, error, needle",
    [
        (lambda: ampkit.Policy.default("cpu").allow("not_an_op"), ValueError, "unknown op 'not_an_op' in the allow list"),
        (lambda: ampkit.Policy.default("cpu").deny("aten::mm.nope"), ValueError, "no operator aten::mm.nope"),
        (lambda: ampkit.Policy("cpu", torch.bfloat16, allow=["mm"], deny=["aten::mm"]), ValueError, "is in two lists: allow (as 'mm') and deny (as 'aten::mm')"),
        (lambda: ampkit.Policy.default("cpu", torch.float32), ValueError, "must be float16 or bfloat16, got float32"),
        (lambda: ampkit.Policy("cpu", torch.int8), ValueError, "dtype must be torch.float16 or torch.bfloat16, got torch.int8"),
        (lambda: ampkit.Policy("mps", torch.float16), ValueError, "device_type must be cpu or cuda, got mps"),
        (lambda: ampkit.Policy.default("cpu").allow(3), TypeError, "op names must be strings, got int"),
        (lambda: ampkit.Policy.default("cpu").allow(""), ValueError, "an op name in the allow list is empty"),
        (lambda: ampkit.Policy.default("cuda").deny("aten::_cudnn_rnn"), ValueError, "another library already registers an autocast kernel"),
        (lambda: ampkit.set_global_policy("mixed_float8"), ValueError, "expected 'mixed_float16', 'mixed_bfloat16', 'float32' or a Policy, got 'mixed_float8'"),
        (lambda: ampkit.set_global_policy(3), TypeError, "got int"),
        (lambda: ampkit.autocast("cpu", policy=ampkit.Policy.default("cuda")), ValueError, "policy is for cuda but the region is for cpu"),
        (lambda: ampkit.autocast("cpu", dtype=torch.float16, policy=ampkit.Policy.default("cpu")), ValueError, "differs from the policy's dtype"),
        (lambda: ampkit.Policy.default("cpu").ops("allowed"), ValueError, "list_name must be one of"),
        (lambda: ampkit.set_module_policy(torch.nn.Linear(2, 2), torch.int32), ValueError, "must be torch.float16, torch.bfloat16 or torch.float32"),
        (lambda: ampkit.Policy.default("cpu").list_of("mm") and ampkit.Policy("cpu", torch.bfloat16, allow=["aten::softmax.int"]).list_of("softmax"), ValueError, "several overloads that are in different lists"),
    ],
)
def test_bad_input_is_a_clear_error(build, error, needle):
    with pytest.raises(error) as info:
        build()
    assert needle in str(info.value)


def test_region_with_bad_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="dtype must be float16 or bfloat16, got float32"):
        with ampkit.autocast("cpu", dtype=torch.float32):
            pass
    assert not torch.is_autocast_enabled("cpu")


# ---------------------------------------------------------------- regions

def test_regions_nest_disable_restore_and_decorate():
    a = torch.randn(4, 4)
    assert not torch.is_autocast_enabled("cpu")
    with ampkit.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        with ampkit.autocast("cpu", enabled=False):
            assert torch.mm(a, a).dtype == torch.float32
        with ampkit.autocast("cpu", dtype=torch.float16):
            assert torch.mm(a, a).dtype == torch.float16
        assert torch.mm(a, a).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    assert torch.get_autocast_dtype("cpu") == torch.bfloat16

    @ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu").deny("mm"))
    def f(x):
        return torch.mm(x, x), torch.matmul(x, x)

    assert [t.dtype for t in f(a)] == [torch.float32, torch.bfloat16]
    region = ampkit.autocast("cpu")
    with region:
        with region:  # the same object re-entered
            assert torch.mm(a, a).dtype == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_region_state_is_restored_when_the_body_raises():
    with pytest.raises(KeyError):
        with ampkit.autocast("cpu"):
            raise KeyError("x")
    assert not torch.is_autocast_enabled("cpu")
    assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_regions_left_out_of_order_are_refused_and_stay_open():
    a = torch.randn(4, 4)
    outer, inner = ampkit.autocast("cpu", dtype=torch.bfloat16), ampkit.autocast("cpu", dtype=torch.float16)
    outer.__enter__()
    inner.__enter__()
    try:
        with pytest.raises(RuntimeError, match="entered at depth 1 while the innermost open region on this thread "
                                               "is at depth 2; regions must be left in the reverse order"):
            outer.__exit__(None, None, None)
        assert torch.mm(a, a).dtype == torch.float16  # the refused exit changed nothing
    finally:
        inner.__exit__(None, None, None)
        assert torch.mm(a, a).dtype == torch.bfloat16
        outer.__exit__(None, None, None)  # still open after the refusal, so it can be left now
    assert not torch.is_autocast_enabled("cpu")
    assert torch.mm(a, a).dtype == torch.float32


def test_a_region_left_on_another_thread_is_refused():
    region = ampkit.autocast("cpu")
    errors = []

    def leave_here():
        try:
            region.__exit__(None, None, None)
        except RuntimeError as error:
            errors.append(str(error))
        errors.append(torch.is_autocast_enabled("cpu"))  # this thread's state was never touched

    with region:
        thread = threading.Thread(target=leave_here)
        thread.start()
        thread.join(10)
        assert torch.is_autocast_enabled("cpu")  # still open on the thread that entered it
    assert len(errors) == 2 and "must be left on the thread that entered it" in errors[0] and errors[1] is False
    assert not torch.is_autocast_enabled("cpu")


def test_one_region_object_entered_on_two_threads_at_once():
    region = ampkit.autocast("cpu", dtype=torch.float16)
    a = torch.randn(4, 4)
    entered, results = threading.Barrier(2, timeout=10), {}

    def worker(name):
        with ampkit.autocast("cpu", dtype=torch.bfloat16) if name == "nested" else contextlib.nullcontext():
            with region:
                entered.wait()  # both threads are inside the same object's region now
                results[name] = torch.mm(a, a).dtype
            results[name + " after"] = torch.mm(a, a).dtype

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("nested", "plain")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {"nested": torch.float16, "plain": torch.float16, "nested after": torch.bfloat16,
                       "plain after": torch.float32}
    assert not torch.is_autocast_enabled("cpu")


def test_a_region_keeps_its_policy_alive_and_its_settings_fixed():
    a = torch.randn(4, 4)
    region = ampkit.autocast("cpu", policy=ampkit.Policy.default("cpu").deny("mm"))  # the only reference
    gc.collect()
    for _ in range(2):  # entered again after the first exit: the policy is still the same live object
        with region:
            gc.collect()
            assert torch.mm(a, a).dtype == torch.float32 and torch.matmul(a, a).dtype == torch.bfloat16
    for name in ("policy", "dtype", "enabled", "device_type"):
        with pytest.raises(AttributeError):
            setattr(region, name, None)  # what the region enters is fixed when it is made


def test_native_region_errors_cross_as_python_exceptions():
    # The C entry points return a status instead of throwing across ctypes; each maps to the
    # exception type the C++ check names, with its message and without a C++ backtrace.
    from ampkit import _native

    with pytest.raises(ValueError, match=r"^ampkit.autocast: dtype code must be 1 \(float16\) or 2 \(bfloat16\), got 7$"):
        _native.region_enter(0, 0, 7, True)
    with pytest.raises(ValueError, match="device code must be 0 \\(cpu\\) or 1 \\(cuda\\), got 5"):
        _native.region_enter(0, 5, 0, True)
    cuda_policy = ampkit.Policy.default("cuda")
    with pytest.raises(ValueError, match="the policy is for cuda but the region is for cpu"):
        _native.region_enter(cuda_policy._fixed_facts()[2], 0, 0, True)
    assert not torch.is_autocast_enabled("cpu")


def test_regions_are_per_thread_and_policy_swaps_are_safe():
    a = torch.randn(8, 8)
    inside, swapped, results = threading.Event(), threading.Event(), {}

    def worker():
        with ampkit.autocast("cpu"):  # uses the global policy of the moment: allows mm
            inside.set()
            swapped.wait(10)
            results["worker"] = torch.mm(a, a).dtype  # keeps the policy it entered with
        with ampkit.autocast("cpu"):
            results["worker_after"] = torch.mm(a, a).dtype

    ampkit.set_global_policy(ampkit.Policy.default("cpu"))
    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(10)
    results["main"] = torch.mm(a, a).dtype  # the worker's region does not leak here
    ampkit.set_global_policy(ampkit.Policy.default("cpu").deny("mm"))
    swapped.set()
    thread.join(10)
    assert results == {"worker": torch.bfloat16, "main": torch.float32, "worker_after": torch.float32}


class CountCasts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def test_weight_cast_cache_behaves_as_torchs():
    weight = torch.randn(4, 8, requires_grad=True)  # a leaf that requires grad: cached
    x = torch.randn(2, 8)

    def count(region):
        with CountCasts() as counter, region():
            for _ in range(3):
                F.linear(x, weight)
        return counter.casts

    assert count(torch_region) == count(ampkit_region()) == 4  # the weight once, x three times


# ---------------------------------------------------------------- global and module policies

def test_global_policies():
    a = torch.randn(4, 4)
    assert ampkit.global_policy("cpu") is None
    ampkit.set_global_policy("mixed_float16")
    assert ampkit.global_policy("cpu") == ampkit.Policy.default("cpu", torch.float16)
    with ampkit.autocast("cpu"):
        assert torch.mm(a, a).dtype == torch.float16
    ampkit.set_global_policy("float32")
    assert ampkit.global_policy("cuda") == "float32"
    with ampkit.autocast("cpu"):
        assert torch.mm(a, a).dtype == torch.float32
    with ampkit.autocast("cpu", dtype=torch.bfloat16):  # an explicit dtype still autocasts
        assert torch.mm(a, a).dtype == torch.bfloat16
    custom = ampkit.Policy.default("cpu").deny("mm")
    ampkit.set_global_policy(custom)
    assert ampkit.global_policy("cpu") == custom and ampkit.global_policy("cuda") == "float32"
    with ampkit.autocast("cpu"):
        assert torch.mm(a, a).dtype == torch.float32 and torch.matmul(a, a).dtype == torch.bfloat16
    ampkit.set_global_policy("mixed_bfloat16")
    assert ampkit.global_policy("cuda").dtype == torch.bfloat16


def test_module_policy_keeps_a_head_in_fp32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    seen = {}
    model[2].register_forward_hook(lambda m, i, o: seen.update(head_in=i[0].dtype, head_out=o.dtype))
    x = torch.randn(3, 8)
    with ampkit.autocast("cpu"):
        assert model(x).dtype == torch.bfloat16
    ampkit.set_module_policy(model[2], torch.float32)
    with ampkit.autocast("cpu"):
        out = model(x)
    assert out.dtype == torch.float32 and seen == {"head_in": torch.bfloat16, "head_out": torch.float32}
    expected_hidden = torch.relu(F.linear(x.bfloat16(), model[0].weight.bfloat16(), model[0].bias.bfloat16()))
    assert torch.equal(out, F.linear(expected_hidden.float(), model[2].weight, model[2].bias))
    ampkit.set_module_policy(model[2], ampkit.Policy.default("cpu").deny("linear"))
    with ampkit.autocast("cpu"):
        assert model(x).dtype == torch.float32
    ampkit.set_module_policy(model[2], None)
    with ampkit.autocast("cpu"):
        assert model(x).dtype == torch.bfloat16
    ampkit.set_module_policy(model[0], torch.float16)  # outside any region: the module's own region
    assert model[0](x).dtype == torch.float16


# ---------------------------------------------------------------- gradients, explain

def test_gradients_match_torch_autocast():
    def grads(region):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)
        )
        x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 3])
        with region():
            loss = F.cross_entropy(model(x), y) + model[0].weight.pow(2).sum().log()
        loss.backward()
        return [p.grad for p in model.parameters()]

    reference = grads(torch_region)
    actual = grads(ampkit_region(ampkit.Policy.default("cpu")))
    assert all(g is not None and torch.equal(r, g) for r, g in zip(reference, actual))
    # an edited policy differentiates too (the cast to fp32 is part of the graph)
    edited = grads(ampkit_region(ampkit.Policy.default("cpu").deny("conv2d").allow("add")))
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in edited)


def test_explain_lists_ops_with_lists_and_dtypes():
    x, w = torch.randn(4, 8), torch.randn(8, 8)
    policy = ampkit.Policy.default("cpu").deny("mm").allow("softmax", "add")

    def fn():
        return torch.softmax(torch.mm(x, w) + 1, dim=1), torch.cat([x, x.bfloat16()])

    explanation = ampkit.explain(fn, policy=policy)
    rows = [(r.op, r.list, r.inputs, r.outputs) for r in explanation]
    assert rows == [
        ("aten::mm", "deny", ("float32", "float32"), ("float32",)),
        ("aten::add.Tensor", "allow", ("float32", "int64"), ("bfloat16",)),  # 1 arrives as a wrapped int64
        ("aten::softmax.int", "allow", ("bfloat16",), ("bfloat16",)),
        ("aten::cat", "promote", ("float32", "bfloat16"), ("float32",)),
    ]
    assert explanation.result[0].dtype == torch.bfloat16
    assert "aten::softmax.int" in str(explanation)


def test_an_ampkit_op_obeys_the_policy():
    """ampkit's own ops route through the same machinery (the boxed path until they are known at
    compile time): the outputs list and found_inf are written by the op, so never cast; the inputs
    are, per the list."""
    inputs = [torch.randn(5).bfloat16(), torch.randn(7).bfloat16()]
    outputs = [torch.empty(5), torch.empty(7)]
    policy = ampkit.Policy.default("cpu").deny("ampkit::multi_tensor_scale_")
    explanation = ampkit.explain(ampkit.multi_tensor_scale_, inputs, outputs, 0.5, policy=policy)
    assert [(r.op, r.list) for r in explanation] == [("ampkit::multi_tensor_scale_", "deny")]
    for source, result in zip(inputs, outputs):
        assert torch.equal(result, source.float() * 0.5)
