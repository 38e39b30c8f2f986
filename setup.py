"""pip install . / pip install -e . / pip wheel . : CMake builds libampkit.so and libampkit_python.so;
this file only drives it.

Neither library uses the Python C API (Python loads them with torch.ops.load_library), so the
wheel is tagged cp310-abi3: one wheel for every CPython >= 3.10 that runs the same torch release.
Build against the torch already installed (use --no-build-isolation, so pip does not fetch a
second torch into an isolated build environment). Environment knobs, passed to CMake:
  AMPKIT_CUDA=AUTO|ON|OFF, AMPKIT_CUDA_ARCHITECTURES (e.g. "80;90"), AMPKIT_BUILD_DIR,
  AMPKIT_CMAKE_ARGS (extra arguments, space separated), CMAKE_BUILD_PARALLEL_LEVEL.
  AMPKIT_PREBUILT=1: no CMake; take the compiled parts scripts/build.sh put in python/ampkit
  (how scripts/build.sh makes the development editable install without building twice).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    with open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("project(ampkit VERSION"):
                return line.split("VERSION")[1].split()[0]
    raise RuntimeError("CMakeLists.txt has no project(ampkit VERSION ...) line")


# What the build puts beside the Python sources (named, so a stale file in a reused build folder,
# such as an old CPython extension module, never reaches a wheel).
PYTHON_LIBRARY = "libampkit_python"
BUILD_INFO = "_build_info.json"
COMPILED_FILES = ("libampkit.so", PYTHON_LIBRARY + ".so", BUILD_INFO)


class CMakeExtension(Extension):
    """A shared library CMake builds; py_limited_api marks the wheel abi3 (it has no CPython module)."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[], py_limited_api=True)


class CMakeBuild(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # A plain shared library, not a CPython module: no version-tagged suffix.
        return os.path.join(*fullname.split(".")) + ".so"

    def build_extension(self, ext: Extension) -> None:
        target_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        if os.environ.get("AMPKIT_PREBUILT") == "1":
            self.take_prebuilt(target_dir)
            return
        mode = "editable" if self.inplace else "wheel"
        build_dir = os.environ.get("AMPKIT_BUILD_DIR", os.path.join(ROOT, "build", f"setuptools-{mode}"))
        staging = os.path.join(build_dir, "python", "ampkit")
        configure = [
            "cmake", "-S", ROOT, "-B", build_dir, "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DAMPKIT_PYTHON_OUTPUT_DIR={staging}",
            f"-DAMPKIT_CUDA={os.environ.get('AMPKIT_CUDA', 'AUTO')}",
            "-DAMPKIT_BUILD_TESTS=OFF",
            "-DAMPKIT_BUILD_EXAMPLES=OFF",
        ]
        if os.environ.get("AMPKIT_CUDA_ARCHITECTURES"):
            configure.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['AMPKIT_CUDA_ARCHITECTURES']}")
        configure += shlex.split(os.environ.get("AMPKIT_CMAKE_ARGS", ""))
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", build_dir, "--target", "ampkit", "ampkit_python"], check=True)
        self.copy_compiled(staging, target_dir)

    def take_prebuilt(self, target_dir: str) -> None:
        source = os.path.join(ROOT, "python", "ampkit")
        missing = [name for name in COMPILED_FILES if not os.path.exists(os.path.join(source, name))]
        if missing:
            raise RuntimeError(f"AMPKIT_PREBUILT=1 but {', '.join(missing)} not found in {source}: run scripts/build.sh first")
        if os.path.realpath(target_dir) != os.path.realpath(source):
            self.copy_compiled(source, target_dir, editable=False)

    def copy_compiled(self, staging: str, target_dir: str, editable: bool | None = None) -> None:
        destinations = {target_dir}
        if editable is None:
            editable = self.inplace or getattr(self, "editable_mode", False)
        if editable:
            # An editable install imports the package from the source tree: libampkit.so and the
            # build description must sit there too (setuptools itself copies only the extension).
            destinations.add(os.path.join(ROOT, "python", "ampkit"))
        for directory in destinations:
            os.makedirs(directory, exist_ok=True)
            for name in COMPILED_FILES:
                # Write beside, then rename: a process that has the old library mapped keeps it intact.
                destination = os.path.join(directory, name)
                temporary = destination + ".tmp"
                shutil.copy2(os.path.join(staging, name), temporary)
                os.replace(temporary, destination)


setup(
    name="ampkit",
    version=read_version(),
    description="Mixed-precision training for PyTorch: autocast policies, loss scaling, fused kernels",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[CMakeExtension(f"ampkit.{PYTHON_LIBRARY}")],
    cmdclass={"build_ext": CMakeBuild},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    python_requires=">=3.10",
    install_requires=["torch==2.11.*", "numpy"],
    # The core needs torch only; each integration's framework is an extra.
    extras_require={
        "train": ["tqdm", "matplotlib", "scikit-learn"],
        "lightning": ["lightning>=2.6"],
        "ultralytics": ["ultralytics>=8.4"],
    },
    zip_safe=False,
)
