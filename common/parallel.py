"""How many processes a batch of independent files gets by default, and running such a batch in order."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

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


def ordered_map(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int, *, chunksize: int = 8,
                advance: Callable[[], None] | None = None, context: Any = None) -> list[Any]:
    """``[fn(job) for job in jobs]`` in job order, in ``workers`` processes (1: this one).

    ``fn`` must be a module-level function (pickled to the workers); ``advance`` is called
    once per finished job (a progress bar); ``context`` a multiprocessing context (e.g.
    ``spawn`` where a forked process would inherit state it cannot use).
    """
    out: list[Any] = []
    if workers <= 1:
        for job in jobs:
            out.append(fn(job))
            if advance:
                advance()
        return out
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for res in pool.map(fn, jobs, chunksize=chunksize):
            out.append(res)
            if advance:
                advance()
    return out
