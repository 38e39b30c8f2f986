# Sourced by the other scripts: which python, where the build goes, how many jobs.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${AMPKIT_USE_SYSTEM_PYTHON:-0}" == 1 ]]; then
  PYTHON="$(command -v python3)"
else
  PYTHON="$ROOT/.venv/bin/python"
fi
JOBS="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# The default build puts the compiled parts beside the Python sources (python/ampkit), like an
# editable install; any other build folder gets a complete package of its own under it, so
# side builds (AMPKIT_CUDA=OFF, sanitizers) never overwrite the main one.
if [[ -z "${AMPKIT_BUILD_DIR:-}" ]]; then
  BUILD_DIR="$ROOT/build/main"
  PYTHON_PACKAGE_ROOT="$ROOT/python"
else
  BUILD_DIR="$AMPKIT_BUILD_DIR"
  PYTHON_PACKAGE_ROOT="$BUILD_DIR/python"
fi
# One ccache for every checkout of the project: paths under the repo root hash the same.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
export CCACHE_NOHASHDIR=1
export PYTHONPATH="$PYTHON_PACKAGE_ROOT${PYTHONPATH:+:$PYTHONPATH}"
