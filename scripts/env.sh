# Sourced by the other scripts: which python, where the build goes, how many jobs.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${AMPKIT_USE_SYSTEM_PYTHON:-0}" == 1 ]]; then
  PYTHON="$(command -v python3)"
else
  PYTHON="$ROOT/.venv/bin/python"
fi
BUILD_DIR="${AMPKIT_BUILD_DIR:-$ROOT/build/main}"
JOBS="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
# One ccache for every checkout of the project: paths under the repo root hash the same.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
export CCACHE_NOHASHDIR=1
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
