"""The shipped SIPp callers hang up the way a phone does.

Without SIP transactions SIPp accepts any 200 whose CSeq method it has sent
before as the answer it is waiting for. On a busy PBX the INVITE's 200 is
still being retransmitted when the caller hangs up; SIPp took that late 200
as the BYE's answer, stopped retransmitting a BYE the PBX had dropped, and the
PBX kept a channel whose caller was gone (the bench's "ghost" channels at
500-600 calls/s). So every BYE a caller scenario sends must start a
transaction, and the answer it waits for must name it.
"""

import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from consentd.sipp import tone_file

SCENARIOS = Path(__file__).resolve().parents[2] / "sipp-scenarios"


def _request_method(send: ET.Element) -> str:
    return (send.text or "").strip().split(" ", 1)[0]


def _messages(path: Path) -> list[ET.Element]:
    """The scenario's sent and expected messages, in order."""
    return [m for m in ET.parse(path).getroot() if m.tag in ("send", "recv")]


def _callers() -> list[Path]:
    """Scenarios that place calls: their first message is a sent INVITE."""
    found = []
    for path in sorted(SCENARIOS.glob("*.xml")):
        messages = _messages(path)
        if messages and messages[0].tag == "send" and _request_method(messages[0]) == "INVITE":
            found.append(path)
    return found


def test_the_callers_are_found() -> None:
    names = {p.name for p in _callers()}
    assert {"caller.xml", "bench-caller.xml", "agent-call.xml"} <= names


@pytest.mark.parametrize("path", _callers(), ids=lambda p: p.name)
def test_a_bye_is_answered_only_by_its_own_answer(path: Path) -> None:
    messages = _messages(path)
    byes = [i for i, m in enumerate(messages) if m.tag == "send" and _request_method(m) == "BYE"]
    assert byes, f"{path.name} sends no BYE"
    for i in byes:
        txn = messages[i].get("start_txn")
        assert txn, f"{path.name}: the BYE (message {i}) starts no transaction"
        answers = []
        for later in messages[i + 1 :]:
            if later.tag != "recv":
                break
            answers.append(later)
        assert answers, f"{path.name}: nothing waits for the BYE's answer"
        for answer in answers:
            assert answer.get("response_txn") == txn, (
                f"{path.name}: the answer {answer.attrib} to the BYE is not bound to "
                f"transaction {txn!r}"
            )


def _bound_invites() -> list[Path]:
    """Callers whose INVITE starts a transaction (agent-call.xml binds only its
    BYE: digest authentication restarts the INVITE in a second one)."""
    return [p for p in _callers() if _messages(p)[0].get("start_txn")]


def test_the_plain_callers_bind_their_invite() -> None:
    assert {"caller.xml", "bench-caller.xml"} <= {p.name for p in _bound_invites()}


@pytest.mark.parametrize("path", _bound_invites(), ids=lambda p: p.name)
def test_an_invite_answered_in_a_transaction_is_acked_in_it(path: Path) -> None:
    """The ACK names the INVITE's transaction, so SIPp ACKs a retransmitted 200
    again instead of failing the call, and every answer to the INVITE is bound."""
    messages = _messages(path)
    txn = messages[0].get("start_txn")
    acks = [m for m in messages if m.tag == "send" and _request_method(m) == "ACK"]
    assert acks and [a.get("ack_txn") for a in acks] == [txn] * len(acks)
    first_ack = messages.index(acks[0])
    for answer in messages[1:first_ack]:
        if answer.get("request"):
            continue  # the PBX's own BYE, taken at any step: not an answer to the INVITE
        assert answer.get("response_txn") == txn, f"{path.name}: {answer.attrib} is not bound"


#: SIPp loads every pcap a scenario names at start, played or not (Debian's sip-tester).
KEY_PCAP = "/usr/share/sip-tester/dtmf_2833_3.pcap"

#: The body of an INVITE or its 200: A-law and RFC 2833 events.
SDP = """Content-Type: application/sdp
Content-Length: [len]

v=0
o=sipp 1 1 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
"""

#: A PBX that answers and hangs up first after ``hangup_ms``, as an IVR's
#: timeout or a hand-off whose Dial() gives up does.
HANGING_UP_PBX = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a PBX that hangs up first">
  <Global variables="hangup_ms"/>
  <recv request="INVITE" crlf="true" rrs="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller_from"/>
      <ereg regexp=".*" search_in="hdr" header="To:" assign_to="caller_to"/>
    </action>
  </recv>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]PBX[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:pbx@[local_ip]:[local_port]>
{SDP}  ]]></send>
  <recv request="ACK" crlf="true"/>
  <nop><action><todouble assign_to="hangup" variable="hangup_ms"/></action></nop>
  <pause variable="hangup"/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: [$caller_to];tag=[pid]PBX[call_number]
To: [$caller_from]
Call-ID: [call_id]
CSeq: 1 BYE
Content-Length: 0
  ]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""


def test_the_caller_answers_a_bye_from_the_pbx_at_any_step(tmp_path: Path) -> None:
    """An IVR's timeout ends the call from the PBX's side while the caller is
    still pausing before a key: caller.xml answers that BYE and succeeds.
    Two real SIPp processes on loopback (the PBX ends the call after 1 s; the
    caller meant to wait 5 s for its key and hang up 10 s later)."""
    pbx_scenario = tmp_path / "pbx.xml"
    pbx_scenario.write_text(HANGING_UP_PBX)
    caller, took, pbx = _caller_against(
        ["-sf", str(pbx_scenario), "-set", "hangup_ms", "1000"], tmp_path
    )
    assert caller.returncode == 0, caller.stdout[-2000:] + caller.stderr[-2000:]
    assert took < 4, f"the caller ran {took:.1f} s: it did not end with the PBX's BYE"
    assert pbx.returncode == 0, f"the PBX's BYE was not answered with 200:\n{pbx.stdout[-2000:]}"


def test_the_agents_phone_hangs_up_first_when_told(tmp_path: Path) -> None:
    """agent.xml with hangup_ms sends its own BYE after that long, and the caller
    (caller.xml, dialling the phone directly) takes it: both end successfully."""
    caller, took, phone = _caller_against(
        ["-sf", str(SCENARIOS / "agent.xml"), "-set", "answer_ms", "300",
         "-set", "hangup_ms", "1000", "-key", "audio", f"{tone_file()},-1,8",
         "-set", "pcap", "0", "-key", "media", KEY_PCAP],
        tmp_path,
    )  # fmt: skip
    assert caller.returncode == 0, caller.stdout[-2000:] + caller.stderr[-2000:]
    assert took < 4, f"the caller ran {took:.1f} s: the phone did not hang up"
    assert phone.returncode == 0, f"the phone's BYE went unanswered:\n{phone.stdout[-2000:]}"


#: A caller that gives up while the phone rings: INVITE, then CANCEL on the 180.
CANCELLING_CALLER = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="a caller who gives up while it rings">
  <send><![CDATA[
INVITE sip:agent@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]C[call_number]
To: <sip:agent@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 7 INVITE
Contact: <sip:caller@[local_ip]:[local_port]>
Max-Forwards: 70
{SDP}  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180"/>
  <pause milliseconds="300"/>
  <send><![CDATA[
CANCEL sip:agent@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-1]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]C[call_number]
To: <sip:agent@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 7 CANCEL
Max-Forwards: 70
Content-Length: 0
  ]]></send>
  <recv response="200"/>
  <recv response="487"/>
  <send><![CDATA[
ACK sip:agent@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-2]
From: <sip:caller@[local_ip]:[local_port]>;tag=[pid]C[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 7 ACK
Max-Forwards: 70
Content-Length: 0
  ]]></send>
</scenario>
"""


def test_the_agents_phone_takes_a_cancel_while_it_rings(tmp_path: Path) -> None:
    """A caller who gives up while agent.xml rings (3 s before its answer): the phone
    answers the CANCEL 200 and the INVITE 487, and both end successfully at once.
    Without that, Asterisk held the agent "ringing" for 32 s, and the queue
    (ringinuse=no) rang nobody for the next caller."""
    uac = tmp_path / "cancelling.xml"
    uac.write_text(CANCELLING_CALLER)
    caller, took, phone = _caller_against(
        ["-sf", str(SCENARIOS / "agent.xml"), "-set", "answer_ms", "3000",
         "-key", "audio", f"{tone_file()},-1,8", "-set", "pcap", "0", "-key", "media", KEY_PCAP],
        tmp_path,
        caller=["-sf", str(uac)],
    )  # fmt: skip
    assert caller.returncode == 0, caller.stdout[-2000:] + caller.stderr[-2000:]
    assert took < 2, f"the caller ran {took:.1f} s: its CANCEL was not answered at once"
    assert phone.returncode == 0, f"the phone counted the CANCEL as a failure:\n{phone.stdout}"


#: caller.xml with a key wait of 5 s, then 10 s of talk.
CALLER_XML = [
    "-sf", str(SCENARIOS / "caller.xml"), "-s", "+4930100020",
    "-set", "caller", "+4915100000001", "-set", "wait1", "5000", "-set", "press1", "0",
    "-key", "pcap1", KEY_PCAP, "-set", "wait2", "0", "-set", "press2", "0",
    "-key", "pcap2", KEY_PCAP, "-set", "talk", "10000", "-set", "speak", "0",
    "-key", "media", KEY_PCAP,
]  # fmt: skip


def _caller_against(
    far_end: list[str], cwd: Path, caller: list[str] = CALLER_XML
) -> tuple[subprocess.CompletedProcess[str], float, subprocess.CompletedProcess[str]]:
    """A caller (``caller``'s scenario arguments; caller.xml by default) against a
    SIPp UAS run with ``far_end``'s: the caller's run, its seconds, the far end's run."""
    if shutil.which("sipp") is None:
        pytest.fail("sipp is not installed: run `make setup`")
    port, caller_port = _free_udp_port(), _free_udp_port()
    args = ["sipp", *far_end, "-i", "127.0.0.1", "-p", str(port), "-mp", "18600", "-m", "1",
            "-nostdin", "-timeout", "20s", "-timeout_error"]  # fmt: skip
    server = subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        time.sleep(0.3)  # listening before the caller dials
        started = time.monotonic()
        ran = subprocess.run(
            ["sipp", f"127.0.0.1:{port}", *caller, "-m", "1", "-i", "127.0.0.1",
             "-p", str(caller_port), "-mp", "18700", "-nostdin", "-timeout", "20s",
             "-timeout_error"],
            cwd=cwd, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        took = time.monotonic() - started
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return ran, took, subprocess.CompletedProcess(args, server.returncode, output, "")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
