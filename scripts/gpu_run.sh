#!/usr/bin/env bash
# The GPU machine's whole job in one call: build against its preinstalled torch (no network,
# no venv), run every test with the CUDA tests on, compute-sanitizer over the CUDA tests, and
# the benchmarks. Logs and JSON go to the folder given as the first argument.
#
# Catch2 is not installed there: on a networked machine run `mkdir -p .deb && (cd .deb &&
# apt-get download catch2)` and carry .deb along; this script unpacks it.
set -uo pipefail
OUT_DIR="$(mkdir -p "${1:?usage: scripts/gpu_run.sh OUT_DIR}" && cd "$1" && pwd)"
export AMPKIT_USE_SYSTEM_PYTHON=1 AMPKIT_TEST_CUDA=1 AMPKIT_CUDA=ON PYTHONUNBUFFERED=1
export AMPKIT_BUILD_DIR="${AMPKIT_BUILD_DIR:-/tmp/ampkit-build}"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export PATH="$PATH:/usr/local/cuda/bin"

catch2_prefix=/tmp/ampkit-catch2
if compgen -G ".deb/catch2*.deb" >/dev/null; then
  mkdir -p "$catch2_prefix" && dpkg -x .deb/catch2*.deb "$catch2_prefix"
  export CMAKE_PREFIX_PATH="$catch2_prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export CPATH="$catch2_prefix/usr/include${CPATH:+:$CPATH}"
fi

status=0
step() {  # step NAME COMMAND...: runs, logs to OUT_DIR/NAME.log, records failure
  local name=$1; shift
  echo "== $name =="
  if "$@" >"$OUT_DIR/$name.log" 2>&1; then echo "   ok"; else echo "   FAILED (see $name.log)"; tail -30 "$OUT_DIR/$name.log"; status=1; fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT_DIR/gpu.txt" 2>&1
step build bash scripts/build.sh
step ctest ctest --test-dir "$BUILD_DIR" --output-on-failure
step pytest "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow" tests/python
if command -v compute-sanitizer >/dev/null; then
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$BUILD_DIR/tests/ampkit_tests"
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$BUILD_DIR/tests/ampkit_tests"
fi
for bench in benchmarks/bench_*.py; do
  name="$(basename "$bench" .py)"
  step "$name" "$PYTHON" "$bench" --json "$OUT_DIR/$name.json"
done
exit $status
