"""Start-up and shutdown of the daemon: the one place where dependencies are wired.

Long-lived tasks (ARI events, AMI connection, ledger writer, fallback log reader, one task per
call) run under one TaskGroup. On SIGTERM the daemon stops taking events,
gives calls in progress a grace period, stores (or journals) every ledger
event, and exits. Calls still up afterwards are adopted by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from typing import Any

import aiohttp
import structlog
import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry

from consentd.agent_features import FeatureCodes
from consentd.ami import AmiClient, Recorder
from consentd.ari import AriClient
from consentd.call_details import recent_calls
from consentd.dispatcher import Dispatcher, NodeConfig
from consentd.fallback_calls import FallbackReconciler
from consentd.greetings import CUSTOM_DIR, GreetingLibrary
from consentd.http_api import Health, init_app, register_gauges
from consentd.http_reports import add_routes as add_report_routes
from consentd.journal import Journal
from consentd.ledger import LedgerWriter
from consentd.ledger_pg import DatabaseError, PostgresLedger, SchemaBehind
from consentd.loop_health import LoopHealth
from consentd.metrics import Metrics
from consentd.owed_deletions import OwedDeletionSweeper
from consentd.policy import PolicyBook
from consentd.recording_store import AriStore, FileStore, RecordingStore
from consentd.reload import PolicyReloader
from consentd.reports_pg import LedgerReports
from consentd.runner import Ports, utc_now
from consentd.settings import RUN_SECRETS, Settings
from consentd.webhook_sender import Outbox, WebhookSender
from consentd.webhooks import webhook_config


async def run_daemon(settings: Settings, book: PolicyBook, *, shutdown_grace: float = 5.0) -> None:
    log = structlog.get_logger("consentd")
    settings.require(*RUN_SECRETS)
    webhooks = webhook_config(settings)  # checked by `consentd run` before
    store = PostgresLedger(
        settings.secret("database_url"), settings.secret_or_none("database_password")
    )
    try:
        await store.connect()
        await store.claim_node(settings.node)  # first: a refused daemon touches nothing
    except SchemaBehind:
        raise  # not a database that is away: `consentd migrate` was not run
    except DatabaseError as exc:
        log.warning("database_unavailable_at_start", error=str(exc), action="journalling")
    greetings = install_greetings(settings, book)
    journal = Journal(settings.journal_dir / f"{settings.node}.jsonl")
    registry = CollectorRegistry()
    loop_health = LoopHealth(registry)
    metrics = Metrics(registry)
    writer = LedgerWriter(store, journal, observe_lag=metrics.ledger_stored)
    metrics.watch_journal(lambda: writer.journal_backlog)
    ami = AmiClient(
        settings.ami_host,
        settings.ami_port,
        settings.ami_user,
        settings.secret("ami_secret"),
        action_timeout=settings.ami_timeout,
        # app_queue (QueueCallerJoin, AgentConnect, ...), DTMFEnd (a second
        # source of keypresses while the ARI websocket is down) and UserEvent
        # (agents' pause and resume codes).
        events="agent,dtmf,user",
    )
    # Sessions for MixMonitor actions only: no events, so nothing is handled twice.
    action_sessions = [
        AmiClient(
            settings.ami_host,
            settings.ami_port,
            settings.ami_user,
            settings.secret("ami_secret"),
            action_timeout=settings.ami_timeout,
            session=f"actions-{n}",
        )
        for n in range(1, settings.ami_connections)
    ]
    config_dir = settings.asterisk_config_dir.strip()
    feature_codes = FeatureCodes(
        settings.asterisk_root / config_dir.lstrip("/") if config_dir else None, ami
    )
    if not config_dir:
        log.info(
            "agent_controls_not_installed",
            reason="CONSENTD_ASTERISK_CONFIG_DIR is empty",
            action="install the output of `consentd features POLICY_FILE` as "
            "consentd-features.conf on the PBX and reload its features after each change",
        )
    feature_codes.apply(book.config.agent_controls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # The credentials as one prepared header: encoding them per request showed in profiles.
    basic = aiohttp.BasicAuth(settings.ari_user, settings.secret("ari_password"))
    auth = {"Authorization": basic.encode()}
    # A bounded pool: Asterisk's HTTP server serves 100 sessions by default, and
    # a client holding all of them locks out every other ARI user.
    connector = aiohttp.TCPConnector(limit=settings.ari_connections)
    async with (
        aiohttp.ClientSession(headers=auth, connector=connector) as session,
        asyncio.TaskGroup() as tg,
    ):
        ari = AriClient(session, settings.ari_url, settings.ari_app)
        recordings: RecordingStore = (
            AriStore(ari)
            if settings.recording_store == "ari"
            else FileStore(settings.asterisk_root)
        )
        if isinstance(recordings, FileStore):
            local = recordings.host_path(settings.recording_dir)
            if not local.is_dir():
                log.error(
                    "recording_dir_unreachable",
                    path=str(local),
                    consequence="refused audio cannot be deleted from here",
                    action="share Asterisk's disk (CONSENTD_ASTERISK_ROOT) or set "
                    "CONSENTD_RECORDING_STORE=ari",
                )
        ports = Ports(
            ari=ari,
            recorder=Recorder(ami, action_sessions),
            ledger=writer,
            recordings=recordings,
            recording_changed=metrics.recording_changed,
        )
        config = NodeConfig(
            node=settings.node,
            app=settings.ari_app,
            recording_dir=settings.recording_dir,
            asterisk_root=str(settings.asterisk_root),
            boot_id=uuid.uuid4().hex[:8],
            shed_after=settings.shed_after_seconds,
            max_calls=settings.max_calls,
        )
        call_tasks: set[asyncio.Task[Any]] = set()

        def spawn(coro: Any, name: str) -> asyncio.Task[Any]:
            task = tg.create_task(coro, name=name)
            call_tasks.add(task)
            task.add_done_callback(call_tasks.discard)
            return task

        dispatcher = Dispatcher(
            config, book, greetings, ports, spawn, call_finished=metrics.call_finished
        )
        ami.on_event(dispatcher.handle_ami)
        ami.on_connect(dispatcher.ami_connected)

        def reload_features() -> None:
            spawn(feature_codes.reload_asterisk(), "features-reload")

        ami.on_connect(reload_features)

        def apply_policies(new: PolicyBook, greetings: GreetingLibrary) -> None:
            dispatcher.replace_policies(new, greetings)
            if feature_codes.apply(new.config.agent_controls):
                reload_features()

        # Live reload (consentd reload, SIGHUP): new calls get the new file's policies.
        reloader = PolicyReloader(
            book,
            install=lambda b: install_greetings(settings, b),
            apply=apply_policies,
            submit=writer.submit,
            clock=utc_now,
            node=settings.node,
            boot_id=config.boot_id,
        )
        loop.add_signal_handler(
            signal.SIGHUP, lambda: tg.create_task(reloader.reload("sighup"), name="reload")
        )

        def health() -> Health:
            return Health(
                ari=ari.connected,
                ami=ami.connected.is_set(),
                database=writer.store_reachable,
                active_calls=len(dispatcher.calls),
                ledger_backlog=writer.backlog,
                calls_started=dispatcher.calls_started,
                calls_unserved=dispatcher.calls_unserved,
                ledger_full=writer.full,
            )

        register_gauges(registry, health)
        api = init_app(
            health,
            registry,
            lambda limit: recent_calls(store, limit, utc_now()),
            reload=lambda: reloader.reload("http"),
            control=dispatcher.control,
            api_token=settings.secret("api_token"),
        )
        reports = LedgerReports(store)
        add_report_routes(api, reports, clock=utc_now)
        http = web.AppRunner(api)
        await http.setup()
        await web.TCPSite(http, settings.http_host, settings.http_port).start()

        ami_task = tg.create_task(ami.run(), name="ami")
        action_tasks = [
            tg.create_task(session.run(), name=f"ami-actions-{n}")
            for n, session in enumerate(action_sessions, start=1)
        ]
        writer_task = tg.create_task(writer.run(), name="ledger-writer")
        events_task = tg.create_task(_consume(ari, dispatcher), name="ari-events")
        # Calls the dialplan handled while no consentd was connected, into the ledger.
        fallback_task = None
        if settings.fallback_log.strip():
            fallback = FallbackReconciler(
                settings.asterisk_root / settings.fallback_log.strip().lstrip("/"),
                settings.node,
                writer.submit,
                interval=settings.fallback_poll_seconds,
            )
            fallback_task = tg.create_task(fallback.run(), name="fallback-calls")
        else:
            log.info(
                "fallback_log_not_read",
                reason="CONSENTD_FALLBACK_LOG is empty",
                consequence="calls the dialplan carries while consentd is away are not in "
                "the ledger; Asterisk's log consentd-fallback.log on the PBX keeps them",
            )
        # Webhooks from the ledger's outbox; none configured, nothing runs.
        webhook_task = None
        if webhooks is not None:
            for problem in webhooks.warnings:
                log.warning("webhook_warning", problem=problem)
            sender = WebhookSender(webhooks, Outbox(store), reports)
            webhook_task = tg.create_task(sender.run(), name="webhooks")
        # Refused audio whose delete failed during its call, deleted once the store is back.
        sweeper = OwedDeletionSweeper(
            settings.node,
            writer,
            recordings,
            utc_now,
            running=dispatcher.running,
            interval=settings.delete_retry_seconds,
        )
        metrics.watch_owed_deletions(lambda: sweeper.owed)
        sweeper_task = tg.create_task(sweeper.run(), name="owed-deletions")
        log.info(
            "consentd_started",
            node=settings.node,
            policies=str(book.file),
            numbers=len(book.config.numbers),
            http=f"{settings.http_host}:{settings.http_port}",
            recording_store=recordings.kind,
            recording_dir=settings.recording_dir,
        )
        for warning in book.warnings:
            log.warning("policy_warning", problem=str(warning))
        # Start-up is done: what it made lives as long as the process.
        loop_health.watch_gc(freeze=settings.gc_freeze)
        probe_task = tg.create_task(loop_health.probe(), name="loop-health")
        await stop.wait()

        # New calls go on unrecorded from now; events keep flowing, so calls in
        # progress can finish. Those still up after the grace period finish the
        # event at hand, write call_handed_off and stay in Asterisk: the next
        # start adopts them from the ledger. Nothing is cancelled mid-command.
        log.info("consentd_stopping", active_calls=len(dispatcher.calls))
        dispatcher.draining = True
        if call_tasks:
            await asyncio.wait(set(call_tasks), timeout=shutdown_grace)
        dispatcher.hand_off_all()
        if call_tasks:
            await asyncio.wait(set(call_tasks), timeout=shutdown_grace)
        events_task.cancel()
        sweeper_task.cancel()  # what it owes is in the ledger for the next start
        if fallback_task is not None:
            fallback_task.cancel()  # what it submitted is in the writer's queue, stored below
        if webhook_task is not None:
            webhook_task.cancel()  # unsent rows stay in the outbox for the next start
        for task in list(call_tasks):
            task.cancel()
        await writer.close()
        await writer_task
        ami_task.cancel()
        for task in action_tasks:
            task.cancel()
        probe_task.cancel()
        loop_health.unwatch_gc()
        await http.cleanup()
    await store.close()
    log.info("consentd_stopped", stored=writer.stored, journalled=writer.journalled)


def install_greetings(settings: Settings, book: PolicyBook) -> GreetingLibrary:
    """The operators' greetings where Asterisk plays them; with CONSENTD_INSTALL_GREETINGS
    false consentd copies nothing and names the sounds Asterisk must hold already."""
    library = GreetingLibrary.install(
        book, settings.sounds_dir, settings.asterisk_root, copy=settings.install_greetings
    )
    if not settings.install_greetings and library.uris():
        structlog.get_logger("consentd").info(
            "greetings_not_installed",
            reason="CONSENTD_INSTALL_GREETINGS is false",
            expected_on_asterisk=library.uris(),
            action="copy the files `consentd greetings POLICY_FILE --export DIR` writes to "
            f"{settings.sounds_dir}/{CUSTOM_DIR}/ on the PBX",
        )
    return library


async def _consume(ari: AriClient, dispatcher: Dispatcher) -> None:
    log = structlog.get_logger("consentd.ari")
    async for event in ari.events():
        try:
            await dispatcher.handle(event)
        except Exception:
            # One malformed event must not take every other call down with it.
            log.exception("event_handling_failed", event_type=event.get("type"))


def run(settings: Settings, book: PolicyBook) -> None:
    # uvloop: the same asyncio API on libuv, with a cheaper loop per event and socket.
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(run_daemon(settings, book))
