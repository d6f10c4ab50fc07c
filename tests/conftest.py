"""Suite-wide guard: under ``make test`` an end-to-end test may not be skipped.

A skipped e2e test hides a broken stack, so with CONSENTD_REQUIRE_E2E=1 the
run fails when no e2e test ran or any of them was skipped.
"""

from __future__ import annotations

import os

import pytest

_e2e_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/e2e/" not in report.nodeid:
        return
    if report.skipped:
        _e2e_outcomes[report.nodeid] = "skipped"
    elif report.when == "call":
        _e2e_outcomes.setdefault(report.nodeid, report.outcome)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CONSENTD_REQUIRE_E2E") != "1":
        return
    skipped = sorted(node for node, outcome in _e2e_outcomes.items() if outcome == "skipped")
    problem = None
    if not _e2e_outcomes:
        problem = "no end-to-end test ran"
    elif skipped:
        problem = f"{len(skipped)} end-to-end test(s) skipped: {', '.join(skipped)}"
    if problem:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"ERROR: {problem} (CONSENTD_REQUIRE_E2E=1)", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
