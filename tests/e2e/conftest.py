"""End-to-end tests run against the real stack (the ``stack`` fixture, tests/conftest.py)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The quick bench first: it runs the stack with its own policies, then stops it."""
    items.sort(key=lambda item: item.get_closest_marker("bench") is None)
