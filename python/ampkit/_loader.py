"""Loads ampkit's compiled parts after checking they were built for the torch in this process.

A mismatch would otherwise surface as an undefined-symbol error from the dynamic loader; the
check reads a small JSON file written by the build, so it needs no compiled code itself.
"""
from __future__ import annotations

import json
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO_FILE = os.path.join(_HERE, "_build_info.json")


def _release(version: str) -> str:
    """'2.11.0+cu130' -> '2.11.0': the ABI is fixed per release, not per CUDA variant."""
    return version.split("+")[0]


def read_build_info() -> dict:
    try:
        with open(BUILD_INFO_FILE, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ImportError(
            f"ampkit's compiled parts are missing ({BUILD_INFO_FILE} not found): build and install it with "
            "`pip install --no-build-isolation -e .` from the repository, or run scripts/test.sh"
        ) from None


def load_compiled() -> dict:
    info = read_build_info()
    built_for = _release(info["torch_version"])
    running = _release(torch.__version__)
    if built_for != running:
        raise ImportError(
            f"ampkit {info['version']} was built against torch {built_for}, but this process runs torch "
            f"{torch.__version__}; rebuild ampkit against this torch (`pip install --no-build-isolation .`) "
            f"or install torch=={built_for}"
        )
    from . import _native  # noqa: PLC0415

    _native.load_library()  # registers torch.ops.ampkit.* (libampkit) and torch.ops.ampkit_python.*
    return info
