"""Benchmark targets and how a result is judged against them, in one place (no torch import: the
GPU run's summariser, scripts/gpu_summary.py, uses it on the JSON the benchmarks write).

A target is a dict stored in the benchmark's JSON under "targets":
  name     what is compared, for the reader
  column   the row column holding the ratio
  where    {column: value or [values]}: the rows the target covers (all rows when absent)
  op       ">=" or "<=" (None: a ratio reported with no target)
  value    the threshold (None with op None)
The worst row decides: the smallest value for ">=" (and for a ratio with no target), the largest
for "<=". Rows whose value is not a number (e.g. "n/a" where torch has no kernel) are left out.
The targets are defined for the GPU machine at full size; a CPU or --quick run is judged the same
way and labelled as such.
"""
from __future__ import annotations

from typing import Iterable


def target(name: str, column: str, op: str | None, value: float | None, where: dict | None = None) -> dict:
    return {"name": name, "column": column, "where": dict(where or {}), "op": op, "value": value}


def no_target(name: str, column: str, where: dict | None = None) -> dict:
    return target(name, column, None, None, where)


def _matches(row: dict, where: dict) -> bool:
    for key, wanted in where.items():
        allowed = wanted if isinstance(wanted, (list, tuple)) else [wanted]
        if row.get(key) not in allowed:
            return False
    return True


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def evaluate(rows: Iterable[dict], targets: Iterable[dict]) -> list[dict]:
    """One result per target: {name, column, op, value, ratio (worst, or None), rows, verdict}.
    verdict: PASS, FAIL, "no target", or "no data" (no numeric row matched)."""
    rows = list(rows)
    results = []
    for t in targets:
        values = [v for v in (_number(r.get(t["column"])) for r in rows if _matches(r, t.get("where") or {}))
                  if v is not None]
        op, threshold = t.get("op"), t.get("value")
        if op not in (None, ">=", "<="):
            raise ValueError(f"target {t['name']!r}: op must be '>=', '<=' or None, got {op!r}")
        worst = (max(values) if op == "<=" else min(values)) if values else None
        if worst is None:
            verdict = "no data"
        elif op is None:
            verdict = "no target"
        else:
            verdict = "PASS" if (worst >= threshold if op == ">=" else worst <= threshold) else "FAIL"
        results.append({"name": t["name"], "column": t["column"], "op": op, "value": threshold,
                        "ratio": worst, "rows": len(values), "verdict": verdict})
    return results


def format_result(benchmark: str, result: dict, label: str = "") -> str:
    """`bench: name (worst of N): ratio X (target >= Y): PASS`, the line the GPU run's summary prints;
    `... ratio X (no target)` for a ratio without one."""
    ratio = "n/a" if result["ratio"] is None else f"{result['ratio']:g}"
    if result["op"] is None:
        tail = "(no target)"
    else:
        verdict = "NO DATA" if result["verdict"] == "no data" else result["verdict"]
        tail = f"(target {result['op']} {result['value']:g}): {verdict}"
    suffix = f" [{label}]" if label else ""
    return f"{benchmark}: {result['name']} (worst of {result['rows']}): ratio {ratio} {tail}{suffix}"
