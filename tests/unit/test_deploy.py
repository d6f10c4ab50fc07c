"""Deployment files: the systemd units pass ``systemd-analyze verify`` without a
single warning, and compose.yaml is valid YAML wiring the three services."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from consentd.settings import RUN_SECRETS, env_name

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
SERVICE = UNITS / "consentd.service"
DROP_IN = UNITS / "asterisk.service.d" / "consentd.conf"
#: Debian's own asterisk.service, as the package in the Asterisk root ships it.
DEBIAN_ASTERISK_UNIT = (
    REPO / ".cache" / "asterisk-root" / "lib" / "systemd" / "system" / "asterisk.service"
)
#: Used when that root is not built: the lines of Debian's unit the drop-in meets.
STAND_IN_ASTERISK_UNIT = """\
[Unit]
Description=Asterisk PBX
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
ExecStart=/usr/sbin/asterisk -g -f -p -U asterisk -G asterisk
Restart=on-failure
WorkingDirectory=/var/lib/asterisk

[Install]
WantedBy=multi-user.target
"""


def _verify(*units: Path, unit_path: Path | None = None) -> list[str]:
    """systemd-analyze verify's complaints, one per line ([] when it has none)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: run `make setup` (Debian package systemd)")
    env = dict(os.environ)
    if unit_path is not None:
        env["SYSTEMD_UNIT_PATH"] = f"{unit_path}:"  # then the system's own directories
    result = subprocess.run(
        [tool, "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0 and not lines:
        lines.append(f"systemd-analyze verify exited {result.returncode}")
    return lines


def _asterisk_units(tmp_path: Path, drop_in: str) -> Path:
    """Debian's asterisk.service with our drop-in beside it, in a unit directory."""
    units = tmp_path / "units"
    (units / "asterisk.service.d").mkdir(parents=True)
    debian = (
        DEBIAN_ASTERISK_UNIT.read_text()
        if DEBIAN_ASTERISK_UNIT.exists()
        else STAND_IN_ASTERISK_UNIT
    )
    (units / "asterisk.service").write_text(debian)
    (units / "asterisk.service.d" / "consentd.conf").write_text(drop_in)
    return units


def _without_absent_asterisk(lines: list[str]) -> list[str]:
    """Asterisk lives in its root or image, not on this host: the one complaint
    that says so is expected (and only while /usr/sbin/asterisk is absent)."""
    if Path("/usr/sbin/asterisk").exists():
        return lines
    absent = "asterisk.service: Command /usr/sbin/asterisk is not executable: No such file"
    return [line for line in lines if not line.startswith(absent)]


def test_consentd_service_verifies_without_a_warning() -> None:
    assert _verify(SERVICE) == []


def test_the_asterisk_drop_in_verifies_without_a_warning(tmp_path: Path) -> None:
    units = _asterisk_units(tmp_path, DROP_IN.read_text())
    assert _without_absent_asterisk(_verify(units / "asterisk.service", unit_path=units)) == []


def test_the_check_fails_on_a_warning(tmp_path: Path) -> None:
    """The checks above would see a mistake: an unknown key in either file."""
    broken = tmp_path / "consentd.service"
    broken.write_text(SERVICE.read_text().replace("[Service]\n", "[Service]\nRestartt=always\n"))
    assert any("Restartt" in line for line in _verify(broken))
    units = _asterisk_units(tmp_path, DROP_IN.read_text() + "UMaskk=0007\n")
    found = _without_absent_asterisk(_verify(units / "asterisk.service", unit_path=units))
    assert any("UMaskk" in line for line in found), found


def _service_settings() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for raw in SERVICE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key}", []).append(value)
    return values


def test_the_service_is_hardened_and_gets_its_secrets_as_credentials() -> None:
    settings = _service_settings()
    assert settings["Service.User"] == ["consentd"]
    assert settings["Service.Restart"] == ["on-failure"]
    assert settings["Service.ProtectSystem"] == ["strict"]
    assert settings["Service.NoNewPrivileges"] == ["yes"]
    writable = " ".join(settings["Service.ReadWritePaths"]).split()
    env = dict(v.split("=", 1) for v in settings["Service.Environment"])
    assert env["CONSENTD_JOURNAL_DIR"] in writable
    credentials = dict(v.split(":", 1) for v in settings["Service.LoadCredential"])
    # Every secret the daemon needs to run, by file from the credentials directory.
    for field in [*RUN_SECRETS, "database_password"]:
        if field == "database_url":  # in the environment, without a password
            userinfo = urlsplit(env[env_name(field)]).netloc.rpartition("@")[0]
            assert ":" not in userinfo
            continue
        assert env[f"{env_name(field)}_FILE"] == f"%d/{field}", field
        assert field in credentials, field
        assert credentials[field].startswith("/etc/consentd/credentials/")
    # No secret in the unit itself.
    assert not any(re.fullmatch(r"CONSENTD_[A-Z_]*(PASSWORD|SECRET|TOKEN)", k) for k in env)


def test_the_drop_in_is_an_ini_file_for_asterisk_service() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(DROP_IN.read_text())
    assert parser["Service"]["UMask"] == "0007"
    assert "consentd.service" in parser["Unit"]["Before"]


def test_compose_wires_asterisk_postgres_and_consentd() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert {"asterisk", "postgres", "consentd"} <= services.keys()
    assert services["consentd"]["image"] == "localhost/consentd:latest"
    assert services["asterisk"]["image"] == "localhost/consentd-asterisk:latest"
    for name in ("asterisk", "postgres", "consentd"):
        assert services[name]["network_mode"] == "host", name
    consentd = services["consentd"]
    assert consentd["user"] == "10001:10001" and consentd["group_add"] == ["10002"]
    env = consentd["environment"]
    for field in ("ari_password", "ami_secret", "api_token", "database_password"):
        secret_file = env[f"{env_name(field)}_FILE"]
        assert secret_file == f"/run/secrets/{field}" and field in consentd["secrets"]
        assert field in compose["secrets"]
    assert "migrate" in consentd["depends_on"]
    # consentd sees Asterisk's spool where CONSENTD_ASTERISK_ROOT says.
    root = env["CONSENTD_ASTERISK_ROOT"]
    assert any(v.startswith(f"spool:{root}/var/spool/asterisk") for v in consentd["volumes"])
    assert "spool:/var/spool/asterisk" in services["asterisk"]["volumes"]
