"""The site daemon's children: adopt what the SuperNode leaves behind, and stop it.

``flower-supernode`` starts a SuperExec of its own. When the SuperNode exits (refused by
the SuperLink, say) that SuperExec lives on, retrying, and keeps the daemon's output pipe
open. On Linux the daemon makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``)
so orphans of its subtree are re-parented to it rather than to init: once the SuperNode has
exited, what is still a child of the daemon is left over and is stopped. The SuperNode stays
in the daemon's process group, so an operator who signals the group still stops all of it.
Elsewhere these are no-ops and the daemon behaves as before.
"""
from __future__ import annotations

import os
import signal
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; whether that took."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int | None = None) -> list[int]:
    """Process ids whose parent is ``pid`` (this process by default), read from /proc."""
    parent = os.getpid() if pid is None else pid
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: fields resume after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            found.append(int(entry))
    return found


def _reap(keep: frozenset[int]) -> None:
    """Collect the exit status of adopted children that ended (never of one in ``keep``)."""
    for pid in children():
        if pid in keep:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def stop_children(keep: frozenset[int] = frozenset(), grace_s: float = 5.0) -> int:
    """SIGTERM every child of this process not in ``keep``, SIGKILL them after ``grace_s``; how many there were."""
    def left() -> list[int]:
        _reap(keep)
        return [pid for pid in children() if pid not in keep]

    stray = left()
    for pid in stray:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not left():
            return len(stray)
        time.sleep(0.1)
    for pid in left():
        _signal(pid, signal.SIGKILL)
    time.sleep(0.1)
    _reap(keep)
    return len(stray)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
