"""The real stack for end-to-end tests: Asterisk 22, PostgreSQL, consentd and SIPp.

Nothing here is faked. The session starts the stack exactly as ``make up``
does, with the test policy file, and stops it at the end whatever happened.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.e2e.harness import (
    POLICIES,
    ROOT,
    SHORT_GREETING_S,
    Stack,
    stack_command,
    write_tone,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The quick bench first: it runs the stack with its own policies, then stops it."""
    items.sort(key=lambda item: item.get_closest_marker("bench") is None)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for tool in ("sipp", "chroot"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make setup`")
    workdir = tmp_path_factory.mktemp("e2e-policies")
    custom = workdir / "custom-opt-in.wav"
    write_tone(custom, 2.0)
    write_tone(workdir / "short.wav", SHORT_GREETING_S, freq=500.0)
    policies = workdir / "policies.yaml"
    policies.write_text(POLICIES)
    try:
        stack_command("up", str(policies))
        yield Stack(root=ROOT, policies=policies, custom_greeting=custom)
    finally:
        stack_command("down")
