"""The CPU kernels' instruction-set levels, bit for bit.

On x86-64, master_sgd_step_ / master_adam_step_ and unscale_and_check_ run an AVX-512, an AVX2
or the portable loop, chosen once per process; AMPKIT_CPU_ISA=baseline|avx2|avx512 forces one.
Each level runs the same battery below in a subprocess of its own, at 1 and at 2 threads, and
saves every tensor the ops wrote; the tests compare the bits (NaN signs and payloads included)
with the portable loop at 1 thread. No tolerance: the levels run the same IEEE operations in the
same order (optim_math.h's formulas lane by lane, c10's conversions, the norm's fixed lane and
block order), so any difference is a bug.

The inputs hold what breaks vector code: NaNs with signs and payloads, +-inf, +-0, fp32/fp16/bf16 subnormals, rounding
ties of fp16/bf16, values that overflow to inf when unscaled or written to fp16, sizes around
the 8- and 16-lane vectors and the chunk boundaries, and many tensors in one call.
Correctness against plain torch is the other test files' job (test_optim.py, test_torch_parity.py,
test_unscale_and_check.py): they run on whatever level the machine picks.
"""
from __future__ import annotations

import importlib
import os
import struct
import subprocess
import sys

import pytest
import torch

LEVELS = ("baseline", "avx2", "avx512")
THREADS = (1, 2)
# Around the 8/16-lane vectors, the 16384-element step chunks and the 32768-element unscale blocks.
STEP_SIZES = [1, 7, 8, 15, 16, 17, 31, 33, 1000, 16384 + 3, 40001]
UNSCALE_SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 1000, 32768 + 13, 70001, 200003]
INV_SCALE = 2.0 ** -10 * 1.5  # not a power of two: the fp16/bf16 results need rounding
SPECIALS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0,
            1e-40, -3e-42,                        # fp32 (and bf16) subnormals
            3e-6, -6e-8,                          # fp16 subnormals
            65504.0, 70000.0, -1e5, 3.0e38,       # fp16 max, beyond it, near fp32 max
            1.0 + 2.0 ** -11, 1.0 + 2.0 ** -8,    # fp16 and bf16 rounding ties
            2.0 ** -126, 2.0 ** -14]              # the smallest normals of fp32/bf16 and fp16


def levels_this_cpu_runs() -> list[str]:
    capability = torch.backends.cpu.get_cpu_capability()  # torch's own CPU probe
    if capability == "AVX512":
        return list(LEVELS)
    if capability == "AVX2":
        return ["baseline", "avx2"]
    return ["baseline"]


def with_specials(numel: int, dtype: torch.dtype, generator: torch.Generator, scale: float,
                  nonnegative: bool = False) -> torch.Tensor:
    values = torch.randn(numel, generator=generator, dtype=torch.float64) * scale
    if nonnegative:
        values = values.abs()
    if numel:
        count = max(1, numel // 40)
        where = torch.randint(0, numel, (count,), generator=generator)
        which = torch.randint(0, len(SPECIALS), (count,), generator=generator)
        values[where] = torch.tensor(SPECIALS, dtype=torch.float64)[which]
    result = values.to(dtype)
    if numel:  # NaNs with a sign and a payload (quiet and signalling), which conversions may drop
        width = 8 * result.element_size()
        signed = [p - 2 ** width if p >= 2 ** (width - 1) else p for p in NAN_PATTERNS[dtype]]  # the int type's view
        patterns = torch.tensor(signed, dtype=INT_OF[dtype])
        count = max(1, numel // 200)
        where = torch.randint(0, numel, (count,), generator=generator)
        which = torch.randint(0, len(patterns), (count,), generator=generator)
        result.view(INT_OF[dtype])[where] = patterns[which]
    return result


INT_OF = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
          torch.float64: torch.int64}
NAN_PATTERNS = {
    torch.float16: [0x7D01, 0xFE55, 0x7C01, 0xFE00],
    torch.bfloat16: [0x7F81, 0xFFA0, 0x7FC1, 0xFFC0],
    torch.float32: [0x7F800001, 0xFFC12345, 0x7FA00000, 0xFFC00000],
    torch.float64: [0x7FF0000000000001, 0xFFF8000000012345],
}


# ---- the battery one level runs (in its subprocess) ----

def scalar(value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor([value], dtype=dtype)


PARAM_GRAD_DTYPES = [  # (param, grad, FP32 masters?)
    (torch.float16, torch.float16, True),
    (torch.bfloat16, torch.bfloat16, True),
    (torch.float32, torch.float32, False),
    (torch.bfloat16, torch.float32, True),
    (torch.float16, torch.bfloat16, False),  # the fp16 param holds its own weight
    (torch.float64, torch.float64, False),   # the portable loop on every level
]

ADAM_CASES = {
    "adam": dict(weight_decay=0.0, decoupled=False),
    "adamw": dict(weight_decay=1e-2, decoupled=True),
    "adam_l2_amsgrad_step5": dict(weight_decay=1e-2, decoupled=False, amsgrad=True, steps=5.0),
    "adamw_maximize_clip_write_back": dict(weight_decay=1e-2, decoupled=True, maximize=True, clip=0.5,
                                           write_back=True),
    "adamw_amsgrad_found_inf_clear": dict(weight_decay=1e-1, decoupled=True, amsgrad=True, found_inf=0.0),
    "adamw_skipped_write_back": dict(weight_decay=1e-2, decoupled=True, found_inf=1.0, write_back=True),
}
SGD_CASES = {
    "sgd": dict(),
    "sgd_momentum_first_step": dict(momentum=0.9),
    "sgd_nesterov_weight_decay_step3": dict(momentum=0.9, nesterov=True, weight_decay=1e-2, steps=3.0),
    "sgd_dampening_maximize_write_back": dict(momentum=0.5, dampening=0.25, maximize=True, write_back=True,
                                              clip=0.75, steps=1.0),
    "sgd_skipped_write_back": dict(momentum=0.9, found_inf=1.0, write_back=True, steps=2.0),
}


def step_tensors(param_dtype, grad_dtype, with_masters, state_count, seed):
    generator = torch.Generator().manual_seed(seed)
    compute = torch.float64 if param_dtype == torch.float64 else torch.float32
    masters = [with_specials(n, compute, generator, 0.02) for n in STEP_SIZES]
    params = [m.to(param_dtype) for m in masters]
    grads = [with_specials(n, grad_dtype, generator, 100.0) for n in STEP_SIZES]
    states = [[with_specials(n, compute, generator, 1e-3, nonnegative=(k > 0)) for n in STEP_SIZES]
              for k in range(state_count)]
    return params, (masters if with_masters else []), grads, states


class OpThreads:
    """Runs the op under test at `threads` threads; the inputs are made at 1 (torch's random
    fills of large tensors are not the same at every thread count)."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        torch.set_num_threads(1)


def run_adam(case, param_dtype, grad_dtype, with_masters, seed, threads):
    opts = ADAM_CASES[case]
    amsgrad = opts.get("amsgrad", False)
    params, masters, grads, states = step_tensors(param_dtype, grad_dtype, with_masters, 3 if amsgrad else 2, seed)
    steps = [scalar(opts.get("steps", 0.0)) for _ in params]
    lr_dtype = torch.float64 if param_dtype == torch.float64 else torch.float32
    found_inf = scalar(opts["found_inf"]) if "found_inf" in opts else None
    with OpThreads(threads):
        torch.ops.ampkit.master_adam_step_(
            params, masters, grads, states[0], states[1], states[2] if amsgrad else [], steps, scalar(1e-3, lr_dtype),
            scalar(INV_SCALE), scalar(opts.get("clip", 1.0)), found_inf, 0.9, 0.999, 1e-8, opts["weight_decay"],
            opts["decoupled"], opts.get("maximize", False), opts.get("write_back", False))
    return {"params": params, "masters": masters, "grads": grads, "exp_avgs": states[0], "exp_avg_sqs": states[1],
            "max_exp_avg_sqs": states[2] if amsgrad else [], "steps": steps}


def run_sgd(case, param_dtype, grad_dtype, with_masters, seed, threads):
    opts = SGD_CASES[case]
    momentum = opts.get("momentum", 0.0)
    params, masters, grads, states = step_tensors(param_dtype, grad_dtype, with_masters, 1, seed)
    buffers = states[0] if momentum else []
    steps = [scalar(opts.get("steps", 0.0)) for _ in params]
    lr_dtype = torch.float64 if param_dtype == torch.float64 else torch.float32
    found_inf = scalar(opts["found_inf"]) if "found_inf" in opts else None
    with OpThreads(threads):
        torch.ops.ampkit.master_sgd_step_(
            params, masters, grads, buffers, steps, scalar(0.1, lr_dtype), scalar(INV_SCALE),
            scalar(opts.get("clip", 1.0)), found_inf, momentum, opts.get("dampening", 0.0),
            opts.get("weight_decay", 0.0), opts.get("nesterov", False), opts.get("maximize", False),
            opts.get("write_back", False))
    return {"params": params, "masters": masters, "grads": grads, "momentum_buffers": buffers, "steps": steps}


def last_level_cache_bytes() -> int:
    """The L3 (else L2) size as Linux reports it; 32 MiB where it does not."""
    for index in (3, 2):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size", encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return 32 << 20


def run_adamw_beyond_cache(param_dtype, seed, threads):
    """A step that reads more than the last-level cache holds, where the kernels write the model
    copy with streaming stores: a 64-byte-aligned parameter (streamed) and one that starts 2
    bytes in (stored normally), with the chunk boundaries and a vector tail in both."""
    generator = torch.Generator().manual_seed(seed)
    numel = last_level_cache_bytes() // 16 + 16384 * 3 + 5  # 16 bytes read per element: 1.x the cache
    masters = [with_specials(numel, torch.float32, generator, 0.02), with_specials(40001, torch.float32, generator, 0.02)]
    storage = torch.empty(40001 + 1, dtype=param_dtype)
    params = [masters[0].to(param_dtype), storage[1:].copy_(masters[1].to(param_dtype))]
    grads = [with_specials(m.numel(), param_dtype, generator, 100.0) for m in masters]
    states = [[with_specials(m.numel(), torch.float32, generator, 1e-3, nonnegative=(k > 0)) for m in masters]
              for k in range(2)]
    steps = [scalar(3.0) for _ in params]
    with OpThreads(threads):
        torch.ops.ampkit.master_adam_step_(
            params, masters, grads, states[0], states[1], [], steps, scalar(1e-3), scalar(INV_SCALE), scalar(1.0),
            None, 0.9, 0.999, 1e-8, 1e-2, True, False, False)
    return {"params": params, "masters": masters, "exp_avgs": states[0], "exp_avg_sqs": states[1]}


UNSCALE_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# A NaN factor with a payload turns finite grads into NaNs that carry it: the fp16 blocks, which
# make NaNs canonical only where one can appear, must see those too.
NAN_FACTOR_WITH_PAYLOAD = struct.unpack("<f", struct.pack("<I", 0x7FC12345))[0]
UNSCALE_FACTORS = {"one": 1.0, "inv_scale": INV_SCALE, "overflowing": 2.0 ** 10, "nan_payload": NAN_FACTOR_WITH_PAYLOAD}


def run_unscale(dtype, factor_name, specials, with_norm, seed, threads):
    generator = torch.Generator().manual_seed(seed)
    if specials:
        grads = [with_specials(n, dtype, generator, 1000.0) for n in UNSCALE_SIZES]
    else:  # finite: the norm is a number worth comparing
        grads = [(torch.randn(n, generator=generator) * 1000.0).to(dtype) for n in UNSCALE_SIZES]
    found_inf = torch.zeros(1)
    norm = torch.zeros(()) if with_norm else None
    with OpThreads(threads):
        torch.ops.ampkit.unscale_and_check_(grads, found_inf, scalar(UNSCALE_FACTORS[factor_name]), norm)
    return {"grads": grads, "found_inf": [found_inf], "norm": [norm] if with_norm else []}


def battery() -> dict[str, torch.Tensor]:
    """Every case of this file at 1 and 2 threads: {"t<threads>/<case>/<output>/<index>": tensor}."""
    importlib.import_module("ampkit")  # registers torch.ops.ampkit.* (in the subprocess only)
    results = {}
    torch.set_num_threads(1)
    for threads in THREADS:
        runs = []
        for seed, (param_dtype, grad_dtype, with_masters) in enumerate(PARAM_GRAD_DTYPES):
            dtypes = f"{param_dtype}-{grad_dtype}-{'masters' if with_masters else 'no_masters'}".replace("torch.", "")
            runs += [(f"{case}/{dtypes}", run_adam, (case, param_dtype, grad_dtype, with_masters, seed))
                     for case in ADAM_CASES]
            runs += [(f"{case}/{dtypes}", run_sgd, (case, param_dtype, grad_dtype, with_masters, seed))
                     for case in SGD_CASES]
        for seed, param_dtype in enumerate((torch.float16, torch.bfloat16)):
            runs.append((f"adamw_beyond_cache/{str(param_dtype).replace('torch.', '')}", run_adamw_beyond_cache,
                         (param_dtype, seed)))
        for seed, dtype in enumerate(UNSCALE_DTYPES):
            for factor_name in UNSCALE_FACTORS:
                # NaN grads times a NaN factor: which of two NaNs a product keeps is the operand
                # order's, which this file does not pin down for unscale (only the fp16/bf16 stores
                # make NaNs canonical), so the NaN factor meets finite grads only.
                for specials in (False,) if factor_name == "nan_payload" else (False, True):
                    for with_norm in (False, True):
                        name = (f"unscale/{str(dtype).replace('torch.', '')}/{factor_name}/"
                                f"{'specials' if specials else 'finite'}/{'norm' if with_norm else 'no_norm'}")
                        runs.append((name, run_unscale, (dtype, factor_name, specials, with_norm, seed)))
        for name, fn, args in runs:
            for output, tensors in fn(*args, threads).items():
                for index, tensor in enumerate(tensors):
                    results[f"t{threads}/{name}/{output}/{index}"] = tensor.clone()
    return results


# ---- the tests (in the parent process) ----

def run_level(level: str, out_dir) -> dict[str, torch.Tensor]:
    path = os.path.join(str(out_dir), f"{level}.pt")
    env = dict(os.environ, AMPKIT_CPU_ISA=level)
    result = subprocess.run([sys.executable, os.path.abspath(__file__), path], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return torch.load(path)


@pytest.fixture(scope="module")
def level_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cpu_isa")
    return {level: run_level(level, out_dir) for level in levels_this_cpu_runs()}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(INT_OF[tensor.dtype]) if tensor.dtype in INT_OF else tensor


def differences(expected: dict, actual: dict) -> list[str]:
    assert expected.keys() == actual.keys()
    found = []
    for key, want in expected.items():
        got = actual[key]
        if got.dtype != want.dtype or got.shape != want.shape:
            found.append(f"{key}: {got.dtype}{list(got.shape)} vs {want.dtype}{list(want.shape)}")
            continue
        mismatch = bits(got) != bits(want)
        if bool(mismatch.any()):
            first = int(mismatch.flatten().nonzero()[0])
            found.append(f"{key}: {int(mismatch.sum())} of {want.numel()} elements differ, first at {first}: "
                         f"{got.flatten()[first].item()!r} vs {want.flatten()[first].item()!r}")
    return found


def baseline_at_one_thread(results: dict) -> dict:
    return {key.split("/", 1)[1]: value for key, value in results.items() if key.startswith("t1/")}


def at_threads(results: dict, threads: int) -> dict:
    prefix = f"t{threads}/"
    return {key[len(prefix):]: value for key, value in results.items() if key.startswith(prefix)}


def test_battery_covers_every_case(level_results):
    results = level_results["baseline"]
    assert len(results) > 1000
    # The inputs did reach the interesting paths: some outputs are NaN, some inf, some subnormal.
    floats = [t for t in results.values() if t.is_floating_point() and t.numel()]
    assert any(bool(t.isnan().any()) for t in floats)
    assert any(bool(t.isinf().any()) for t in floats)
    assert any(bool(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).any()) for t in floats)
    # fp16 params written from fp32 masters above 65504 became inf.
    assert bool(results["t1/adam/float16-float16-masters/params/10"].isinf().any())


def test_a_step_writes_one_nan(level_results):
    # Which NaN survives where two meet is the compiler's choice, so the kernels write the quiet
    # NaN for every NaN they store (fp32 0x7FC00000, fp16 0x7E00, bf16 0x7FC0); the inputs had
    # signed NaNs and payloads.
    canonical = {torch.float32: 0x7FC00000, torch.float16: 0x7E00, torch.bfloat16: 0x7FC0}
    checked = 0
    for key, tensor in level_results["baseline"].items():
        parts = key.split("/")
        case, output = parts[1], parts[-2]
        written = "write_back" in case if output == "grads" else "skipped" not in case
        if case == "unscale" or output == "steps" or tensor.dtype not in canonical or not written:
            continue
        nans = bits(tensor)[tensor.isnan()]
        assert bool((nans == canonical[tensor.dtype]).all()), key
        checked += nans.numel()
    assert checked > 1000


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("level", LEVELS)
def test_level_matches_the_portable_loop_bitwise(level_results, level, threads):
    if level not in level_results:
        pytest.skip(f"this CPU does not run {level} (torch reports {torch.backends.cpu.get_cpu_capability()})")
    expected = baseline_at_one_thread(level_results["baseline"])
    found = differences(expected, at_threads(level_results[level], threads))
    assert not found, f"{len(found)} outputs differ from the portable loop at 1 thread:\n" + "\n".join(found[:20])


def test_an_unknown_level_is_a_clear_error():
    env = dict(os.environ, AMPKIT_CPU_ISA="avx9000")
    script = ("import torch, ampkit\n"
              "torch.ops.ampkit.unscale_and_check_([torch.ones(4)], torch.zeros(1), torch.ones(()))\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "AMPKIT_CPU_ISA must be one of auto, baseline, avx2, avx512, got 'avx9000'" in result.stderr


if __name__ == "__main__":
    torch.save(battery(), sys.argv[1])
