"""Greeting audio files: the bundled set, and operators' own files made playable.

Operators may hand in any WAV (any rate, channel count or sample width,
integer or float) or an MP3. Asterisk plays 8 kHz mono 16-bit signed WAV
natively, so every file is converted once with sox and kept in a cache under
the SHA-256 of its bytes: loading the same file again (a reload, a restart)
does not run sox, and the hash doubles as the ledger's proof of exactly which
audio the caller heard.

Every problem is a :class:`GreetingFileError` naming the file and the reason,
so an operator can fix it without guessing. Nothing here uses asyncio: it runs
once per file at load, before any call.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
import wave
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

#: The longest greeting accepted unless the operator says otherwise.
DEFAULT_MAX_GREETING_SECONDS = 120.0

#: What Asterisk plays without transcoding: (rate, channels, bytes per sample).
PLAYABLE_SHAPE = (8000, 1, 2)

#: File name extensions an operator's greeting may have.
ACCEPTED_SUFFIXES = (".wav", ".mp3")

#: Languages ``scripts/setup.sh`` generates the whole bundled set for.
BUNDLED_LANGUAGES = ("en", "de", "fr")

SOX_TIMEOUT_SECONDS = 60.0

#: Directories (``:``-separated) greetings may come from besides the policy file's own.
GREETING_DIRS_VARIABLE = "CONSENTD_GREETING_DIRS"

#: Asterisk's spool (calls' recordings, voicemail) as Asterisk sees it: never a greeting.
ASTERISK_SPOOL = "/var/spool/asterisk"
DEFAULT_RECORDING_DIR = ASTERISK_SPOOL + "/monitor"


class GreetingCategory(StrEnum):
    """What a greeting is for; one bundled file per category and language."""

    AVAILABLE = "available"
    WAIT = "wait"
    HOLD = "hold"
    VOICEMAIL = "voicemail"
    IVR = "ivr"
    IVR_INVALID = "ivr_invalid"
    CALL_RECORDING_OPT_IN = "call_recording_opt_in"
    CALL_RECORDING_OPT_OUT = "call_recording_opt_out"
    #: Played to the callee of an agent's outbound call (outbound_announcement).
    OUTBOUND_NOTICE = "outbound_notice"


#: Bundled file names still played by older code, and the category each is a copy of.
LEGACY_BUNDLED_NAMES = {
    "opt_in": GreetingCategory.CALL_RECORDING_OPT_IN,
    "opt_out": GreetingCategory.CALL_RECORDING_OPT_OUT,
}


class Problem(StrEnum):
    """Why a greeting file was refused (``GreetingFileError.problem``)."""

    MISSING = "missing"
    NOT_READABLE = "not_readable"
    WRONG_EXTENSION = "wrong_extension"
    EMPTY = "empty"
    CORRUPT = "corrupt"
    TOO_LONG = "too_long"
    WRONG_CATEGORY = "wrong_category"
    OUTSIDE = "outside"
    RECORDING = "recording"


class GreetingFileError(ValueError):
    """A greeting file that cannot be played; the message names the file and the reason."""

    def __init__(self, path: Path, problem: Problem, reason: str) -> None:
        self.path = path
        self.problem = problem
        self.reason = reason
        super().__init__(f"greeting file {str(path)!r} {reason}")


@dataclass(frozen=True)
class PreparedGreeting:
    """An operator's greeting, converted and ready for Asterisk."""

    source: Path
    sha256: str  # of the source file's bytes
    path: Path  # the converted 8 kHz mono 16-bit WAV in the cache
    duration: float  # seconds

    @property
    def name(self) -> str:
        """The cached file's name without extension, as Asterisk's ``sound:`` URIs use it."""
        return self.path.stem


@dataclass(frozen=True)
class GreetingPlaces:
    """Where operators' greeting files may come from.

    A greeting named in a policy file lies in that file's directory or in one of
    ``allowed`` (``CONSENTD_GREETING_DIRS``), also once every symbolic link on
    its way is resolved; and never in ``forbidden``, Asterisk's spool, where
    the calls' recordings and voicemail are. The refusal reads the same whether
    or not the file exists, so a policy file cannot probe the file system.
    """

    allowed: tuple[Path, ...] = ()
    forbidden: tuple[Path, ...] = ()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> GreetingPlaces:
        """``CONSENTD_GREETING_DIRS``, and the spool and recording directory under
        ``CONSENTD_ASTERISK_ROOT`` (``CONSENTD_RECORDING_DIR``), as the daemon sees them."""
        env = os.environ if environ is None else environ
        allowed = tuple(
            Path(entry) for entry in env.get(GREETING_DIRS_VARIABLE, "").split(":") if entry
        )
        root = Path(env.get("CONSENTD_ASTERISK_ROOT") or "/")
        recordings = env.get("CONSENTD_RECORDING_DIR") or DEFAULT_RECORDING_DIR
        forbidden = tuple(
            root / inside.lstrip("/") for inside in dict.fromkeys((ASTERISK_SPOOL, recordings))
        )
        return cls(allowed, forbidden)

    def confine(self, base_dir: Path, written: Path) -> Path:
        """The file a policy file in ``base_dir`` names as ``written``, symbolic links
        resolved; GreetingFileError (reported as ``written``) if it may not be a greeting."""
        base = Path(os.path.abspath(base_dir))
        roots = [base, *(Path(os.path.abspath(d)) for d in self.allowed)]
        real: Path | None = None
        try:
            path = Path(os.path.normpath(base / written))
            real_roots = [r.resolve() for r in roots]
            # Lexically first, so that a path outside is never looked at; then with
            # every symbolic link resolved, as the kernel will open it.
            if _under(path, roots + real_roots):
                real = path.resolve()
                forbidden = [*self.forbidden, *(f.resolve() for f in self.forbidden)]
        except (OSError, RuntimeError, ValueError):  # a symbolic link loop, a NUL byte
            real = None
        if real is None or not _under(real, real_roots):
            shown = ", ".join(str(r) for r in roots)
            raise GreetingFileError(
                written,
                Problem.OUTSIDE,
                f"is outside the directories greetings may come from ({shown}; "
                f"more with {GREETING_DIRS_VARIABLE})",
            )
        if _under(real, forbidden) or _under(path, forbidden):
            raise GreetingFileError(
                written,
                Problem.RECORDING,
                "is in Asterisk's spool of recordings and voicemail, which can never be a greeting",
            )
        return real


def _under(path: Path, roots: Collection[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def cache_name(sha256: str) -> str:
    return f"{sha256[:24]}.wav"


def prepare_greeting(source: Path, *, max_seconds: float, cache_dir: Path) -> PreparedGreeting:
    """Check ``source`` and return it as a cached 8 kHz mono 16-bit WAV.

    Raises :class:`GreetingFileError` for a file that is missing, not
    readable, not .wav/.mp3, empty, corrupt or unsupported, or longer than
    ``max_seconds``.
    """
    try:
        digest = _source_digest(source)
    except OSError as exc:  # a name longer than the file system takes, an I/O error
        reason = f"cannot be read ({exc.strerror or exc})"
        raise GreetingFileError(source, Problem.NOT_READABLE, reason) from None
    cached = cache_dir / cache_name(digest)
    duration = _playable_duration(cached)
    if duration is None:
        try:
            duration = _convert(source, cached)
        except OSError as exc:  # the cache, not the file: unwritable, full
            raise GreetingFileError(
                source,
                Problem.NOT_READABLE,
                f"could not be converted into the greeting cache {cache_dir}: "
                f"{exc.strerror or exc}",
            ) from None
    if duration <= 0:
        raise GreetingFileError(source, Problem.EMPTY, "contains no audio (0 frames)")
    if duration > max_seconds:
        raise GreetingFileError(
            source,
            Problem.TOO_LONG,
            f"is {describe_duration(duration)} long, longer than the limit "
            f"max_greeting_seconds={max_seconds:g}",
        )
    return PreparedGreeting(source=source, sha256=digest, path=cached, duration=duration)


def check_category(
    source: Path,
    category: str,
    allowed: Collection[GreetingCategory],
    place: str,
) -> GreetingCategory:
    """``category`` as a :class:`GreetingCategory`, if a greeting of it may be used at ``place``.

    ``place`` names where the greeting was set, for the message (e.g. ``menu "main"``).
    """
    names = ", ".join(c.value for c in allowed)
    try:
        parsed = GreetingCategory(category)
    except ValueError:
        raise GreetingFileError(
            source,
            Problem.WRONG_CATEGORY,
            f"is set as {category!r}, which is not a greeting category (allowed at {place}: "
            f"{names})",
        ) from None
    if parsed not in allowed:
        raise GreetingFileError(
            source,
            Problem.WRONG_CATEGORY,
            f"is set as {parsed.value!r}, which {place} does not play (allowed there: {names})",
        )
    return parsed


def _source_digest(source: Path) -> str:
    if not source.exists():
        raise GreetingFileError(source, Problem.MISSING, "does not exist")
    if not source.is_file():
        raise GreetingFileError(source, Problem.MISSING, "is not a regular file")
    if not os.access(source, os.R_OK):
        raise GreetingFileError(source, Problem.NOT_READABLE, "is not readable (permission denied)")
    suffix = source.suffix.lower()
    if suffix not in ACCEPTED_SUFFIXES:
        shown = f"{source.suffix!r}" if source.suffix else "no extension"
        raise GreetingFileError(
            source,
            Problem.WRONG_EXTENSION,
            f"has {shown}; a greeting must be a .wav or .mp3 file",
        )
    digest = hashlib.sha256()
    size = 0
    try:
        with source.open("rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise GreetingFileError(
            source, Problem.NOT_READABLE, f"is not readable: {exc.strerror or exc}"
        ) from None
    if size == 0:
        raise GreetingFileError(source, Problem.EMPTY, "is empty (0 bytes)")
    return digest.hexdigest()


def _playable_duration(path: Path) -> float | None:
    """Seconds of audio in ``path`` if Asterisk can play it as is, else None."""
    try:
        with wave.open(str(path), "rb") as wav:
            shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
            frames = wav.getnframes()
    except (wave.Error, EOFError, OSError):
        return None
    if shape != PLAYABLE_SHAPE:
        return None
    return frames / PLAYABLE_SHAPE[0]


def _convert(source: Path, target: Path) -> float:
    """Convert with sox into ``target`` (atomically); return its duration in seconds."""
    sox = shutil.which("sox")
    if sox is None:
        raise GreetingFileError(
            source, Problem.CORRUPT, "cannot be converted: sox is not installed (run make setup)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        rate, channels, width = PLAYABLE_SHAPE
        command = [
            sox,
            "--no-show-progress",
            "-V2",  # failures and warnings: "Premature EOF" marks a truncated WAV
            str(source),
            "-r",
            str(rate),
            "-c",
            str(channels),
            "-b",
            str(8 * width),
            "-e",
            "signed-integer",
            "-t",
            "wav",
            str(tmp),
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=SOX_TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            raise GreetingFileError(
                source,
                Problem.CORRUPT,
                f"could not be converted: sox took longer than {SOX_TIMEOUT_SECONDS:g} s",
            ) from None
        if done.returncode != 0:
            raise GreetingFileError(source, Problem.CORRUPT, _sox_failure(source, done.stderr))
        if "premature eof" in done.stderr.lower() and _wav_is_truncated(source):
            raise GreetingFileError(
                source,
                Problem.CORRUPT,
                "is truncated: its WAV header announces more audio than the file holds",
            )
        duration = _playable_duration(tmp)
        if duration is None:  # pragma: no cover - sox wrote something we asked it not to
            raise GreetingFileError(
                source, Problem.CORRUPT, "could not be converted: sox wrote an unreadable file"
            )
        os.chmod(tmp, 0o644)
        tmp.replace(target)
        return duration
    finally:
        tmp.unlink(missing_ok=True)


def _sox_failure(source: Path, stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fails = [line for line in lines if " FAIL " in f" {line} "]
    detail = (fails or lines or ["sox failed without a message"])[-1]
    # "/usr/bin/sox FAIL formats: can't open input file `/x/y.wav': WAVE: RIFF header not found"
    detail = "sox: " + re.sub(r" `[^']*'", "", re.sub(r"^.*?\bFAIL \S+: ", "", detail))
    if source.suffix.lower() == ".mp3" and "no handler" in detail:
        return (
            "is an MP3, but sox cannot read MP3 here "
            f"(install the Debian package libsox-fmt-mp3: run make setup): {detail}"
        )
    return f"is corrupt or not a supported audio file: {detail}"


def _wav_is_truncated(path: Path) -> bool:
    """Whether a RIFF/WAVE file's data chunk claims more bytes than follow it.

    Streaming writers leave the size at 0 or 0xFFFFFFFF because they could not
    seek back; sox reads such files to the end, and so do we.
    """
    try:
        with path.open("rb") as file:
            total = os.fstat(file.fileno()).st_size
            if file.read(4) != b"RIFF" or len(file.read(4)) != 4 or file.read(4) != b"WAVE":
                return False
            offset = 12
            while offset + 8 <= total:
                file.seek(offset)
                header = file.read(8)
                (size,) = struct.unpack("<I", header[4:])
                if header[:4] == b"data":
                    return size not in (0, 0xFFFFFFFF) and offset + 8 + size > total
                offset += 8 + size + (size & 1)
    except OSError:
        return False
    return False


def bundled_greeting(sounds_root: Path, language: str, category: GreetingCategory) -> Path:
    """Where ``scripts/setup.sh`` puts a bundled greeting: ``<root>/<lang>/consentd/<cat>.wav``."""
    return sounds_root / language / "consentd" / f"{GreetingCategory(category).value}.wav"


def bundled_languages(sounds_root: Path) -> list[str]:
    """Languages under ``sounds_root`` that have a bundled file for every category."""
    if not sounds_root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in sounds_root.iterdir()
        if all(bundled_greeting(sounds_root, entry.name, c).is_file() for c in GreetingCategory)
    )


def greeting_duration(path: Path) -> float | None:
    """Seconds of audio in a playable 8 kHz mono 16-bit WAV, or None if it is not one."""
    return _playable_duration(path)


def probe_duration(path: Path) -> float | None:
    """Seconds of audio in any file sox reads (WAV read directly), or None if unreadable.

    For listings: unlike :func:`prepare_greeting` it converts and caches nothing.
    """
    duration = _playable_duration(path)
    if duration is not None:
        return duration
    sox = shutil.which("sox")
    if sox is None or not path.is_file():
        return None
    try:
        done = subprocess.run(
            [sox, "--i", "-D", str(path)],
            capture_output=True,
            text=True,
            timeout=SOX_TIMEOUT_SECONDS,
            check=False,
        )
        return float(done.stdout.strip()) if done.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None


def describe_duration(seconds: float | None) -> str:
    """``4.2 s``, ``2 min 5.0 s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.1f} s"
