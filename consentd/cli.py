"""The ``consentd`` command: run the daemon, check a policy file, show call details,
reload the running daemon's policy file, and read its reports (export, report agents)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from consentd.call_details import recent_calls
from consentd.export import BadParameter, epoch_seconds, parse_moment
from consentd.ledger_pg import DatabaseError, PostgresLedger
from consentd.local_stack import LocalStack
from consentd.logs import configure_logging
from consentd.openapi import EXPORT_PATHS
from consentd.policy import PolicyBook, PolicyError, load_policies
from consentd.runner import utc_now
from consentd.safe_text import SafeStream, escape_controls
from consentd.settings import RUN_SECRETS, MissingSecrets, Settings, SettingsProblem
from consentd.webhooks import webhook_config

EXPORT_PATH = EXPORT_PATHS[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    if argv is None:
        argv = sys.argv[1:]
    # The daemon's stdout is its log: JSON (ASCII, escaped) or, on a terminal, the
    # console renderer, whose colours must pass (consentd/logs.py escapes the values).
    with _terminal_safe_output(stdout=argv[:1] != ["run"]):
        return _main(parser, argv)


def _main(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = args.handler(args)
    return result


@contextlib.contextmanager
def _terminal_safe_output(*, stdout: bool) -> Iterator[None]:
    """Every line any command prints goes through one filter (consentd/safe_text.py):
    a caller ID, a dialled number, an agent's name, a YAML key or a file name can
    never send a terminal escape or another control character to the operator's screen."""
    out, err = sys.stdout, sys.stderr
    if stdout:
        sys.stdout = SafeStream(out)
    sys.stderr = SafeStream(err)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consentd", description="Call-recording consent for Asterisk (press 3)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (settings from CONSENTD_* variables)")
    run.add_argument("--policies", type=Path, help="policy YAML (default: $CONSENTD_POLICIES)")
    run.set_defaults(handler=_run)

    migrate = sub.add_parser(
        "migrate",
        help="apply the ledger's migrations as the schema's owner "
        "($CONSENTD_MIGRATION_DATABASE_URL; exit 1: failed, 2: not configured)",
    )
    migrate.set_defaults(handler=_migrate)

    check = sub.add_parser("check", help="validate a policy file (and, with --pbx, its queues)")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--pbx",
        action="store_true",
        help="also ask the PBX over AMI ($CONSENTD_AMI_*, else the local stack's "
        ".state/stack.json) whether every group's queue exists",
    )
    check.add_argument("--ami", metavar="HOST:PORT", help="AMI address for --pbx (implies --pbx)")
    check.set_defaults(handler=_check)

    greetings = sub.add_parser(
        "greetings", help="what each number and menu plays, per language, with durations"
    )
    greetings.add_argument(
        "file", type=Path, nargs="?", help="policy YAML (default: $CONSENTD_POLICIES)"
    )
    greetings.add_argument(
        "--sounds",
        type=Path,
        metavar="DIR",
        help="bundled sounds on this host (default: Asterisk's sounds directory under "
        "$CONSENTD_ASTERISK_ROOT if it has them, else this checkout's .cache/sounds)",
    )
    greetings.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="write the operators' greetings into DIR under the names consentd plays "
        "(copy them to Asterisk's sounds directory, consentd-custom/, on a PBX consentd "
        "cannot write to: CONSENTD_INSTALL_GREETINGS=false)",
    )
    greetings.set_defaults(handler=_greetings)

    features = sub.add_parser(
        "features",
        help="the Asterisk feature codes (consentd-features.conf) for the agents' "
        "pause and resume codes in a policy file, for a PBX consentd cannot write to",
    )
    features.add_argument(
        "file", type=Path, nargs="?", help="policy YAML (default: $CONSENTD_POLICIES)"
    )
    features.set_defaults(handler=_features)

    calls = sub.add_parser("calls", help="details of recent calls, newest first")
    calls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    calls.add_argument("--limit", type=_positive_int, default=20, help="how many calls (20)")
    calls.add_argument(
        "--database-url",
        help="default: $CONSENTD_DATABASE_URL (or the file $CONSENTD_DATABASE_URL_FILE), "
        "else the local stack's (.state/stack.json)",
    )
    calls.set_defaults(handler=_calls)

    reload = sub.add_parser(
        "reload",
        help="make the running daemon re-read its policy file (exit 1: refused, 2: unreachable)",
    )
    reload.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="the daemon's HTTP address (default: $CONSENTD_HTTP_HOST:$CONSENTD_HTTP_PORT "
        "or the local stack's 127.0.0.1:8090)",
    )
    reload.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the daemon (30)"
    )
    reload.set_defaults(handler=_reload)

    export = sub.add_parser(
        "export",
        help="calls that ended (or changed after ending) since a time, oldest first, "
        "from the daemon's incremental export",
    )
    export.add_argument(
        "--since",
        required=True,
        metavar="EPOCH|ISO",
        help="epoch seconds or ISO 8601 (a time without a zone is UTC)",
    )
    export.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _daemon_flags(export)
    export.set_defaults(handler=_export)

    report = sub.add_parser("report", help="reports from the daemon")
    report_sub = report.add_subparsers(dest="report", metavar="REPORT", required=True)
    agents = report_sub.add_parser(
        "agents",
        help="per agent: calls answered and placed, recording controls, recorded and "
        "not-recorded seconds, consent outcomes",
    )
    agents.add_argument("--from", dest="start", metavar="EPOCH|ISO", help="(a day before --to)")
    agents.add_argument("--to", dest="end", metavar="EPOCH|ISO", help="(now)")
    agents.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _daemon_flags(agents)
    agents.set_defaults(handler=_report_agents)
    return parser


def _daemon_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="the daemon's HTTP address (default: $CONSENTD_HTTP_HOST:$CONSENTD_HTTP_PORT "
        "or the local stack's 127.0.0.1:8090); the token: $CONSENTD_API_TOKEN[_FILE], "
        "else the local stack's (.state/stack.json)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the daemon (30)"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _settings(command: str, **overrides: Any) -> Settings | None:
    """The settings, or None after one line on stderr saying what is wrong with them."""
    try:
        return Settings(**overrides)
    except SettingsProblem as exc:
        print(f"consentd {command}: {exc}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    overrides = {"policies": args.policies} if args.policies else {}
    try:
        settings = Settings(**overrides)
        settings.require_token_if_exposed()
        settings.require_reachable_recordings()
        settings.require(*RUN_SECRETS)
        webhook_config(settings)
    except SettingsProblem as exc:
        print(f"consentd: not starting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    book = _load_policy_file(settings.policies, "consentd: not starting, ")
    if isinstance(book, int):
        return book
    from consentd.app import run  # the daemon's imports are not needed for check/calls
    from consentd.ledger_pg import NodeInUse, SchemaBehind

    try:
        run(settings, book)
    except (NodeInUse, SchemaBehind) as exc:
        print(f"consentd: not starting: {exc}", file=sys.stderr)
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations with the schema owner's credentials (never the daemon's)."""
    from consentd.ledger_pg import latest_version, migrate_database

    settings = _settings("migrate")
    if settings is None:
        return 2
    try:
        settings.require("migration_database_url")
    except MissingSecrets as exc:
        print(
            f"consentd migrate: {exc}; it is the schema owner's URL, not the daemon's",
            file=sys.stderr,
        )
        return 2
    try:
        applied = asyncio.run(
            migrate_database(
                settings.secret("migration_database_url"),
                settings.secret_or_none("migration_database_password"),
            )
        )
    except DatabaseError as exc:
        print(f"consentd migrate: {exc}", file=sys.stderr)
        return 1
    if applied:
        print(f"applied {', '.join(applied)}; the ledger's schema is at version {latest_version()}")
    else:
        print(f"the ledger's schema is up to date (version {latest_version()})")
    return 0


def _load_policy_file(file: Path, refusing: str = "") -> PolicyBook | int:
    """The policy book, or after every problem on stderr the exit code: 1 when the file
    has errors, 2 when it could not be read (missing, unreadable, too big, not a regular
    file). Never a traceback, whatever the file holds."""
    try:
        return load_policies(file)
    except PolicyError as exc:
        if refusing:
            what = (
                "the policy file cannot be read" if exc.io_error else "the policy file has errors"
            )
            print(f"{refusing}{what}:", file=sys.stderr)
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        if exc.io_error:
            return 2
        count = len(exc.problems)
        print(f"{file}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, never a traceback
        print(f"{file}: cannot be loaded: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _check(args: argparse.Namespace) -> int:
    book = _load_policy_file(args.file)
    if isinstance(book, int):
        return book
    for warning in book.warnings:
        print(f"{warning} (warning)", file=sys.stderr)
    if args.pbx or args.ami:
        return _check_pbx(book, args.ami)
    print(book.summary())
    return 0


def _check_pbx(book: PolicyBook, address: str | None) -> int:
    from consentd.pbx_check import PbxUnreachable, asterisk_queues, missing_queues

    configure_logging("console", "critical")  # the outcome is printed below, not logged
    settings = _settings("check")
    if settings is None:
        return 2
    host, port = settings.ami_host, settings.ami_port
    user, secret = settings.ami_user, settings.secret_or_none("ami_secret")
    if secret is None:
        # No flags against `make up`: the local stack's credentials.
        stack = LocalStack.find()
        if stack is None:
            print(f"consentd check: {MissingSecrets(['ami_secret'])}", file=sys.stderr)
            return 2
        user, secret = stack.ami_user, stack.ami_secret
    if address:
        host, _, port_text = address.rpartition(":")
        if not host or not port_text.isdigit():
            print(f"consentd check: --ami must be HOST:PORT, got {address!r}", file=sys.stderr)
            return 2
        port = int(port_text)
    try:
        known = asyncio.run(asterisk_queues(host, port, user, secret))
    except PbxUnreachable as exc:
        print(f"consentd check: {exc}", file=sys.stderr)
        return 2
    problems = missing_queues(book, known)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{book.summary()}; queues on the PBX at {host}:{port}: OK")
    return 0


def _features(args: argparse.Namespace) -> int:
    from consentd.agent_features import render

    settings = _settings("features")
    if settings is None:
        return 2
    book = _load_policy_file(args.file or settings.policies)
    if isinstance(book, int):
        return book
    print(render(book.config.agent_controls), end="")
    return 0


def _greetings(args: argparse.Namespace) -> int:
    from consentd.greeting_files import bundled_languages
    from consentd.greeting_listing import GreetingListing

    settings = _settings("greetings")
    if settings is None:
        return 2
    book = _load_policy_file(args.file or settings.policies)
    if isinstance(book, int):
        return book
    if args.export is not None:
        from consentd.greetings import CUSTOM_DIR, GreetingLibrary

        try:
            written = GreetingLibrary.export(book, args.export)
        except OSError as exc:
            print(f"consentd greetings: {args.export}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        for path in written:
            print(path)
        print(
            f"{len(written)} greeting file(s); copy them to "
            f"{settings.sounds_dir}/{CUSTOM_DIR}/ on the PBX",
            file=sys.stderr,
        )
        return 0
    sounds = args.sounds
    if sounds is None:
        sounds = settings.asterisk_root / settings.sounds_dir.lstrip("/")
        if not bundled_languages(sounds):
            sounds = Path(__file__).resolve().parents[1] / ".cache" / "sounds"
    listing = GreetingListing(book, sounds)
    print(listing.render())
    missing = listing.missing
    if missing:
        print(f"\n{len(missing)} greeting file(s) missing or unreadable:", file=sys.stderr)
        for path in missing:
            print(f"  {path}", file=sys.stderr)
        return 1
    return 0


def _calls(args: argparse.Namespace) -> int:
    settings = _settings("calls")
    if settings is None:
        return 2
    dsn = args.database_url or settings.secret_or_none("database_url")
    if dsn is None:
        # No flags against `make up`: the local stack's database.
        stack = LocalStack.find()
        if stack is None:
            print(
                f"consentd calls: no database: {MissingSecrets(['database_url'])}, "
                "or pass --database-url",
                file=sys.stderr,
            )
            return 2
        dsn = stack.database_url
    try:
        password = settings.secret_or_none("database_password")
        details = asyncio.run(_fetch_calls(dsn, password, args.limit))
    except DatabaseError as exc:
        print(f"consentd calls: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(details, indent=2))
    else:
        print(render_table(details))
    return 0


def _reload(args: argparse.Namespace) -> int:
    """Exit 0: reloaded; 1: the file was refused (every error printed); 2: no answer."""
    daemon = _Daemon.find("reload", args.http, args.timeout)
    if daemon is None:
        return 2
    answered = daemon.request("POST", "/reload")
    if answered is None:
        return 2
    status, body = answered
    url = daemon.url("/reload")
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if status == 200 and isinstance(answer, dict) and "summary" in answer:
        print(answer["summary"])
        return 0
    if status == 422 and isinstance(answer, dict) and isinstance(answer.get("errors"), list):
        for error in answer["errors"]:
            print(error, file=sys.stderr)
        count = len(answer["errors"])
        print(
            f"consentd reload: {answer.get('file', 'the policy file')}: refused, "
            f"{count} error{'s' if count != 1 else ''}; the daemon keeps its last good policies",
            file=sys.stderr,
        )
        return 1
    print(
        f"consentd reload: unexpected answer from {url}: HTTP {status} "
        f"{body[:200].decode(errors='replace')}",
        file=sys.stderr,
    )
    return 2


class _Daemon:
    """The running daemon's HTTP API, with its token (``consentd reload``, ``export``, ...)."""

    def __init__(self, command: str, address: str, token: str, timeout: float) -> None:
        self.command, self.address, self.token, self.timeout = command, address, token, timeout

    @classmethod
    def find(cls, command: str, http: str | None, timeout: float) -> _Daemon | None:
        """The address (--http, else the settings) and the token (the settings, else the
        local stack's); None after one line on stderr saying what is missing."""
        if http:
            host, _, port = http.rpartition(":")
            if not host or not port.isdigit():
                print(
                    f"consentd {command}: --http must be HOST:PORT, got {http!r}", file=sys.stderr
                )
                return None
        settings = _settings(command)
        if settings is None:
            return None
        address = http or f"{settings.http_host}:{settings.http_port}"
        token = settings.secret_or_none("api_token")
        if token is None:
            stack = LocalStack.find()
            if stack is None:
                print(
                    f"consentd {command}: no API token: {MissingSecrets(['api_token'])}",
                    file=sys.stderr,
                )
                return None
            token = stack.api_token
        return cls(command, address, token, timeout)

    def url(self, path: str) -> str:
        return f"http://{self.address}{path}"

    def request(self, method: str, path: str) -> tuple[int, bytes] | None:
        """(status, body), or None after one line on stderr: unreachable, or the token refused."""
        request = urllib.request.Request(
            self.url(path),
            method=method,
            data=b"" if method == "POST" else None,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            print(
                f"consentd {self.command}: the daemon at {self.address} is not reachable "
                f"({reason}); is it running? (--http HOST:PORT or $CONSENTD_HTTP_PORT point "
                "elsewhere)",
                file=sys.stderr,
            )
            return None
        if status == 401:
            print(
                f"consentd {self.command}: the daemon refused the API token (HTTP 401); "
                "CONSENTD_API_TOKEN[_FILE] must hold the daemon's token",
                file=sys.stderr,
            )
            return None
        return status, body

    def get_json(self, path: str) -> tuple[int, Any]:
        """(0, the JSON of a 200 answer), or after one line on stderr (2, None) when the
        daemon is unreachable or refused the token, (1, None) when it refused the request."""
        answered = self.request("GET", path)
        if answered is None:
            return 2, None
        status, body = answered
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if status == 200 and answer is not None:
            return 0, answer
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            print(f"consentd {self.command}: {answer['error'].get('message')}", file=sys.stderr)
        else:
            print(
                f"consentd {self.command}: unexpected answer from {self.url(path)}: HTTP {status} "
                f"{body[:200].decode(errors='replace')}",
                file=sys.stderr,
            )
        return 1, None


def _moment_arg(command: str, flag: str, text: str | None) -> int | bool | None:
    """Epoch seconds of an EPOCH|ISO argument; None when not given; False after an error."""
    if text is None:
        return None
    try:
        return epoch_seconds(parse_moment(flag, text))
    except BadParameter:
        print(
            f"consentd {command}: --{flag} must be epoch seconds or ISO 8601, got {text!r}",
            file=sys.stderr,
        )
        return False


#: Pages the CLI reads before it stops (a runaway guard: 1000 pages of up to 1000 calls).
_MAX_PAGES = 1000


def _export(args: argparse.Namespace) -> int:
    """Every call from the export since --since, paging until the end of the stream."""
    since = _moment_arg("export", "since", args.since)
    if since is None or since is False:
        return 2
    daemon = _Daemon.find("export", args.http, args.timeout)
    if daemon is None:
        return 2
    calls: list[dict[str, Any]] = []
    start = int(since)
    for _ in range(_MAX_PAGES):
        query = urllib.parse.urlencode({"start_time": max(0, start), "per_page": 1000})
        failed, page = daemon.get_json(f"{EXPORT_PATH}?{query}")
        if failed:
            return failed
        calls.extend(page["calls"])
        start = page["end_time"]
        if page["end_of_stream"]:
            break
    if args.json:
        print(json.dumps({"calls": calls, "count": len(calls), "end_time": start}, indent=2))
    else:
        print(_table(_EXPORT_COLUMNS, calls, "no calls in the export"))
    return 0


def _report_agents(args: argparse.Namespace) -> int:
    start = _moment_arg("report agents", "from", args.start)
    end = _moment_arg("report agents", "to", args.end)
    if start is False or end is False:
        return 2
    daemon = _Daemon.find("report agents", args.http, args.timeout)
    if daemon is None:
        return 2
    params = {k: str(v) for k, v in (("from", start), ("to", end)) if v is not None}
    failed, report = daemon.get_json("/api/reports/agents?" + urllib.parse.urlencode(params))
    if failed:
        return failed
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"agents, calls started from {report['from']} to {report['to']}")
        print(_table(_AGENT_COLUMNS, report["agents"], "no agent took part in a call"))
    return 0


async def _fetch_calls(dsn: str, password: str | None, limit: int) -> list[dict[str, Any]]:
    store = PostgresLedger(dsn, password)
    try:
        await store.connect()
        return await recent_calls(store, limit, utc_now())
    finally:
        await store.close()


_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("started", lambda c: (c["started_at"] or "")[:19].replace("T", " ")),
    ("number", lambda c: c["phone_number"]),
    ("caller", lambda c: c["caller"]),
    (
        "consent",
        lambda c: (
            c["call_recording_consent"]
            or ("consentd unavailable" if c.get("consentd_unavailable") else "-")
        ),
    ),
    ("action", lambda c: c["call_recording_consent_action"] or "-"),
    ("key", lambda c: c["call_recording_consent_keypress"] or "-"),
    ("rec s", lambda c: str(c["recording_time"])),
    ("not rec s", lambda c: str(c["not_recording_time"])),
    ("agent", lambda c: c.get("agent") or ("voicemail" if c.get("voicemail") else "-")),
    ("recordings", lambda c: ", ".join(Path(p).name for p in c["recordings"]) or "-"),
    ("id", lambda c: c["id"]),
)


_EXPORT_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("id", lambda c: str(c["id"])),
    ("updated", lambda c: c["updated_at"]),
    ("number", lambda c: c["phone_number"] or "-"),
    ("caller", lambda c: c["caller"] or "-"),
    ("consent", lambda c: c["call_recording_consent"] or "-"),
    ("action", lambda c: c["call_recording_consent_action"] or "-"),
    ("rec s", lambda c: str(c["recording_time"])),
    ("not rec s", lambda c: str(c["not_recording_time"])),
    ("status", lambda c: c["completion_status"] or "-"),
    ("agent", lambda c: c["agent_name"] or "-"),
    ("call id", lambda c: c["call_id"]),
)

_AGENT_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("agent", lambda a: a["agent"]),
    ("answered", lambda a: str(a["calls_answered"])),
    ("placed", lambda a: str(a["calls_placed"])),
    ("controls", lambda a: str(a["recording_control_interactions"])),
    ("rec s", lambda a: str(a["recording_time"])),
    ("not rec s", lambda a: str(a["not_recording_time"])),
    ("opted in", lambda a: str(a["consent_outcomes"]["caller_opted_in"])),
    ("opted out", lambda a: str(a["consent_outcomes"]["caller_opted_out"])),
    ("withdrew", lambda a: str(a["consent_outcomes"]["caller_withdrew"])),
    ("notice failed", lambda a: str(a["consent_outcomes"].get("notice_failed", 0))),
    ("no decision", lambda a: str(a["consent_outcomes"]["no_decision"])),
)


def render_table(details: list[dict[str, Any]]) -> str:
    return _table(_COLUMNS, details, "no calls recorded yet")


def _table(
    columns: Sequence[tuple[str, Callable[[dict[str, Any]], str]]],
    items: list[dict[str, Any]],
    empty: str,
) -> str:
    if not items:
        return empty
    rows = [[title for title, _ in columns]]
    # Each cell on one line and free of terminal escapes (a newline is escaped too).
    rows += [[escape_controls(str(get(item))) for _, get in columns] for item in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
