#!/usr/bin/env bash
# Configures and builds everything (library, Python extension, tests, examples) with CMake.
# The default build puts the Python extension in python/ampkit/ (`PYTHONPATH=python` imports it);
# with AMPKIT_BUILD_DIR set, a complete package goes to $AMPKIT_BUILD_DIR/python instead.
#   AMPKIT_CUDA=AUTO|ON|OFF   AMPKIT_CUDA_ARCHITECTURES="90"   AMPKIT_SANITIZE=address,undefined
#   AMPKIT_BUILD_DIR=...      extra CMake arguments after the script's name
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
args=(
  -S "$ROOT" -B "$BUILD_DIR" -G Ninja
  -DCMAKE_BUILD_TYPE="${AMPKIT_BUILD_TYPE:-Release}"
  -DPython3_EXECUTABLE="$PYTHON"
  -DAMPKIT_PYTHON_OUTPUT_DIR="$PYTHON_PACKAGE_ROOT/ampkit"
  -DAMPKIT_CUDA="${AMPKIT_CUDA:-AUTO}"
  -DAMPKIT_SANITIZE="${AMPKIT_SANITIZE:-}"
)
[[ -n "${AMPKIT_CUDA_ARCHITECTURES:-}" ]] && args+=(-DCMAKE_CUDA_ARCHITECTURES="$AMPKIT_CUDA_ARCHITECTURES")
cmake "${args[@]}" "$@"
cmake --build "$BUILD_DIR" -j "$JOBS"

# The default build leaves ampkit importable in .venv from any folder: an editable install of this
# checkout that takes the compiled parts just built (AMPKIT_PREBUILT=1: no second CMake build).
# Done once; later builds update python/ampkit in place, which the install already points at.
if [[ -z "${AMPKIT_BUILD_DIR:-}" && "${AMPKIT_USE_SYSTEM_PYTHON:-0}" != 1 ]] &&
   ! (cd / && env -u PYTHONPATH "$PYTHON" -c "import ampkit, os, sys; sys.exit(os.path.dirname(os.path.realpath(ampkit.__file__)) != os.path.realpath('$ROOT/python/ampkit'))" 2>/dev/null); then
  echo "[build] editable install of $ROOT into $(dirname "$(dirname "$PYTHON")")"
  AMPKIT_PREBUILT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$PYTHON" -m pip install -q --no-build-isolation --no-deps -e "$ROOT"
fi
