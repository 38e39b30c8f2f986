"""The structural rules of docs/ARCHITECTURE.md, checked against the tree: no include reaches across
top-level folders by relative path, kernels/ is framework-free and its host headers CUDA-free, and
every path and symbol the document cites exists. (The autocast boundary and the csrc/ops file
sizes are checked in tests/python/test_module_layout.py.)"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for folder in ("csrc", "kernels", "tests/cpp", "tests/emulated", "examples/cpp")
           for p in (ROOT / folder).rglob("*") if p.suffix in {".h", ".cpp", ".cu", ".cuh"}]
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def test_no_relative_include_reaches_across_top_level_folders():
    offenders = [f"{p.relative_to(ROOT)}: {inc}" for p in SOURCES for inc in INCLUDE.findall(p.read_text())
                 if inc.startswith("../")]
    assert not offenders, offenders


def test_kernels_include_no_torch_or_aten():
    framework = re.compile(r"#\s*include\s*[<\"](ATen|torch|c10)/")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "kernels").rglob("*") if p.suffix in {".h", ".cpp", ".cu", ".cuh"}
                 and framework.search(p.read_text())]
    assert not offenders, offenders


def test_cuda_free_kernel_headers_include_no_cuda():
    """kernels/include/ampkit_kernels headers of the host target must not pull in CUDA (the
    AMPKIT_CUDA=OFF build compiles them without CUDA's include directory)."""
    cuda = re.compile(r"#\s*include\s*[<\"](cuda|cublas|cuda_runtime|cuda_fp16|cuda_bf16)[^>\"]*[>\"]")
    host_headers = ["optim_math.h", "scale_math.h", "multi_tensor_plan.h", "gemm_types.h", "gemm_preference.h",
                    "linear_gemms.h", "host_device.h"]
    for name in host_headers:
        text = (ROOT / "kernels/include/ampkit_kernels" / name).read_text()
        assert not cuda.search(text), name


def test_paths_cited_by_the_architecture_document_exist():
    text = (ROOT / "docs/ARCHITECTURE.md").read_text()
    cited = set(re.findall(r"`((?:csrc|kernels|python|tests)/[\w./{},*-]+)`", text))
    missing = []
    for path in cited:
        if "*" in path:
            continue
        if "{" in path:  # a/b.{h,cpp}
            stem, alternatives = re.match(r"(.*)\{(.*)\}", path).groups()
            candidates = [stem + alt for alt in alternatives.split(",")]
        else:
            candidates = [path]
        missing += [c for c in candidates if not (ROOT / c.rstrip("/")).exists()]
    assert not missing, missing


@pytest.mark.parametrize("name", ["update_scale_state", "is_unscalable_grad_dtype", "find_typed_op", "register_meta_and_sparse", "parse_activation",
                                  "LinearActivation", "SelfRoutedRegistration"])
def test_symbols_cited_by_the_architecture_document_are_defined(name):
    assert any(re.search(rf"\b{name}\b", p.read_text()) for p in SOURCES if p.suffix == ".h"), name
