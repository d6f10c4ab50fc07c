"""End-to-end tests run against the real stack (the ``stack`` fixture, tests/conftest.py)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The quick bench first: it runs the stack with its own policies, then stops it.
    The search of every log for secrets last, when the logs hold the whole run."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("bench") is None,
            item.nodeid.startswith("tests/e2e/test_secrets_in_logs.py"),
        )
    )
