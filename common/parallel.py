"""How many processes a batch of independent files gets by default."""

from __future__ import annotations

import os

PARALLEL_MIN_JOBS = 32  # fewer files than this: one process (starting a pool costs more than it saves)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_workers(jobs: int) -> int:
    """All available cores for :data:`PARALLEL_MIN_JOBS` or more jobs, else 1 (never more than ``jobs``)."""
    if jobs < PARALLEL_MIN_JOBS:
        return 1
    return max(1, min(available_cores(), jobs))
