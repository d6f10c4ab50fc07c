"""The ``consentd`` command: run the daemon, check a policy file, show call details,
reload the running daemon's policy file."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from consentd.call_details import recent_calls
from consentd.ledger_pg import DatabaseError, PostgresLedger
from consentd.local_stack import LocalStack
from consentd.logs import configure_logging
from consentd.policy import PolicyBook, PolicyError, load_policies
from consentd.runner import utc_now
from consentd.settings import RUN_SECRETS, MissingSecrets, Settings, SettingsProblem


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = args.handler(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consentd", description="Call-recording consent for Asterisk (press 3)."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (settings from CONSENTD_* variables)")
    run.add_argument("--policies", type=Path, help="policy YAML (default: $CONSENTD_POLICIES)")
    run.set_defaults(handler=_run)

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
    greetings.set_defaults(handler=_greetings)

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
    return parser


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
        settings.require(*RUN_SECRETS)
    except SettingsProblem as exc:
        print(f"consentd: not starting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        book = load_policies(settings.policies)
    except PolicyError as exc:
        print(f"consentd: not starting, the policy file has errors:\n{exc}", file=sys.stderr)
        return 2
    from consentd.app import run  # the daemon's imports are not needed for check/calls
    from consentd.ledger_pg import NodeInUse

    try:
        run(settings, book)
    except NodeInUse as exc:
        print(f"consentd: not starting: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        book = load_policies(args.file)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        count = len(exc.problems)
        print(f"{args.file}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
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


def _greetings(args: argparse.Namespace) -> int:
    from consentd.greeting_files import bundled_languages
    from consentd.greeting_listing import GreetingListing

    settings = _settings("greetings")
    if settings is None:
        return 2
    file = args.file or settings.policies
    try:
        book = load_policies(file)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
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
    if args.http:
        host, _, port = args.http.rpartition(":")
        if not host or not port.isdigit():
            print(f"consentd reload: --http must be HOST:PORT, got {args.http!r}", file=sys.stderr)
            return 2
        address = args.http
    else:
        settings = _settings("reload")
        if settings is None:
            return 2
        address = f"{settings.http_host}:{settings.http_port}"
    url = f"http://{address}/reload"
    request = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"consentd reload: the daemon at {address} is not reachable ({reason}); "
            "is it running? (--http HOST:PORT or $CONSENTD_HTTP_PORT point elsewhere)",
            file=sys.stderr,
        )
        return 2
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


def render_table(details: list[dict[str, Any]]) -> str:
    if not details:
        return "no calls recorded yet"
    rows = [[title for title, _ in _COLUMNS]]
    rows += [[str(get(call)) for _, get in _COLUMNS] for call in details]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
