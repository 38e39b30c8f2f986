"""The CPU benchmarks that report what the tests cannot time, run --quick: each finishes and writes
the rows and figures its note relies on (the speed targets themselves live in the benchmarks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_benchmark(tmp_path, script: str, *extra: str) -> dict:
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(REPO, "python"),
                                                                      os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, script, "--device", "cpu", "--quick", "--json", str(out), *extra],
                   cwd=os.path.join(REPO, "benchmarks"), env=env, check=True, capture_output=True, timeout=600)
    return json.loads(out.read_text())


def test_end_to_end_reports_each_modes_page_faults_and_the_heap_setting(tmp_path):
    for heap in ("kept", "glibc"):
        result = run_benchmark(tmp_path, "bench_end_to_end.py", "--heap", heap)
        assert result["heap"] == heap
        assert [row["family"] for row in result["rows"]] == ["tiny_gpt", "digits_cnn"]
        for row in result["rows"]:
            for mode in ("ampkit", "torch", "fp32"):
                assert row[f"{mode}_steps_s"] > 0 and row[f"{mode}_faults"] >= 0


def test_autocast_overhead_times_the_region_itself(tmp_path):
    result = run_benchmark(tmp_path, "bench_autocast_overhead.py")
    regions = {row["op"]: row for row in result["rows"] if row["op"].startswith("region enter+exit")}
    assert set(regions) == {"region enter+exit, warm caches", "region enter+exit, after a 64 MB pass"}
    for row in regions.values():
        assert row["ampkit_us"] > 0 and row["torch_us"] > 0
        assert abs(row["ratio"] - row["ampkit_us"] / row["torch_us"]) < 0.01
    assert any(t["name"] == "region enter+exit vs torch.autocast" for t in result["targets"])


def test_optimizer_reports_the_byte_bound_beside_the_speedup(tmp_path):
    result = run_benchmark(tmp_path, "bench_optimizer.py")
    assert result["bytes_per_param"] == 28 and result["torch_bytes_per_param"] == 36  # the CPU counts the copy's line reads
    assert abs(result["byte_bound"] - 36 / 28) < 1e-3
    assert [row["dtype"] for row in result["rows"]] == ["float16", "bfloat16"]
    for row in result["rows"]:
        assert row["torch_GBps"] > 0 and row["ampkit_GBps"] > 0
        # speedup = byte bound x (ampkit's GB/s over torch's): the two columns tell the same story
        assert abs(row["pct_of_byte_bound"] / 100 - row["ampkit_GBps"] / row["torch_GBps"]) < 0.05
