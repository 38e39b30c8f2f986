"""The package as a user gets it: build info, the torch-version guard, `python -m ampkit`, pip."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

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


def test_cpu_kernels_run_on_the_threads_torch_is_set_to():
    # at::parallel_for is a header template: a kernel file compiled without -fopenmp runs it on the
    # calling thread alone (ampkit's unscale and optimizer step did, at every torch.set_num_threads).
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert ampkit.build_info()["cpu_kernel_threads"] == threads
    finally:
        torch.set_num_threads(saved)


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


def test_ampkit_imports_from_any_folder_without_a_path_setting():
    # scripts/build.sh leaves an editable install in .venv: no PYTHONPATH, any working directory.
    if os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(REPO, ".venv")):
        pytest.skip("runs in the repository's .venv (scripts/bootstrap.sh + scripts/build.sh)")
    result = subprocess.run([sys.executable, "-c", "import ampkit; print(ampkit.__file__)"], capture_output=True,
                            text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd="/",
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.path.join(REPO, "python", "ampkit", "__init__.py")


def test_examples_and_benchmarks_never_edit_sys_path():
    offenders = []
    for folder in ("examples", "benchmarks"):
        for root, _, names in os.walk(os.path.join(REPO, folder)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as handle:
                        if "sys.path" in handle.read():
                            offenders.append(os.path.relpath(path, REPO))
    assert not offenders, offenders


# One bf16 autocast + GradScaler + FP32-master AdamW step, printing where ampkit came from.
with open(os.path.join(REPO, "scripts", "train_one_step.py"), encoding="utf-8") as _handle:
    TRAIN_ONE_STEP = _handle.read()


def python_symbols(library: str) -> list[str]:
    """The CPython API symbols a shared library needs from the interpreter."""
    listing = subprocess.run(["nm", "-D", "--undefined-only", library], capture_output=True, text=True, check=True)
    names = [line.split()[-1] for line in listing.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(("Py", "_Py"))]


def fresh_venv(path) -> tuple[str, str]:
    """A new venv (its python, its site-packages) that sees this environment's torch (and the build tools
    setuptools, wheel) through a .pth line appended after its own site-packages, so a package installed
    into it is found first; a second torch download is not the point of the test."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=300)
    site_dir = path / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site_dir / "torch_from_the_test_environment.pth").write_text(os.path.dirname(os.path.dirname(torch.__file__)) + "\n")
    return str(path / "bin" / "python"), str(site_dir)


@pytest.mark.slow
def test_wheel_is_abi3_and_wheel_install_and_editable_install_each_train_in_a_fresh_venv(tmp_path):
    source = tracked_copy(tmp_path / "src")
    # One build folder for both: the editable install reuses the wheel's objects. The CUDA kernels
    # are covered by the main build; the CPU-only variant keeps this build short.
    env = {**os.environ, "AMPKIT_BUILD_DIR": str(tmp_path / "build"), "AMPKIT_CUDA": "OFF",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "CCACHE_BASEDIR": source}
    pip = [sys.executable, "-m", "pip"]
    quiet = ["--no-build-isolation", "--no-deps", "-q"]
    # --ignore-installed: the fresh venv sees this environment's site-packages (for torch), where pip
    # would find this checkout's own editable ampkit and call the requirement satisfied.
    fresh_install = quiet + ["--ignore-installed"]

    result = subprocess.run(pip + ["wheel", *quiet, "-w", str(tmp_path / "wheels"), source], capture_output=True,
                            text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    # One wheel for every CPython >= 3.10 on this platform: the abi3 tag, no version-tagged module.
    assert wheel.name == f"ampkit-{ampkit.__version__}-cp310-abi3-linux_x86_64.whl", wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert {"ampkit/libampkit.so", "ampkit/libampkit_python.so", "ampkit/_build_info.json"} <= set(names), names
        assert not [n for n in names if "cpython-" in n or n.endswith(".pyd")], names
        archive.extractall(tmp_path / "unpacked")
    for library in ("libampkit.so", "libampkit_python.so"):
        assert python_symbols(str(tmp_path / "unpacked" / "ampkit" / library)) == [], library

    # The wheel, `pip install .` and `pip install -e .`, each into its own fresh venv, each trains a step.
    cases = [("venv-wheel", [str(wheel)], None), ("venv-install", [source], None),
             ("venv-editable", ["-e", source], f"{source}/python/ampkit")]  # editable: the source tree
    for name, target, package_dir in cases:
        venv, site_dir = fresh_venv(tmp_path / name)
        result = subprocess.run(pip + ["--python", venv, "install", *fresh_install, *target], capture_output=True,
                                text=True, env=env, timeout=1800)
        assert result.returncode == 0, name + result.stdout[-3000:] + result.stderr[-3000:]
        check = subprocess.run([venv, "-c", TRAIN_ONE_STEP], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": ""}, cwd="/", timeout=300)
        assert check.returncode == 0, name + check.stderr
        expected_dir = package_dir or f"{site_dir}/ampkit"
        assert check.stdout.strip() == f"{expected_dir}/__init__.py True True False", (name, check.stdout)
