"""Agents' pause and resume codes, as Asterisk feature codes.

An agent talks to the caller through app_queue's or Dial()'s bridge, outside
Stasis. Asterisk's bridge watches a channel's DTMF for the feature codes named
in its ``DYNAMIC_FEATURES`` variable and swallows them, so the other party never
hears ``*1``; on a match it runs the feature's application on the agent's
channel. consentd's application is a ``UserEvent`` that AMI delivers to the
daemon, naming the agent's channel.

The codes live in the policy file (``agent_controls``). Asterisk reads feature
codes from features.conf only, so consentd writes them to its own include,
``consentd-features.conf``, and asks Asterisk to reload its features.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import structlog

from consentd.ami import AmiClient, AmiError
from consentd.policy import AgentControls

#: Asterisk's config file consentd owns (features.conf includes it).
FEATURES_FILE = "consentd-features.conf"
#: The AMI UserEvent a feature code raises; its ``Control`` header says which.
CONTROL_USER_EVENT = "ConsentdAgentControl"
#: What the dialplan sets on an agent's channel to enable the codes.
DYNAMIC_FEATURES = "consentd_pause#consentd_resume"


def render(controls: AgentControls) -> str:
    """features.conf text for these codes (one applicationmap entry per action)."""
    lines = [
        "; Written by consentd from the policy file's agent_controls: edits are overwritten.",
        "; Included by features.conf. An agent's channel enables the codes with",
        f"; Set(DYNAMIC_FEATURES={DYNAMIC_FEATURES}).",
        "[applicationmap]",
    ]
    for action, code in (("pause", controls.pause), ("resume", controls.resume)):
        lines.append(
            f"consentd_{action} => {code},self,UserEvent({CONTROL_USER_EVENT},Control: {action})"
        )
    return "\n".join(lines) + "\n"


def install(config_dir: Path, controls: AgentControls) -> bool:
    """Write the codes into Asterisk's config dir; True when the file changed.

    The file is replaced in one rename, so Asterisk never reads half of it.
    Raises OSError when the directory is missing or not writable.
    """
    target = config_dir / FEATURES_FILE
    text = render(controls)
    try:
        if target.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    fd, temporary = tempfile.mkstemp(prefix=f".{FEATURES_FILE}.", dir=config_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


class FeatureCodes:
    """Keeps Asterisk's feature codes equal to the policy file's agent_controls.

    Asterisk reads the file again on each AMI login (it may have restarted, or
    missed a reload) and whenever the codes change.
    """

    def __init__(self, config_dir: Path | None, ami: AmiClient) -> None:
        self._dir = config_dir
        self._ami = ami
        self._log = structlog.get_logger("consentd.agent_features")

    def apply(self, controls: AgentControls) -> bool:
        """Write the codes; True when Asterisk must reload its features."""
        if self._dir is None:
            return False
        try:
            changed = install(self._dir, controls)
        except OSError as exc:
            self._log.warning(
                "agent_controls_not_installed",
                file=str(self._dir / FEATURES_FILE),
                error=str(exc),
                hint="install that file by hand (consentd features prints it), "
                "or set CONSENTD_ASTERISK_CONFIG_DIR",
            )
            return False
        if changed:
            self._log.info("agent_controls_installed", pause=controls.pause, resume=controls.resume)
        return changed

    async def reload_asterisk(self) -> None:
        """Make Asterisk read the codes (module "features"); AMI down: at its next login."""
        if self._dir is None or not self._ami.connected.is_set():
            return
        try:
            await self._ami.send("Reload", Module="features")
        except AmiError as exc:
            self._log.warning("features_reload_failed", error=str(exc))
