"""Daemon settings, from ``CONSENTD_*`` environment variables or command-line flags.

There are no default secrets. The ARI password, the AMI secret, the database
URL and the API token come from ``CONSENTD_<NAME>`` or from a file named by
``CONSENTD_<NAME>_FILE`` (its contents, stripped: systemd credentials, Docker
secrets). ``consentd run`` refuses to start while any of them is missing.
Everything else defaults to what ``make up`` starts on loopback.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "CONSENTD_"

#: Settings whose variable set empty turns the feature off (Asterisk's files there
#: are out of consentd's reach) instead of meaning the default.
EMPTY_MEANS_OFF = ("asterisk_config_dir", "fallback_log")

#: Where MixMonitor writes by default: beside Asterisk's disk (files), or under
#: Asterisk's recording directory, where ARI's stored recordings reach (ari).
DEFAULT_RECORDING_DIRS = {
    "files": "/var/spool/asterisk/monitor",
    "ari": "/var/spool/asterisk/recording",
}

#: Settings that may come from ``CONSENTD_<NAME>_FILE`` and are never logged.
SECRET_FIELDS = (
    "ari_password",
    "ami_secret",
    "database_url",
    "database_password",
    "api_token",
    "webhook_secret",
    "migration_database_url",
    "migration_database_password",
)
#: What ``consentd run`` needs. A database password is optional: it may be in
#: the URL, in a .pgpass file, or not needed (peer authentication).
RUN_SECRETS = ("ari_password", "ami_secret", "database_url", "api_token")


#: Shortest API token accepted when the HTTP API listens beyond loopback.
MIN_EXPOSED_TOKEN = 32


def is_loopback(host: str) -> bool:
    """Whether ``host`` (CONSENTD_HTTP_HOST) binds loopback only. Any name but
    ``localhost``, an empty host and 0.0.0.0 or :: (every address) are not."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


class SettingsProblem(Exception):
    """A setting that cannot be used, explained in one line (never with a secret's value)."""


class MissingSecrets(SettingsProblem):
    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        self.variables = [env_name(f) for f in fields]
        how = (
            f"set it, or {self.variables[0]}_FILE to a file holding it"
            if len(fields) == 1
            else "set each, or NAME_FILE to a file holding it"
        )
        super().__init__(f"missing {', '.join(self.variables)} ({how})")


class _SecretFiles(PydanticBaseSettingsSource):
    """``CONSENTD_<NAME>_FILE``: the secret is the named file's contents, stripped."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every secret at once

    def __call__(self) -> dict[str, Any]:
        return read_secret_files(os.environ)


def read_secret_files(environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for field in SECRET_FIELDS:
        name = env_name(field)
        file_var = f"{name}_FILE"
        path = environ.get(file_var)
        if not path:
            continue
        if environ.get(name):
            raise SettingsProblem(f"both {name} and {file_var} are set; set only one of them")
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SettingsProblem(f"{file_var}={path}: cannot read it ({reason})") from None
        if not text:
            raise SettingsProblem(f"{file_var}={path}: the file is empty")
        values[field] = text
    return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", env_ignore_empty=True
    )

    policies: Path = Path("/etc/consentd/policies.yaml")
    node: str = Field(default_factory=lambda: socket.gethostname() or "pbx")

    ari_url: str = "http://127.0.0.1:8088/ari"
    ari_user: str = "consentd"
    ari_password: SecretStr | None = None
    ari_app: str = "consentd"

    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "consentd"
    ami_secret: SecretStr | None = None
    ami_timeout: float = 5.0
    # AMI sessions for MixMonitor actions (the events' session included):
    # Asterisk works each session's actions in order, in one thread.
    ami_connections: int = Field(default=4, ge=1, le=32)

    # A URL may hold a password, so the whole URL counts as a secret; the
    # password may also come on its own (CONSENTD_DATABASE_PASSWORD[_FILE]).
    database_url: SecretStr | None = None
    database_password: SecretStr | None = None
    # The schema owner's, for `consentd migrate` only: the daemon's role may
    # append to the ledger and read it, nothing more (no DDL, so no migrations).
    migration_database_url: SecretStr | None = None
    migration_database_password: SecretStr | None = None
    journal_dir: Path = Path("/var/lib/consentd/journal")

    # The token clients of the HTTP API present.
    api_token: SecretStr | None = None

    # Where Asterisk's file system appears on this host ("/" unless Asterisk is chrooted).
    asterisk_root: Path = Path("/")
    # How refused audio is deleted and empty files removed (consentd/recording_store.py):
    # "files" through the file system under asterisk_root (a shared disk), "ari" by
    # Asterisk itself over ARI's stored recordings (consentd on another host).
    recording_store: Literal["files", "ari"] = "files"
    # Paths as Asterisk sees them. The recording directory's default follows the
    # store (DEFAULT_RECORDING_DIRS); with "ari" it must lie under Asterisk's own.
    recording_dir: str = DEFAULT_RECORDING_DIRS["files"]
    sounds_dir: str = "/var/lib/asterisk/sounds"
    # Copy operators' greetings into sounds_dir (under asterisk_root). False: they
    # are expected there already (`consentd greetings --export DIR` makes the files).
    install_greetings: bool = True
    # consentd writes the agents' pause/resume codes here (consentd-features.conf,
    # included by features.conf); empty: the operator installs that file.
    asterisk_config_dir: str = "/etc/asterisk"
    # The dialplan's log of calls handled while consentd was away (extensions.conf,
    # [consentd-fallback-log]); read into the ledger by consentd/fallback_calls.py.
    # Empty: not read (consentd cannot reach Asterisk's log directory).
    fallback_log: str = "/var/log/asterisk/consentd-fallback.log"
    fallback_poll_seconds: float = 3.0
    # Refused audio whose delete failed during its call is deleted again this
    # often after the call (consentd/owed_deletions.py).
    delete_retry_seconds: float = Field(default=30.0, gt=0)

    # Overload: calls consentd cannot serve in time go on unrecorded through the
    # dialplan (context consentd-unrecorded) instead of waiting.
    shed_after_seconds: float = 2.0
    max_calls: int = 10_000
    # Freeze what start-up created so garbage collection never walks it again
    # (consentd/loop_health.py); false only to compare its effect.
    gc_freeze: bool = True
    # HTTP connections to Asterisk's ARI server (default sessionlimit 100):
    # keep most of them free for other clients.
    ari_connections: int = 16

    http_host: str = "127.0.0.1"
    http_port: int = 8090

    # Webhooks (consentd/webhooks.py): comma-separated URLs, the HMAC secret, and
    # the delivery's timeout, longest retry interval and age at which a row expires.
    webhook_urls: str = ""
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = 10.0
    webhook_retry_max_seconds: float = 300.0
    webhook_max_age_seconds: float = 259_200.0

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "info"

    @model_validator(mode="before")
    @classmethod
    def _recording_dir_of_store(cls, data: Any) -> Any:
        """CONSENTD_RECORDING_DIR unset: the store's directory (DEFAULT_RECORDING_DIRS).
        CONSENTD_ASTERISK_CONFIG_DIR or CONSENTD_FALLBACK_LOG set empty: off (every
        other empty variable counts as unset)."""
        if isinstance(data, dict):
            for field in EMPTY_MEANS_OFF:
                if field not in data and os.environ.get(env_name(field)) == "":
                    data = {**data, field: ""}
        if isinstance(data, dict) and not data.get("recording_dir"):
            store = str(data.get("recording_store") or "files")
            if store in DEFAULT_RECORDING_DIRS:
                data = {**data, "recording_dir": DEFAULT_RECORDING_DIRS[store]}
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier wins: arguments, then CONSENTD_X, then CONSENTD_X_FILE (both at
        # once is refused by _SecretFiles).
        return (init_settings, env_settings, _SecretFiles(settings_cls))

    def require_token_if_exposed(self) -> None:
        """A non-loopback ``http_host`` serves callers' numbers to the network: refuse
        it without an API token, or with one shorter than ``MIN_EXPOSED_TOKEN``."""
        if is_loopback(self.http_host):
            return
        exposed = f"CONSENTD_HTTP_HOST={self.http_host} is not a loopback address"
        token = self.secret_or_none("api_token")
        if not token:
            raise SettingsProblem(
                f"{exposed}: the HTTP API would serve callers' numbers to the network; "
                "set CONSENTD_API_TOKEN (or CONSENTD_API_TOKEN_FILE), and put TLS in front "
                "of it, or bind to 127.0.0.1"
            )
        if len(token) < MIN_EXPOSED_TOKEN:
            raise SettingsProblem(
                f"{exposed}: the API token has {len(token)} characters, fewer than "
                f"{MIN_EXPOSED_TOKEN} (scripts/secrets.sh makes tokens of 48)"
            )

    def require_reachable_recordings(self) -> None:
        """With ``recording_store`` "ari", MixMonitor must write where ARI's stored
        recordings are: under Asterisk's recording directory."""
        if self.recording_store != "ari":
            return
        base = PurePosixPath(DEFAULT_RECORDING_DIRS["ari"])
        wanted = PurePosixPath(self.recording_dir)
        if ".." in wanted.parts or not wanted.is_relative_to(base):
            raise SettingsProblem(
                f"CONSENTD_RECORDING_DIR={self.recording_dir} is not under Asterisk's "
                f"recording directory {base}, where ARI's stored recordings are "
                "(CONSENTD_RECORDING_STORE=ari deletes through them); leave it unset or "
                "set a directory under it"
            )

    def missing(self, *fields: str) -> list[str]:
        return [f for f in fields if not self.secret_or_none(f)]

    def require(self, *fields: str) -> None:
        """Raise MissingSecrets naming every variable of ``fields`` that is not set."""
        missing = self.missing(*fields)
        if missing:
            raise MissingSecrets(missing)

    def secret(self, field: str) -> str:
        """The value of a secret setting; MissingSecrets when it is not set."""
        value = self.secret_or_none(field)
        if not value:
            raise MissingSecrets([field])
        return value

    def secret_or_none(self, field: str) -> str | None:
        if field not in SECRET_FIELDS:
            raise ValueError(f"{field} is not a secret setting")
        value: SecretStr | None = getattr(self, field)
        return value.get_secret_value() if value is not None else None
