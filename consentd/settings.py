"""Daemon settings, from ``CONSENTD_*`` environment variables or command-line flags.

The defaults are exactly what ``make up`` starts on loopback, so the CLI works
against the local stack with no flags at all.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONSENTD_", frozen=True, extra="ignore")

    policies: Path = Path("/etc/consentd/policies.yaml")
    node: str = Field(default_factory=lambda: socket.gethostname() or "pbx")

    ari_url: str = "http://127.0.0.1:8088/ari"
    ari_user: str = "consentd"
    ari_password: str = "consentd"
    ari_app: str = "consentd"

    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "consentd"
    ami_secret: str = "consentd"
    ami_timeout: float = 5.0

    database_url: str = "postgresql://consentd@127.0.0.1:55432/consentd"
    journal_dir: Path = Path("/var/lib/consentd/journal")

    # Where Asterisk's file system appears on this host ("/" unless Asterisk is chrooted).
    asterisk_root: Path = Path("/")
    # Paths as Asterisk sees them.
    recording_dir: str = "/var/spool/asterisk/monitor"
    sounds_dir: str = "/var/lib/asterisk/sounds"
    # The dialplan's log of calls handled while consentd was away (extensions.conf,
    # [consentd-fallback-log]); read into the ledger by consentd/fallback_calls.py.
    fallback_log: str = "/var/log/asterisk/consentd-fallback.log"
    fallback_poll_seconds: float = 3.0

    # Overload: calls consentd cannot serve in time go on unrecorded through the
    # dialplan (context consentd-unrecorded) instead of waiting.
    shed_after_seconds: float = 2.0
    max_calls: int = 10_000
    # HTTP connections to Asterisk's ARI server (default sessionlimit 100):
    # keep most of them free for other clients.
    ari_connections: int = 16

    http_host: str = "127.0.0.1"
    http_port: int = 8090

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "info"
