"""Checks of a policy file against a running PBX (``consentd check FILE --pbx``).

The file alone can't tell whether Asterisk has the queue a group names; a
missing queue would only show up when the first caller is sent into it.
"""

from __future__ import annotations

import asyncio
import contextlib

from consentd.ami import AmiClient, AmiError
from consentd.policy import PolicyBook


class PbxUnreachable(Exception):
    pass


async def asterisk_queues(host: str, port: int, user: str, secret: str) -> set[str]:
    ami = AmiClient(host, port, user, secret, action_timeout=5.0)
    task = asyncio.create_task(ami.run(max_backoff=0.5))
    try:
        try:
            async with asyncio.timeout(5.0):
                await ami.connected.wait()
        except TimeoutError:
            raise PbxUnreachable(
                f"cannot log in to AMI at {host}:{port} as {user!r} within 5 s"
            ) from None
        try:
            items = await ami.send_list("QueueSummary", "QueueSummaryComplete")
        except AmiError as exc:
            raise PbxUnreachable(f"AMI at {host}:{port}: {exc}") from None
        return {item["Queue"] for item in items if "Queue" in item}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def missing_queues(book: PolicyBook, known: set[str]) -> list[str]:
    """One message per group whose queue the PBX does not have."""
    return [
        f"{book.file}: group {name!r}: queue {group.queue!r} does not exist on the PBX "
        f"(it has: {', '.join(sorted(known)) or 'no queues'})"
        for name, group in sorted(book.config.groups.items())
        if group.queue not in known
    ]
