"""Exposure (issue 11): everything binds to loopback by default; beyond it, a token.

The daemon's HTTP API, Asterisk's SIP, HTTP (ARI) and AMI, and the dev
stack's PostgreSQL listen on 127.0.0.1 unless an operator says otherwise;
the container image runs as an unprivileged user and binds loopback too; a
non-loopback CONSENTD_HTTP_HOST without a (long enough) API token is refused.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import structlog

from consentd.cli import main
from consentd.settings import MIN_EXPOSED_TOKEN, Settings, SettingsProblem, is_loopback

REPO = Path(__file__).resolve().parents[2]
LONG_TOKEN = "t" * MIN_EXPOSED_TOKEN


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CONSENTD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONSENTD_STACK_JSON", "/nonexistent/stack.json")


def _other_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTD_ARI_PASSWORD", "ari-s3cret")
    monkeypatch.setenv("CONSENTD_AMI_SECRET", "ami-s3cret")
    monkeypatch.setenv("CONSENTD_DATABASE_URL", "postgresql://consentd@127.0.0.1:1/x")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.0.2.10", False),
        ("pbx.example", False),  # a name could resolve to anything
        ("::ffff:127.0.0.1", False),
    ],
)
def test_loopback_is_decided_by_address_never_by_resolving_a_name(
    host: str, loopback: bool
) -> None:
    assert is_loopback(host) is loopback


def test_the_http_api_binds_loopback_by_default() -> None:
    assert Settings().http_host == "127.0.0.1"
    Settings().require_token_if_exposed()  # loopback: the check has nothing to say


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_run_beyond_loopback_without_a_token_is_refused_naming_both_variables(
    host: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _other_secrets(monkeypatch)
    monkeypatch.setenv("CONSENTD_HTTP_HOST", host)

    assert main(["run", "--policies", "/nonexistent.yaml"]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"consentd: not starting: CONSENTD_HTTP_HOST={host} is not a loopback address: "
        "the HTTP API would serve callers' numbers to the network; set CONSENTD_API_TOKEN "
        "(or CONSENTD_API_TOKEN_FILE), and put TLS in front of it, or bind to 127.0.0.1\n"
    )


def test_run_beyond_loopback_with_a_short_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _other_secrets(monkeypatch)
    monkeypatch.setenv("CONSENTD_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("CONSENTD_API_TOKEN", "short-s3cret")

    assert main(["run", "--policies", "/nonexistent.yaml"]) == 2

    err = capsys.readouterr().err
    assert "CONSENTD_HTTP_HOST=0.0.0.0 is not a loopback address" in err
    assert f"12 characters, fewer than {MIN_EXPOSED_TOKEN}" in err
    assert "short-s3cret" not in err


def test_run_beyond_loopback_with_a_token_from_a_file_passes_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _other_secrets(monkeypatch)
    token = tmp_path / "api_token"
    token.write_text(LONG_TOKEN + "\n")
    monkeypatch.setenv("CONSENTD_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("CONSENTD_API_TOKEN_FILE", str(token))

    Settings().require_token_if_exposed()
    saved = structlog.get_config()  # run configures logging before it reads the policy file
    try:
        assert main(["run", "--policies", str(tmp_path / "missing.yaml")]) == 2
    finally:
        structlog.configure(**saved)

    err = capsys.readouterr().err
    assert "missing.yaml" in err and "not a loopback address" not in err


def test_on_loopback_a_missing_token_is_the_usual_missing_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _other_secrets(monkeypatch)

    assert main(["run", "--policies", "/nonexistent.yaml"]) == 2

    assert "missing CONSENTD_API_TOKEN" in capsys.readouterr().err


def test_the_check_raises_a_settings_problem() -> None:
    with pytest.raises(SettingsProblem, match="not a loopback address"):
        Settings(http_host="0.0.0.0").require_token_if_exposed()


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_the_image_runs_as_an_unprivileged_user() -> None:
    instructions = _dockerfile()
    users = [(i, rest) for i, (keyword, rest) in enumerate(instructions) if keyword == "USER"]

    assert users, "the Dockerfile sets no USER: the daemon would run as root"
    position, user = users[-1]
    name, _, group = user.partition(":")
    assert name not in ("root", "0") and group not in ("root", "0")
    assert name.isdigit() and int(name) >= 1000  # numeric: runtimes can verify non-root
    # Nothing after it runs as root again, and the image creates that user.
    assert all(keyword != "RUN" for keyword, _ in instructions[position:])
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert f"--uid {name}" in runs


def test_the_image_binds_loopback_unless_told_otherwise() -> None:
    env: dict[str, str] = {}
    for keyword, rest in _dockerfile():
        if keyword == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(rest) if "=" in word)
        if keyword in ("ENTRYPOINT", "CMD"):
            assert "HTTP_HOST" not in rest and "0.0.0.0" not in rest
    assert is_loopback(env.get("CONSENTD_HTTP_HOST", Settings().http_host))


def _setting(path: str, section: str, key: str) -> list[str]:
    """Values of ``key`` in ``[section]`` of an Asterisk config file of the repository."""
    values, current = [], None
    for raw in (REPO / path).read_text().splitlines():
        line = raw.split(";", 1)[0].strip()
        if line.startswith("["):
            current = line[1 : line.index("]")]
        elif current == section and "=" in line:
            name, _, value = line.partition("=")
            if name.strip() == key:
                values.append(value.strip())
    return values


def test_asterisk_and_postgresql_of_the_stack_listen_on_loopback_only() -> None:
    assert _setting("asterisk-conf/http.conf", "general", "bindaddr") == ["127.0.0.1"]  # ARI
    assert _setting("asterisk-conf/manager.conf", "general", "bindaddr") == ["127.0.0.1"]
    assert _setting("asterisk-conf/pjsip.conf", "transport-udp", "bind") == ["127.0.0.1:5060"]
    # Every SIP endpoint uses that transport, so RTP binds there too (res_pjsip_sdp_rtp).
    pjsip = (REPO / "asterisk-conf/pjsip.conf").read_text()
    assert "type = transport" in pjsip and pjsip.count("type = transport") == 1
    stack = (REPO / "scripts/stack.sh").read_text()
    assert re.findall(r"listen_addresses=(\S+?)[\"' ]", stack) == ["127.0.0.1"]
