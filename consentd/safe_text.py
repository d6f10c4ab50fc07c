"""Text from callers and files, made safe to store, show on a terminal and log.

Caller IDs and dialled numbers come from the network (SIP From and
Request-URI, through Asterisk), YAML keys and file names from files anyone
may have written. Any of them may hold terminal escapes (ESC [2J clears the
screen, OSC sequences set the window title or write the clipboard), other
control characters, bidirectional overrides that reorder what is shown, or
lone surrogates that cannot even be encoded.

One rule everywhere: a character ``str.isprintable()`` rejects (Unicode
categories Cc, Cf, Cs, Co, Cn, Zl, Zp, and every space but U+0020) is
replaced by its escape ``\\uXXXX`` (two, a surrogate pair, above U+FFFF).
The escape is plain ASCII, shows what was sent, and is also a valid JSON
string escape, so a JSON line that passes through stays valid JSON.
"""

from __future__ import annotations

import functools
import re
from typing import IO, Any

#: Longest caller ID or dialled number kept (E.164 has at most 16 characters;
#: Asterisk cuts extensions at 79). Longer values are cut and end in ``ELLIPSIS``.
NETWORK_TEXT_LIMIT = 64
ELLIPSIS = "\u2026"


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


@functools.lru_cache(maxsize=8)
def _ascii_unsafe(keep: str) -> re.Pattern[str]:
    unsafe = "".join(chr(c) for c in [*range(0x20), 0x7F] if chr(c) not in keep)
    return re.compile(f"[{re.escape(unsafe)}]")


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with every non-printable character but those in ``keep`` escaped."""
    if text.isprintable():
        return text
    if text.isascii():  # the common case (JSON, tables): a regular expression, at C speed
        return _ascii_unsafe(keep).sub(lambda m: _escape(m.group()), text)
    return "".join(ch if ch.isprintable() or ch in keep else _escape(ch) for ch in text)


def clean_network_text(value: object, limit: int = NETWORK_TEXT_LIMIT) -> str:
    """A caller ID or dialled number as consentd keeps, shows and logs it.

    Escaped (see the module), then cut to ``limit`` characters: a longer value
    keeps its first ``limit - 1`` and ends in an ellipsis, never in half an
    escape. A value that is already printable and short is returned unchanged,
    so a real E.164 number still finds its policy, and a hostile one never
    becomes another (escapes and the ellipsis cannot be in a policy's number).
    """
    text = "" if value is None else str(value)
    if len(text) <= limit and text.isprintable():
        return text
    pieces = [ch if ch.isprintable() else _escape(ch) for ch in text[: limit + 1]]
    if len(text) <= limit and sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    kept, used = [], 0
    for piece in pieces:
        if used + len(piece) > limit - 1:
            break
        kept.append(piece)
        used += len(piece)
    return "".join(kept) + ELLIPSIS


class SafeStream:
    """A text stream that escapes control characters (but newlines and tabs) it is given.

    The CLI puts one around stdout and stderr, so no output path of any
    command can send a terminal escape from a caller ID, a YAML key or a file
    name. Everything else (``flush``, ``isatty``, ``encoding``) is the stream's.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(escape_controls(text, keep="\n\t"))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
