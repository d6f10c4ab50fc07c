"""No default secrets: each comes from CONSENTD_X or CONSENTD_X_FILE, a missing one is named,
none is printed; the per-checkout generator's files and modes; no fixed password in the repo."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from consentd.cli import main
from consentd.ledger_pg import _redact
from consentd.settings import RUN_SECRETS, MissingSecrets, Settings, SettingsProblem

REPO = Path(__file__).resolve().parents[2]
SECRET_VARIABLES = [
    "CONSENTD_ARI_PASSWORD",
    "CONSENTD_AMI_SECRET",
    "CONSENTD_DATABASE_URL",
    "CONSENTD_API_TOKEN",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the host: no CONSENTD_*, and no local stack's .state/stack.json."""
    for name in list(os.environ):
        if name.startswith("CONSENTD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONSENTD_STACK_JSON", "/nonexistent/stack.json")


def _all_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENTD_ARI_PASSWORD", "ari-s3cret")
    monkeypatch.setenv("CONSENTD_AMI_SECRET", "ami-s3cret")
    monkeypatch.setenv("CONSENTD_DATABASE_URL", "postgresql://consentd:db-s3cret@127.0.0.1:1/x")
    monkeypatch.setenv("CONSENTD_API_TOKEN", "token-s3cret")


def test_there_is_no_default_secret() -> None:
    settings = Settings()

    assert settings.missing(*RUN_SECRETS) == list(RUN_SECRETS)
    assert settings.ari_password is None
    assert settings.ami_secret is None
    assert settings.database_url is None
    assert settings.api_token is None


def test_run_without_secrets_exits_2_naming_every_missing_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--policies", "/nonexistent.yaml"]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err  # one line
    assert err.startswith("consentd: not starting: missing ")
    for variable in SECRET_VARIABLES:
        assert variable in err
    assert "Traceback" not in err


@pytest.mark.parametrize("variable", SECRET_VARIABLES)
def test_run_names_exactly_the_one_missing_secret(
    variable: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _all_secrets(monkeypatch)
    monkeypatch.delenv(variable)

    assert main(["run", "--policies", "/nonexistent.yaml"]) == 2

    err = capsys.readouterr().err
    assert err == (
        f"consentd: not starting: missing {variable} "
        f"(set it, or {variable}_FILE to a file holding it)\n"
    )


def test_an_empty_variable_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _all_secrets(monkeypatch)
    monkeypatch.setenv("CONSENTD_API_TOKEN", "")

    with pytest.raises(MissingSecrets) as caught:
        Settings().require(*RUN_SECRETS)

    assert caught.value.variables == ["CONSENTD_API_TOKEN"]


def test_each_secret_may_come_from_a_file_stripped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = {
        "ARI_PASSWORD": "from-file-ari",
        "AMI_SECRET": "from-file-ami",
        "DATABASE_URL": "postgresql://consentd@127.0.0.1:1/x",
        "DATABASE_PASSWORD": "from-file-db",
        "API_TOKEN": "from-file-token",
    }
    for name, value in values.items():
        file = tmp_path / name.lower()
        file.write_text(f"{value}\n")  # systemd-creds and `echo` leave a newline
        file.chmod(0o600)
        monkeypatch.setenv(f"CONSENTD_{name}_FILE", str(file))

    settings = Settings()

    settings.require(*RUN_SECRETS)
    for name, value in values.items():
        assert settings.secret(name.lower()) == value


def test_variable_and_file_together_are_refused_without_either_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _all_secrets(monkeypatch)
    file = tmp_path / "ami"
    file.write_text("file-s3cret")
    monkeypatch.setenv("CONSENTD_AMI_SECRET_FILE", str(file))

    assert main(["run", "--policies", "/nonexistent.yaml"]) == 2

    err = capsys.readouterr().err
    assert err == (
        "consentd: not starting: both CONSENTD_AMI_SECRET and CONSENTD_AMI_SECRET_FILE "
        "are set; set only one of them\n"
    )


def test_an_unreadable_or_empty_secret_file_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONSENTD_API_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsProblem, match=r"^CONSENTD_API_TOKEN_FILE=.*missing: cannot read"):
        Settings()

    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.setenv("CONSENTD_API_TOKEN_FILE", str(empty))
    with pytest.raises(
        SettingsProblem, match=r"^CONSENTD_API_TOKEN_FILE=.*empty: the file is empty"
    ):
        Settings()


def test_settings_never_show_a_secret_in_their_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    _all_secrets(monkeypatch)

    text = f"{Settings()!r} {Settings()}"

    for secret in ("ari-s3cret", "ami-s3cret", "db-s3cret", "token-s3cret"):
        assert secret not in text


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db?password=hunter2&sslmode=disable",
         "postgresql://u@h/db?password=***&sslmode=disable"),
        ("postgresql://u:hun?ter2@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:hunter2@h/db?application_name=a@b", "postgresql://u:***@h/db?application_name=a@b"),
        ("host=h user=u password=hunter2 dbname=db", "host=h user=u password=*** dbname=db"),
        ("host=h password = 'hun ter2' dbname=db", "host=h password = *** dbname=db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)  # fmt: skip
def test_dsn_redaction_hides_every_form_of_password(dsn: str, shown: str) -> None:
    assert _redact(dsn) == shown
    assert "hunter2" not in _redact(dsn)


def test_calls_without_any_database_names_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["calls"]) == 2

    err = capsys.readouterr().err
    assert err.startswith("consentd calls: no database: missing CONSENTD_DATABASE_URL")
    assert "--database-url" in err


def test_calls_with_no_flags_uses_the_local_stacks_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = tmp_path / "stack.json"
    stack.write_text(
        json.dumps({"database_url": "postgresql://consentd:st4ck@127.0.0.1:1/fromjson"})
    )
    monkeypatch.setenv("CONSENTD_STACK_JSON", str(stack))

    assert main(["calls"]) == 1  # nobody listens on port 1

    err = capsys.readouterr().err
    assert "postgresql://consentd:***@127.0.0.1:1/fromjson" in err
    assert "st4ck" not in err


def test_check_pbx_without_an_ami_secret_names_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = tmp_path / "p.yaml"
    policies.write_text(
        'default: {recording: never}\nnumbers: {"+4930100001": {recording: always}}\n'
    )

    assert main(["check", str(policies), "--pbx"]) == 2

    assert "missing CONSENTD_AMI_SECRET" in capsys.readouterr().err


# --- scripts/secrets.sh ------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_generated_once_private_and_distinct(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    script = REPO / "scripts" / "secrets.sh"

    subprocess.run([str(script), str(target)], check=True, capture_output=True)
    first = {f.name: f.read_text() for f in target.iterdir()}
    (target / "api_token").chmod(0o644)  # loosened by hand: tightened again
    again = subprocess.run([str(script), str(target)], check=True, capture_output=True, text=True)

    assert _mode(target) == 0o700
    assert {f.name: f.read_text() for f in target.iterdir()} == first  # kept
    assert again.stdout == ""  # nothing generated the second time
    assert set(first) == {
        "ari_password", "ami_secret", "ami_tests_secret", "database_password", "api_token",
        "database_owner_password", "agent1_password", "agent2_password", "agent3_password",
    }  # fmt: skip
    for name, value in first.items():
        assert _mode(target / name) == 0o600, name
        assert re.fullmatch(r"[0-9a-f]{48}\n", value), name
    assert len(set(first.values())) == len(first)


def test_a_missing_secret_is_added_and_the_others_kept(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    script = REPO / "scripts" / "secrets.sh"
    subprocess.run([str(script), str(target)], check=True, capture_output=True)
    kept = (target / "ari_password").read_text()
    (target / "api_token").unlink()

    result = subprocess.run([str(script), str(target)], check=True, capture_output=True, text=True)

    assert "api_token" in result.stdout
    assert (target / "ari_password").read_text() == kept
    assert _mode(target / "api_token") == 0o600


# --- nothing fixed in the repository ----------------------------------------------


def _tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.decode()
    return [REPO / name for name in listed.split("\0") if name]


def test_no_tracked_file_holds_the_old_fixed_passwords() -> None:
    this_file = Path(__file__).resolve()
    # Built from parts, so that this file does not match itself.
    user = "consentd"
    patterns = [
        re.compile(rf"^\s*(secret|password)\s*=\s*{user}(-tests)?\s*(;.*)?$", re.M),
        re.compile(rf"\b{user}:{user}\b"),
        re.compile(rf"(ari_password|ami_secret)\s*:\s*str\s*=\s*\"{user}\""),
        re.compile(rf"postgresql://{user}:{user}@"),
    ]
    found = []
    for path in _tracked_files():
        if path == this_file or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [
            f"{path.relative_to(REPO)}: {m.group(0)!r}" for p in patterns for m in p.finditer(text)
        ]
    assert found == []


def test_asterisk_config_in_the_repo_sets_no_secret_at_all() -> None:
    """Every secret of manager.conf, ari.conf and pjsip.conf comes from a generated include."""
    for name in ("manager.conf", "ari.conf", "pjsip.conf"):
        text = (REPO / "asterisk-conf" / name).read_text()
        assert re.findall(r"^\s*(?:secret|password)\s*=", text, re.M) == [], name
        assert '#include "consentd-secrets-' in text, name


def test_asterisks_config_dir_and_fallback_log_set_empty_are_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """consentd on another host reaches neither: empty says so (README), while any
    other empty variable still means its default."""
    monkeypatch.setenv("CONSENTD_ASTERISK_CONFIG_DIR", "")
    monkeypatch.setenv("CONSENTD_FALLBACK_LOG", "")
    monkeypatch.setenv("CONSENTD_SOUNDS_DIR", "")
    settings = Settings()
    assert (settings.asterisk_config_dir, settings.fallback_log) == ("", "")
    assert settings.sounds_dir == "/var/lib/asterisk/sounds"
    assert Settings(asterisk_config_dir="/etc/x").asterisk_config_dir == "/etc/x"
    monkeypatch.delenv("CONSENTD_FALLBACK_LOG")
    assert Settings().fallback_log == "/var/log/asterisk/consentd-fallback.log"


def test_run_refuses_an_ari_store_whose_recordings_ari_cannot_reach(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _all_secrets(monkeypatch)
    monkeypatch.setenv("CONSENTD_RECORDING_STORE", "ari")
    monkeypatch.setenv("CONSENTD_RECORDING_DIR", "/var/spool/asterisk/monitor")

    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("consentd: not starting: CONSENTD_RECORDING_DIR=/var/spool/asterisk")
    assert "Traceback" not in err
