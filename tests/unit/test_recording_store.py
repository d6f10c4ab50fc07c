"""Where recordings live: deleting and checking them on a shared disk or over ARI.

The ARI store is tried three ways: ``AriClient``'s stored-recording requests
against a fake Asterisk HTTP server (statuses, a body read only as far as a
WAV header, a refused connection), ``AriStore`` on a fake client (names,
retries), and whole calls through the dispatcher with a fake Asterisk that
deletes its own files (tests/unit/test_dispatcher.py's ``FakeAri``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from consentd.ari import AriClient, AriError, AriNotSent, AriUnavailable
from consentd.greetings import CUSTOM_DIR, GreetingLibrary
from consentd.policy import load_policies
from consentd.recording_store import (
    ASTERISK_RECORDING_DIR,
    WAV_HEADER_BYTES,
    AriStore,
    FileStore,
    RecordingStoreError,
    stored_name,
    wait_and_delete,
)
from consentd.settings import Settings, SettingsProblem
from tests.unit.test_dispatcher import (
    POLICIES,
    Node,
    by_kind,
    dtmf,
    playback_finished,
    running_node,
    stasis_end,
    stasis_start,
    until,
)

REC = ASTERISK_RECORDING_DIR
HEADER = b"RIFF" + bytes(WAV_HEADER_BYTES - 4)
AUDIO = HEADER + b"\x01\x02" * 4000

# ---------------------------------------------------------------- names


def test_a_stored_recordings_name_is_its_path_under_the_recording_dir_without_extension() -> None:
    assert stored_name(f"{REC}/consentd-pbx1_1764.1-1.wav") == "consentd-pbx1_1764.1-1"
    assert stored_name(f"{REC}/calls/consentd-x-2.wav") == "calls/consentd-x-2"


@pytest.mark.parametrize(
    "file",
    [
        "/var/spool/asterisk/monitor/consentd-x-1.wav",  # MixMonitor's default: not ARI's
        f"{REC}/../monitor/consentd-x-1.wav",
        "consentd-x-1.wav",
        f"{REC}/consentd-x-1",  # Asterisk finds a recording by its extension
        f"{REC}/.wav",
    ],
)
def test_a_file_ari_cannot_reach_is_refused(file: str) -> None:
    with pytest.raises(RecordingStoreError):
        stored_name(file)


def test_an_ari_store_escapes_a_subdirectory_into_one_path_segment() -> None:
    assert AriStore(cast(AriClient, None))._name(f"{REC}/a b/c-1.wav") == "a%20b%2Fc-1"


# ---------------------------------------------------------------- files


async def test_the_file_store_deletes_and_checks_under_asterisks_root(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    audio, header = f"{REC}/a-1.wav", f"{REC}/b-1.wav"
    (tmp_path / REC.lstrip("/")).mkdir(parents=True)
    store.host_path(audio).write_bytes(AUDIO)
    store.host_path(header).write_bytes(HEADER)

    assert await store.holds_no_audio(audio) is False
    assert await store.holds_no_audio(header) is True
    assert await store.holds_no_audio(f"{REC}/missing-1.wav") is None
    assert await store.delete(audio) is True
    assert not (tmp_path / REC.lstrip("/") / "a-1.wav").exists()
    assert await store.delete(audio) is False


async def test_the_file_store_tells_the_seconds_of_audio_a_recording_holds(
    tmp_path: Path,
) -> None:
    """8 kHz 16-bit mono past the header: what tells a restarted consentd when a
    call it never saw end hung up."""
    store = FileStore(tmp_path)
    (tmp_path / REC.lstrip("/")).mkdir(parents=True)
    store.host_path(f"{REC}/a-1.wav").write_bytes(HEADER + bytes(16_000 * 3))
    store.host_path(f"{REC}/h-1.wav").write_bytes(HEADER)
    store.host_path(f"{REC}/t-1.wav").write_bytes(b"RIFF")  # cut short: no audio

    assert await store.audio_seconds(f"{REC}/a-1.wav") == 3.0
    assert await store.audio_seconds(f"{REC}/h-1.wav") == 0.0
    assert await store.audio_seconds(f"{REC}/t-1.wav") == 0.0
    assert await store.audio_seconds(f"{REC}/missing-1.wav") is None


async def test_a_file_mixmonitor_creates_late_is_still_deleted(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    file = f"{REC}/late-1.wav"
    path = store.host_path(file)
    path.parent.mkdir(parents=True)

    async def create_later() -> None:
        await asyncio.sleep(0.2)
        path.write_bytes(HEADER)

    writer = asyncio.create_task(create_later())
    assert await wait_and_delete(store, file, grace=1.0) is True
    await writer
    assert not path.exists()
    assert await wait_and_delete(store, file, grace=0.1) is False  # nothing there: fine


# ---------------------------------------------------------------- AriClient over HTTP


class StoredRecordings:
    """Asterisk's /ari/recordings/stored routes over files in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.requests: list[str] = []
        self.deny_delete = False
        self.chunked = False
        self.sent: dict[str, int] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/ari/recordings/stored/{name}", self.stored)
        app.router.add_get("/ari/recordings/stored/{name}/file", self.file)
        return app

    def _find(self, name: str) -> Path | None:
        found = sorted(self.dir.glob(f"{name}.*"))
        return found[0] if found else None

    async def stored(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.requests.append(f"{request.method} {name}")
        path = self._find(name)
        if path is None:
            return web.json_response({"message": "Recording not found"}, status=404)
        if request.method == "DELETE":
            if self.deny_delete:
                return web.json_response({"message": "Permission denied"}, status=403)
            path.unlink()
            return web.Response(status=204)
        return web.json_response({"name": name, "format": "wav"})

    async def file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append(f"GET {name}/file")
        path = self._find(name)
        if path is None:
            return web.json_response({"message": "Recording not found"}, status=404)
        data = path.read_bytes()
        if not self.chunked:
            return web.Response(body=data, content_type="audio/wav")
        # No Content-Length: the client must stop reading by itself.
        response = web.StreamResponse()
        response.content_type = "audio/wav"
        response.enable_chunked_encoding()
        await response.prepare(request)
        self.sent[name] = 0
        try:
            for start in range(0, len(data), 16):
                await response.write(data[start : start + 16])
                self.sent[name] += 16
                await asyncio.sleep(0.001)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client hung up: what a closed connection looks like here
        return response


@pytest.fixture
async def ari_http(tmp_path: Path) -> AsyncIterator[tuple[AriClient, StoredRecordings]]:
    stored = StoredRecordings(tmp_path)
    server = TestServer(stored.app())
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield AriClient(session, str(server.make_url("/ari")), "consentd"), stored
    await server.close()


async def test_ari_deletes_a_stored_recording_and_404_means_it_was_not_there(
    ari_http: tuple[AriClient, StoredRecordings],
) -> None:
    ari, stored = ari_http
    (stored.dir / "consentd-x-1.wav").write_bytes(AUDIO)

    assert await ari.delete_stored_recording("consentd-x-1") is True
    assert not (stored.dir / "consentd-x-1.wav").exists()
    assert await ari.delete_stored_recording("consentd-x-1") is False
    assert stored.requests == ["DELETE consentd-x-1", "DELETE consentd-x-1"]


async def test_ari_refusing_a_delete_is_an_error_not_a_missing_file(
    ari_http: tuple[AriClient, StoredRecordings],
) -> None:
    ari, stored = ari_http
    (stored.dir / "consentd-x-1.wav").write_bytes(AUDIO)
    stored.deny_delete = True

    with pytest.raises(AriError) as refused:
        await ari.delete_stored_recording("consentd-x-1")
    assert refused.value.status == 403
    assert (stored.dir / "consentd-x-1.wav").exists()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_ari_sizes_a_stored_file_reading_no_more_than_a_header(
    ari_http: tuple[AriClient, StoredRecordings], chunked: bool
) -> None:
    ari, stored = ari_http
    stored.chunked = chunked
    (stored.dir / "big-1.wav").write_bytes(AUDIO * 50)  # 400 kB
    (stored.dir / "header-1.wav").write_bytes(HEADER)

    assert await ari.stored_recording_size("big-1", WAV_HEADER_BYTES + 1) == WAV_HEADER_BYTES + 1
    assert await ari.stored_recording_size("header-1", WAV_HEADER_BYTES + 1) == WAV_HEADER_BYTES
    assert await ari.stored_recording_size("missing-1", WAV_HEADER_BYTES + 1) is None
    if chunked:
        await asyncio.sleep(0.1)  # the server notices the closed connection
        assert stored.sent["big-1"] < len(AUDIO * 50) / 10, stored.sent


async def test_the_ari_store_tells_the_seconds_of_audio_from_the_whole_file_s_size(
    ari_http: tuple[AriClient, StoredRecordings],
) -> None:
    ari, stored = ari_http
    (stored.dir / "consentd-x-1.wav").write_bytes(HEADER + bytes(16_000 * 2 + 8_000))
    store = AriStore(ari)

    assert await store.audio_seconds(f"{REC}/consentd-x-1.wav") == 2.5
    assert await store.audio_seconds(f"{REC}/consentd-y-1.wav") is None


async def test_ari_unreachable_is_not_sent(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        ari = AriClient(session, "http://127.0.0.1:9/ari", "consentd", request_timeout=1.0)
        with pytest.raises(AriNotSent):
            await ari.stored_recording_size("x-1", 45)
        with pytest.raises(AriNotSent):
            await ari.delete_stored_recording("x-1")


# ---------------------------------------------------------------- AriStore retries


class FlakyAri:
    """Fails its first ``failures`` requests with ``error``, then answers ``result``."""

    def __init__(self, failures: int, error: Exception, result: bool = True) -> None:
        self.failures, self.error, self.result = failures, error, result
        self.names: list[str] = []

    async def delete_stored_recording(self, name: str) -> bool:
        self.names.append(name)
        if len(self.names) <= self.failures:
            raise self.error
        return self.result


async def test_an_ari_store_sends_a_delete_again_while_asterisk_does_not_answer() -> None:
    ari = FlakyAri(2, AriUnavailable("DELETE: timed out"))
    store = AriStore(cast(AriClient, ari), retry_seconds=2.0)

    assert await store.delete(f"{REC}/consentd-x-1.wav") is True
    assert ari.names == ["consentd-x-1"] * 3


async def test_an_ari_store_gives_up_after_its_retry_time() -> None:
    ari = FlakyAri(1000, AriNotSent("DELETE: connection refused"))
    store = AriStore(cast(AriClient, ari), retry_seconds=0.5)

    started = asyncio.get_running_loop().time()
    with pytest.raises(AriNotSent):
        await store.delete(f"{REC}/consentd-x-1.wav")
    assert 0.3 <= asyncio.get_running_loop().time() - started < 1.5
    assert len(ari.names) >= 2


async def test_an_ari_store_does_not_repeat_a_refusal() -> None:
    ari = FlakyAri(1000, AriError("DELETE: HTTP 403", 403))
    with pytest.raises(AriError):
        await AriStore(cast(AriClient, ari), retry_seconds=5.0).delete(f"{REC}/x-1.wav")
    assert len(ari.names) == 1


# ---------------------------------------------------------------- whole calls, Asterisk deletes


@pytest.fixture
async def ari_node(tmp_path: Path) -> AsyncIterator[Node]:
    async for pbx in running_node(tmp_path, POLICIES, recording_store="ari"):
        yield pbx


def rec_file(chan: str) -> str:
    return f"{REC}/consentd-pbx1_{chan}-1.wav"


async def test_a_refused_recording_is_deleted_by_asterisk_over_ari(ari_node: Node) -> None:
    chan = "1764432100.1"
    await ari_node.feed(
        stasis_start(chan, "+4930100003"), playback_finished(chan, f"{chan}-greeting")
    )
    audio = ari_node.recorder.host_path(rec_file(chan))
    assert ari_node.recorder.requests[0] == ("start", chan, rec_file(chan))
    assert audio.exists()

    await ari_node.feed(dtmf(chan, "3"))
    await until(lambda: not audio.exists())
    audio.write_bytes(b"late MixMonitor flush")  # after the delete: deleted again at the end
    await ari_node.feed(stasis_end(chan))
    await ari_node.calls_done()

    assert not audio.exists()
    name = f"consentd-pbx1_{chan}-1"
    assert ari_node.ari.of("delete_stored_recording") == [
        ("delete_stored_recording", name),
        ("delete_stored_recording", name),
    ]
    deleted = by_kind(await ari_node.ledger(), "recording_deleted")
    assert [(e.data["segment"], e.data["file"]) for e in deleted] == [(1, rec_file(chan))]


async def test_asterisk_unreachable_leaves_no_silently_kept_refusal(ari_node: Node) -> None:
    chan = "1764432100.2"
    await ari_node.feed(
        stasis_start(chan, "+4930100003"), playback_finished(chan, f"{chan}-greeting")
    )
    audio = ari_node.recorder.host_path(rec_file(chan))
    ari_node.ari.failing["delete_stored_recording"] = AriNotSent("DELETE: connection refused")

    with structlog.testing.capture_logs() as logs:
        await ari_node.feed(dtmf(chan, "3"))
        await until(lambda: "command_failed" in [e.kind for e in ari_node.store.events.values()])
        await ari_node.feed(stasis_end(chan))
        await ari_node.calls_done()

    assert audio.exists()  # Asterisk never got the delete
    assert len(ari_node.ari.of("delete_stored_recording")) >= 2  # tried again meanwhile
    rows = await ari_node.ledger()
    assert by_kind(rows, "recording_deleted") == []
    failed = by_kind(rows, "command_failed")
    assert [(e.data["command"], e.data["error"]) for e in failed] == [
        ("DeleteRecording", "DELETE: connection refused")
    ]
    errors = [e for e in logs if e["event"] == "refused_audio_not_deleted"]
    assert [(e["file"], e["store"], e["log_level"]) for e in errors] == [
        (rec_file(chan), "ari", "error")
    ]


async def test_an_asterisk_restart_during_the_delete_is_waited_out(ari_node: Node) -> None:
    chan = "1764432100.3"
    await ari_node.feed(
        stasis_start(chan, "+4930100003"), playback_finished(chan, f"{chan}-greeting")
    )
    audio = ari_node.recorder.host_path(rec_file(chan))
    ari_node.ari.failing["delete_stored_recording"] = AriUnavailable("DELETE: timed out")

    await ari_node.feed(dtmf(chan, "3"))
    await asyncio.sleep(0.1)
    assert audio.exists()
    del ari_node.ari.failing["delete_stored_recording"]  # Asterisk is back
    await until(lambda: not audio.exists())
    await ari_node.feed(stasis_end(chan))
    await ari_node.calls_done()

    rows = await ari_node.ledger()
    assert len(by_kind(rows, "recording_deleted")) == 1
    assert by_kind(rows, "command_failed") == []


async def test_an_empty_bridged_recording_is_removed_over_ari_and_audio_is_kept(
    ari_node: Node,
) -> None:
    empty, held = "1764432100.4", "1764432100.5"
    for chan in (empty, held):
        await ari_node.feed(stasis_start(chan, "+4930100010"))  # opt-in, routed: MixMonitor b
        for playback in ("available", "greeting"):
            await ari_node.feed(playback_finished(chan, f"{chan}-{playback}"))
        await ari_node.feed(dtmf(chan, "3"))
    ari_node.recorder.host_path(rec_file(held)).write_bytes(AUDIO)

    for chan in (empty, held):
        await ari_node.feed(stasis_end(chan), {**stasis_end(chan), "type": "ChannelDestroyed"})
    await ari_node.calls_done()

    assert not ari_node.recorder.host_path(rec_file(empty)).exists()
    assert ari_node.recorder.host_path(rec_file(held)).read_bytes() == AUDIO
    deleted = by_kind(await ari_node.ledger(), "empty_file_deleted")
    assert [e.data["file"] for e in deleted] == [rec_file(empty)]
    sized = [r[1] for r in ari_node.ari.of("stored_recording_size")]
    assert sorted(sized) == [f"consentd-pbx1_{empty}-1", f"consentd-pbx1_{held}-1"]
    assert ari_node.ari.of("delete_stored_recording") == [
        ("delete_stored_recording", f"consentd-pbx1_{empty}-1")
    ]


# ---------------------------------------------------------------- settings and greetings


def test_the_ari_store_records_under_asterisks_recording_dir_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CONSENTD_RECORDING_STORE", "CONSENTD_RECORDING_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().recording_dir == "/var/spool/asterisk/monitor"
    monkeypatch.setenv("CONSENTD_RECORDING_STORE", "ari")
    assert Settings().recording_dir == REC
    Settings().require_reachable_recordings()
    monkeypatch.setenv("CONSENTD_RECORDING_DIR", f"{REC}/calls")
    Settings().require_reachable_recordings()  # a subdirectory: name "calls/..."
    monkeypatch.setenv("CONSENTD_RECORDING_DIR", "/var/spool/asterisk/monitor")
    with pytest.raises(SettingsProblem, match="not under Asterisk's recording directory"):
        Settings().require_reachable_recordings()
    monkeypatch.setenv("CONSENTD_RECORDING_STORE", "files")
    Settings().require_reachable_recordings()


def test_greetings_not_installed_are_named_and_exported_under_the_same_names(
    tmp_path: Path, wav: Callable[..., Path]
) -> None:
    policy_dir = tmp_path / "etc"
    policy_dir.mkdir()
    wav(policy_dir / "mine.wav", seconds=0.5)
    (policy_dir / "policies.yaml").write_text(
        'default: {recording: never}\nnumbers:\n  "+4930100003":\n'
        "    recording: opt_out\n    greetings: {opt_out: mine.wav}\n"
    )
    book = load_policies(policy_dir / "policies.yaml")
    root = tmp_path / "asterisk"

    library = GreetingLibrary.install(book, "/var/lib/asterisk/sounds", root, copy=False)
    assert not root.exists()  # nothing written where Asterisk's disk would be
    (uri,) = library.uris()
    assert uri.startswith(f"sound:/var/lib/asterisk/sounds/{CUSTOM_DIR}/")

    exported = GreetingLibrary.export(book, tmp_path / "out")
    assert [f"sound:/var/lib/asterisk/sounds/{CUSTOM_DIR}/{p.stem}" for p in exported] == [uri]
    installed = GreetingLibrary.install(book, "/var/lib/asterisk/sounds", root)
    assert installed.uris() == [uri]
    copied = root / "var/lib/asterisk/sounds" / CUSTOM_DIR / exported[0].name
    assert copied.read_bytes() == exported[0].read_bytes()


@pytest.fixture(params=["files", "ari"])
async def either_node(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    async for pbx in running_node(tmp_path, POLICIES, recording_store=request.param):
        yield pbx


async def test_a_refused_recording_that_is_not_there_is_said_so(either_node: Node) -> None:
    """A delete that finds nothing within the grace time is logged: MixMonitor wrote
    nothing, or (files) consentd is not looking at Asterisk's disk."""
    pbx, chan = either_node, "1764432100.6"
    await pbx.feed(stasis_start(chan, "+4930100003"), playback_finished(chan, f"{chan}-greeting"))
    file = f"{pbx.recording_dir}/consentd-pbx1_{chan}-1.wav"
    pbx.recorder.host_path(file).unlink()  # never reached this disk
    with structlog.testing.capture_logs() as logs:
        await pbx.feed(dtmf(chan, "3"))
        await until(lambda: "recording_deleted" in [e.kind for e in pbx.store.events.values()])
    missing = [e for e in logs if e["event"] == "recording_to_delete_not_found"]
    assert [(e["file"], e["store"]) for e in missing] == [(file, pbx.store_of_recordings.kind)]
