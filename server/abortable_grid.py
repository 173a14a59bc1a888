"""A Grid whose waits end when the runtime under it has died.

In a simulation the ServerApp runs in a thread beside Flower's simulation runtime. When
that runtime crashes (Ray cannot start, a cluster refuses the job, actors die), nothing
tells the ServerApp: it would wait for replies that never come, and the non-daemon
thread would keep the process alive. The runner sets ``abort`` when the runtime fails;
every wait of this grid checks it and ends the run with :class:`RunAborted`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from common.errors import ImplantFLError

POLL_S = 0.1


class RunAborted(ImplantFLError):
    """The runtime the run depended on stopped; the run ends without further rounds."""


class AbortableGrid:
    """Wraps a Flower ``Grid``: the same calls, each failing fast once ``abort`` is set."""

    def __init__(self, grid: Any, abort: threading.Event, reason: list[str] | None = None) -> None:
        self._grid, self._abort, self._reason = grid, abort, reason if reason is not None else []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _check(self) -> None:
        if self._abort.is_set():
            why = self._reason[0] if self._reason else "the simulation runtime stopped"
            raise RunAborted(f"run aborted: {why}")

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
        self._check()
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
        self._check()
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Iterable[Any]:
        """Flower's send-and-wait, polling ``abort`` while it waits."""
        ids = {i for i in self.push_messages(messages) if i}
        end = time.monotonic() + (timeout if timeout is not None else 0.0)
        replies: list[Any] = []
        while ids and (timeout is None or time.monotonic() < end):
            got = list(self.pull_messages(ids))
            replies.extend(got)
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if ids:
                time.sleep(POLL_S)
        return replies
