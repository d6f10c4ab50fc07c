"""Webhooks, the pure part: configuration, the body, its signature, the retry schedule.

consentd POSTs a call's details to the operator's URLs (a help desk: Zammad, OTRS,
osTicket, Zendesk) when the call has ended (``call.ended``) and, for a call that
left a voicemail, once more with the message's location (``voicemail.recorded``).
The body is JSON::

    {"id": "<delivery id>", "type": "call.ended", "occurred_at": "...", "call": {...}}

``id`` is stable per (event, call): the same on every retry and every node, so a
receiver that has seen it can drop a repeat. ``call`` is the call's record as the
incremental export serves it (``consentd/export.py``), with ``recordings`` (host
paths of the kept audio) beside it; ``voicemail.recorded`` adds ``voicemail``.

Headers: ``X-Consentd-Signature: sha256=<hex HMAC-SHA256 of the raw body>`` (the
key is ``CONSENTD_WEBHOOK_SECRET``), ``X-Consentd-Delivery: <id>``,
``X-Consentd-Event: <type>``.

Deliveries come from the ledger's outbox table (migration 0004, filled by the
database itself); ``consentd/webhook_sender.py`` claims, sends and retries them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from consentd.call_details import location, voicemail_left
from consentd.ledger import LedgerEvent
from consentd.settings import Settings, SettingsProblem, env_name

EVENT_TYPES = ("call.ended", "voicemail.recorded")
SIGNATURE_HEADER = "X-Consentd-Signature"
DELIVERY_HEADER = "X-Consentd-Delivery"
EVENT_HEADER = "X-Consentd-Event"
#: The first retry waits this long; each next one twice as long, up to the cap.
FIRST_RETRY_SECONDS = 1.0
MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class WebhookConfig:
    urls: tuple[str, ...]
    secret: bytes = field(repr=False)
    timeout: float = 10.0
    retry_max: float = 300.0
    max_age: float = 259_200.0
    #: Problems worth a line in the log that do not stop the daemon.
    warnings: tuple[str, ...] = ()


def webhook_config(settings: Settings) -> WebhookConfig | None:
    """The webhooks ``settings`` ask for, or None when none are configured.

    Raises SettingsProblem, naming the variable (and never the secret), for a URL
    that is not http(s), a URL listed twice, URLs without a secret or a secret
    without URLs, a short secret, and out-of-range numbers.
    """
    urls_var, secret_var = env_name("webhook_urls"), env_name("webhook_secret")
    urls = tuple(u.strip() for u in settings.webhook_urls.split(",") if u.strip())
    secret = settings.secret_or_none("webhook_secret")
    if not urls and not secret:
        return None
    if not urls:
        raise SettingsProblem(
            f"{secret_var} is set but {urls_var} is not (the comma-separated URLs to POST to)"
        )
    if not secret:
        raise SettingsProblem(
            f"{urls_var} is set but {secret_var} is not"
            f" (set it, or {secret_var}_FILE to a file holding it)"
        )
    if len(secret) < MIN_SECRET_LENGTH:
        raise SettingsProblem(
            f"{secret_var} is too short ({len(secret)} characters; at least"
            f" {MIN_SECRET_LENGTH}, e.g. 48 hex characters from `openssl rand -hex 24`)"
        )
    warnings = []
    for url in urls:
        problem = _url_problem(url)
        if problem:
            raise SettingsProblem(f"{urls_var}: {redact_url(url)!r} {problem}")
        if _plain_http_off_host(url):
            warnings.append(
                f"{redact_url(url)}: plain http to another host; the call details"
                " travel unencrypted (the signature protects them from changes only)"
            )
    seen: set[str] = set()
    for url in urls:
        if url in seen:
            raise SettingsProblem(f"{urls_var}: {redact_url(url)!r} is listed twice")
        seen.add(url)
    _require_range(settings.webhook_timeout, "webhook_timeout", 0.1, 300)
    _require_range(settings.webhook_retry_max_seconds, "webhook_retry_max_seconds", 1, 86_400)
    _require_range(settings.webhook_max_age_seconds, "webhook_max_age_seconds", 60, 31_536_000)
    return WebhookConfig(
        urls=urls,
        secret=secret.encode(),
        timeout=settings.webhook_timeout,
        retry_max=settings.webhook_retry_max_seconds,
        max_age=settings.webhook_max_age_seconds,
        warnings=tuple(warnings),
    )


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "is not an http:// or https:// URL"
    if not parts.hostname:
        return "has no host"
    if any(c.isspace() for c in url):
        return "contains white space"
    return None


def _plain_http_off_host(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname in (None, "localhost"):
        return False
    try:
        return not ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return True  # a name: anywhere


def _require_range(value: float, name: str, low: float, high: float) -> None:
    if not low <= value <= high:
        raise SettingsProblem(f"{env_name(name)} must be from {low:g} to {high:g}, got {value:g}")


def redact_url(url: str) -> str:
    """The URL for a log line: no user information, no query (either may hold a token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<not a URL>"
    query = "..." if parts.query else ""
    return urlunsplit((parts.scheme, host + port, parts.path, query, ""))


def url_fingerprint(url: str) -> str:
    """What the outbox stores of a URL that acknowledged a delivery (never the URL)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- signature, ids, retries


def sign(secret: bytes, body: bytes) -> str:
    """``X-Consentd-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute over the raw body, compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def delivery_id(event_type: str, call_id: str) -> str:
    """The idempotency id of (event, call); the outbox's trigger computes the same in SQL."""
    digest = hashlib.md5(f"consentd-webhook:{event_type}:{call_id}".encode()).hexdigest()
    return str(uuid.UUID(digest))


def retry_delay(attempts: int, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: 1, 2, 4, ... up to ``cap``."""
    if attempts < 1:
        return 0.0
    exponent = min(attempts - 1, 62)  # 2**62 s is past any cap; no float overflow
    return float(min(cap, FIRST_RETRY_SECONDS * 2**exponent))


# ---------------------------------------------------------------- the body


def voicemail_of(events: Sequence[LedgerEvent]) -> dict[str, Any] | None:
    """The call's voicemail message from its ledger rows, or None when it left none
    (``call_details.voicemail_left``: none taken, or none with audio)."""
    ordered = sorted(events, key=lambda e: e.seq)
    left = voicemail_left(ordered)
    if left is None:
        return None
    started, finished = left
    file = started.data.get("file")
    return {
        "file": file,  # as Asterisk names it
        "path": started.data.get("path"),  # on the consentd host
        "location": location(started.node, str(file)) if file else None,  # on the PBX
        "started_at": started.occurred_at.isoformat(),
        "finished_at": finished.occurred_at.isoformat() if finished else None,
        "duration": finished.data.get("duration") if finished else None,
        "state": finished.data.get("state") if finished else None,
    }


def body(
    event_type: str,
    delivery: str,
    occurred_at: datetime,
    record: Mapping[str, Any],
    details: Mapping[str, Any],
    voicemail: Mapping[str, Any] | None = None,
) -> bytes:
    """The POST's raw body; the signature is computed over exactly these bytes."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    payload: dict[str, Any] = {
        "id": delivery,
        "type": event_type,
        "occurred_at": occurred_at.isoformat(),
        "call": {
            **record,
            "recordings": list(details.get("recordings", [])),
            "recording_locations": list(details.get("recording_locations", [])),
        },
    }
    if event_type == "voicemail.recorded":
        payload["voicemail"] = dict(voicemail) if voicemail is not None else None
    return orjson.dumps(payload)


def headers(secret: bytes, event_type: str, delivery: str, raw: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "consentd-webhooks",
        SIGNATURE_HEADER: sign(secret, raw),
        DELIVERY_HEADER: delivery,
        EVENT_HEADER: event_type,
    }
