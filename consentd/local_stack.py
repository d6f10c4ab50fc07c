"""The local development stack as ``scripts/stack.sh up`` describes it in ``.state/stack.json``.

That file (mode 0600) holds every endpoint and credential of the stack; the
passwords and the token are generated per checkout (``scripts/secrets.sh``).
Tests, the benchmark, the demo and the CLI's no-flag defaults read it instead
of constants. ``$CONSENTD_STACK_JSON`` names another file.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STACK_JSON_VARIABLE = "CONSENTD_STACK_JSON"


def stack_file() -> Path:
    return Path(os.environ.get(STACK_JSON_VARIABLE) or REPO / ".state" / "stack.json")


class StackFileMissing(Exception):
    pass


@dataclass(frozen=True)
class LocalStack:
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path | None = None) -> LocalStack:
        """The stack's description; StackFileMissing when ``make up`` has not written it."""
        file = path or stack_file()
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StackFileMissing(
                f"{file} does not exist: start the stack with `make up`"
            ) from None
        return cls(data)

    @classmethod
    def find(cls, path: Path | None = None) -> LocalStack | None:
        try:
            return cls.load(path)
        except StackFileMissing:
            return None

    @property
    def database_url(self) -> str:
        """The daemon's role (consentd): it may append to the ledger and read it."""
        return str(self.data["database_url"])

    @property
    def migration_database_url(self) -> str:
        """The schema owner's (consentd_owner): migrations and other DDL."""
        return str(self.data["migration_database_url"])

    @property
    def ari_url(self) -> str:
        return str(self.data["ari"]["url"])

    @property
    def ari_user(self) -> str:
        return str(self.data["ari"]["user"])

    @property
    def ari_password(self) -> str:
        return str(self.data["ari"]["password"])

    def ari_headers(self) -> dict[str, str]:
        """HTTP Basic credentials for ARI, as a ready header."""
        pair = f"{self.ari_user}:{self.ari_password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}

    @property
    def ami_host(self) -> str:
        return str(self.data["ami"]["host"])

    @property
    def ami_port(self) -> int:
        return int(self.data["ami"]["port"])

    @property
    def ami_user(self) -> str:
        return str(self.data["ami"]["user"])

    @property
    def ami_secret(self) -> str:
        return str(self.data["ami"]["password"])

    @property
    def ami_tests(self) -> tuple[str, str]:
        """The end-to-end tests' own AMI user and secret (it may pause queue members)."""
        return str(self.data["ami_tests"]["user"]), str(self.data["ami_tests"]["password"])

    @property
    def http(self) -> str:
        return str(self.data["http"]).rstrip("/")

    @property
    def api_token(self) -> str:
        return str(self.data["api_token"])

    @property
    def sip(self) -> str:
        return str(self.data["sip"])

    def secrets(self) -> dict[str, str]:
        """Every password and token in the file, by where it sits (``ari.password``, ...)."""
        found = {
            "ari.password": self.ari_password,
            "ami.password": self.ami_secret,
            "ami_tests.password": self.ami_tests[1],
            "api_token": self.api_token,
        }
        for name, agent in self.data.get("agents", {}).items():
            found[f"agents.{name}.password"] = str(agent["password"])
        for key in ("database_url", "migration_database_url"):
            password = urllib.parse.urlsplit(str(self.data.get(key, ""))).password
            if password:
                found[f"{key}.password"] = urllib.parse.unquote(password)
        return found

    def daemon_environment(self) -> dict[str, str]:
        """What ``consentd run`` needs to run against this stack (values, for a child's env)."""
        return {
            "CONSENTD_ARI_URL": self.ari_url,
            "CONSENTD_ARI_USER": self.ari_user,
            "CONSENTD_ARI_PASSWORD": self.ari_password,
            "CONSENTD_AMI_HOST": self.ami_host,
            "CONSENTD_AMI_PORT": str(self.ami_port),
            "CONSENTD_AMI_USER": self.ami_user,
            "CONSENTD_AMI_SECRET": self.ami_secret,
            "CONSENTD_DATABASE_URL": self.database_url,
            "CONSENTD_API_TOKEN": self.api_token,
        }
