"""Which audio a call hears, and getting operators' own greetings where Asterisk can play them.

Asterisk may run in a chroot or container and sees only its own sounds
directory. Custom greetings are therefore copied into it under a name made
from their SHA-256, which also goes into the ledger as proof of exactly which
prompt the caller heard.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path, PurePosixPath

from consentd.call_model import Media
from consentd.policy import GreetingKind, NumberPolicy, PolicyBook

CUSTOM_DIR = "consentd-custom"


class GreetingLibrary:
    """Media URIs are absolute paths as Asterisk sees them: no reliance on astdatadir."""

    def __init__(self, sounds_dir: str, custom: dict[Path, Media]) -> None:
        self._sounds_dir = PurePosixPath(sounds_dir)
        self._custom = custom

    @classmethod
    def install(cls, book: PolicyBook, sounds_dir: str, asterisk_root: Path) -> GreetingLibrary:
        """Copy every custom greeting of ``book`` into Asterisk's sounds directory."""
        target_dir = asterisk_root / sounds_dir.lstrip("/") / CUSTOM_DIR
        custom: dict[Path, Media] = {}
        for source in sorted(book.custom_greeting_files()):
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
            name = digest[:24]
            target = target_dir / f"{name}.wav"
            if not target.exists():
                target_dir.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(".tmp")
                shutil.copyfile(source, tmp)
                tmp.replace(target)
            custom[source] = Media(
                uri=f"sound:{PurePosixPath(sounds_dir, CUSTOM_DIR, name)}",
                language="",
                source=str(source),
                sha256=digest,
            )
        return cls(sounds_dir, custom)

    def consent_greeting(self, policy: NumberPolicy) -> Media | None:
        kind = policy.greeting_kind
        if kind is None:
            return None
        return self.media(policy, kind)

    def media(self, policy: NumberPolicy, kind: GreetingKind) -> Media:
        path = policy.greetings.custom(kind)
        if path is not None:
            installed = self._custom[path]
            return Media(
                installed.uri, policy.language, installed.source, installed.sha256, kind.value
            )
        bundled = self._sounds_dir / policy.language / "consentd" / kind.value
        return Media(
            uri=f"sound:{bundled}", language=policy.language, source="bundled", kind=kind.value
        )

    def routed_greetings(self, policy: NumberPolicy) -> tuple[Media | None, Media | None]:
        """The availability and voicemail greetings of a group-routed number."""
        if policy.routing is None:
            return None, None
        return self.media(policy, GreetingKind.AVAILABLE), self.media(
            policy, GreetingKind.VOICEMAIL
        )
