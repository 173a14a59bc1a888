"""One row of a site's privacy ledger, and the Opacus history a list of rows composes to."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidInputError
from common.privacy_plan import HistoryEntry


@dataclass(frozen=True)
class LedgerRow:
    """One DP training round at this site, as written to the ledger."""

    run_id: str  # the federated run the round belongs to
    round: int  # server round number within the run
    noise_multiplier: float  # DP-SGD noise multiplier used
    sample_rate: float  # Poisson sample rate of each step
    steps: int  # optimizer steps taken in this round
    delta: float  # delta the epsilons of this row are stated at
    accountant: str  # accountant that computed the epsilons (rdp | prv)
    epsilon_run: float  # epsilon of this run so far, this round included
    epsilon_cumulative: float  # epsilon at this site across all runs, this round included
    timestamp: str  # when the row was written, UTC ISO 8601

    @property
    def history_entry(self) -> HistoryEntry:
        """The row as an Opacus accountant history entry."""
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def to_dict(self) -> dict[str, Any]:
        """Return the row as a JSON-ready mapping."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LedgerRow:
        """Parse and validate one ledger row; raise ``ValueError`` if it is not one."""
        if not isinstance(data, Mapping):
            raise ValueError("a ledger row must be a JSON object")
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in fields if name not in data]
        if missing:
            raise ValueError(f"missing fields: {', '.join(missing)}")
        for name in ("run_id", "accountant", "timestamp"):
            if not isinstance(data[name], str):
                raise ValueError(f"{name} must be a string")
        for name in ("round", "steps"):
            if isinstance(data[name], bool) or not isinstance(data[name], int):
                raise ValueError(f"{name} must be an integer")
        for name in ("noise_multiplier", "sample_rate", "delta", "epsilon_run", "epsilon_cumulative"):
            if isinstance(data[name], bool) or not isinstance(data[name], int | float):
                raise ValueError(f"{name} must be a number")
        row = cls(**{name: data[name] for name in fields})
        check_round_values(run_id=row.run_id, round=row.round, noise_multiplier=row.noise_multiplier,
                           sample_rate=row.sample_rate, steps=row.steps, delta=row.delta)
        return row


def check_round_values(*, run_id: str, round: int, noise_multiplier: float, sample_rate: float, steps: int,
                       delta: float) -> None:
    """Raise ``InvalidInputError`` (a ``ValueError``) if the values cannot be a DP round."""
    if not isinstance(run_id, str) or not run_id.strip() or len(run_id) > 200:
        raise InvalidInputError("run id must be a non-empty string of at most 200 characters")
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise InvalidInputError(f"round must be a non-negative integer, got {round!r}")
    if not (isinstance(noise_multiplier, int | float) and 0 < noise_multiplier < math.inf):
        raise InvalidInputError(f"noise multiplier must be positive and finite, got {noise_multiplier!r}")
    if not (isinstance(sample_rate, int | float) and 0 < sample_rate <= 1):
        raise InvalidInputError(f"sample rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise InvalidInputError(f"delta must be in (0, 1), got {delta!r}")


def compose_history(rows: Sequence[LedgerRow], extra: Sequence[HistoryEntry] = ()) -> list[HistoryEntry]:
    """Opacus history of ``rows`` then ``extra``: steps of identical (noise, sample rate) summed.

    Composition is commutative, so this compacted history has exactly the epsilon of one
    ``accountant.step()`` per optimizer step; it keeps accounting cost independent of the
    number of rounds when settings do not change.
    """
    steps: dict[tuple[float, float], int] = {}
    for nm, q, n in [row.history_entry for row in rows] + list(extra):
        key = (float(nm), float(q))
        steps[key] = steps.get(key, 0) + int(n)
    return [(nm, q, s) for (nm, q), s in steps.items()]
