"""A second daemon under a node name already in use is refused, with the reason."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.e2e.harness import REPO, Stack, local_stack

pytestmark = pytest.mark.e2e


def test_a_second_daemon_with_the_same_node_name_is_refused(stack: Stack) -> None:
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "consentd"), "run", "--policies", str(stack.policies)],
        env={
            **os.environ,
            **local_stack().daemon_environment(),  # its secrets, as `make up` gives them
            "CONSENTD_HTTP_PORT": "8099",
            "CONSENTD_JOURNAL_DIR": "/tmp/consentd-j2",
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "is in use by another running consentd" in result.stderr
    assert "CONSENTD_NODE" in result.stderr
