"""The two-node cluster (scripts/cluster.sh): Kamailio in front of two Asterisk
nodes, each with its own consentd, one ledger. Started once for this directory's
tests and stopped after them, beside the dev stack (its own ports)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import POLICIES, REPORT, Cluster, cluster_command


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The cluster's tests after the e2e and fault tests (its load would disturb
    their timing if they shared the machine's cores) and before the container
    suite (tests/containers/conftest.py moves that last; it stops the dev stack)."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/cluster/"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for tool in ("sipp", "kamailio", "kamcmd", "chroot"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make setup`")
    workdir: Path = tmp_path_factory.mktemp("cluster")
    policies = workdir / "policies.yaml"
    policies.write_text(POLICIES)
    try:
        cluster_command("up", str(policies))
        yield Cluster.load(workdir)
    finally:
        cluster_command("down")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("cluster: calls per node and the node stop")
        for line in REPORT:
            terminalreporter.write_line(line)
