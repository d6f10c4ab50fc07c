"""The real stack for end-to-end and fault tests, and the guard that none is skipped.

Nothing in the stack is faked. The session starts it exactly as ``make up``
does, with the test policy file, and stops it at the end whatever happened.
A skipped e2e test hides a broken stack, so with CONSENTD_REQUIRE_E2E=1 the
run fails when no e2e test ran or any of them was skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.harness import (
    POLICIES,
    ROOT,
    Stack,
    stack_command,
    write_test_greetings,
)

_e2e_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.nodeid.startswith(("tests/e2e/", "tests/faults/", "tests/cluster/")):
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


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for tool in ("sipp", "chroot"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make setup`")
    workdir = tmp_path_factory.mktemp("e2e-policies")
    custom = workdir / "custom-opt-in.wav"
    write_test_greetings(workdir)
    policies = workdir / "policies.yaml"
    policies.write_text(POLICIES)
    try:
        stack_command("up", str(policies))
        yield Stack(root=ROOT, policies=policies, custom_greeting=custom)
    finally:
        stack_command("down")
