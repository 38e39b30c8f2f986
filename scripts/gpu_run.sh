#!/usr/bin/env bash
# The GPU machine's job: build against its preinstalled torch (no network, no venv), run every
# test with the CUDA tests on, compute-sanitizer over the C++ CUDA tests, and the benchmarks.
#
#   scripts/gpu_run.sh OUT_DIR [STAGE...]     stages: build ctest pytest sanitize bench (default: all)
#
# Each stage logs to OUT_DIR/logs/STAGE.log (benchmarks also write JSON there); at the end
# everything is packed into OUT_DIR/gpu_run.tar.gz and a one-line-per-stage OUT_DIR/summary.txt
# (two files: the device tool brings back only a few). The build lives in build/gpu inside the
# checkout, so a second call on a still-warm machine reuses it; `build` is a no-op then.
# A stage that runs over AMPKIT_STAGE_TIMEOUT seconds (default 540) is stopped and reported.
#
# Catch2 is not installed there: on a networked machine run `mkdir -p .deb && (cd .deb &&
# apt-get download catch2)` and carry .deb along; this script unpacks it.
set -uo pipefail
OUT_DIR="$(mkdir -p "${1:?usage: scripts/gpu_run.sh OUT_DIR [build ctest pytest sanitize bench]}" && cd "$1" && pwd)"
shift
stages=("$@")
[[ ${#stages[@]} -eq 0 ]] && stages=(build ctest pytest sanitize bench)
export AMPKIT_USE_SYSTEM_PYTHON=1 AMPKIT_TEST_CUDA=1 AMPKIT_EXPECT_CUDA_BUILD=1 AMPKIT_CUDA=ON PYTHONUNBUFFERED=1
export AMPKIT_BUILD_DIR="${AMPKIT_BUILD_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/gpu}"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
export PATH="$PATH:/usr/local/cuda/bin"
LOG_DIR="$OUT_DIR/logs"
mkdir -p "$LOG_DIR"
STAGE_TIMEOUT="${AMPKIT_STAGE_TIMEOUT:-540}"

catch2_prefix=/tmp/ampkit-catch2
if compgen -G ".deb/catch2*.deb" >/dev/null; then
  mkdir -p "$catch2_prefix" && dpkg -x .deb/catch2*.deb "$catch2_prefix"
  export CMAKE_PREFIX_PATH="$catch2_prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export CPATH="$catch2_prefix/usr/include${CPATH:+:$CPATH}"
fi

status=0
pack() {
  tar -C "$OUT_DIR" -czf "$OUT_DIR/gpu_run.tar.gz" logs && rm -rf "$LOG_DIR"
}
trap pack EXIT

step() {  # step NAME COMMAND...: runs under the stage timeout, logs to LOG_DIR/NAME.log
  local name=$1; shift
  local start=$SECONDS
  echo "== $name =="
  timeout --signal=TERM --kill-after=20 "$STAGE_TIMEOUT" "$@" >"$LOG_DIR/$name.log" 2>&1
  local rc=$?
  local verdict="ok"
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then verdict="TIMED OUT"; status=1
  elif [[ $rc -ne 0 ]]; then verdict="FAILED (rc $rc)"; status=1; fi
  echo "$name: $verdict in $((SECONDS - start)) s" | tee -a "$OUT_DIR/summary.txt"
  [[ $verdict != ok ]] && tail -40 "$LOG_DIR/$name.log"
  # The last lines of every test log go into the summary too: counts at a glance.
  [[ $name == ctest || $name == pytest ]] && tail -3 "$LOG_DIR/$name.log" | sed 's/^/    /' >> "$OUT_DIR/summary.txt"
  return 0
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$LOG_DIR/gpu.txt" 2>&1
head -2 "$LOG_DIR/gpu.txt" | tail -1 | sed 's/^/gpu: /' >> "$OUT_DIR/summary.txt"
for stage in "${stages[@]}"; do
  case "$stage" in
    build) step build bash scripts/build.sh ;;
    ctest) step ctest ctest --test-dir "$BUILD_DIR" --output-on-failure ;;
    pytest) step pytest "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow" tests/python ;;
    sanitize)
      if command -v compute-sanitizer >/dev/null; then
        # The C++ suite with its CUDA cases on: every kernel launch of ampkit under both tools.
        # Without the caching allocator every tensor is its own allocation, so an access past
        # the end of one is not hidden inside a pooled segment.
        step memcheck env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --leak-check no \
          --error-exitcode 1 "$BUILD_DIR/tests/ampkit_tests"
        step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$BUILD_DIR/tests/ampkit_tests"
      else
        echo "sanitize: compute-sanitizer not found" | tee -a "$OUT_DIR/summary.txt"
      fi
      ;;
    bench)
      for bench in benchmarks/bench_*.py; do
        name="$(basename "$bench" .py)"
        step "$name" "$PYTHON" "$bench" --json "$LOG_DIR/$name.json"
      done
      ;;
    *) echo "unknown stage '$stage' (build ctest pytest sanitize bench)" | tee -a "$OUT_DIR/summary.txt"; status=2 ;;
  esac
done
exit $status
