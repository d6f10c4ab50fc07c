"""Several runs of one step, taken together: a noisy machine is judged on medians.

A shared 2-core machine gives a different answer to the same step from one
minute to the next (the floor alone kept 14 % or 99.9 % of its files within
0.3 s at 80 calls/s in two runs). So the steps near the limits run several
times, the paths in a rotated order each time, and the targets are judged on
the median run, never on one lucky or unlucky sample.
"""

from __future__ import annotations

import statistics
from typing import Any

#: Figures of a step taken as the median of its runs.
MEDIAN_KEYS = (
    "setup_p50_ms",
    "setup_p99_ms",
    "hangup_p50_ms",
    "hangup_p99_ms",
    "latency_p50_ms",
    "latency_p99_ms",
    "ledger_latency_p50_ms",
    "ledger_latency_p99_ms",
    "duration_error_p50_s",
    "duration_error_p99_s",
    "duration_within_0_3s",
    "duration_spread_within_0_3s",
    "audio_start_late_p50_ms",
    "audio_start_late_p99_ms",
    "silent_blocks_p99",
    "longest_gap_ms_max",
    "files_with_cuts_percent",
    "cuts_per_file_max",
    "cpu_s_per_1000_calls",
    "asterisk_cpu_s_per_1000_calls",
    "postgres_cpu_s_per_1000_calls",
    "sipp_cpu_s_per_1000_calls",
    "stack_cpu_s_per_1000_calls",
    "rss_peak_mb",
)
#: Counts of a step summed over its runs: one lost row or stranded caller in
#: any run is one too many, whatever the other runs did.
SUM_KEYS = (
    "offered",
    "completed",
    "failed",
    "stranded",
    "recording_failures",
    "unserved",
    "ledger_rows_expected",
    "ledger_rows_found",
    "ledger_duplicates",
    "fresh_ari_client_failures",
)


def zero_failure(step: dict[str, Any]) -> bool:
    """No call failed or stranded, every caller who pressed 3 was recorded and
    every call was served (none went on unrecorded)."""
    served = step.get("recording_failures", 0) == 0 and step.get("unserved", 0) == 0
    return bool(step["failed"] == 0 and step["stranded"] == 0 and served and step["completed"] > 0)


def _key(step: dict[str, Any]) -> tuple[str, float, str, Any]:
    # Calls of another length at the same rate are another step (2,000 at once).
    return step["path"], step["cps"], step["media"], step.get("concurrent_calls")


def group_runs(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per path and step: medians of its runs where SIPp kept its plan.

    A step is zero-failure when more than half of its judged runs were; runs
    where SIPp fell behind are not judged, and a step with none judged is
    generator-limited as a whole.
    """
    runs: dict[tuple[str, float, str, Any], list[dict[str, Any]]] = {}
    for step in steps:
        runs.setdefault(_key(step), []).append(step)
    groups = []
    for (path, cps, media, concurrent), these in runs.items():
        judged = [s for s in these if not s["generator_limited"]]
        basis = judged or these
        clean = sum(zero_failure(s) for s in judged)
        group: dict[str, Any] = {
            "path": path,
            "cps": cps,
            "media": media,
            "concurrent_calls": concurrent,
            "runs": len(these),
            "judged_runs": len(judged),
            "zero_failure_runs": clean,
            "generator_limited": not judged,
            "zero_failure": bool(judged) and clean * 2 > len(judged),
        }
        for key in MEDIAN_KEYS:
            values = [s[key] for s in basis if s.get(key) is not None]
            group[key] = statistics.median(values) if values else None
        for key in SUM_KEYS:
            values = [s[key] for s in these if s.get(key) is not None]
            group[key] = sum(values) if values else None
        groups.append(group)
    return groups


def step_order(paths: list[Any], step: int, run: int) -> list[Any]:
    """The paths in the order of run ``run`` of step ``step`` (both 1-based).

    Rotated by the step as well as the run, so steps run once take turns too: in
    one fixed order consentd always went last, and on a machine that drifted
    within a step (2026-12-02, 40 jittered calls/s) it alone met the worst of it.
    """
    return rotated(paths, step + run - 1)


def rotated(paths: list[Any], run: int) -> list[Any]:
    """The paths in the order of run ``run`` (1-based): each path goes first once
    in every len(paths) runs, so none always meets the machine warmest or coldest."""
    if not paths:
        return []
    shift = (run - 1) % len(paths)
    return paths[shift:] + paths[:shift]
