"""Prints each fault case's counts at the end of the run, also without ``-s``."""

from __future__ import annotations

import pytest

from tests.faults.load import REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("fault injection: counts per case")
        for line in REPORT:
            terminalreporter.write_line(line)
