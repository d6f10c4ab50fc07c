"""Where recordings live, and how consentd removes and checks them.

consentd never reads a caller's audio; it only deletes what a caller refused,
removes files that hold a WAV header and nothing else, and checks afterwards
that deleted audio stayed deleted. Two stores do that:

- ``FileStore`` (``CONSENTD_RECORDING_STORE=files``, the default): through the
  file system, under ``CONSENTD_ASTERISK_ROOT``. consentd must share
  Asterisk's disk (same host, a chroot, or a volume).
- ``AriStore`` (``CONSENTD_RECORDING_STORE=ari``): Asterisk does it itself,
  through ARI's stored recordings (``DELETE /recordings/stored/NAME``,
  ``GET .../NAME/file``). consentd may run on another host and touches no
  file. A stored recording's name is its path under Asterisk's recording
  directory (``/var/spool/asterisk/recording``) without the extension, so
  MixMonitor must write there (``CONSENTD_RECORDING_DIR``).

Paths given to a store are always as Asterisk sees them (the ``file`` of a
ledger row). A store raises ``RecordingStoreError`` (or the ``AriError`` of
its transport) when it could not do what it was asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Protocol, TypeVar
from urllib.parse import quote

from consentd.ari import AriClient, AriError, AriUnavailable

T = TypeVar("T")

#: Asterisk's own recording directory (ast_config_AST_RECORDING_DIR with the
#: default astspooldir): ARI's stored recordings are named relative to it.
ASTERISK_RECORDING_DIR = "/var/spool/asterisk/recording"
#: A WAV file this small holds its header and no audio.
WAV_HEADER_BYTES = 44
#: Asterisk's ``wav`` format (the ``.wav`` MixMonitor writes for consentd): 8 kHz,
#: 16-bit, mono (formats/format_wav.c); ``wav16`` would have its own extension.
WAV_BYTES_PER_SECOND = 16_000
#: The longest recording whose length the ARI store reads without a Content-Length.
_LONGEST_READ_BYTES = WAV_HEADER_BYTES + WAV_BYTES_PER_SECOND * 6 * 3600

STORES = ("files", "ari")


class RecordingStoreError(Exception):
    """A recording could not be removed or checked (not a transport failure)."""


#: Everything a store's ``delete`` or ``holds_no_audio`` raises when it failed:
#: its own error, ARI's (the ARI store), the file system's (the files store).
STORE_ERRORS: tuple[type[Exception], ...] = (RecordingStoreError, AriError, OSError)


class RecordingStore(Protocol):
    """What the call runner needs of the place recordings live."""

    #: "files" or "ari", for log lines.
    kind: str

    async def delete(self, file: str) -> bool:
        """Remove ``file``; True when it was there, False when it was not (nothing to do)."""
        ...

    async def holds_no_audio(self, file: str) -> bool | None:
        """True when ``file`` is a WAV header alone (or less), False when it holds
        audio, None when it does not exist."""
        ...

    async def audio_seconds(self, file: str) -> float | None:
        """How many seconds of audio ``file`` holds, None when it does not exist.

        A call that ended while no consentd ran has no hang-up time in the
        ledger; its open recording's start plus this is when MixMonitor stopped
        writing, which is when the channel hung up."""
        ...


class FileStore:
    """Recordings on a disk consentd shares with Asterisk (``asterisk_root`` is where
    Asterisk's file system appears here: ``/`` unless Asterisk is chrooted)."""

    kind = "files"

    def __init__(self, asterisk_root: Path | str = "/") -> None:
        self.root = Path(asterisk_root)

    def host_path(self, file: str) -> Path:
        return self.root / file.lstrip("/")

    async def delete(self, file: str) -> bool:
        try:
            self.host_path(file).unlink()
        except FileNotFoundError:
            return False
        return True

    def _size(self, file: str) -> int | None:
        try:
            return self.host_path(file).stat().st_size
        except FileNotFoundError:
            return None

    async def holds_no_audio(self, file: str) -> bool | None:
        size = self._size(file)
        return None if size is None else size <= WAV_HEADER_BYTES

    async def audio_seconds(self, file: str) -> float | None:
        size = self._size(file)
        return None if size is None else _seconds(size)


def stored_name(file: str, recording_dir: str = ASTERISK_RECORDING_DIR) -> str:
    """ARI's name of a recording Asterisk wrote at ``file``: its path under Asterisk's
    recording directory, without the extension. RecordingStoreError for a file
    elsewhere: ARI can neither find nor delete it."""
    path, base = PurePosixPath(file), PurePosixPath(recording_dir)
    if not path.is_absolute() or ".." in path.parts or not path.is_relative_to(base):
        raise RecordingStoreError(
            f"{file} is not under Asterisk's recording directory {recording_dir}: "
            "ARI's stored recordings cannot reach it (set CONSENTD_RECORDING_DIR under it)"
        )
    relative = path.relative_to(base)
    if not relative.suffix or not relative.stem:
        raise RecordingStoreError(f"{file}: a stored recording needs a name and an extension")
    return str(relative.with_suffix(""))


class AriStore:
    """Recordings Asterisk deletes and reports itself, over ARI's stored recordings.

    ``DELETE /recordings/stored/NAME`` makes Asterisk unlink the file (404: it was
    not there, which also confirms a purge); the empty-file check reads at most
    the WAV header's bytes of ``GET /recordings/stored/NAME/file`` (or its
    Content-Length) and closes.
    """

    kind = "ari"

    def __init__(
        self,
        ari: AriClient,
        recording_dir: str = ASTERISK_RECORDING_DIR,
        *,
        retry_seconds: float = 10.0,
    ) -> None:
        """An ARI request that got no answer (Asterisk restarting, the connection
        lost) is sent again for ``retry_seconds``: each is idempotent, and a
        delete that did happen answers 404 the second time."""
        self._ari = ari
        self._dir = recording_dir
        self._retry_seconds = retry_seconds

    async def _retrying(self, request: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_seconds
        delay = 0.2
        while True:
            try:
                return await request()
            except AriUnavailable:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise
                await asyncio.sleep(min(delay, remaining))  # the last try at the deadline
                delay = min(delay * 2, 2.0)

    def _name(self, file: str) -> str:
        # Flat names need no escaping; one in a subdirectory carries its "/" as %2F,
        # which Asterisk's ARI router decodes after splitting the path.
        return quote(stored_name(file, self._dir), safe="")

    async def delete(self, file: str) -> bool:
        name = self._name(file)
        return await self._retrying(lambda: self._ari.delete_stored_recording(name))

    async def _size(self, file: str, limit: int) -> int | None:
        """The stored file's size, read no further than ``limit`` bytes."""
        name = self._name(file)
        return await self._retrying(lambda: self._ari.stored_recording_size(name, limit))

    async def holds_no_audio(self, file: str) -> bool | None:
        size = await self._size(file, WAV_HEADER_BYTES + 1)
        return None if size is None else size <= WAV_HEADER_BYTES

    async def audio_seconds(self, file: str) -> float | None:
        size = await self._size(file, _LONGEST_READ_BYTES)
        return None if size is None else _seconds(size)


def _seconds(size: int) -> float:
    return max(0, size - WAV_HEADER_BYTES) / WAV_BYTES_PER_SECOND


async def wait_and_delete(store: RecordingStore, file: str, grace: float) -> bool:
    """Delete ``file``; MixMonitor may create it a moment after it starts, so a file
    not there yet is tried again for ``grace`` seconds. True when one was deleted.

    After the hangup the runner calls the store's ``delete`` once more: a file
    that came back (a late flush) is deleted again, and "not there" confirms it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while True:
        if await store.delete(file):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
