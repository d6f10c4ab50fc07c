"""The parameters of the dashboard's list of recent calls (``GET /api/calls``), checked
as the export checks its own: a bad one is ``BadParameter`` naming it (400)."""

from __future__ import annotations

from consentd.export import MAX_PER_PAGE, OUTCOMES, BadParameter

#: Calls listed when ``limit`` is not given.
DEFAULT_LIMIT = 50


def parse_limit(raw: str | None, default: int = DEFAULT_LIMIT) -> int:
    """``limit`` of the recent calls: an integer 1..1000."""
    if raw is None:
        return default
    text = raw.strip()
    if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_PER_PAGE:
        return int(text)
    raise BadParameter("limit", f"limit must be an integer from 1 to {MAX_PER_PAGE}, got {raw!r}")


def parse_outcome(raw: str | None) -> str | None:
    """``outcome``: a consent outcome of ``OUTCOMES``; missing or empty means any."""
    if raw is None or raw == "":
        return None
    if raw in OUTCOMES:
        return raw
    raise BadParameter("outcome", f"outcome must be one of {', '.join(OUTCOMES)}, got {raw!r}")


def parse_filter(parameter: str, raw: str | None, longest: int = 64) -> str | None:
    """A text filter (``number``, ``agent``): printable, at most ``longest`` characters;
    missing or blank means none."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if len(text) > longest or not text.isprintable():
        raise BadParameter(
            parameter, f"{parameter} must be printable text of at most {longest} characters"
        )
    return text
