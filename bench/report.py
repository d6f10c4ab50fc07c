"""The benchmark's summary and its Markdown table."""

from __future__ import annotations

from typing import Any


def _highest_clean(steps: list[dict[str, Any]], path: str, media: bool) -> float | None:
    """The highest rate at which this path failed no call, stranded none, recorded
    every caller who pressed 3 and served every call (none went on unrecorded).

    A step where SIPp fell behind its plan does not count either way.
    """
    best = None
    for step in steps:
        if step["path"] != path or (step["media"] != "none") != media:
            continue
        if step["generator_limited"]:
            continue
        served = step.get("recording_failures", 0) == 0 and step.get("unserved", 0) == 0
        if step["failed"] == 0 and step["stranded"] == 0 and served and step["completed"] > 0:
            best = max(best or 0, step["cps"])
    return best


def summarise(steps: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for media in (True, False):
        key = "with_media" if media else "signalling_only"
        rates = {p: _highest_clean(steps, p, media) for p in ("floor", "baseline", "consentd")}
        base, ours = rates["baseline"], rates["consentd"]
        summary[key] = {
            "highest_zero_failure_cps": rates,
            "consentd_to_baseline": round(ours / base, 2) if ours and base else None,
        }
    limited = [f"{s['path']}@{s['cps']:g}/{s['media']}" for s in steps if s["generator_limited"]]
    summary["generator_limited_steps"] = limited
    summary["targets"] = _targets(steps, summary)
    return summary


def _targets(steps: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """The README's targets, each with what this run measured and whether it holds."""
    ours = [s for s in steps if s["path"] == "consentd" and not s["generator_limited"]]
    targets: dict[str, Any] = {}
    for key in ("with_media", "signalling_only"):
        ratio = summary[key]["consentd_to_baseline"]
        targets[f"capacity_{key}"] = {
            "target": ">= 0.9 of the baseline",
            "measured": ratio,
            "met": ratio is not None and ratio >= 0.9,
        }
    stranded = sum(s.get("stranded", 0) for s in ours)
    targets["no_caller_stranded"] = {
        "target": "0 stranded; unserved calls counted",
        "measured": {"stranded": stranded, "unserved": sum(s.get("unserved", 0) for s in ours)},
        "met": stranded == 0,
    }
    targets["latency_p99_at_80_percent"] = _latency_target(steps, summary)
    targets["fidelity_at_highest_rate"] = _fidelity_target(steps, summary)
    lost = sum(
        (s.get("ledger_rows_expected") or 0) - (s.get("ledger_rows_found") or 0) for s in ours
    )
    duplicated = sum(s.get("ledger_duplicates") or 0 for s in ours)
    targets["ledger_rows"] = {
        "target": "0 lost, 0 duplicated",
        "measured": {"missing": lost, "duplicated": duplicated},
        "met": lost == 0 and duplicated == 0,
    }
    big = [s for s in ours if s["media"] == "none" and (s.get("concurrent_calls") or 0) >= 1800]
    rss = max((s.get("rss_peak_mb") or 0.0 for s in big), default=None)
    targets["rss_at_2000_calls"] = {
        "target": "< 150 MB at 2,000 concurrent calls",
        "measured": rss,
        "met": rss is not None and rss < 150,
    }
    return targets


def _fidelity_target(steps: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """At consentd's highest zero-failure rate with media, steady and jittered alike."""
    top = summary["with_media"]["highest_zero_failure_cps"]["consentd"]
    result: dict[str, Any] = {
        "target": ">= 99 % of files within 0.3 s of their span, no silence over 60 ms"
    }
    at_top = [
        s for s in steps
        if s["path"] == "consentd" and s["cps"] == top and s["media"] != "none"
        and s.get("duration_within_0_3s") is not None
    ]  # fmt: skip
    if not at_top:
        return {**result, "measured": None, "met": False}
    within = min(s["duration_within_0_3s"] for s in at_top)
    gap = max(s.get("longest_gap_ms_max") or 0.0 for s in at_top)
    return {
        **result,
        "cps": top,
        "measured": {"within_0_3s_percent": within, "longest_gap_ms": gap},
        "met": within >= 99 and gap <= 60,
    }


def _latency_target(steps: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    top = summary["with_media"]["highest_zero_failure_cps"]["consentd"]
    result: dict[str, Any] = {"target": "consentd p99 within 20 ms of the baseline's"}
    if top is None:
        return {**result, "measured": None, "met": False}
    media = [s for s in steps if s["media"] == "steady" and s.get("latency_p99_ms") is not None]
    rates = sorted({s["cps"] for s in media if s["path"] == "consentd"})
    if not rates:
        return {**result, "measured": None, "met": False}
    cps = min(rates, key=lambda r: abs(r - 0.8 * top))
    p99 = {s["path"]: s["latency_p99_ms"] for s in media if s["cps"] == cps}
    ours, base = p99.get("consentd"), p99.get("baseline")
    met = ours is not None and base is not None and ours - base <= 20
    return {**result, "cps": cps, "measured": p99, "met": met}


COLUMNS = (
    ("path", "path"),
    ("cps", "cps"),
    ("media", "media"),
    ("ok/offered", None),
    ("failed", "failed"),
    ("stranded", "stranded"),
    ("not recorded/unserved", ("recording_failures", "unserved")),
    ("setup p50/p99 ms", ("setup_p50_ms", "setup_p99_ms")),
    ("key→rec p50/p99 ms", ("latency_p50_ms", "latency_p99_ms")),
    ("ledger lat p50/p99 ms", ("ledger_latency_p50_ms", "ledger_latency_p99_ms")),
    ("dur err p50 s", "duration_error_p50_s"),
    ("|dur err| p99 s", "duration_error_p99_s"),
    ("within ±0.3 s %", "duration_within_0_3s"),
    ("silent blocks p99", "silent_blocks_p99"),
    ("longest gap max ms", "longest_gap_ms_max"),
    ("ledger rows", None),
    ("fresh ARI client fails", "fresh_ari_client_failures"),
    ("consentd cpu s/1000", "cpu_s_per_1000_calls"),
    ("asterisk cpu s/1000", "asterisk_cpu_s_per_1000_calls"),
    ("rss MB", "rss_peak_mb"),
    ("gen-limited", "generator_limited"),
)


def _cell(step: dict[str, Any], key: Any, title: str) -> str:
    if title == "ok/offered":
        return f"{step['completed']}/{step['offered']}"
    if title == "ledger rows":
        if step["ledger_rows_expected"] is None:
            return "-"
        return f"{step['ledger_rows_found']}/{step['ledger_rows_expected']}"
    if isinstance(key, tuple):
        return "/".join("-" if step.get(k) is None else f"{step[k]:g}" for k in key)
    value = step[key]
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"## consentd bench {result['created_at']}"
        f" ({m['cores']} cores, {m['memory_gb']} GB, {m['asterisk']}, kernel {m['kernel']})",
        "",
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for step in result["steps"]:
        lines.append("| " + " | ".join(_cell(step, k, t) for t, k in COLUMNS) + " |")
    s = result["summary"]
    lines.append("")
    for key in ("with_media", "signalling_only"):
        rates = s[key]["highest_zero_failure_cps"]
        lines.append(
            f"- highest zero-failure rate, {key.replace('_', ' ')}: "
            + ", ".join(f"{p} {'-' if v is None else f'{v:g} cps'}" for p, v in rates.items())
            + f"; consentd/baseline {s[key]['consentd_to_baseline']}"
        )
    if s["generator_limited_steps"]:
        lines.append(f"- generator-limited (not judged): {', '.join(s['generator_limited_steps'])}")
    for name, target in s["targets"].items():
        mark = "met" if target["met"] else "MISSED"
        lines.append(f"- target {name}: {target['target']}; measured {target['measured']} ({mark})")
    return "\n".join(lines)
