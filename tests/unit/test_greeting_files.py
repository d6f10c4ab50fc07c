"""Operators' greeting files: converted with sox, cached by content, refused with a reason.

Inputs are made with the real sox in tmp_path; nothing about the conversion is
faked. Only the cache test replaces subprocess.run, to prove sox is not run.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import struct
import subprocess
import wave
from pathlib import Path
from typing import Any

import pytest

from consentd import greeting_files
from consentd.greeting_files import (
    BUNDLED_LANGUAGES,
    LEGACY_BUNDLED_NAMES,
    GreetingCategory,
    GreetingFileError,
    Problem,
    bundled_greeting,
    bundled_languages,
    check_category,
    describe_duration,
    greeting_duration,
    prepare_greeting,
)

REPO = Path(__file__).resolve().parents[2]
SOUNDS = REPO / ".cache" / "sounds"

if shutil.which("sox") is None:  # pragma: no cover
    pytest.fail("sox is not installed: run make setup", pytrace=False)


def sox_has_mp3() -> bool:
    out = subprocess.run(["sox", "-h"], capture_output=True, text=True, check=False).stdout
    formats = next((line for line in out.splitlines() if line.startswith("AUDIO FILE FORMATS")), "")
    return "mp3" in formats.split()


def tone(path: Path, seconds: float, *fmt: str, freq: int = 440) -> Path:
    """A sine tone written by sox with the given output options (e.g. -r 48000 -c 2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["sox", "-n", *fmt, str(path), "synth", str(seconds), "sine", str(freq), "vol", "0.5"],
        check=True,
        capture_output=True,
    )
    return path


def prepare(path: Path, tmp_path: Path, max_seconds: float = 120.0) -> Any:
    return prepare_greeting(path, max_seconds=max_seconds, cache_dir=tmp_path / "cache")


def refused(path: Path, tmp_path: Path, max_seconds: float = 120.0) -> GreetingFileError:
    with pytest.raises(GreetingFileError) as caught:
        prepare(path, tmp_path, max_seconds)
    error = caught.value
    assert str(path) in str(error), "the message must name the file"
    assert error.path == path
    return error


def rms(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        raw = wav.readframes(wav.getnframes())
    samples = struct.unpack(f"<{len(raw) // 2}h", raw)
    return math.sqrt(sum(s * s for s in samples) / len(samples)) / 32768


# ---------------------------------------------------------------- conversions

FORMATS = {
    "48 kHz stereo 16-bit": ("x.wav", ["-r", "48000", "-c", "2", "-b", "16"]),
    "44.1 kHz stereo 16-bit": ("x.wav", ["-r", "44100", "-c", "2", "-b", "16"]),
    "22.05 kHz mono 8-bit unsigned": ("x.wav", ["-r", "22050", "-c", "1", "-b", "8"]),
    "16 kHz mono 24-bit": ("x.wav", ["-r", "16000", "-c", "1", "-b", "24"]),
    "48 kHz stereo 32-bit float": ("x.wav", ["-r", "48000", "-c", "2", "-e", "floating-point"]),
    "8 kHz mono 16-bit (already playable)": ("x.wav", ["-r", "8000", "-c", "1", "-b", "16"]),
    "upper-case extension": ("X.WAV", ["-r", "11025", "-c", "1", "-b", "16"]),
}


@pytest.mark.parametrize(("name", "fmt"), FORMATS.values(), ids=list(FORMATS))
def test_any_wav_becomes_8k_mono_16bit_with_its_length(
    tmp_path: Path, name: str, fmt: list[str]
) -> None:
    source = tone(tmp_path / name, 2.5, *fmt)
    prepared = prepare(source, tmp_path)
    assert prepared.source == source
    assert prepared.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert prepared.path == tmp_path / "cache" / f"{prepared.sha256[:24]}.wav"
    with wave.open(str(prepared.path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        assert wav.getnframes() == pytest.approx(2.5 * 8000, abs=8)
    assert prepared.duration == pytest.approx(2.5, abs=0.01)
    # The tone survives (a downmix or width change that lost the audio would be silent).
    assert rms(prepared.path) == pytest.approx(0.5 / math.sqrt(2), rel=0.1)


@pytest.mark.skipif(not sox_has_mp3(), reason="sox cannot write MP3: run make setup")
def test_mp3_is_converted(tmp_path: Path) -> None:
    source = tone(tmp_path / "welcome.mp3", 3.0, "-r", "44100", "-c", "2")
    prepared = prepare(source, tmp_path)
    with wave.open(str(prepared.path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
    # MP3 frames pad the start and end by a few tens of milliseconds.
    assert prepared.duration == pytest.approx(3.0, abs=0.1)
    assert rms(prepared.path) > 0.2


def test_wav_with_streaming_header_is_read_to_the_end(tmp_path: Path) -> None:
    """Writers that cannot seek leave the data size at 0xFFFFFFFF: not a truncated file."""
    source = tone(tmp_path / "stream.wav", 1.5, "-r", "16000", "-c", "1", "-b", "16")
    data = bytearray(source.read_bytes())
    at = data.find(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFFF)
    source.write_bytes(bytes(data))
    assert prepare(source, tmp_path).duration == pytest.approx(1.5, abs=0.01)


# ---------------------------------------------------------------- the cache


def test_second_load_uses_the_cache_without_running_sox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tone(tmp_path / "in.wav", 1.0, "-r", "44100", "-c", "2")
    first = prepare(source, tmp_path)
    mtime = first.path.stat().st_mtime_ns

    def no_sox(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"sox ran again: {args}")

    monkeypatch.setattr(greeting_files.subprocess, "run", no_sox)
    second = prepare(source, tmp_path)
    assert second == first
    assert second.path.stat().st_mtime_ns == mtime
    # Same bytes under another name: same cache entry, still no sox.
    copy = tmp_path / "copy.wav"
    shutil.copyfile(source, copy)
    assert prepare(copy, tmp_path).path == first.path


def test_changed_content_is_converted_again(tmp_path: Path) -> None:
    source = tone(tmp_path / "in.wav", 1.0, "-r", "44100")
    first = prepare(source, tmp_path)
    tone(source, 2.0, "-r", "44100")
    second = prepare(source, tmp_path)
    assert second.sha256 != first.sha256
    assert second.path != first.path
    assert second.duration == pytest.approx(2.0, abs=0.01)


def test_a_damaged_cache_entry_is_replaced(tmp_path: Path) -> None:
    source = tone(tmp_path / "in.wav", 1.0, "-r", "44100")
    first = prepare(source, tmp_path)
    first.path.write_bytes(b"not audio")
    again = prepare(source, tmp_path)
    assert again.path == first.path
    assert greeting_duration(again.path) == pytest.approx(1.0, abs=0.01)


def test_conversion_leaves_no_temporary_files(tmp_path: Path) -> None:
    good = tone(tmp_path / "in.wav", 1.0, "-r", "44100")
    bad = tmp_path / "bad.wav"
    bad.write_text("hello\n")
    prepare(good, tmp_path)
    with pytest.raises(GreetingFileError):
        prepare(bad, tmp_path)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        f"{hashlib.sha256(good.read_bytes()).hexdigest()[:24]}.wav"
    ]


# ---------------------------------------------------------------- refusals


def test_missing_file(tmp_path: Path) -> None:
    error = refused(tmp_path / "nope.wav", tmp_path)
    assert error.problem is Problem.MISSING
    assert "does not exist" in str(error)


def test_directory_is_not_a_greeting(tmp_path: Path) -> None:
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    error = refused(folder, tmp_path)
    assert error.problem is Problem.MISSING
    assert "not a regular file" in str(error)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tone(tmp_path / "secret.wav", 1.0)
    if os.geteuid() == 0:  # root reads everything: ask the access check itself
        monkeypatch.setattr(greeting_files.os, "access", lambda *a, **k: False)
    else:  # pragma: no cover - the suite runs as root under make test
        source.chmod(0)
    error = refused(source, tmp_path)
    assert error.problem is Problem.NOT_READABLE
    assert "not readable" in str(error)


def test_empty_file(tmp_path: Path) -> None:
    source = tmp_path / "empty.wav"
    source.touch()
    error = refused(source, tmp_path)
    assert error.problem is Problem.EMPTY
    assert "empty (0 bytes)" in str(error)


def test_wav_without_audio_frames(tmp_path: Path) -> None:
    source = tmp_path / "silent.wav"
    with wave.open(str(source), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
    error = refused(source, tmp_path)
    assert error.problem is Problem.EMPTY
    assert "contains no audio" in str(error)


def test_truncated_wav(tmp_path: Path) -> None:
    source = tone(tmp_path / "cut.wav", 2.0, "-r", "48000", "-c", "2")
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    error = refused(source, tmp_path)
    assert error.problem is Problem.CORRUPT
    assert "truncated" in str(error)


def test_wav_cut_inside_its_header(tmp_path: Path) -> None:
    source = tone(tmp_path / "stub.wav", 2.0, "-r", "48000")
    source.write_bytes(source.read_bytes()[:30])
    error = refused(source, tmp_path)
    assert error.problem is Problem.CORRUPT
    assert "corrupt or not a supported audio file: sox: " in str(error)


def test_text_file_named_wav(tmp_path: Path) -> None:
    source = tmp_path / "notes.wav"
    source.write_text("press 3 to consent\n")
    error = refused(source, tmp_path)
    assert error.problem is Problem.CORRUPT
    # sox's own one-line reason, without its program path or a second copy of the file name
    assert str(error) == (
        f"greeting file {str(source)!r} is corrupt or not a supported audio file: "
        "sox: can't open input file: WAVE: RIFF header not found"
    )


def test_text_file_named_mp3(tmp_path: Path) -> None:
    source = tmp_path / "notes.mp3"
    source.write_text("press 3 to consent\n" * 50)
    error = refused(source, tmp_path)
    assert error.problem is Problem.CORRUPT
    assert "sox: " in str(error)


def test_mp3_without_sox_support_names_the_package() -> None:
    reason = greeting_files._sox_failure(
        Path("/x/a.mp3"), "sox FAIL formats: no handler for file extension `mp3'\n"
    )
    assert "libsox-fmt-mp3" in reason


def test_too_long(tmp_path: Path) -> None:
    source = tone(tmp_path / "long.wav", 3.0, "-r", "16000")
    error = refused(source, tmp_path, max_seconds=2.5)
    assert error.problem is Problem.TOO_LONG
    assert "is 3.0 s long" in str(error)
    assert "max_greeting_seconds=2.5" in str(error)
    # The limit applies on a cache hit too, and a higher limit accepts the same file.
    assert refused(source, tmp_path, max_seconds=2.0).problem is Problem.TOO_LONG
    assert prepare(source, tmp_path, max_seconds=3.5).duration == pytest.approx(3.0, abs=0.01)


def test_default_limit_is_two_minutes(tmp_path: Path) -> None:
    assert greeting_files.DEFAULT_MAX_GREETING_SECONDS == 120.0
    source = tone(tmp_path / "long.wav", 121, "-r", "8000")
    error = refused(source, tmp_path, max_seconds=greeting_files.DEFAULT_MAX_GREETING_SECONDS)
    assert "2 min 1.0 s" in str(error)


@pytest.mark.parametrize("name", ["greeting.ogg", "greeting.txt", "greeting", "greeting.wav.bak"])
def test_wrong_extension(tmp_path: Path, name: str) -> None:
    source = tone(tmp_path / "real.wav", 1.0)
    renamed = source.rename(tmp_path / name)
    error = refused(renamed, tmp_path)
    assert error.problem is Problem.WRONG_EXTENSION
    assert "must be a .wav or .mp3 file" in str(error)


# ---------------------------------------------------------------- categories

MENU = (GreetingCategory.IVR, GreetingCategory.IVR_INVALID)


def test_category_allowed_at_its_place() -> None:
    assert check_category(Path("m.wav"), "ivr", MENU, 'menu "main"') is GreetingCategory.IVR


def test_category_not_played_at_that_place() -> None:
    with pytest.raises(GreetingFileError) as caught:
        check_category(Path("/g/hold.wav"), "hold", MENU, 'menu "main"')
    message = str(caught.value)
    assert caught.value.problem is Problem.WRONG_CATEGORY
    assert "'/g/hold.wav'" in message
    assert "'hold', which menu \"main\" does not play (allowed there: ivr, ivr_invalid)" in message


def test_unknown_category() -> None:
    with pytest.raises(GreetingFileError) as caught:
        check_category(Path("/g/x.wav"), "opt_inn", MENU, 'menu "main"')
    assert "'opt_inn', which is not a greeting category" in str(caught.value)


# ---------------------------------------------------------------- bundled set


def test_bundled_greeting_path() -> None:
    path = bundled_greeting(Path("/sounds"), "fr", GreetingCategory.CALL_RECORDING_OPT_OUT)
    assert path == Path("/sounds/fr/consentd/call_recording_opt_out.wav")


def test_bundled_languages_need_every_category(tmp_path: Path) -> None:
    for lang in ("en", "xx"):
        for category in GreetingCategory:
            if lang == "xx" and category is GreetingCategory.IVR_INVALID:
                continue
            tone(bundled_greeting(tmp_path, lang, category), 0.1)
    (tmp_path / "moh").mkdir()
    assert bundled_languages(tmp_path) == ["en"]
    assert bundled_languages(tmp_path / "absent") == []


def test_setup_generated_every_bundled_greeting() -> None:
    """scripts/setup.sh made the whole set; short, playable, and the old names as copies."""
    if not SOUNDS.is_dir():
        pytest.fail(f"{SOUNDS} is missing: run make setup")
    assert bundled_languages(SOUNDS) == sorted(BUNDLED_LANGUAGES)
    for lang in BUNDLED_LANGUAGES:
        for category in GreetingCategory:
            seconds = greeting_duration(bundled_greeting(SOUNDS, lang, category))
            assert seconds is not None, f"{lang}/{category} is not 8 kHz mono 16-bit"
            assert 1.0 <= seconds <= 12.0, f"{lang}/{category}: {seconds} s"
        for old, new in LEGACY_BUNDLED_NAMES.items():
            old_path = SOUNDS / lang / "consentd" / f"{old}.wav"
            assert old_path.read_bytes() == bundled_greeting(SOUNDS, lang, new).read_bytes()


def test_describe_duration() -> None:
    assert describe_duration(None) == "?"
    assert describe_duration(4.24) == "4.2 s"
    assert describe_duration(125.0) == "2 min 5.0 s"
