"""The container suite: Asterisk and consentd from the images `make images` builds.

Asterisk runs from localhost/consentd-asterisk and consentd from
localhost/consentd, each with ``podman run`` on the host's network (runc, the
cgroupfs manager and explicit ulimits: what works on these machines), as their
images' unprivileged users. PostgreSQL is the development stack's
(``scripts/stack.sh db-start``); the schema is migrated by the consentd image
itself (``consentd migrate`` as role consentd_owner).

They use the chroot stack's ports (5060, 8088, 5038, 8090), so the suite runs
only while that stack is down: its items go last in the session, after every
end-to-end and fault test, and the fixture stops the chroot stack first
(``scripts/stack.sh down``, idempotent). The e2e ``stack`` fixture stops it
again at the end of the session, which changes nothing. Like the rest of
``make test``, the run holds ``flock /tmp/consentd-stack.lock``.

The two containers share nothing but the network: consentd runs as it would
on another host (README, "consentd on another host"). It deletes refused
audio and empty files through ARI's stored recordings
(CONSENTD_RECORDING_STORE=ari; MixMonitor writes under
/var/spool/asterisk/recording), copies no greeting
(CONSENTD_INSTALL_GREETINGS=false), writes no feature codes
(CONSENTD_ASTERISK_CONFIG_DIR empty) and reads no fallback log
(CONSENTD_FALLBACK_LOG empty). The suite does the operator's part for
Asterisk alone: the greetings `consentd greetings --export` writes (run from
the consentd image) and the feature codes `consentd features` prints go into
host directories mounted only into Asterisk's container, and so is its spool,
where the tests look at the files Asterisk wrote and deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import (
    POLICIES,
    REPO,
    stack_command,
    write_test_greetings,
)

CONSENTD_IMAGE = "localhost/consentd:latest"
ASTERISK_IMAGE = "localhost/consentd-asterisk:latest"
#: What runs containers here (platform facts): runc, cgroupfs, explicit ulimits.
PODMAN = ["podman", "--runtime=runc", "--cgroup-manager=cgroupfs"]
RUN_FLAGS = ["--network=host", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
CONSENTD_UID, ASTERISK_UID = 10001, 10002
NAME_PREFIX = "consentd-ctest-"
SPOOL = "/var/spool/asterisk"
#: Where MixMonitor writes with CONSENTD_RECORDING_STORE=ari: ARI's stored recordings.
RECORDING_DIR = f"{SPOOL}/recording"
#: consentd's node name in the containers: recordings live at asterisk://NODE/PATH.
NODE = "container"
DB_PORT = 55432

_outcomes: dict[str, str] = {}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Container tests last: the chroot stack's tests are done, and it can be stopped."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/containers/"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not report.nodeid.startswith("tests/containers/"):
        return
    if report.skipped:
        _outcomes[report.nodeid] = "skipped"
    elif report.when == "call":
        _outcomes.setdefault(report.nodeid, report.outcome)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With CONSENTD_REQUIRE_E2E=1 (make test) or CONSENTD_REQUIRE_CONTAINERS=1
    (make test-containers), a skipped container test, or none, fails the run."""
    if "1" not in (
        os.environ.get("CONSENTD_REQUIRE_E2E"),
        os.environ.get("CONSENTD_REQUIRE_CONTAINERS"),
    ):
        return
    skipped = sorted(node for node, outcome in _outcomes.items() if outcome == "skipped")
    if not _outcomes or skipped:
        problem = (
            "no container test ran (tests/containers)"
            if not _outcomes
            else f"{len(skipped)} container test(s) skipped: {', '.join(skipped)}"
        )
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"ERROR: {problem} (CONSENTD_REQUIRE_E2E=1)", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:2])} failed: {result.stderr.strip()[-2000:]}")
    return result


def _dir(path: Path, uid: int, gid: int, mode: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


@dataclass(frozen=True)
class Containers:
    """The running containers and the host directories behind their volumes."""

    workdir: Path
    spool: Path
    asterisk_logs: Path
    consentd_name: str
    asterisk_name: str
    policies: Path

    def host_path(self, asterisk_path: str) -> Path:
        """A file Asterisk wrote (a path as Asterisk sees it) in the spool on this host."""
        assert asterisk_path.startswith(SPOOL + "/"), asterisk_path
        return self.spool / asterisk_path.removeprefix(SPOOL + "/")

    def located(self, location: str) -> Path:
        """The file a call's details locate (asterisk://NODE/PATH), on this host."""
        prefix = f"asterisk://{NODE}"
        assert location.startswith(prefix + "/"), location
        return self.host_path(location.removeprefix(prefix))

    def logs(self, name: str) -> str:
        result = podman("logs", name, check=False)
        return result.stdout + result.stderr


def _secret(secrets: Path, name: str) -> str:
    return (secrets / name).read_text(encoding="utf-8").strip()


def _stack_json(secrets: Path, target: Path) -> None:
    """What `make up` writes to .state/stack.json, for these containers (same
    ports and secrets): the harness and `consentd calls` read it."""

    def url(role: str, secret: str) -> str:
        password = urllib.parse.quote(_secret(secrets, secret), safe="")
        return f"postgresql://{role}:{password}@127.0.0.1:{DB_PORT}/consentd"

    stack = {
        "sip": "127.0.0.1:5060",
        "ari": {
            "url": "http://127.0.0.1:8088/ari",
            "user": "consentd",
            "password": _secret(secrets, "ari_password"),
        },
        "ami": {
            "host": "127.0.0.1",
            "port": 5038,
            "user": "consentd",
            "password": _secret(secrets, "ami_secret"),
        },
        "ami_tests": {"user": "consentd-tests", "password": _secret(secrets, "ami_tests_secret")},
        "database_url": url("consentd", "database_password"),
        "migration_database_url": url("consentd_owner", "database_owner_password"),
        "http": "http://127.0.0.1:8090",
        "api_token": _secret(secrets, "api_token"),
        "agents": {
            f"agent{n}": {
                "user": f"agent{n}",
                "password": _secret(secrets, f"agent{n}_password"),
                "port": 5070 + n,
            }
            for n in (1, 2, 3)
        },
        "trunk": "127.0.0.1:5062",
        "secrets_dir": str(secrets),
    }
    target.write_text(json.dumps(stack, indent=2) + "\n", encoding="utf-8")
    target.chmod(0o600)


def _wait_healthy(name: str, url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        if state.stdout.strip() != "true":
            raise RuntimeError(
                f"container {name} exited:\n{podman('logs', name, check=False).stderr[-3000:]}"
            )
        probe = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", url],
            capture_output=True,
            text=True,
        )
        if probe.stdout == "200":
            return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {seconds:.0f} s")


def _remove(*names: str) -> None:
    for name in names:
        podman("rm", "--force", "--time", "10", name, check=False)


@pytest.fixture(scope="session")
def containers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containers]:
    for tool in ("podman", "runc", "sipp", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make setup`")
    for image in (CONSENTD_IMAGE, ASTERISK_IMAGE):
        if podman("image", "exists", image, check=False).returncode != 0:
            pytest.fail(f"image {image} is missing: run `make images`")
    secrets = REPO / ".state" / "secrets"
    subprocess.run([str(REPO / "scripts" / "secrets.sh"), str(secrets)], check=True)

    work = tmp_path_factory.mktemp("containers")
    work.chmod(0o755)
    # The policy directory, mounted read-only at /etc/consentd: the e2e suite's
    # policies and greetings (no secret in it; the image's user reads it).
    policies = _dir(work / "policies", 0, 0, 0o755)
    write_test_greetings(policies)
    (policies / "policies.yaml").write_text(POLICIES)
    for file in policies.iterdir():
        file.chmod(0o644)

    # Asterisk's directories, mounted into its container only. Its spool and its
    # logs (Asterisk, 10002, writes them); the greetings and feature codes the
    # operator installs on the PBX (read-only for Asterisk).
    spool = _dir(work / "spool", ASTERISK_UID, ASTERISK_UID, 0o2770)
    for sub in ("monitor", "recording"):
        _dir(spool / sub, ASTERISK_UID, ASTERISK_UID, 0o2770)
    logs = _dir(work / "asterisk-log", ASTERISK_UID, ASTERISK_UID, 0o2750)
    custom = _dir(work / "greetings", 0, ASTERISK_UID, 0o2750)
    features = _dir(work / "asterisk-consentd", 0, ASTERISK_UID, 0o2750)
    journal = _dir(work / "journal", CONSENTD_UID, CONSENTD_UID, 0o700)
    # Secrets: Asterisk's includes (group 10002), consentd's files (its own).
    asterisk_secrets = work / "asterisk-secrets"
    subprocess.run(
        [str(REPO / "scripts" / "container-secrets.sh"), str(asterisk_secrets), str(secrets)],
        check=True,
    )
    consentd_secrets = _dir(work / "consentd-secrets", CONSENTD_UID, CONSENTD_UID, 0o500)
    for name in ("ari_password", "ami_secret", "api_token", "database_password"):
        shutil.copyfile(secrets / name, consentd_secrets / name)
        os.chown(consentd_secrets / name, CONSENTD_UID, CONSENTD_UID)
        (consentd_secrets / name).chmod(0o400)
    owner_secret = _dir(work / "owner-secret", CONSENTD_UID, CONSENTD_UID, 0o500)
    shutil.copyfile(secrets / "database_owner_password", owner_secret / "database_owner_password")
    os.chown(owner_secret / "database_owner_password", CONSENTD_UID, CONSENTD_UID)
    (owner_secret / "database_owner_password").chmod(0o400)
    stack_json = work / "stack.json"
    _stack_json(secrets, stack_json)

    asterisk_name, consentd_name = NAME_PREFIX + "asterisk", NAME_PREFIX + "consentd"
    hostname = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout
    previous_stack_json = os.environ.get("CONSENTD_STACK_JSON")
    _remove(consentd_name, asterisk_name)  # left by an interrupted run
    # The chroot stack holds the same ports: down (its tests are done), then
    # only its PostgreSQL again.
    stack_command("down")
    try:
        stack_command("db-start")
        migrate = podman(
            "run", "--rm", *RUN_FLAGS,
            "-e", f"CONSENTD_MIGRATION_DATABASE_URL=postgresql://consentd_owner@127.0.0.1:{DB_PORT}/consentd",
            "-e", "CONSENTD_MIGRATION_DATABASE_PASSWORD_FILE=/run/secrets/database_owner_password",
            "-v", f"{owner_secret}:/run/secrets:ro",
            CONSENTD_IMAGE, "migrate",
        )  # fmt: skip
        print(f"consentd migrate (container): {migrate.stdout.strip()}")
        _operator_installs(policies, work / "greetings-export", custom, features)
        podman(
            "run", "-d", "--name", asterisk_name, *RUN_FLAGS,
            "--add-host", f"{hostname.strip()}:127.0.0.1",
            "-v", f"{asterisk_secrets}:/run/secrets:ro",
            "-v", f"{features}:/etc/asterisk/consentd:ro",
            "-v", f"{custom}:/var/lib/asterisk/sounds/consentd-custom:ro",
            "-v", f"{spool}:{SPOOL}",
            "-v", f"{logs}:/var/log/asterisk",
            ASTERISK_IMAGE,
        )  # fmt: skip
        _wait_ari(asterisk_name, _secret(secrets, "ari_password"), 60)
        # consentd as on another host: its own policies, secrets and journal only.
        podman(
            "run", "-d", "--name", consentd_name, *RUN_FLAGS,
            "-e", f"CONSENTD_NODE={NODE}",
            "-e", "CONSENTD_RECORDING_STORE=ari",
            "-e", "CONSENTD_INSTALL_GREETINGS=false",
            "-e", "CONSENTD_ASTERISK_CONFIG_DIR=",
            "-e", "CONSENTD_FALLBACK_LOG=",
            "-e", f"CONSENTD_DATABASE_URL=postgresql://consentd@127.0.0.1:{DB_PORT}/consentd",
            "-e", "CONSENTD_DATABASE_PASSWORD_FILE=/run/secrets/database_password",
            "-e", "CONSENTD_ARI_PASSWORD_FILE=/run/secrets/ari_password",
            "-e", "CONSENTD_AMI_SECRET_FILE=/run/secrets/ami_secret",
            "-e", "CONSENTD_API_TOKEN_FILE=/run/secrets/api_token",
            "-v", f"{policies}:/etc/consentd:ro",
            "-v", f"{consentd_secrets}:/run/secrets:ro",
            "-v", f"{journal}:/var/lib/consentd/journal",
            CONSENTD_IMAGE,
        )  # fmt: skip
        _wait_healthy(consentd_name, "http://127.0.0.1:8090/healthz", 60)
        os.environ["CONSENTD_STACK_JSON"] = str(stack_json)
        yield Containers(work, spool, logs, consentd_name, asterisk_name, policies)
    finally:
        if previous_stack_json is None:
            os.environ.pop("CONSENTD_STACK_JSON", None)
        else:
            os.environ["CONSENTD_STACK_JSON"] = previous_stack_json
        for name in (consentd_name, asterisk_name):  # kept beside the volumes
            logs_of = podman("logs", name, check=False)
            (work / f"{name}.log").write_text(logs_of.stdout + logs_of.stderr)
        _remove(consentd_name, asterisk_name)
        stack_command("db-stop")


def _operator_installs(policies: Path, staging: Path, greetings: Path, features: Path) -> None:
    """What the operator of a PBX consentd cannot write to installs on it, made by the
    consentd image: the policies' greetings under the names consentd plays, and
    consentd-features.conf with the agents' codes (both read by Asterisk alone)."""
    _dir(staging, CONSENTD_UID, CONSENTD_UID, 0o700)
    exported = podman(
        "run", "--rm", *RUN_FLAGS,
        "-v", f"{policies}:/etc/consentd:ro", "-v", f"{staging}:/export",
        CONSENTD_IMAGE, "greetings", "/etc/consentd/policies.yaml", "--export", "/export",
    ).stdout.split()  # fmt: skip
    assert exported, "consentd greetings --export wrote no file"
    for inner in exported:
        target = greetings / Path(inner).name
        shutil.copyfile(staging / Path(inner).name, target)
        os.chown(target, 0, ASTERISK_UID)
        target.chmod(0o640)
    codes = podman(
        "run", "--rm", *RUN_FLAGS, "-v", f"{policies}:/etc/consentd:ro",
        CONSENTD_IMAGE, "features", "/etc/consentd/policies.yaml",
    ).stdout  # fmt: skip
    (features / "consentd-features.conf").write_text(codes, encoding="utf-8")
    os.chown(features / "consentd-features.conf", 0, ASTERISK_UID)
    (features / "consentd-features.conf").chmod(0o640)


def _wait_ari(name: str, password: str, seconds: float) -> None:
    """Asterisk's ARI answers (credentials on curl's stdin, never its arguments)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        if state.stdout.strip() != "true":
            raise RuntimeError(
                f"container {name} exited:\n{podman('logs', name, check=False).stderr[-3000:]}"
            )
        probe = subprocess.run(
            ["curl", "-s", "-K", "-", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2",
             "http://127.0.0.1:8088/ari/asterisk/info"],
            input=f'user = "consentd:{password}"\n',
            capture_output=True,
            text=True,
        )  # fmt: skip
        if probe.stdout == "200":
            return
        time.sleep(0.5)
    raise RuntimeError(f"Asterisk's ARI did not answer within {seconds:.0f} s")
