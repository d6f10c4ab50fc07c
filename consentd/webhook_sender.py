"""Webhooks, the I/O part: claim due rows of the outbox, POST them, record the outcome.

The outbox (``webhook_outbox``, migration 0004) is filled by a trigger on the ledger,
so a call that ends while this sender, the receiver or the whole daemon is down
is sent later. Each round the sender claims due rows in one short transaction
(``FOR UPDATE SKIP LOCKED``) and pushes their due time out by a lease: another
node's sender skips them meanwhile, and a sender that dies mid-POST leaves them
to be claimed again once the lease runs out. Every POST carries the row's
delivery id, so the rare repeat (a crash between the receiver's 2xx and the
``delivered`` mark) is recognisable. A failed attempt is retried after 1 s, 2 s,
4 s ... up to ``CONSENTD_WEBHOOK_RETRY_MAX_SECONDS``; a row not delivered within
``CONSENTD_WEBHOOK_MAX_AGE_SECONDS`` of the call's end is marked ``expired``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from consentd.ledger import LedgerEvent, LedgerUnavailable
from consentd.ledger_pg import PostgresLedger
from consentd.reports_pg import LedgerReports
from consentd.webhooks import (
    WebhookConfig,
    body,
    headers,
    redact_url,
    retry_delay,
    url_fingerprint,
    voicemail_of,
)

POLL_SECONDS = 1.0
BATCH = 20
#: How often rows past the maximum age are expired in bulk (also at start).
EXPIRE_EVERY_SECONDS = 60.0
#: The longest error text kept in the outbox's ``last_error``.
_ERROR_TEXT = 500


@dataclass(frozen=True)
class OutboxRow:
    id: int
    delivery_id: str
    event_type: str
    call_id: str
    occurred_at: datetime
    created_at: datetime
    attempts: int
    delivered_to: tuple[str, ...]


_CLAIM = (
    "UPDATE webhook_outbox o SET next_attempt_at = now() + make_interval(secs => $2)"
    " WHERE o.id IN (SELECT id FROM webhook_outbox"
    "   WHERE done_at IS NULL AND next_attempt_at <= now()"
    "   ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)"
    " RETURNING o.id, o.delivery_id::text AS delivery_id, o.event_type, o.call_id,"
    "   o.occurred_at, o.created_at, o.attempts, o.delivered_to, now() AS db_now"
)


class Outbox:
    """The outbox table, through the ledger's pool; failures come out as LedgerUnavailable."""

    def __init__(self, store: PostgresLedger) -> None:
        self._store = store

    async def claim(self, limit: int, lease: float) -> tuple[list[OutboxRow], datetime | None]:
        """Up to ``limit`` due rows, leased for ``lease`` seconds; and the database's clock."""
        async with self._store.connection() as conn:
            rows = await conn.fetch(_CLAIM, limit, lease, timeout=10)
        claimed = [
            OutboxRow(
                id=r["id"],
                delivery_id=r["delivery_id"],
                event_type=r["event_type"],
                call_id=r["call_id"],
                occurred_at=r["occurred_at"],
                created_at=r["created_at"],
                attempts=r["attempts"],
                delivered_to=tuple(r["delivered_to"]),
            )
            for r in rows
        ]
        return claimed, (rows[0]["db_now"] if rows else None)

    async def attempted(
        self,
        row: OutboxRow,
        acknowledged: Sequence[str],
        *,
        done: bool,
        error: str | None,
        retry_after: float,
    ) -> None:
        """One attempt's outcome: who acknowledged it, and either done or when to retry."""
        async with self._store.connection() as conn:
            await conn.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1,"
                " last_attempt_at = now(), last_error = $2,"
                " delivered_to = ARRAY(SELECT DISTINCT u FROM unnest(delivered_to || $3::text[]) u"
                "   ORDER BY u),"
                " done_at = CASE WHEN $4 THEN now() END,"
                " outcome = CASE WHEN $4 THEN 'delivered' END,"
                " next_attempt_at = CASE WHEN $4 THEN next_attempt_at"
                "   ELSE now() + make_interval(secs => $5) END"
                " WHERE id = $1 AND done_at IS NULL",
                row.id,
                error,
                list(acknowledged),
                done,
                retry_after,
                timeout=10,
            )

    async def finish(self, row: OutboxRow, outcome: str, reason: str) -> None:
        """Done without a delivery: ``skipped`` (nothing to send) or ``expired`` (too old)."""
        async with self._store.connection() as conn:
            await conn.execute(
                "UPDATE webhook_outbox SET done_at = now(), outcome = $2, last_error = $3"
                " WHERE id = $1 AND done_at IS NULL",
                row.id,
                outcome,
                reason,
                timeout=10,
            )

    async def expire(self, max_age: float) -> int:
        """Mark every undelivered row older than ``max_age`` seconds ``expired``; how many."""
        async with self._store.connection() as conn:
            status = await conn.execute(
                "UPDATE webhook_outbox SET done_at = now(), outcome = 'expired',"
                " last_error = coalesce(last_error || '; ', '')"
                "   || 'older than CONSENTD_WEBHOOK_MAX_AGE_SECONDS'"
                " WHERE done_at IS NULL AND created_at < now() - make_interval(secs => $1)",
                max_age,
                timeout=30,
            )
        return int(status.split()[-1])

    async def release(self, ids: Sequence[int]) -> None:
        """Rows claimed but not attempted (the daemon is stopping): due again now."""
        async with self._store.connection() as conn:
            await conn.execute(
                "UPDATE webhook_outbox SET next_attempt_at = now()"
                " WHERE id = ANY($1::bigint[]) AND done_at IS NULL",
                list(ids),
                timeout=3,
            )


class WebhookSender:
    """Sends the outbox's due rows to every configured URL until cancelled."""

    def __init__(
        self,
        config: WebhookConfig,
        outbox: Outbox,
        reports: LedgerReports,
        *,
        poll: float = POLL_SECONDS,
    ) -> None:
        self._config = config
        self._outbox = outbox
        self._reports = reports
        self._poll = poll
        # Longer than the POSTs of one row can take: no other node claims it meanwhile.
        self._lease = 30.0 + config.timeout * (len(config.urls) + 1)
        self._fingerprints = {url: url_fingerprint(url) for url in config.urls}
        self._in_flight: set[int] = set()
        self._log = structlog.get_logger("consentd.webhooks")
        self.delivered = 0
        self.failed_attempts = 0

    async def run(self) -> None:
        self._log.info(
            "webhooks_started",
            urls=[redact_url(u) for u in self._config.urls],
            retry_max_seconds=self._config.retry_max,
        )
        timeout = aiohttp.ClientTimeout(total=self._config.timeout)
        database_down = False
        expired_at = -EXPIRE_EVERY_SECONDS
        loop = asyncio.get_running_loop()
        # A session of its own: the ARI session carries Asterisk's credentials.
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                while True:
                    try:
                        if loop.time() - expired_at >= EXPIRE_EVERY_SECONDS:
                            expired = await self._outbox.expire(self._config.max_age)
                            expired_at = loop.time()
                            if expired:
                                self._log.warning("webhooks_expired", rows=expired)
                        rows, db_now = await self._outbox.claim(BATCH, self._lease)
                        if database_down:
                            self._log.info("webhooks_database_back")
                            database_down = False
                    except LedgerUnavailable as exc:
                        if not database_down:
                            self._log.warning("webhooks_database_unavailable", error=str(exc))
                            database_down = True
                        await asyncio.sleep(self._poll)
                        continue
                    if not rows:
                        await asyncio.sleep(self._poll)
                        continue
                    self._in_flight.update(r.id for r in rows)
                    now = db_now or datetime.now(tz=UTC)
                    await asyncio.gather(*(self._handle(session, row, now) for row in rows))
            finally:
                await self._release_in_flight()

    async def _release_in_flight(self) -> None:
        if not self._in_flight:
            return
        with contextlib.suppress(LedgerUnavailable, asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._outbox.release(sorted(self._in_flight)), 3)

    async def _handle(self, session: aiohttp.ClientSession, row: OutboxRow, now: datetime) -> None:
        try:
            await self._deliver(session, row, now)
        except LedgerUnavailable as exc:
            # The lease runs out and the row is due again; nothing else to do.
            self._log.warning(
                "webhook_database_unavailable", delivery=row.delivery_id, error=str(exc)
            )
        except Exception:
            # One bad row must not stop the others (nor the daemon).
            self._log.exception("webhook_failed_unexpectedly", delivery=row.delivery_id)
        # Not when cancelled: a row cut short is released when the sender stops.
        self._in_flight.discard(row.id)

    async def _deliver(self, session: aiohttp.ClientSession, row: OutboxRow, now: datetime) -> None:
        log = self._log.bind(delivery=row.delivery_id, type=row.event_type, call_id=row.call_id)
        if (now - row.created_at).total_seconds() > self._config.max_age:
            await self._outbox.finish(row, "expired", "older than CONSENTD_WEBHOOK_MAX_AGE_SECONDS")
            log.warning("webhook_expired", attempts=row.attempts)
            return
        view = await self._reports.call(row.call_id, datetime.now(tz=UTC))
        if view is None:
            await self._failed(row, [], "the call is not in the ledger", log)
            return
        voicemail = None
        if row.event_type == "voicemail.recorded":
            voicemail = voicemail_of([_event(row.call_id, e) for e in view.events])
            if voicemail is None:
                await self._outbox.finish(row, "skipped", "no voicemail message (empty file)")
                log.info("webhook_skipped", reason="empty voicemail")
                return
        raw = body(
            row.event_type, row.delivery_id, row.occurred_at, view.record, view.details, voicemail
        )
        sent_headers = headers(self._config.secret, row.event_type, row.delivery_id, raw)
        pending = [u for u in self._config.urls if self._fingerprints[u] not in row.delivered_to]
        outcomes = await asyncio.gather(
            *(self._post(session, u, raw, sent_headers) for u in pending)
        )
        acknowledged = [
            self._fingerprints[u]
            for u, error in zip(pending, outcomes, strict=True)
            if error is None
        ]
        errors = [error for error in outcomes if error is not None]
        if not errors:
            await self._outbox.attempted(row, acknowledged, done=True, error=None, retry_after=0)
            self.delivered += 1
            log.info("webhook_delivered", attempt=row.attempts + 1, urls=len(pending))
            return
        await self._failed(row, acknowledged, "; ".join(errors), log)

    async def _failed(
        self, row: OutboxRow, acknowledged: Sequence[str], error: str, log: Any
    ) -> None:
        attempts = row.attempts + 1
        delay = retry_delay(attempts, self._config.retry_max)
        await self._outbox.attempted(
            row, acknowledged, done=False, error=error[:_ERROR_TEXT], retry_after=delay
        )
        self.failed_attempts += 1
        log.warning("webhook_attempt_failed", attempt=attempts, error=error, retry_in=delay)

    async def _post(
        self, session: aiohttp.ClientSession, url: str, raw: bytes, sent: dict[str, str]
    ) -> str | None:
        """None when the receiver took it (2xx), else what went wrong (no secret, no URL
        user information or query)."""
        shown = redact_url(url)
        try:
            async with session.post(url, data=raw, headers=sent, allow_redirects=False) as reply:
                await reply.read()
                if 200 <= reply.status < 300:
                    return None
                return f"{shown}: HTTP {reply.status}"
        except TimeoutError:
            return f"{shown}: no answer within {self._config.timeout:g} s"
        except aiohttp.ClientError as exc:
            reason = str(exc).replace(url, shown) or type(exc).__name__
            return f"{shown}: {type(exc).__name__}: {reason}"


def _event(call_id: str, row: dict[str, Any]) -> LedgerEvent:
    """A ledger row as ``LedgerReports.call`` serves it, back as a LedgerEvent."""
    return LedgerEvent(
        event_key="",
        call_id=call_id,
        node=row["node"],
        seq=row["seq"],
        kind=row["kind"],
        occurred_at=datetime.fromisoformat(row["occurred_at"]),
        data=row["data"],
    )
