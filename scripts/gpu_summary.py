#!/usr/bin/env python3
"""Summarises a GPU run (scripts/gpu_run.sh) from the files it returns: counts parsed from each
stage's log and every benchmark ratio next to its target. Standard library only (plus
benchmarks/targets.py), so it runs with any python3, with or without torch.

  gpu_summary.py stage NAME LOG     one line of counts for a stage's log (.gz or plain)
  gpu_summary.py final OUT_DIR      the closing summary of everything in OUT_DIR

Stage names: build, ctest, pytest, memcheck, racecheck, bench_* (anything else: the last line).
OUT_DIR holds summary.txt (the script's "stage NAME: VERDICT in T s (box B s)" lines),
NAME.log.gz per stage, bench.log.gz and bench.jsonl (one benchmark's JSON per line).
"""
from __future__ import annotations

import gzip
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from targets import evaluate, format_result  # noqa: E402

STAGE_LINE = re.compile(r"^stage (\S+): (.+?) in (\d+) s \(box (\d+) s\)")


def read_text(path: str) -> str:
    """A log, gzip or plain; several gzip members (appended stage by stage) read as one text."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


# ---- Catch2 -----------------------------------------------------------------------------------

def catch2_counts(text: str) -> list[str]:
    """Every Catch2 run's totals in the text, e.g. 'Catch2: passed all 74 test cases, 3366 assertions'.
    Compact reporter: 'Passed all 74 test cases with 3366 assertions.' / 'Failed 1 test case,
    failed 2 assertions.'; console reporter: 'All tests passed (3366 assertions in 74 test cases)' /
    'test cases:  74 |  73 passed | 1 failed' + 'assertions: ...'."""
    found = []
    for line in text.splitlines():
        line = re.sub(r"^\s*\d+: ", "", line).strip()  # ctest -V prefixes each line with the test number
        m = re.search(r"All tests passed \((\d+) assertions? in (\d+) test cases?\)", line)
        if m:
            found.append(f"Catch2: passed all {m.group(2)} test cases, {m.group(1)} assertions")
            continue
        m = re.match(r"(Passed|Failed) (.*test cases?.*)$", line)
        if m and "assertion" in line:
            found.append(f"Catch2: {m.group(1).lower()} {m.group(2).rstrip('.')}")
            continue
        m = re.match(r"test cases:\s*(\d+) \|\s*(\d+) passed(?: \|\s*(\d+) failed)?", line)
        if m:
            found.append(f"Catch2: {m.group(1)} test cases, {m.group(2)} passed, {m.group(3) or 0} failed")
            continue
        m = re.match(r"assertions:\s*(\d+) \|\s*(\d+) passed(?: \|\s*(\d+) failed)?", line)
        if m and found:
            found[-1] += f"; {m.group(1)} assertions, {m.group(2)} passed, {m.group(3) or 0} failed"
    return found


# ---- per-stage parsers --------------------------------------------------------------------------

def build_counts(text: str) -> str:
    if "ninja: no work to do" in text:
        return "up to date (nothing rebuilt)"
    steps = re.findall(r"^\[(\d+)/(\d+)\]", text, re.M)
    failed = re.findall(r"^FAILED: (.*)$", text, re.M)
    parts = [f"{steps[-1][0]}/{steps[-1][1]} build steps" if steps else "no build steps seen"]
    if failed:
        parts.append(f"{len(failed)} FAILED: " + ", ".join(f.split()[-1] for f in failed[:3]))
    errors = re.findall(r"error: .*", text)
    if errors:
        parts.append(f"first error: {errors[0][:200]}")
    return "; ".join(parts)


def ctest_counts(text: str) -> str:
    m = None
    for m in re.finditer(r"(\d+)% tests passed, (\d+) tests? failed out of (\d+)", text):
        pass
    if m:
        total, failed = int(m.group(3)), int(m.group(2))
        parts = [f"ctest: {total - failed}/{total} passed, {failed} failed"]
    else:  # stopped before ctest's own summary: count the per-test result lines
        results = re.findall(r"Test +#\d+: (\S+) \.+\s*(\*{0,3}\w+)", text)
        passed = sum(1 for _, r in results if r == "Passed")
        parts = [f"ctest: no summary (stopped?); {passed} passed, {len(results) - passed} not passed of "
                 f"{len(results)} finished"]
    failed_names = re.findall(r"^\s*\d+ - (\S+) \((\w+)\)", text, re.M)
    if failed_names:
        parts.append("failed: " + ", ".join(f"{n} ({why})" for n, why in failed_names))
    parts += catch2_counts(text)
    return "; ".join(parts)


PYTEST_WORDS = ("failed", "passed", "skipped", "deselected", "xfailed", "xpassed", "error", "errors", "warning",
                "warnings")


def pytest_counts(text: str) -> str:
    final = None
    for line in text.splitlines():
        if re.search(r"\b(passed|failed|errors?|no tests ran)\b.* in [\d.]+s", line):
            final = line.strip(" =")
    if final:
        counts = {word.rstrip("s") if word.startswith(("error", "warning")) else word: int(n)
                  for n, word in re.findall(r"(\d+) (" + "|".join(PYTEST_WORDS) + r")\b", final)}
        order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected", "warning"]
        shown = ", ".join(f"{counts.get(k, 0)} {k}" for k in order[:3]) + "".join(
            f", {counts[k]} {k}" for k in order[3:] if counts.get(k))
        note = " (interrupted)" if "KeyboardInterrupt" in text or "Interrupted" in text else ""
        return f"pytest: {shown}{note}"
    # no closing line (killed): count -v result lines, else -q progress characters
    verbose = re.findall(r" (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b", text)
    if verbose:
        return (f"pytest: no summary (killed?); {verbose.count('PASSED')} passed, {verbose.count('FAILED')} failed, "
                f"{verbose.count('ERROR')} error, {verbose.count('SKIPPED')} skipped so far")
    progress = "".join(re.findall(r"^([.FEsxX]+)(?:\s+\[\s*\d+%\])?$", text, re.M))
    return (f"pytest: no summary (killed?); {progress.count('.')} passed, {progress.count('F')} failed, "
            f"{progress.count('E')} error, {progress.count('s')} skipped so far")


def sanitizer_counts(name: str, text: str) -> str:
    parts = []
    m = re.search(r"ERROR SUMMARY: (\d+) errors?", text)
    if m:
        parts.append(f"{name}: {m.group(1)} errors")
    m = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
    if m:
        parts.append(f"{name}: {m.group(1)} hazards ({m.group(2)} errors, {m.group(3)} warnings)")
    if not parts:
        if re.search(r"not available|not found", text):
            parts.append(f"{name}: compute-sanitizer not available")
        else:
            parts.append(f"{name}: no sanitizer summary (stopped before the end?)")
    parts += catch2_counts(text)
    return "; ".join(parts)


def stage_counts(name: str, text: str) -> str:
    if name == "build":
        return build_counts(text)
    if name == "ctest":
        return ctest_counts(text)
    if name.startswith("pytest"):
        return pytest_counts(text)
    if name in ("memcheck", "racecheck"):
        return sanitizer_counts(name, text)
    if name.startswith("bench_"):  # the benchmark's own verdict lines (benchmarks/common.py)
        verdicts = [line.strip() for line in text.splitlines() if line.startswith(f"{name}: ")]
        if verdicts:
            return "\n".join(verdicts)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else "(empty log)"


# ---- benchmarks ---------------------------------------------------------------------------------

def benchmark_lines(results: list[dict]) -> tuple[list[str], dict]:
    """Each benchmark's target verdicts, judged here from its rows and the targets it carries."""
    lines, tally = [], {"PASS": 0, "FAIL": 0, "no target": 0, "no data": 0}
    for result in results:
        name = result.get("benchmark", "?")
        targets = result.get("targets") or []
        if not targets:
            lines.append(f"{name}: no target")
            tally["no target"] += 1
            continue
        for check in evaluate(result.get("rows", []), targets):
            lines.append(format_result(name, check, result.get("label", "")))
            tally["no target" if check["op"] is None else check["verdict"]] += 1
    return lines, tally


def read_benchmarks(path: str) -> list[dict]:
    results = []
    if os.path.exists(path):
        for line in read_text(path).splitlines():
            if line.strip():
                try:
                    results.append(json.loads(line))
                except json.JSONDecodeError as error:
                    results.append({"benchmark": f"(unreadable line: {error})", "targets": []})
    return results


# ---- the closing summary ------------------------------------------------------------------------

def final(out_dir: str) -> str:
    summary_path = os.path.join(out_dir, "summary.txt")
    stages = []
    if os.path.exists(summary_path):
        for line in read_text(summary_path).splitlines():
            m = STAGE_LINE.match(line)
            if m:
                stages.append((m.group(1), m.group(2), int(m.group(3)), int(m.group(4))))
    out = ["== summary =="]
    ok = sum(1 for _, verdict, _, _ in stages if verdict == "ok" or verdict.startswith("ok ("))
    out.append(f"stages: {ok}/{len(stages)} ok; {sum(t for _, _, t, _ in stages)} s in stages")
    for name, verdict, seconds, box in stages:
        line = f"  {name}: {verdict} in {seconds} s (box {box} s)"
        if not name.startswith("bench_"):
            # NAME.log.gz once the stage ended; a plain NAME.log if the run was killed during it
            for log in (os.path.join(out_dir, f"{name}.log.gz"), os.path.join(out_dir, f"{name}.log")):
                if os.path.exists(log):
                    line += f"; {stage_counts(name, read_text(log))}"
                    break
        out.append(line)
    results = read_benchmarks(os.path.join(out_dir, "bench.jsonl"))
    with_json = {r.get("benchmark") for r in results}
    for name, verdict, _, _ in stages:
        if name.startswith("bench_") and name not in with_json:
            out.append(f"{name}: no JSON ({verdict})")
    if results:
        lines, tally = benchmark_lines(results)
        out.append("== benchmarks vs targets (worst row of each) ==")
        out += lines
        out.append(f"targets: {tally['PASS']} PASS, {tally['FAIL']} FAIL, {tally['no data']} no data; "
                   f"{tally['no target']} ratios with no target")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[1] == "stage":
        print(stage_counts(argv[2], read_text(argv[3]) if os.path.exists(argv[3]) else ""))
        return 0
    if len(argv) == 3 and argv[1] == "final":
        print(final(argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
