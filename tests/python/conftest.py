"""Shared fixtures: which devices the tests run on.

CPU always. CUDA when AMPKIT_TEST_CUDA=1 and torch sees a GPU (the GPU machine's run); without
them, tests marked `cuda` are skipped with the reason.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import ampkit  # noqa: F401  (loads torch.ops.ampkit.*)

CUDA_REQUESTED = os.environ.get("AMPKIT_TEST_CUDA") == "1"
CUDA_USABLE = CUDA_REQUESTED and torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA_USABLE else [])


def pytest_configure(config):
    if not CUDA_REQUESTED:
        return
    if not torch.cuda.is_available():
        pytest.exit("AMPKIT_TEST_CUDA=1 but torch sees no CUDA GPU: refusing to pass by skipping the CUDA tests",
                    returncode=3)
    if not ampkit.build_info()["cuda"]:
        pytest.exit("AMPKIT_TEST_CUDA=1 but this ampkit was built without its CUDA kernels", returncode=3)


def pytest_collection_modifyitems(config, items):
    if CUDA_USABLE:
        return
    skip = pytest.mark.skip(reason="needs AMPKIT_TEST_CUDA=1 and a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def run_with_baseline_cpu_isa(test_file: str, selection: str) -> None:
    """Reruns the tests of `test_file` matching `selection` (a -k expression) in a subprocess with
    AMPKIT_CPU_ISA=baseline, which forces the portable loops that CPUs without AVX2/F16C run."""
    env = dict(os.environ, AMPKIT_CPU_ISA="baseline")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", selection],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " passed" in result.stdout


def registered_ampkit_ops() -> list[str]:
    """Every op registered in the ampkit namespace (from the dispatcher: dir(torch.ops.ampkit) only
    lists the ops already looked up)."""
    names = {op.split("::", 1)[1].split(".")[0] for op in torch._C._dispatch_get_all_op_names()
             if op.startswith("ampkit::")}
    assert names, "no ampkit ops are registered"
    return sorted(names)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param
