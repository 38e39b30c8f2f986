"""The package as a user gets it: build info, the torch-version guard, `python -m ampkit`, pip."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import ampkit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE_DIR = os.path.dirname(ampkit.__file__)


def test_build_info_describes_the_build():
    info = ampkit.build_info()
    assert info["version"] == ampkit.__version__
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda"], bool)
    if info["cuda"]:
        assert info["cuda_architectures"], "CUDA kernels compiled but no architecture recorded"


def test_cuda_kernels_compiled_when_required():
    # CI sets AMPKIT_EXPECT_CUDA_BUILD=1: the CUDA sources must have been compiled and linked.
    if os.environ.get("AMPKIT_EXPECT_CUDA_BUILD") != "1":
        pytest.skip("AMPKIT_EXPECT_CUDA_BUILD is not set")
    assert ampkit.build_info()["cuda"] is True


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd="/", timeout=300)


def test_import_refuses_another_torch_version(tmp_path):
    copy = tmp_path / "ampkit"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    info_file = copy / "_build_info.json"
    info = json.loads(info_file.read_text())
    info["torch_version"] = "2.10.0"
    info_file.write_text(json.dumps(info))
    result = run_python("import ampkit", PYTHONPATH=str(tmp_path))
    assert result.returncode != 0
    assert "ImportError: ampkit 0.1.0 was built against torch 2.10.0, but this process runs torch" in result.stderr
    assert "undefined symbol" not in result.stderr


def test_python_dash_m_prints_environment():
    result = subprocess.run([sys.executable, "-m", "ampkit", "info"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"ampkit {ampkit.__version__}" in result.stdout
    assert "CUDA kernels compiled:" in result.stdout


def tracked_copy(destination) -> str:
    """The repository's tracked files, as a fresh clone would have them, without build outputs."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        target = os.path.join(destination, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(REPO, name), target)
    return str(destination)


@pytest.mark.slow
def test_pip_install_and_editable_install_build_working_packages(tmp_path):
    source = tracked_copy(tmp_path / "src")
    # One build folder for both installs: the second reuses the first's objects. The CUDA kernels
    # are covered by the main build; the CPU-only variant keeps this build short.
    env = {**os.environ, "AMPKIT_BUILD_DIR": str(tmp_path / "build"), "AMPKIT_CUDA": "OFF",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "CCACHE_BASEDIR": source}
    pip = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q"]
    smoke = ("import ampkit, torch; x=[torch.ones(3)]; f=ampkit.multi_tensor_scale_(x, scale=0.5);"
             "print(ampkit.__file__, x[0].tolist(), f.item(), ampkit.build_info()['cuda'])")

    result = subprocess.run(pip + ["--target", str(tmp_path / "site"), source], capture_output=True, text=True,
                            env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check = run_python(smoke, PYTHONPATH=str(tmp_path / "site"))
    assert check.returncode == 0, check.stderr
    assert f"{tmp_path / 'site'}/ampkit/__init__.py [0.5, 0.5, 0.5] 0.0 False" in check.stdout

    prefix = tmp_path / "prefix"
    result = subprocess.run(pip + ["--prefix", str(prefix), "-e", source], capture_output=True, text=True,
                            env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    site_dir = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    # PYTHONPATH emptied: the test run's own (the main build) would shadow the editable install.
    check = run_python(f"import site; site.addsitedir({str(site_dir)!r}); " + smoke, PYTHONPATH="")
    assert check.returncode == 0, check.stderr
    # Editable: the package is imported from the source tree, with the compiled parts built beside it.
    assert f"{source}/python/ampkit/__init__.py [0.5, 0.5, 0.5] 0.0 False" in check.stdout
