"""Hostile callers over real SIP (issue 11, point 6; and point 3, loopback only).

SIPp (sipp-scenarios/hostile-caller.xml) sends caller IDs and dialled numbers
no phone would: terminal escapes (screen clear, window title, clipboard),
bell and NUL, 1,000 characters, Unicode with a right-to-left override, quotes
and SQL, and numbers with ``/`` and ``..`` (the dialplan's ``_X.`` takes
anything after the first digit). All calls run at once. Afterwards:

- each call was handled per its number's policy (recorded or not);
- its ledger row holds the cleaned value: control characters escaped, at
  most 64 characters (consentd/safe_text.py);
- ``consentd calls`` (table and JSON) and the HTTP API (``/calls``,
  ``/api/calls/{id}``, the CSV export) show it with no control character;
- consentd's log holds no raw control character, Asterisk's log no escape;
- no file was created outside the recording directory, and no path holds
  the dialled number's ``../`` target;
- meanwhile every socket of Asterisk, PostgreSQL and consentd (SIP, RTP,
  ARI, AMI, the ledger, the HTTP API) is bound to loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consentd.fallback_calls import parse_line
from consentd.safe_text import NETWORK_TEXT_LIMIT, clean_network_text
from consentd.sipp import CallPlan, _run_sipp, speech_pcap
from tests.e2e.harness import REPO, ROOT, Stack, consentd_calls, ledger_rows, local_stack

pytestmark = pytest.mark.e2e

SCENARIO = REPO / "sipp-scenarios" / "hostile-caller.xml"
CONSENTD = str(REPO / ".venv" / "bin" / "consentd")
STATE = REPO / ".state"
RECORDING_DIR = ROOT / "var" / "spool" / "asterisk" / "monitor"
#: In the dialled number's ../ target: no path anywhere may come to hold it.
MARK = f"consentd-hostile-{os.getpid()}"
TALK_MS = 3000
SQL = "'; DROP TABLE call_events;--"
#: Asterisk's buffers for extensions and caller ID numbers (AST_MAX_EXTENSION,
#: AST_CHANNEL_NAME): 80 bytes with the NUL. Counted in characters here: all ASCII.
ASTERISK_LIMIT = 79
#: Asterisk's RTP ports (asterisk-conf/rtp.conf).
RTP_PORTS = (20000, 40000)


@dataclass(frozen=True)
class Hostile:
    name: str
    #: As sent: the Request-URI's user part and the From URI's, with %XX escapes.
    did: str
    user: str
    display: str
    recording: str  # the policy the number has: always, never (+4930100004), or the default
    #: Whether the test knows what Asterisk makes of the caller ID (not of invalid UTF-8).
    caller_known: bool = True

    @property
    def did_sent(self) -> str:
        """What Asterisk hands on: pjsip decodes %XX in user parts, C strings end at a
        NUL, extensions at 79 characters."""
        return urllib.parse.unquote(self.did).split("\x00")[0][:ASTERISK_LIMIT]

    @property
    def caller_sent(self) -> str:
        """Likewise, and res_pjsip cuts a caller ID number at its first ';'."""
        decoded = urllib.parse.unquote(self.user).split("\x00")[0]
        return decoded.split(";")[0][:ASTERISK_LIMIT]

    @property
    def did_kept(self) -> str:
        return clean_network_text(self.did_sent)

    @property
    def caller_kept(self) -> str:
        return clean_network_text(self.caller_sent)


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="+")


CASES = [
    Hostile(
        "terminal_escapes_on_a_recorded_number",
        did="+4930100001",
        user=_q("+49151\x1b[2J\x07\x7f\x9b31m\x1b]0;owned\x07\x00tail"),
        display="\x1b[2J\x1b]0;owned\x07 Mallory",
        recording="always",
    ),
    Hostile(
        "a_thousand_characters",
        did="+4930100004",
        user="4" * 700 + _q("\u00e9" * 150 + "\x1b" * 150),
        display="M" * 1000,
        recording="never",
    ),
    Hostile(
        "unicode_quotes_and_sql",
        did="+4930100004",
        user=_q(f'+49\u202e\u200b\U0001f600"<img src=x onerror=alert(1)>{SQL}'),
        display=f'Zo\u00eb \\"O\'Brien\\" {SQL}',
        recording="never",
    ),
    Hostile(
        "invalid_utf8",
        did="19990001",
        user="+49%ff%fe%c3%28",
        display="utf8",
        recording="default",
        caller_known=False,
    ),
    Hostile(
        "a_path_as_the_dialled_number",
        did=f"1/../../../../../tmp/{MARK}",
        user="+4915100000901",
        display="path",
        recording="default",
    ),
    Hostile(
        "escapes_in_the_dialled_number",
        did=_q("1\x1b[2J\x1b]0;owned\x07\n\r\x00/.."),
        user="+4915100000902",
        display="escape",
        recording="default",
    ),
    Hostile(
        "unicode_sql_and_length_in_the_dialled_number",
        did=_q(f"1\u202e\U0001f600(a),{SQL}" + "9" * 300),
        user="+4915100000903",
        display="long",
        recording="default",
    ),
]


async def _place(case: Hostile, n: int) -> tuple[int, str]:
    media = speech_pcap(CallPlan(did=case.did, caller="x", talk_ms=TALK_MS, speak=True))
    args = [
        "sipp", local_stack().sip, "-sf", str(SCENARIO), "-s", case.did, "-m", "1",
        "-i", "127.0.0.1", "-p", str(5300 + n), "-mp", str(17000 + 10 * n),
        "-nostdin", "-timeout", "30s", "-timeout_error",
        "-set", "user", case.user, "-set", "name", case.display,
        "-set", "talk", str(TALK_MS), "-key", "media", str(media),
    ]  # fmt: skip
    return await _run_sipp(args, 40)


def _sockets(pids: set[int]) -> list[tuple[str, str]]:
    """Local address and owner of every listening or unconnected socket of ``pids``."""
    listing = subprocess.run(
        ["ss", "-H", "-a", "-n", "-p", "-t", "-u"], capture_output=True, text=True, check=True
    ).stdout
    found = []
    for line in listing.splitlines():
        fields = line.split()
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids and fields[1] in ("LISTEN", "UNCONN"):
            found.append((fields[4], line))
    return found


def _stack_pids() -> set[int]:
    pids = {int((STATE / "run" / "consentd.pid").read_text())}
    pids.add(int((STATE / "pg" / "postmaster.pid").read_text().split()[0]))
    pids.update(int(p) for p in subprocess.run(
        ["pgrep", "-x", "asterisk"], capture_output=True, text=True
    ).stdout.split() if _root_of(int(p)) == ROOT.resolve())  # fmt: skip
    return pids


def _root_of(pid: int) -> Path | None:
    """The stack's Asterisk runs chrooted in ROOT; the cluster's nodes (scripts/cluster.sh)
    and other checkouts' stacks have other roots, and their sockets are not this stack's."""
    try:
        return Path(os.readlink(f"/proc/{pid}/root"))
    except OSError:
        return None


def _files_since(root: Path, since: float, skip: tuple[str, ...] = ()) -> set[Path]:
    found = set()
    for directory, dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(rel, d)) not in skip]
        for name in files:
            path = Path(directory, name)
            try:
                if path.lstat().st_mtime >= since:
                    found.add(path)
            except FileNotFoundError:
                continue
    return found


def _raw_controls(text: str, allowed: str = "\n") -> list[str]:
    return sorted({ch for ch in text if not (ch.isprintable() or ch in allowed)})


def _http(path: str) -> bytes:
    stack = local_stack()
    request = urllib.request.Request(
        stack.http + path, headers={"Authorization": f"Bearer {stack.api_token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        body: bytes = answer.read()
        return body


def _find(case: Hostile, calls: list[dict[str, Any]]) -> dict[str, Any]:
    for call in calls:
        if call["phone_number"] == case.did_kept and (
            call["caller"] == case.caller_kept or not case.caller_known
        ):
            return call
    return {}


@dataclass
class Run:
    results: dict[str, tuple[int, str]]
    details: dict[str, dict[str, Any]]
    started: float
    sockets: list[tuple[str, str]]


@pytest.fixture(scope="module")
def run(stack: Stack) -> Iterator[Run]:
    started_at = datetime.now(UTC)
    started = time.time() - 1  # file times have a coarser clock

    async def place_all() -> tuple[list[tuple[int, str]], list[tuple[str, str]]]:
        calls = asyncio.gather(*(_place(case, n) for n, case in enumerate(CASES)))
        await asyncio.sleep(TALK_MS / 2000)  # mid-call: RTP sockets are open
        sockets = _sockets(_stack_pids())
        return await calls, sockets

    outcomes, sockets = asyncio.run(place_all())
    details: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        calls = [c for c in consentd_calls(limit=50, since=started_at) if c["ended_at"]]
        details = {case.name: _find(case, calls) for case in CASES}
        if all(details.values()):
            break
        time.sleep(0.5)
    yield Run(dict(zip([c.name for c in CASES], outcomes, strict=True)), details, started, sockets)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_call_is_handled_per_policy_and_the_ledger_holds_the_cleaned_values(
    run: Run, case: Hostile
) -> None:
    code, output = run.results[case.name]
    assert code == 0, f"SIPp failed ({code}):\n{output[-2000:]}"
    details = run.details[case.name]
    assert details, (
        f"no call with number {case.did_kept!r} and caller {case.caller_kept!r}; "
        f"seen: {[(c['phone_number'], c['caller']) for c in consentd_calls(limit=20)]}"
    )
    started = ledger_rows(details["id"])[0]
    assert started["kind"] == "call_started"
    data = started["data"]
    assert data["did"] == case.did_kept
    if case.caller_known:
        assert data["caller"] == case.caller_kept
    for value in (data["did"], data["caller"]):
        assert value.isprintable() and len(value) <= NETWORK_TEXT_LIMIT

    policy = "never" if case.recording == "default" else case.recording
    assert data["policy"] == policy
    assert data["policy_source"] == ("default" if case.recording == "default" else "number")
    assert details["call_recording_consent"] == policy
    if policy == "always":
        assert len(details["recordings"]) == 1
        file = Path(details["recordings"][0])
        assert file.parent == RECORDING_DIR
        assert file.stat().st_size > 10_000  # three seconds of audio
    else:
        assert details["recordings"] == []


def test_the_long_values_were_cut_and_the_escapes_are_visible(run: Run) -> None:
    by_name = {c.name: c for c in CASES}
    assert len(urllib.parse.unquote(by_name["a_thousand_characters"].user)) == 1000
    assert run.details["a_thousand_characters"]["caller"] == "4" * 63 + "\u2026"
    escapes = run.details["terminal_escapes_on_a_recorded_number"]["caller"]
    assert escapes == "+49151\\u001b[2J\\u0007\\u007f\\u009b31m\\u001b]0"
    assert run.details["a_path_as_the_dialled_number"]["phone_number"] == (
        f"1/../../../../../tmp/{MARK}"
    )


def test_consentd_calls_shows_them_without_control_characters(run: Run) -> None:
    table = subprocess.run(
        [CONSENTD, "calls", "--limit", "50"], capture_output=True, text=True, check=True
    ).stdout
    as_json = subprocess.run(
        [CONSENTD, "calls", "--json", "--limit", "50"], capture_output=True, text=True, check=True
    ).stdout

    assert _raw_controls(table) == [] and _raw_controls(as_json) == []
    for details in run.details.values():
        assert details["id"] in table
    assert "\\u001b[2J" in table


def test_the_http_api_shows_them_without_control_characters(run: Run) -> None:
    answers = [_http("/calls?limit=50")]
    for details in run.details.values():
        answers.append(_http(f"/api/calls/{urllib.parse.quote(details['id'], safe='')}"))
    since = int(run.started) - 5
    answers.append(
        _http(f"/api/v2/channels/voice/stats/incremental/calls?start_time={since}&format=csv")
    )

    for body in answers:
        assert _raw_controls(body.decode("utf-8"), allowed="\r\n") == []
    one = json.loads(answers[1])
    first = CASES[0]
    assert one["details"]["caller"] == first.caller_kept


def test_logs_hold_no_raw_escape(run: Run) -> None:
    """consentd's log holds none. Asterisk's own log prints the dialled number as it came
    in its trace of the dialplan (verbose 3: "Executing [NUMBER@inbound:1]"); that is
    Asterisk's, and documented (README, "Threat model"). No other line of it holds one:
    not the fallback dialplan's, not one about consentd."""
    consentd_log = (STATE / "consentd.log").read_text(errors="replace")
    assert _raw_controls(consentd_log) == []
    for log in (ROOT / "var" / "log" / "asterisk").rglob("*"):
        if log.is_file():
            for line in log.read_bytes().splitlines():
                if b"\x1b" in line:
                    assert b"pbx.c: Executing [" in line, f"a raw ESC in {log}: {line!r}"


def test_no_file_outside_the_recording_directory(run: Run) -> None:
    skip = ("proc", "sys", "dev", "var/log/asterisk", "var/lib/asterisk", "var/run", "run")
    created = _files_since(ROOT, run.started, skip)
    # consentd's own file (the agents' codes), rewritten at each AMI login.
    features = ROOT / "etc" / "asterisk" / "consentd-features.conf"
    outside = {p for p in created if p.parent != RECORDING_DIR and p != features}
    assert outside == set(), f"files created outside the recording directory: {outside}"
    recorded = run.details["terminal_escapes_on_a_recorded_number"]["recordings"]
    assert {p.name for p in created} >= {Path(recorded[0]).name}

    for root in (ROOT, Path("/tmp"), STATE):
        hits = subprocess.run(
            ["find", str(root), "-xdev", "-name", f"*{MARK}*"],
            capture_output=True,
            text=True,
        ).stdout
        assert hits == "", f"a path from a dialled number: {hits}"


def _pjproject_resolver(address: str, line: str) -> bool:
    """pjproject's DNS resolver (res_pjsip makes one for the system's name servers) binds
    one IPv4 and one IPv6 UDP socket to the wildcard address and a random port, for the
    answers of name servers (pjlib-util/resolver.c, init_sock; no option binds them).
    Its port may fall in the RTP range: the test allows one socket per family, where
    media on the wildcard address would be two per call."""
    host, _, port = address.rpartition(":")
    return (
        line.startswith("udp ")
        and '(("asterisk",' in line
        and host in ("0.0.0.0", "[::]", "*")
        and int(port) not in (5060, 5038, 8088)
    )


def test_every_socket_of_the_stack_is_bound_to_loopback(run: Run) -> None:
    """SIP, RTP (every call's media), ARI, AMI, PostgreSQL and consentd's HTTP API."""
    assert run.sockets, "no socket of the stack found"
    addresses = [address for address, _ in run.sockets]
    for port in (":5060", ":5038", ":8088", ":55432", ":8090"):  # SIP AMI ARI database API
        assert any(a.endswith(port) for a in addresses), (port, addresses)
    rtp = [a for a in addresses if RTP_PORTS[0] <= int(a.rpartition(":")[2]) <= RTP_PORTS[1]]
    assert len(rtp) >= len(CASES), addresses  # the calls' media sockets, on loopback too
    exposed = [
        line
        for address, line in run.sockets
        if not (address.startswith("127.") or address.startswith("[::1]"))
    ]
    resolver = [line for line in exposed if _pjproject_resolver(line.split()[4], line)]
    assert len(resolver) <= 2 and len({line.split()[4][0] for line in resolver}) == len(resolver)
    assert [line for line in exposed if line not in resolver] == [], "\n".join(exposed)


def test_a_hostile_number_while_consentd_is_away_cannot_forge_a_fallback_line(
    run: Run, stack: Stack
) -> None:
    """With no consentd the dialplan writes the call to its fallback log. A dialled number
    holding a newline and a whole line of that log must stay one field (base64), and
    reach the ledger cleaned; the forged call must not exist."""
    fallback_log = ROOT / "var/log/asterisk/consentd-fallback.log"
    forged = f"x{os.getpid()}"  # short: Asterisk keeps 79 characters of a number
    line = f"1|started|2026-11-29T16:00:00.000|{forged}|{forged}|+49||"
    case = Hostile(
        "fallback",
        did=_q(f"1\x1b[2J|\n{line}\n"),
        user=_q("+4915100000904\x1b]0;x\x07"),
        display="fallback",
        recording="default",
    )
    since = datetime.now(UTC)
    stack.stop_daemon()
    try:
        code, output = asyncio.run(_place(case, len(CASES) + 1))
    finally:
        stack.restart_daemon()
    assert code == 0, output[-2000:]

    written = fallback_log.read_bytes().decode().splitlines()
    assert [w for w in written if forged in w] == []
    for number, text in enumerate(written, 1):
        parse_line(text, number)  # every line is whole: none was broken or forged
    found: dict[str, Any] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not found.get("ended_at"):
        found = _find(case, consentd_calls(limit=50, since=since))
        time.sleep(0.5)
    assert found, [(c["phone_number"], c["caller"]) for c in consentd_calls(limit=10)]
    assert found["consentd_unavailable"] is True
    assert found["id"].startswith("fallback:")
    assert not [c for c in consentd_calls(limit=200) if c["id"].endswith(f":{forged}")]
