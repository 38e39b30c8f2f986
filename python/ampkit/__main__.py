"""`python -m ampkit`: print how ampkit was built and what this machine offers."""
from __future__ import annotations

import sys

import torch

import ampkit


def describe_environment() -> str:
    info = ampkit.build_info()
    lines = [
        f"ampkit {info['version']} (built against torch {info['torch_version']}; running torch {torch.__version__})",
        f"CUDA kernels compiled: {info['cuda']}"
        + (f" for sm_{', sm_'.join(info['cuda_architectures'])}" if info["cuda"] else ""),
        f"torch CUDA runtime: {torch.version.cuda}; CUDA available: {torch.cuda.is_available()}",
        f"CPU kernels: {info['cpu_kernel_threads']} thread(s) of torch.get_num_threads()={torch.get_num_threads()}",
    ]
    for dtype in (torch.bfloat16, torch.float16):
        for op, when, _ in ampkit.slow_in_lower_precision("cpu", dtype):
            lines.append(f"CPU autocast, Policy.for_this_machine: {op} in float32 instead of "
                         f"{str(dtype).replace('torch.', '')} ({when})")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            lines.append(f"  cuda:{index} {torch.cuda.get_device_name(index)} (sm_{major}{minor})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "info"
    if command == "info":
        print(describe_environment())
        return 0
    if command == "check":
        print(describe_environment())
        device = argv[1] if len(argv) > 1 else None
        verdict = ampkit.check_amp(device=device)
        print(verdict)
        return 0 if verdict.ok else 1
    print(f"usage: python -m ampkit [info | check [cpu|cuda]], got {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
