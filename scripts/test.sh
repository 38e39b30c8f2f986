#!/usr/bin/env bash
# Bootstraps, builds and runs every test: Catch2 (C++), the find_package consumer, the C++
# examples and pytest; then the same with AMPKIT_CUDA=OFF, the build a machine without nvcc gets;
# then the C++ tests under AddressSanitizer and UndefinedBehaviorSanitizer. The CUDA kernels run on
# the emulated device (tests/emulated) in the main build and again under the sanitizers.
#   AMPKIT_TEST_CUDA=1   also run the CUDA tests (the GPU machine)
#   AMPKIT_SKIP_CUDA_OFF=1  skip the second (CPU-only) build
#   AMPKIT_SKIP_SANITIZERS=1  skip the ASan/UBSan build of the C++ tests
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
bash scripts/bootstrap.sh

# Where nvcc exists the CUDA sources must compile and link; a test asserts it.
if [[ "${AMPKIT_CUDA:-AUTO}" != OFF ]] && { command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; }; then
  export PATH="$PATH:/usr/local/cuda/bin"
  export AMPKIT_EXPECT_CUDA_BUILD=1
fi

echo "== build (AMPKIT_CUDA=${AMPKIT_CUDA:-AUTO}) =="
bash scripts/build.sh
echo "== C++ tests, find_package consumer, C++ examples =="
ctest --test-dir "$BUILD_DIR" --output-on-failure -j 2 -E emulated_kernels
run_emulated_suite() {  # run_emulated_suite BUILD_DIR [env...]: the kernels on the emulated device
  local binary="$1/tests/ampkit_emulated_tests"
  shift
  if [[ ! -x "$binary" ]]; then
    # Where CUDA's headers exist the emulated suite must have been built: a silent skip would hide it.
    if [[ -f /usr/local/cuda/include/cuda_fp16.h ]] || command -v nvcc >/dev/null; then
      echo "the emulated-device suite was not built (expected $binary)" >&2
      return 1
    fi
    echo "(no CUDA headers on this machine: emulated-device suite not built)"
    return 0
  fi
  env "$@" "$binary" --reporter compact
}
echo "== CUDA kernels on the emulated device (thread orders: in order, reversed, seeded random) =="
run_emulated_suite "$BUILD_DIR"
echo "== Python tests =="
"$PYTHON" -m pytest -q -p no:cacheprovider tests/python

if [[ "${AMPKIT_SKIP_CUDA_OFF:-0}" != 1 && "${AMPKIT_CUDA:-AUTO}" != OFF ]]; then
  echo "== build and tests with AMPKIT_CUDA=OFF =="
  off_dir="$ROOT/build/cuda-off"
  AMPKIT_CUDA=OFF AMPKIT_BUILD_DIR="$off_dir" bash scripts/build.sh
  ctest --test-dir "$off_dir" --output-on-failure -j 2 -E "find_package_consumer|emulated_kernels"
  AMPKIT_EXPECT_CUDA_BUILD=0 PYTHONPATH="$off_dir/python" "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow" tests/python
fi
if [[ "${AMPKIT_SKIP_SANITIZERS:-0}" != 1 ]]; then
  # halt_on_error: a UBSan finding fails the run instead of only printing.
  # The suppressions name only leaks inside LibTorch (each with its reason); ampkit's own fail the run.
  sanitizer_env=(ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
                 "LSAN_OPTIONS=suppressions=$ROOT/tests/sanitizers/lsan_suppressions.txt:print_suppressions=1")
  echo "== C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer (CPU build) =="
  san_dir="$ROOT/build/sanitize"
  AMPKIT_CUDA=OFF AMPKIT_SANITIZE=address,undefined AMPKIT_BUILD_TYPE=RelWithDebInfo AMPKIT_BUILD_DIR="$san_dir" \
    bash scripts/build.sh -DAMPKIT_BUILD_PYTHON=OFF -DAMPKIT_BUILD_EXAMPLES=OFF
  env "${sanitizer_env[@]}" "$san_dir/tests/ampkit_tests" --reporter compact
  echo "== CUDA kernels on the emulated device under AddressSanitizer + UndefinedBehaviorSanitizer =="
  run_emulated_suite "$san_dir" "${sanitizer_env[@]}"
fi
echo "== all tests passed =="
