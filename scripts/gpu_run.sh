#!/usr/bin/env bash
# The GPU machine's job, planned for the GPU time we get (../shared/GPU.md: 15 minutes in all, the
# machine's start included; at most 10 minutes per invocation; 8 result files back): two
# invocations of under 9 minutes each, every stage in a time box, results written as each stage ends.
#
#   scripts/gpu_run.sh OUT_DIR first          build (16 cores, build/gpu), ctest, pytest (CUDA tests on)
#   scripts/gpu_run.sh OUT_DIR second         build (a no-op on a warm machine), the benchmarks with
#                                             short repetitions, compute-sanitizer memcheck and racecheck
#                                             filtered to ampkit's own kernels
#   scripts/gpu_run.sh OUT_DIR STAGE...       chosen stages: build ctest pytest memcheck racecheck
#                                             bench_<name> (benchmarks/bench_<name>.py); aliases:
#                                             bench (every benchmark), sanitize (memcheck racecheck), all
#   --dry-run (or AMPKIT_GPU_RUN_DRY=1)       the same stages on a machine without a GPU: no
#                                             AMPKIT_TEST_CUDA, AMPKIT_CUDA=AUTO, the venv's python,
#                                             benchmarks --quick on the CPU, the Catch2 binary without
#                                             compute-sanitizer where it is absent; boxes x10, no deadline
#
# OUT_DIR gets, as each stage ends: summary.txt (a "stage NAME: VERDICT in T s (box B s)" line and
# the stage's counts), NAME.log.gz per test stage, bench.log.gz (every benchmark's output, one
# gzip member each) and bench.jsonl (one benchmark's JSON per line). A stage still running when
# the invocation is killed leaves its plain NAME.log. At most 7 files. The end: the closing summary
# of scripts/gpu_summary.py (pass/fail counts, every benchmark ratio next to its target), appended
# to summary.txt and printed.
#
# Time: each stage runs under its box (below); a stage over its box is stopped, reported, and the
# next stage runs. The invocation also has a deadline (AMPKIT_GPU_RUN_DEADLINE, seconds from the
# start, default 530; 0 = none): a stage's box is cut to what is left of it, so pass the device
# time left when it is short. The build lives in build/gpu inside the checkout, so the second
# invocation on a still-warm machine reuses the first's build.
#
# Catch2 is not installed there: on a networked machine run `mkdir -p .deb && (cd .deb &&
# apt-get download catch2)` and carry .deb along; this script unpacks it.
set -uo pipefail

usage() {
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
PLAN=0
if [[ ${1:-} == --plan ]]; then
  PLAN=1
  shift
else
  [[ $# -ge 1 && $1 != -* ]] || usage
  OUT_DIR="$(mkdir -p "$1" && cd "$1" && pwd)" || usage
  shift
fi
DRY="${AMPKIT_GPU_RUN_DRY:-0}"
requested=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) usage ;;
    -*) echo "unknown option '$arg'" >&2; exit 2 ;;
    *) requested+=("$arg") ;;
  esac
done
[[ ${#requested[@]} -eq 0 ]] && requested=(first)

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
# The benchmarks, those whose figures settle open targets first (a cut invocation loses the last);
# any other benchmarks/bench_*.py follows, except those whose targets are defined on the CPU only
# (CPU_ONLY_BENCHES: the GPU minutes go to the GPU targets).
CPU_ONLY_BENCHES=" bench_adaptive_overhead bench_adaptive_overhead_cpp bench_attention_precision "
BENCHES=()
for bench in bench_fused_linear bench_unscale bench_optimizer bench_end_to_end bench_multi_tensor_scale \
             bench_autocast_overhead "$ROOT_DIR"/benchmarks/bench_*.py; do
  bench="$(basename "$bench" .py)"
  [[ "$CPU_ONLY_BENCHES" == *" $bench "* ]] && continue
  [[ -f "$ROOT_DIR/benchmarks/$bench.py" && " ${BENCHES[*]} " != *" $bench "* ]] && BENCHES+=("$bench")
done

# ---- time boxes (seconds on the GPU machine; see the README's "GPU tests" for how they were chosen) ----
declare -A BOX=(
  [build]=200 [ctest]=100 [pytest]=220                 # first:  520 s
  [build_warm]=30                                      # second: the build when build/gpu is complete
  [bench_fused_linear]=60 [bench_unscale]=40 [bench_optimizer]=40 [bench_end_to_end]=50
  [bench_multi_tensor_scale]=30 [bench_autocast_overhead]=30 [bench_optimizer_layouts]=20   # 270 s of benchmarks
  [memcheck]=120 [racecheck]=110                       # second: 30 + 270 + 230 = 530 s
)
# AMPKIT_GPU_RUN_BOXES="stage=seconds ..." overrides boxes (e.g. to rerun one stage with more time).
for override in ${AMPKIT_GPU_RUN_BOXES:-}; do
  [[ $override =~ ^([a-z_]+)=([0-9]+)$ ]] || { echo "bad AMPKIT_GPU_RUN_BOXES entry '$override'" >&2; exit 2; }
  BOX[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
done
# Extra arguments per benchmark on the GPU: full sizes (the targets are defined there), few repeats.
declare -A BENCH_ARGS=(
  [bench_fused_linear]="--repeats 10" [bench_unscale]="--repeats 10" [bench_optimizer]="--repeats 10"
  [bench_multi_tensor_scale]="--repeats 10" [bench_autocast_overhead]="--repeats 1"
  [bench_end_to_end]="--repeats 20" [bench_optimizer_layouts]="--repeats 10"
)
# compute-sanitizer checks only these kernels (a regex searched in the mangled name): ampkit's own
# (namespace ampkit_kernels, and the kernel names themselves should one move), not torch's or cuBLASLt's.
KERNEL_REGEX="${AMPKIT_SANITIZE_KERNEL_REGEX:-ampkit_kernels|multi_tensor_kernel|finish_norm_kernel|update_scale_kernel}"

stages=()
for name in "${requested[@]}"; do
  case "$name" in
    first) stages+=(build ctest pytest) ;;
    second) stages+=(build "${BENCHES[@]}" memcheck racecheck) ;;
    all) stages+=(build ctest pytest "${BENCHES[@]}" memcheck racecheck) ;;
    bench) stages+=("${BENCHES[@]}") ;;
    sanitize) stages+=(memcheck racecheck) ;;
    build|ctest|pytest|memcheck|racecheck) stages+=("$name") ;;
    bench_*)
      if [[ -f "$ROOT_DIR/benchmarks/$name.py" ]]; then stages+=("$name")
      else echo "no benchmark benchmarks/$name.py" >&2; exit 2; fi ;;
    *) echo "unknown stage or preset '$name' (first second all build ctest pytest bench bench_* sanitize memcheck racecheck)" >&2
       exit 2 ;;
  esac
done

# The build is the first's (box build) unless this invocation runs no tests of its own and finds
# build/gpu complete (the second on a warm machine: box build_warm, ninja has nothing to do).
build_box_key() {
  if [[ " ${stages[*]} " != *" ctest "* && " ${stages[*]} " != *" pytest "* ]] && { [[ $PLAN == 1 ]] || build_complete; }
  then echo build_warm; else echo build; fi
}
build_complete() {  # a finished build of everything in BUILD_DIR (the first invocation's)
  [[ -f "$BUILD_DIR/build.ninja" && -x "$BUILD_DIR/tests/ampkit_tests" ]] &&
    [[ -f "$PYTHON_PACKAGE_ROOT/ampkit/libampkit_python.so" ]]
}
if [[ $PLAN == 1 ]]; then  # the stages and their boxes on the GPU machine, nothing run
  total=0
  for name in "${stages[@]}"; do
    key=$name
    [[ $name == build ]] && key=$(build_box_key)
    box=${BOX[$key]:-60}
    total=$((total + box))
    echo "$name $box$([[ $key == build_warm ]] && echo " (build/gpu complete; ${BOX[build]} when it is not: the deadline cuts the last stages)")"
  done
  echo "total $total"
  echo "deadline ${AMPKIT_GPU_RUN_DEADLINE:-530}"
  exit 0
fi

if [[ $DRY == 1 ]]; then
  # The CPU stands in: no CUDA tests, the venv's python, CUDA compiled where nvcc exists.
  unset AMPKIT_TEST_CUDA AMPKIT_USE_SYSTEM_PYTHON
  [[ -x "$ROOT_DIR/.venv/bin/python" ]] || export AMPKIT_USE_SYSTEM_PYTHON=1  # no venv (the GPU machine)
  export AMPKIT_CUDA=AUTO
  export AMPKIT_BUILD_DIR="${AMPKIT_BUILD_DIR:-$ROOT_DIR/build/gpu-dry}"
  if command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then export AMPKIT_EXPECT_CUDA_BUILD=1; fi
  SCALE="${AMPKIT_GPU_RUN_BOX_SCALE:-10}"
  DEADLINE="${AMPKIT_GPU_RUN_DEADLINE:-0}"
else
  export AMPKIT_USE_SYSTEM_PYTHON=1 AMPKIT_TEST_CUDA=1 AMPKIT_EXPECT_CUDA_BUILD=1 AMPKIT_CUDA=ON
  export AMPKIT_BUILD_DIR="${AMPKIT_BUILD_DIR:-$ROOT_DIR/build/gpu}"
  SCALE="${AMPKIT_GPU_RUN_BOX_SCALE:-1}"
  DEADLINE="${AMPKIT_GPU_RUN_DEADLINE:-530}"
fi
export PYTHONUNBUFFERED=1
source "$SCRIPT_DIR/env.sh"
cd "$ROOT"
export PATH="$PATH:/usr/local/cuda/bin"
SUMMARY="$OUT_DIR/summary.txt"
summarise() { "$PYTHON" "$SCRIPT_DIR/gpu_summary.py" "$@" 2>&1; }

# ---- Catch2 from the carried Debian package (dpkg -x; ar + tar where dpkg is missing) ----
catch2_prefix="${TMPDIR:-/tmp}/ampkit-catch2"
if compgen -G ".deb/catch2*.deb" >/dev/null; then
  deb="$(ls .deb/catch2*.deb | head -1)"
  mkdir -p "$catch2_prefix"
  if command -v dpkg >/dev/null; then
    dpkg -x "$deb" "$catch2_prefix"
  else
    (cd "$catch2_prefix" && ar x "$ROOT/$deb" && tar -xf data.tar.* && rm -f data.tar.* control.tar.* debian-binary)
  fi
  export CMAKE_PREFIX_PATH="$catch2_prefix/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export CPATH="$catch2_prefix/usr/include${CPATH:+:$CPATH}"
fi

# ---- the machine, once, at the top of the summary ----
{
  echo "== gpu_run $(date -u +%FT%TZ): ${requested[*]}$([[ $DRY == 1 ]] && echo ' (dry run: the CPU stands in)') =="
  if commit="$(git rev-parse --short HEAD 2>/dev/null)"; then
    echo "commit: $commit$(git diff --quiet HEAD 2>/dev/null || echo ' +uncommitted')"
  else
    echo "commit: unknown (no git checkout)"
  fi
  echo "plan: ${stages[*]}"
  echo "cores: $(nproc); python: $("$PYTHON" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())' 2>&1 | tail -1)"
  if command -v nvidia-smi >/dev/null; then
    echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
  else
    echo "gpu: nvidia-smi not found"
  fi
  echo "nvcc: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'not found')"
  echo "compute-sanitizer: $(compute-sanitizer --version 2>/dev/null | grep -io 'version [0-9.]*' | head -1 || true)$(command -v compute-sanitizer >/dev/null || echo 'not found')"
  echo "deadline: ${DEADLINE} s; box scale: ${SCALE}"
} >>"$SUMMARY"

status=0
closed=0
close_run() {  # the closing summary: once, also when the invocation is stopped from outside
  [[ $closed == 1 ]] && return
  closed=1
  summarise final "$OUT_DIR" | tee -a "$SUMMARY"
}
trap 'close_run; exit 143' TERM
trap 'close_run; exit 130' INT

# stage NAME BOX COMMAND...: runs COMMAND under min(BOX x SCALE, time left before the deadline),
# its output in OUT_DIR/NAME.log while it runs; then a summary line, and the log compressed. Over
# the box: SIGTERM (pytest turns it into KeyboardInterrupt and prints its counts; SIGINT would not
# do, a shell started in the background ignores it for good), SIGKILL 15 s later.
stage() {
  local name=$1 box=$(( $2 * SCALE )); shift 2
  if [[ $DEADLINE -gt 0 ]]; then
    local left=$(( DEADLINE - SECONDS - 10 ))  # 10 s kept for the closing summary
    if [[ $left -lt 15 ]]; then
      echo "stage $name: NOT RUN (deadline) in 0 s (box $box s)" | tee -a "$SUMMARY"
      status=1
      return 0
    fi
    [[ $left -lt $box ]] && box=$left
  fi
  local log="$OUT_DIR/$name.log" start=$SECONDS
  echo "== $name (box $box s) =="
  timeout --kill-after=15 "$box" "$@" >"$log" 2>&1
  local rc=$?
  local verdict="ok"
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then verdict="TIMED OUT"; status=1
  elif [[ $rc -ne 0 ]]; then verdict="FAILED (rc $rc)"; status=1; fi
  [[ -n "${STAGE_NOTE:-}" && $verdict == ok ]] && verdict="ok ($STAGE_NOTE)"
  {
    echo "stage $name: $verdict in $((SECONDS - start)) s (box $box s)"
    summarise stage "$name" "$log" | sed 's/^/    /'
  } | tee -a "$SUMMARY"
  [[ $verdict != ok* ]] && tail -30 "$log"
  case "$name" in
    bench_*)
      [[ -s "$WORK/$name.json" ]] && "$PYTHON" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' \
        "$WORK/$name.json" >>"$OUT_DIR/bench.jsonl"
      gzip -c "$log" >>"$OUT_DIR/bench.log.gz" && rm -f "$log" ;;
    *) gzip -c "$log" >>"$OUT_DIR/$name.log.gz" && rm -f "$log" ;;
  esac
  return 0
}

run_ctest() {  # ctest's own output, then every test's full output (LastTest.log: Catch2's counts)
  local jobs=$(( JOBS / 4 > 1 ? JOBS / 4 : 2 ))
  rm -f "$BUILD_DIR/Testing/Temporary/LastTest.log"
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$jobs"
  local rc=$?
  echo "---- $BUILD_DIR/Testing/Temporary/LastTest.log ----"
  cat "$BUILD_DIR/Testing/Temporary/LastTest.log" 2>/dev/null
  return $rc
}

run_sanitizer() {  # run_sanitizer TOOL: the Catch2 suite (CUDA cases on) under compute-sanitizer
  local tool=$1
  local tests=("$BUILD_DIR/tests/ampkit_tests" --reporter compact)
  if ! command -v compute-sanitizer >/dev/null; then
    if [[ $DRY == 1 ]]; then
      echo "compute-sanitizer not available (dry run): the same test binary without it"
      "${tests[@]}"
      return
    fi
    echo "compute-sanitizer not found"
    return 3
  fi
  compute-sanitizer --version | head -3
  echo "kernel filter: regex=$KERNEL_REGEX"
  local args=(--tool "$tool" --error-exitcode 1 --print-limit 50 --kernel-name "regex=$KERNEL_REGEX")
  if [[ $tool == memcheck ]]; then
    # Without the caching allocator every tensor is its own allocation, so an access past the end of
    # one is not hidden inside a pooled segment.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer "${args[@]}" --leak-check no "${tests[@]}"
  else
    compute-sanitizer "${args[@]}" "${tests[@]}"
  fi
}

export BUILD_DIR JOBS DRY KERNEL_REGEX
export -f run_ctest run_sanitizer
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ampkit-gpu-run.XXXXXX")"
for name in "${stages[@]}"; do
  STAGE_NOTE=""
  case "$name" in
    build)
      key=$(build_box_key)
      [[ $key == build_warm ]] && STAGE_NOTE="$(basename "$BUILD_DIR") was complete"
      stage build "${BOX[$key]}" bash scripts/build.sh ;;
    ctest) stage ctest "${BOX[ctest]}" bash -c run_ctest ;;
    pytest)
      PYTHONPATH="$SCRIPT_DIR:$PYTHONPATH" stage pytest "${BOX[pytest]}" "$PYTHON" -m pytest -v -p no:cacheprovider \
        -p gpu_pytest_signals -m "not slow" -rfE --durations=20 tests/python ;;
    memcheck|racecheck)
      [[ $DRY == 1 ]] && ! command -v compute-sanitizer >/dev/null && STAGE_NOTE="dry: no compute-sanitizer, binary run bare"
      stage "$name" "${BOX[$name]}" bash -c 'run_sanitizer "$1"' run_sanitizer "$name" ;;
    bench_*)
      if [[ $DRY == 1 ]]; then extra=(--quick --device cpu); else read -r -a extra <<<"${BENCH_ARGS[$name]:-}"; fi
      stage "$name" "${BOX[$name]:-60}" "$PYTHON" "benchmarks/$name.py" --json "$WORK/$name.json" "${extra[@]}" ;;
  esac
done
rm -rf "$WORK"
close_run
exit $status
