"""pip install . / pip install -e . : CMake builds libampkit and ampkit._C; this file only drives it.

Build against the torch already installed (use --no-build-isolation, so pip does not fetch a
second torch into an isolated build environment). Environment knobs, passed to CMake:
  AMPKIT_CUDA=AUTO|ON|OFF, AMPKIT_CUDA_ARCHITECTURES (e.g. "80;90"), AMPKIT_BUILD_DIR,
  AMPKIT_CMAKE_ARGS (extra arguments, space separated), CMAKE_BUILD_PARALLEL_LEVEL.
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


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        target_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
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
        destinations = {target_dir}
        if self.inplace or getattr(self, "editable_mode", False):
            # An editable install imports the package from the source tree: libampkit.so and the
            # build description must sit there beside _C (setuptools itself only copies _C).
            destinations.add(os.path.join(ROOT, "python", "ampkit"))
        for directory in destinations:
            os.makedirs(directory, exist_ok=True)
            for name in os.listdir(staging):
                if name.endswith(".so") or name == "_build_info.json":
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
    ext_modules=[CMakeExtension("ampkit._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=["torch==2.11.*", "numpy"],
    extras_require={"train": ["tqdm", "matplotlib", "scikit-learn"]},
    zip_safe=False,
)
