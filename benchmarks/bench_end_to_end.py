"""End-to-end training steps: ampkit AMP vs torch-native AMP vs FP32, side by side in one run.

Models: the GPT-style language model of examples/python/tiny_gpt.py and the digits CNN of
examples/python/train_digits.py (``build_model``). One training step = zero_grad, forward under
autocast, loss, backward, optimizer step (and the loss-scaler calls where there is a scaler).

* ampkit:  low-precision model weights (``ampkit.optim.to_low_precision``; norms stay fp32),
           ``ampkit.autocast`` with ``Policy.for_this_machine`` (torch's lists, with the calls this
           machine runs slower in low precision sent to fp32: on a CPU without AMX, attention over
           short keys; on CUDA, torch's routing), ``ampkit.optim.AdamW`` with FP32 masters,
           ``ampkit.GradScaler`` (CUDA, fp16), FusedLinear (bias + GELU in the GEMM epilogue) in
           the GPT's MLPs.
* torch:   fp32 weights, ``torch.autocast``, ``torch.amp.GradScaler`` (CUDA, fp16),
           ``torch.optim.AdamW(fused=True)``, plain Linear-GELU-Linear MLPs.
* fp32:    fp32 weights, no autocast, ``torch.optim.AdamW(fused=True)``.

CUDA uses float16 with loss scaling; the CPU uses bfloat16 without a scaler (bf16 has fp32's
range). Reported: steps/s, ratios vs torch AMP and vs FP32, and memory: on CUDA the allocator's
peak during the timed steps; on the CPU (where one process cannot isolate each mode's peak RSS)
the bytes of the persistent training state (weights, grads, masters, optimizer state).
Timing: on CUDA one mode after another (each allocator peak is its own), the median of `repeats`
steps; on the CPU the three modes take turns step by step, in every order in turn, and each reports
its median, so a load that comes and goes falls on every mode alike (``--threads`` sets the
intra-op threads).

CPU heap (``--heap``): glibc hands freed memory back to the kernel (heap trimming, and mmap for
large blocks), so the next step faults its pages in again: 1000-2000 minor faults a step on the
digits CNN, and which mode of one process pays more depends on where each mode's frees land in the
shared heap (it moved the CNN's ampkit/torch ratio between 0.88x and 1.02x from run to run).
``kept`` (the default) sets glibc to keep freed memory (mallopt: no trimming below 1 GiB, no mmap
below 32 MiB, what ``GLIBC_TUNABLES=glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=33554432``
does for a whole program), so the modes are compared on their work; ``glibc`` keeps glibc's
defaults. Each mode's minor page faults per step are reported either way.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import itertools
import resource
import statistics
import time

import torch
from torch.nn import functional as F

import ampkit
from common import load_example, parser, report, time_fn
from targets import no_target, target

tiny_gpt = load_example("tiny_gpt")
train_digits = load_example("train_digits")
CharDataset, TinyGPT = tiny_gpt.CharDataset, tiny_gpt.TinyGPT
generate_corpus, language_model_loss = tiny_gpt.generate_corpus, tiny_gpt.language_model_loss
build_digits_cnn, load_digits = train_digits.build_model, train_digits.load_data

MODES = ("ampkit", "torch", "fp32")
# The targets on the GPU machine, for the GPT-style model; the CNN is reported.
GPT, CNN = "tiny_gpt", "digits_cnn"
TARGETS = [
    target("GPT steps/s vs torch AMP", "vs_torch_amp", ">=", 1.15, where={"family": GPT}),
    target("GPT steps/s vs FP32", "vs_fp32", ">=", 2.5, where={"family": GPT}),
    target("GPT memory vs torch AMP", "mem_vs_torch_amp", "<=", 1.0, where={"family": GPT}),
    no_target("CNN steps/s vs torch AMP", "vs_torch_amp", where={"family": CNN}),
    no_target("CNN steps/s vs FP32", "vs_fp32", where={"family": CNN}),
]


def gpt_workload(device: str, quick: bool, on_cuda: bool):
    width, layers, heads, context, batch = ((64, 2, 4, 64, 8) if quick else
                                            (512, 6, 8, 256, 32) if on_cuda else (128, 4, 4, 128, 16))
    data = CharDataset(generate_corpus(20_000 if quick else 200_000), context)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, len(data.inputs), (batch,), generator=generator)
    inputs, targets = data.inputs[rows].to(device), data.targets[rows].to(device)
    vocabulary = len(data.vocabulary)

    def build(fused: bool):
        return TinyGPT(vocabulary, context, width=width, layers=layers, heads=heads, fused=fused)

    return {"name": f"tiny_gpt d={width} L={layers} T={context} B={batch}", "build": build, "inputs": inputs,
            "targets": targets, "loss": language_model_loss}


def digits_workload(device: str, quick: bool, on_cuda: bool):
    (images, labels), _ = load_digits()
    batch = 64 if quick else 256
    return {"name": f"digits_cnn B={batch}", "build": lambda fused: build_digits_cnn(),
            "inputs": images[:batch].to(device), "targets": labels[:batch].to(device),
            "loss": lambda logits, targets: F.cross_entropy(logits.float(), targets)}


def training_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights + grads + every tensor in the optimizer state (masters, moments, step counters)."""
    seen: set[int] = set()
    total = 0
    tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    for tensor in tensors:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def make_step(mode: str, workload: dict, device: str, dtype: torch.dtype, use_scaler: bool):
    torch.manual_seed(0)
    model = workload["build"](mode == "ampkit").to(device)
    if mode == "ampkit":
        ampkit.optim.to_low_precision(model, dtype)
        optimizer = ampkit.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = ampkit.GradScaler(device) if use_scaler else None
        policy = ampkit.Policy.for_this_machine(device, dtype)
        region = lambda: ampkit.autocast(device, policy=policy)  # noqa: E731
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        scaler = torch.amp.GradScaler(device) if use_scaler and mode == "torch" else None
        region = ((lambda: torch.autocast(device, dtype=dtype)) if mode == "torch"  # noqa: E731
                  else contextlib.nullcontext)
    inputs, targets, loss_fn = workload["inputs"], workload["targets"], workload["loss"]

    def step():
        optimizer.zero_grad(set_to_none=True)
        with region():
            loss = loss_fn(model(inputs), targets)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return model, optimizer, step


def measure(mode: str, workload: dict, args, dtype: torch.dtype, use_scaler: bool, repeats: int) -> dict:
    """CUDA: one mode at a time (its allocator peak is its own)."""
    model, optimizer, step = make_step(mode, workload, args.device, dtype, use_scaler)
    step()  # creates grads and optimizer state before memory is counted
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    seconds = time_fn(step, args.device, repeats, warmup=2)
    result = {"steps_per_s": 1.0 / seconds, "ms": seconds * 1e3,
              "state_mb": training_state_bytes(model, optimizer) / 2**20,
              "peak_mb": torch.cuda.max_memory_allocated() / 2**20}
    del model, optimizer, step
    gc.collect()
    torch.cuda.empty_cache()
    return result


def measure_interleaved(workload: dict, args, dtype: torch.dtype, use_scaler: bool, repeats: int) -> dict:
    """CPU: the modes take turns, one step each, and each reports its median step time, so a load
    that comes and goes (another process on the cores) falls on every mode alike. The turns cycle
    through every order of the modes: a step finds the caches and the allocator's free memory as the
    step before it left them, and in one fixed order the first mode always came after the FP32 step,
    the one that moves the most memory (on the digits CNN that cost it 3-6 %)."""
    runs = {mode: make_step(mode, workload, args.device, dtype, use_scaler) for mode in MODES}
    for _, _, step in runs.values():
        step()
        step()  # grads, optimizer state, caches
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    faults = {mode: 0 for mode in MODES}
    orders = list(itertools.permutations(MODES))
    for turn in range(repeats):
        for mode in orders[turn % len(orders)]:
            step = runs[mode][2]
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            step()
            samples[mode].append(time.perf_counter() - start)
            faults[mode] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    results = {}
    for mode, (model, optimizer, _) in runs.items():
        seconds = statistics.median(samples[mode])
        results[mode] = {"steps_per_s": 1.0 / seconds, "ms": seconds * 1e3,
                         "state_mb": training_state_bytes(model, optimizer) / 2**20,
                         "faults": faults[mode] / repeats}
    del runs
    gc.collect()
    return results


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """glibc keeps freed memory in this process instead of returning it to the kernel (see --heap).
    False where the C library has no mallopt (not glibc)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 and mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None, help="intra-op threads on the CPU (default: torch's)")
    p.add_argument("--heap", choices=("kept", "glibc"), default="kept",
                   help="CPU: 'kept' keeps freed memory in the process, so no mode pays page faults for "
                        "re-growing the heap; 'glibc': glibc's defaults (see the module docstring)")
    args = p.parse_args()
    on_cuda = args.device.startswith("cuda")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    heap = "not set (cuda)" if on_cuda else "glibc"
    if not on_cuda and args.heap == "kept":
        heap = "kept" if keep_freed_memory() else "glibc (this C library has no mallopt)"
    dtype = torch.float16 if on_cuda else torch.bfloat16
    use_scaler = on_cuda  # fp16 needs loss scaling; bf16 has fp32's exponent range
    repeats = args.repeats or (3 if args.quick else (50 if on_cuda else 15))
    rows = []
    for workload in (gpt_workload(args.device, args.quick, on_cuda), digits_workload(args.device, args.quick, on_cuda)):
        if on_cuda:
            results = {mode: measure(mode, workload, args, dtype, use_scaler, repeats) for mode in MODES}
        else:
            results = measure_interleaved(workload, args, dtype, use_scaler, repeats)
        ours, native, fp32 = results["ampkit"], results["torch"], results["fp32"]
        row = {"model": workload["name"], "family": workload["name"].split()[0],
               "dtype": str(dtype).replace("torch.", "")}
        for mode in MODES:
            row[f"{mode}_steps_s"] = round(results[mode]["steps_per_s"], 2)
        row["vs_torch_amp"] = round(ours["steps_per_s"] / native["steps_per_s"], 2)
        row["vs_fp32"] = round(ours["steps_per_s"] / fp32["steps_per_s"], 2)
        memory_key = "peak_mb" if on_cuda else "state_mb"
        for mode in MODES:
            row[f"{mode}_{memory_key}"] = round(results[mode][memory_key], 2)
        row["mem_vs_torch_amp"] = round(ours[memory_key] / native[memory_key], 2)
        if not on_cuda:
            for mode in MODES:
                row[f"{mode}_faults"] = round(results[mode]["faults"])
        rows.append(row)
    memory_key = "peak_mb" if on_cuda else "state_mb"
    columns = (["model", "dtype"] + [f"{m}_steps_s" for m in MODES] + ["vs_torch_amp", "vs_fp32"]
               + [f"{m}_{memory_key}" for m in MODES] + ["mem_vs_torch_amp"]
               + ([] if on_cuda else [f"{m}_faults" for m in MODES]))
    title = "End-to-end training steps: ampkit AMP vs torch AMP vs FP32 (ratios: ampkit steps/s over the other)"
    if not on_cuda:
        title += f"; heap: {heap}; *_faults: minor page faults per step"
    report(title, rows, columns, args,
           extra={"memory": memory_key, "repeats": repeats, "loss_scaling": use_scaler, "heap": heap},
           targets=TARGETS)


if __name__ == "__main__":
    main()
