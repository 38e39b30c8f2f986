"""scripts/gpu_run.sh and its summariser, kept honest without a GPU: the script parses, both
invocations' time boxes fit the GPU time (GPU.md: under 9 minutes each), the deadline and a
stage's time box behave, and the summary's counts and PASS/FAIL lines come out right from fixture
logs and benchmark JSON."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

import ampkit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "gpu_run.sh")
SUMMARY = os.path.join(REPO, "scripts", "gpu_summary.py")
INVOCATION_LIMIT_S = 540  # 9 minutes: the device tool allows 10 per invocation, minus a margin
RESULT_FILES_LIMIT = 8    # what the device tool brings back


def run_script(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_script_parses():
    result = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def plan(preset: str) -> tuple[dict[str, int], int, int]:
    result = run_script("--plan", preset)
    assert result.returncode == 0, result.stderr
    boxes, total, deadline = {}, None, None
    for line in result.stdout.splitlines():
        name, seconds = line.split()[:2]
        if name == "total":
            total = int(seconds)
        elif name == "deadline":
            deadline = int(seconds)
        else:
            boxes[name] = int(seconds)
    assert total == sum(boxes.values())
    return boxes, total, deadline


@pytest.mark.parametrize("preset", ["first", "second"])
def test_each_invocation_fits_the_gpu_time(preset):
    boxes, total, deadline = plan(preset)
    assert total < INVOCATION_LIMIT_S, f"{preset}: boxes sum to {total} s: {boxes}"
    # a cold second invocation (machine given back in between) rebuilds; the deadline cuts it short
    assert deadline < INVOCATION_LIMIT_S


def test_presets_hold_the_planned_stages():
    first, _, _ = plan("first")
    second, _, _ = plan("second")
    assert list(first) == ["build", "ctest", "pytest"]
    # Every benchmark but those whose targets are the CPU's only (scripts/gpu_run.sh: CPU_ONLY_BENCHES).
    cpu_only = {"bench_adaptive_overhead", "bench_adaptive_overhead_cpp", "bench_attention_precision"}
    benches = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "benchmarks"))
                     if f.startswith("bench_") and f[:-3] not in cpu_only)
    assert second["build"] < first["build"], "the second invocation reuses the first's build"
    assert sorted(s for s in second if s.startswith("bench_")) == benches
    assert {"memcheck", "racecheck"} <= set(second)


def test_unknown_stage_is_refused(tmp_path):
    result = run_script(str(tmp_path / "out"), "bogus", "--dry-run")
    assert result.returncode == 2
    assert "unknown stage" in result.stderr


def env_for_dry_run(tmp_path) -> dict:
    # The dry run's benchmarks import this test run's ampkit (not a build of the script's own).
    return {"AMPKIT_BUILD_DIR": str(tmp_path / "build"),
            "PYTHONPATH": os.path.dirname(os.path.dirname(ampkit.__file__))}


def test_deadline_skips_stages_it_cannot_fit(tmp_path):
    out = tmp_path / "out"
    result = run_script(str(out), "first", "--dry-run", env={**env_for_dry_run(tmp_path), "AMPKIT_GPU_RUN_DEADLINE": "5"})
    assert result.returncode == 1
    summary = (out / "summary.txt").read_text()
    for stage in ("build", "ctest", "pytest"):
        assert f"stage {stage}: NOT RUN (deadline)" in summary
    assert "stages: 0/3 ok" in summary
    assert not (tmp_path / "build").exists(), "nothing may run past the deadline"


def test_a_stage_over_its_box_is_stopped_and_the_next_still_runs(tmp_path):
    out = tmp_path / "out"
    env = {**env_for_dry_run(tmp_path), "AMPKIT_GPU_RUN_BOX_SCALE": "1",
           "AMPKIT_GPU_RUN_BOXES": "bench_end_to_end=1 bench_multi_tensor_scale=120"}
    result = run_script(str(out), "bench_end_to_end", "bench_multi_tensor_scale", "--dry-run", env=env)
    summary = (out / "summary.txt").read_text()
    assert result.returncode == 1, summary
    assert "stage bench_end_to_end: TIMED OUT" in summary
    assert "stage bench_multi_tensor_scale: ok" in summary
    assert "bench_end_to_end: no JSON (TIMED OUT)" in summary
    assert "bench_multi_tensor_scale: multi_tensor_scale_ vs _foreach_mul_ + isfinite (worst of 6): ratio " in summary
    assert "(no target) [cpu: targets are for cuda; quick sizes]" in summary
    files = sorted(os.listdir(out))
    assert files == ["bench.jsonl", "bench.log.gz", "summary.txt"], files
    assert len(files) <= RESULT_FILES_LIMIT
    logs = gzip.decompress((out / "bench.log.gz").read_bytes()).decode()  # one gzip member per benchmark
    assert "multi_tensor_scale_ vs torch._foreach_mul_" in logs


# ---- the summariser on fixtures ----------------------------------------------------------------

CTEST_LOG = """\
Test project /x/build/gpu
    Start 1: cpp_unit_tests
1/3 Test #1: cpp_unit_tests ...................   Passed   41.20 sec
2/3 Test #2: emulated_kernels .................***Failed    3.10 sec
3/3 Test #3: find_package_consumer ............   Passed   30.00 sec

67% tests passed, 1 tests failed out of 3

Total Test time (real) =  74.40 sec

The following tests FAILED:
\t  2 - emulated_kernels (Failed)
---- /x/build/gpu/Testing/Temporary/LastTest.log ----
1/3 Testing: cpp_unit_tests
Passed all 74 test cases with 3366 assertions.
2/3 Testing: emulated_kernels
Failed 1 test case, failed 2 assertions.
"""

PYTEST_LOG = """\
tests/python/test_a.py::test_one[cpu] PASSED                               [ 50%]
tests/python/test_a.py::test_one[cuda] FAILED                              [100%]
=========================== short test summary info ============================
FAILED tests/python/test_a.py::test_one[cuda] - AssertionError
============ 2 failed, 850 passed, 41 skipped, 3 warnings in 101.52s (0:01:41) ============
"""

PYTEST_KILLED_LOG = """\
tests/python/test_a.py::test_one[cpu] PASSED                               [  1%]
tests/python/test_a.py::test_two[cuda] PASSED                              [  2%]
tests/python/test_a.py::test_three[cuda] FAILED                            [  3%]
"""

MEMCHECK_LOG = """\
========= COMPUTE-SANITIZER
Passed all 74 test cases with 3366 assertions.
========= ERROR SUMMARY: 0 errors
"""

RACECHECK_LOG = """\
========= COMPUTE-SANITIZER
Passed all 74 test cases with 3366 assertions.
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
"""


def fused_linear_json(gemm_worst: float, fwd_bwd_worst: float) -> dict:
    rows = [
        {"what": "gemm", "kind": "mlp", "speedup": 1.02, "of_torch_peak": 0.85},  # on the line: passes
        {"what": "gemm", "kind": "odd", "speedup": gemm_worst, "of_torch_peak": 0.4},
        {"what": "fwd+bwd gelu", "kind": "mlp", "speedup": fwd_bwd_worst, "of_torch_peak": ""},
        {"what": "fwd+bwd gelu", "kind": "mlp", "speedup": 1.3, "of_torch_peak": ""},
        {"what": "fwd+bwd gelu", "kind": "odd", "speedup": 0.5, "of_torch_peak": ""},
    ]
    targets = [
        {"name": "gemm", "column": "speedup", "where": {"what": "gemm"}, "op": ">=", "value": 0.97},
        {"name": "fwd+bwd", "column": "speedup", "where": {"what": "fwd+bwd gelu", "kind": "mlp"}, "op": ">=",
         "value": 1.10},
        {"name": "peak", "column": "of_torch_peak", "where": {"what": "gemm", "kind": "mlp"}, "op": ">=", "value": 0.85},
        {"name": "odd", "column": "speedup", "where": {"what": "fwd+bwd gelu", "kind": "odd"}, "op": None,
         "value": None},
    ]
    return {"benchmark": "bench_fused_linear", "label": "", "rows": rows, "targets": targets}


def memory_json() -> dict:
    rows = [{"family": "tiny_gpt", "mem": 0.8, "speed": "n/a"}, {"family": "tiny_gpt", "mem": 1.05, "speed": 1.2},
            {"family": "digits_cnn", "mem": 3.0, "speed": 0.9}]
    targets = [{"name": "memory", "column": "mem", "where": {"family": "tiny_gpt"}, "op": "<=", "value": 1.0},
               {"name": "speed", "column": "speed", "where": {"family": "tiny_gpt"}, "op": ">=", "value": 1.15}]
    return {"benchmark": "bench_end_to_end", "label": "quick sizes", "rows": rows, "targets": targets}


def write_out_dir(path, stages: list[str], logs: dict[str, str], benches: list[dict]):
    path.mkdir()
    (path / "summary.txt").write_text("== gpu_run ==\n" + "".join(f"{line}\n" for line in stages))
    for name, text in logs.items():
        (path / f"{name}.log.gz").write_bytes(gzip.compress(text.encode()))
    (path / "bench.jsonl").write_text("".join(json.dumps(b) + "\n" for b in benches))


def summarise(*args) -> str:
    result = subprocess.run([sys.executable, SUMMARY, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_summary_counts_and_verdicts(tmp_path):
    out = tmp_path / "out"
    stages = ["stage build: ok (gpu was complete) in 2 s (box 30 s)", "stage ctest: FAILED (rc 8) in 75 s (box 120 s)", "stage pytest: FAILED (rc 1) in 103 s (box 150 s)",
              "stage memcheck: ok in 60 s (box 120 s)", "stage racecheck: FAILED (rc 1) in 50 s (box 90 s)",
              "stage bench_fused_linear: ok in 20 s (box 60 s)", "stage bench_end_to_end: ok in 20 s (box 50 s)",
              "stage bench_unscale: TIMED OUT in 40 s (box 40 s)"]
    write_out_dir(out, stages, {"ctest": CTEST_LOG, "pytest": PYTEST_LOG, "memcheck": MEMCHECK_LOG,
                                "racecheck": RACECHECK_LOG},
                  [fused_linear_json(gemm_worst=0.98, fwd_bwd_worst=1.05), memory_json()])
    text = summarise("final", str(out))
    lines = text.splitlines()
    assert "stages: 4/8 ok; 370 s in stages" in lines
    assert ("  ctest: FAILED (rc 8) in 75 s (box 120 s); ctest: 2/3 passed, 1 failed; failed: emulated_kernels "
            "(Failed); Catch2: passed all 74 test cases with 3366 assertions; Catch2: failed 1 test case, failed 2 "
            "assertions") in lines
    assert "  pytest: FAILED (rc 1) in 103 s (box 150 s); pytest: 850 passed, 2 failed, 0 error, 41 skipped, 3 warning" \
        in lines
    assert ("  memcheck: ok in 60 s (box 120 s); memcheck: 0 errors; Catch2: passed all 74 test cases with 3366 "
            "assertions") in lines
    assert "  racecheck: FAILED (rc 1) in 50 s (box 90 s); racecheck: 1 hazards (1 errors, 0 warnings); Catch2: " \
        "passed all 74 test cases with 3366 assertions" in lines
    assert "bench_unscale: no JSON (TIMED OUT)" in lines
    # the worst row decides: the smallest for >=, the largest for <=; non-numbers are left out
    assert "bench_fused_linear: gemm (worst of 2): ratio 0.98 (target >= 0.97): PASS" in lines
    assert "bench_fused_linear: fwd+bwd (worst of 2): ratio 1.05 (target >= 1.1): FAIL" in lines
    assert "bench_fused_linear: peak (worst of 1): ratio 0.85 (target >= 0.85): PASS" in lines
    assert "bench_fused_linear: odd (worst of 1): ratio 0.5 (no target)" in lines
    assert "bench_end_to_end: memory (worst of 2): ratio 1.05 (target <= 1): FAIL [quick sizes]" in lines
    assert "bench_end_to_end: speed (worst of 1): ratio 1.2 (target >= 1.15): PASS [quick sizes]" in lines
    assert "targets: 3 PASS, 2 FAIL, 0 no data; 1 ratios with no target" in lines


def test_summary_of_logs_cut_short(tmp_path):
    killed = tmp_path / "pytest.log"
    killed.write_text(PYTEST_KILLED_LOG)
    assert summarise("stage", "pytest", str(killed)).strip() == \
        "pytest: no summary (killed?); 2 passed, 1 failed, 0 error, 0 skipped so far"
    ctest = tmp_path / "ctest.log"
    ctest.write_text(CTEST_LOG.split("\n\n")[0])
    assert summarise("stage", "ctest", str(ctest)).startswith(
        "ctest: no summary (stopped?); 2 passed, 1 not passed of 3 finished")
    sanitizer = tmp_path / "memcheck.log"
    sanitizer.write_text("========= COMPUTE-SANITIZER\n")
    assert summarise("stage", "memcheck", str(sanitizer)).strip() == \
        "memcheck: no sanitizer summary (stopped before the end?)"


def test_every_benchmark_carries_its_targets():
    # each benchmark states targets (or ratios with none) for the summary to judge
    for name in sorted(os.listdir(os.path.join(REPO, "benchmarks"))):
        if name.startswith("bench_"):
            source = open(os.path.join(REPO, "benchmarks", name), encoding="utf-8").read()
            assert "targets=" in source and "report(" in source, name
