"""Prometheus metrics that the daemon's parts report into (served at ``/metrics``).

Gauges read from the running daemon when scraped (connections, active calls, ledger
backlog, calls taken on) are ``consentd/http_api.py``'s ``register_gauges``; these are
the ones the parts feed as things happen:

- ``consentd_calls_ended_total{policy, outcome}``: calls that ended, by the number's
  policy and the caller's latest decision (``no_decision`` without one); counted by
  the dispatcher when a call's runner finishes (a call handed to the next start on
  shutdown is counted there, once);
- ``consentd_keypress_to_recording_seconds{change}``: from a deciding key 3 (the
  keypress's time as Asterisk reports it) to the recording change it caused
  (``started``: MixMonitor confirmed; ``stopped``: StopMixMonitor confirmed);
- ``consentd_ledger_write_lag_seconds``: from each ledger event's ``occurred_at`` to
  its row being stored in PostgreSQL (a replayed journal shows the outage's length);
- ``consentd_journal_backlog``: ledger events in the journal not yet stored;
- ``consentd_refused_recordings_not_deleted``: refused audio whose delete failed
  and that is still on the PBX (tried again every ``CONSENTD_DELETE_RETRY_SECONDS``).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consentd.call_flow import Call
from consentd.call_model import Phase
from consentd.export import OUTCOMES
from consentd.policy import Recording

#: Key 3 to MixMonitor: tens of milliseconds on a healthy PBX, seconds when it struggles.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Stored within a batch's linger normally; minutes or hours after a database outage.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
CHANGES = ("started", "stopped")


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.calls_ended = Counter(
            "consentd_calls_ended",
            "Calls that ended, by the number's policy and the caller's consent outcome",
            ("policy", "outcome"),
            registry=registry,
        )
        for policy in Recording:
            for outcome in OUTCOMES:
                self.calls_ended.labels(policy.value, outcome)  # every series from 0
        self.keypress_to_recording = Histogram(
            "consentd_keypress_to_recording_seconds",
            "From a deciding keypress to the recording change it caused",
            ("change",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for change in CHANGES:
            self.keypress_to_recording.labels(change)
        self.ledger_write_lag = Histogram(
            "consentd_ledger_write_lag_seconds",
            "From a ledger event's occurred_at to its row being stored in the database",
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    def watch_journal(self, backlog: Callable[[], int]) -> None:
        """``consentd_journal_backlog``, read from ``backlog`` when scraped."""
        Gauge(
            "consentd_journal_backlog",
            "Ledger events in the on-disk journal not yet stored in the database",
            registry=self._registry,
        ).set_function(lambda: float(backlog()))

    def watch_owed_deletions(self, owed: Callable[[], int]) -> None:
        """``consentd_refused_recordings_not_deleted``: refused audio still on the PBX
        after the last sweep (consentd/owed_deletions.py); anything above 0 is an alert."""
        Gauge(
            "consentd_refused_recordings_not_deleted",
            "Refused recordings whose delete failed and that are still not deleted",
            registry=self._registry,
        ).set_function(lambda: float(owed()))

    def call_finished(self, call: Call) -> None:
        """A call's runner returned: count it if it ended here (not handed on, not failed)."""
        if call.phase is not Phase.ENDED or call.handed_off:
            return
        outcome = call.decision.value if call.decision else "no_decision"
        self.calls_ended.labels(call.facts.policy.recording.value, outcome).inc()

    def recording_changed(self, change: str, seconds: float) -> None:
        self.keypress_to_recording.labels(change).observe(max(0.0, seconds))

    def ledger_stored(self, lag_seconds: float) -> None:
        self.ledger_write_lag.observe(max(0.0, lag_seconds))
