"""Privacy planning: the DP-SGD noise a run needs, and the epsilon it spends per round.

Everything here is Opacus' accounting (``opacus.accountants``); nothing re-derives a
bound by hand. A DP-SGD run of ``R`` rounds, ``E`` local epochs, expected batch size
``B`` over ``N`` examples is a Poisson-subsampled Gaussian mechanism with sample rate
``q = 1 / ceil(N / B)`` composed ``R * E * ceil(N / B)`` times. That sample rate is
Opacus' own (its Poisson loader draws ``ceil(N / B)`` batches of rate ``1 / len(loader)``):
:func:`sample_rate` is the one rule the planner, the site's privacy check, its training
and its ledger all use, so a site spends exactly what it was planned to spend.

A one-shot release (the ``dp-stats`` head's statistics) is the Gaussian mechanism once:
sample rate 1, one step (:func:`one_shot_noise`).

Opacus (and so torch) is imported inside the functions that need it: importing
``common`` stays cheap for roles that never plan.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from common.errors import ConfigError

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

    from common.config import RunConfig

logger = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "prv")  # accountants that give a (eps, delta) upper bound
HistoryEntry = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps), as Opacus keeps it


@dataclass(frozen=True)
class PrivacyPlan:
    """The noise a run needs to stay within a target epsilon, and what it spends per round."""

    noise_multiplier: float  # DP-SGD noise multiplier reaching the target after the last round
    sample_rate: float  # Poisson sample rate, 1 / ceil(examples / batch size) (Opacus' rule)
    steps_per_round: int  # optimizer steps in one round: epochs * ceil(examples / batch size)
    epsilon_per_round: list[float]  # cumulative epsilon after round 1, 2, ..., R
    delta: float  # the delta every epsilon is stated at
    accountant: str = "rdp"  # the accountant that computed the epsilons
    target_epsilon: float = math.nan  # what was asked for

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping (snake_case keys, plain values)."""
        out = asdict(self)
        out["rounds"] = len(self.epsilon_per_round)
        return out


def sample_rate(examples: int, batch_size: int) -> float:
    """Opacus' Poisson sample rate for ``examples`` at expected batch ``batch_size``: ``1 / ceil(N / B)``."""
    return 1.0 / math.ceil(examples / min(batch_size, examples))


def check_accountant(name: str) -> str:
    """Return ``name`` if it is a supported accountant, else raise :class:`ConfigError`."""
    if name not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {name!r}")
    return name


def make_accountant(name: str, history: Sequence[HistoryEntry] = ()) -> IAccountant:
    """Build an Opacus accountant holding ``history``.

    Parameters
    ----------
    name
        ``"rdp"`` or ``"prv"``.
    history
        ``(noise_multiplier, sample_rate, steps)`` entries, the form Opacus' accountants
        keep; loaded through the accountant's own ``load_state_dict``.

    Returns
    -------
    IAccountant
        A fresh accountant whose ``history`` is ``history``.
    """
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=check_accountant(name))
    if history:
        entries = [(float(nm), float(q), int(s)) for nm, q, s in history]
        accountant.load_state_dict({"history": entries, "mechanism": accountant.mechanism()})
    return accountant


def history_epsilon(history: Sequence[HistoryEntry], *, delta: float, accountant: str = "rdp") -> float:
    """Return the epsilon at ``delta`` of a composed history; 0.0 for an empty history."""
    if not history:
        return 0.0
    return float(make_accountant(accountant, history).get_epsilon(delta=delta))


def epsilon_for(
    noise_multiplier: float, sample_rate: float, *, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Return the epsilon of ``steps`` DP-SGD steps at one noise multiplier and sample rate.

    Parameters
    ----------
    noise_multiplier
        Gaussian noise standard deviation over the clipping norm.
    sample_rate
        Poisson sample rate of each step.
    steps
        Number of optimizer steps.
    delta
        Target delta.
    accountant
        ``"rdp"`` or ``"prv"``.

    Returns
    -------
    float
        Epsilon spent (an upper bound).
    """
    return history_epsilon([(noise_multiplier, sample_rate, steps)], delta=delta, accountant=accountant)


def _epsilons_per_round(
    noise_multiplier: float, sample_rate: float, *, steps_per_round: int, rounds: int, delta: float, accountant: str
) -> list[float]:
    if accountant != "rdp":
        return [
            epsilon_for(noise_multiplier, sample_rate, steps=r * steps_per_round, delta=delta, accountant=accountant)
            for r in range(1, rounds + 1)
        ]
    # RDP composes additively: the per-step RDP curve is computed once and scaled, which
    # is exactly what RDPAccountant.get_epsilon computes for a (nm, q, k) history.
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    per_step = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders)
    out = []
    with warnings.catch_warnings():  # large noise at a small epsilon: the bound is valid, only not the tightest
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        for r in range(1, rounds + 1):
            eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=per_step * (r * steps_per_round), delta=delta)
            out.append(float(eps))
    return out


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


@functools.lru_cache(maxsize=256)
def plan(
    *,
    rounds: int,
    epochs: int,
    batch_size: int,
    examples: int,
    target_epsilon: float,
    delta: float = 1e-5,
    accountant: str = "rdp",
    epsilon_tolerance: float | None = None,
) -> PrivacyPlan:
    """Find the noise multiplier that spends at most ``target_epsilon`` over a whole run.

    Parameters
    ----------
    rounds
        Federated rounds the site trains in.
    epochs
        Local epochs per round.
    batch_size
        Expected (Poisson) batch size.
    examples
        Training examples at the site.
    target_epsilon
        Epsilon allowed after the last round.
    delta
        Target delta.
    accountant
        ``"rdp"`` or ``"prv"``.
    epsilon_tolerance
        The final epsilon lies in ``[target - tolerance, target]``; default
        ``min(0.01, target / 100)``.

    Returns
    -------
    PrivacyPlan
        Noise multiplier, sample rate, steps per round and the epsilon after each round.
        Plans are memoised (the search costs seconds at fractional RDP orders, and every
        round of a site asks for the same one); treat the result as read-only.

    Raises
    ------
    ConfigError
        If an argument is out of range or the target cannot be reached.
    """
    for name, value in (("rounds", rounds), ("epochs", epochs), ("batch size", batch_size), ("examples", examples)):
        _positive_int(name, value)
    if batch_size > examples:
        raise ConfigError(f"batch size {batch_size} is larger than the {examples} examples")
    if not (isinstance(target_epsilon, int | float) and 0 < target_epsilon < math.inf):
        raise ConfigError(f"target epsilon must be a positive number, got {target_epsilon!r}")
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    if epsilon_tolerance is None:
        epsilon_tolerance = min(0.01, target_epsilon / 100)
    if not (isinstance(epsilon_tolerance, int | float) and 0 < epsilon_tolerance < target_epsilon):
        raise ConfigError(f"epsilon tolerance must be in (0, target epsilon), got {epsilon_tolerance!r}")
    check_accountant(accountant)
    from opacus.accountants.utils import get_noise_multiplier

    q = sample_rate(examples, batch_size)
    steps_per_round = epochs * math.ceil(examples / batch_size)
    try:
        with warnings.catch_warnings():
            # The search starts at sigma = 20, where the best RDP order is the largest one;
            # that is expected while bracketing and says nothing about the final noise.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            noise = get_noise_multiplier(
                target_epsilon=float(target_epsilon), target_delta=float(delta), sample_rate=q,
                steps=rounds * steps_per_round, accountant=accountant, epsilon_tolerance=epsilon_tolerance,
            )
    except ValueError as e:
        raise ConfigError(f"target epsilon {target_epsilon} cannot be reached at delta {delta}: {e}") from e
    epsilons = _epsilons_per_round(
        noise, q, steps_per_round=steps_per_round, rounds=rounds, delta=delta, accountant=accountant
    )
    logger.debug("planned noise %.4f for epsilon %.3f over %d rounds", noise, epsilons[-1], rounds)
    return PrivacyPlan(
        noise_multiplier=float(noise), sample_rate=q, steps_per_round=steps_per_round,
        epsilon_per_round=epsilons, delta=float(delta), accountant=accountant, target_epsilon=float(target_epsilon),
    )


def run_noise(cfg: RunConfig, *, rounds: int, epochs: int, batch_size: int, examples: int) -> float:
    """The DP-SGD noise multiplier a run uses: planned for ``target-epsilon`` when it is set, else ``noise-multiplier``.

    One rule for a site (``rounds`` x ``epochs`` over its own examples) and for the pooled
    DP run (one round over all of them).
    """
    if cfg.target_epsilon <= 0:
        return cfg.noise_multiplier
    return plan(rounds=rounds, epochs=epochs, batch_size=batch_size, examples=examples,
                target_epsilon=cfg.target_epsilon, delta=cfg.delta, accountant=cfg.accountant).noise_multiplier


def one_shot_noise(target_epsilon: float, *, delta: float, accountant: str = "rdp", prior: Sequence[HistoryEntry] = ()
                   ) -> float:
    """Noise multiplier of one Gaussian release (sample rate 1, one step) that brings epsilon to ``target_epsilon``.

    ``prior``: what the same run already spent (its history composes with the release).
    """
    return noise_for_target(target_epsilon, sample_rate=1.0, steps=1, delta=delta, accountant=accountant, prior=prior)


def noise_for_target(target_epsilon: float, *, sample_rate: float, steps: int, delta: float, accountant: str = "rdp",
                     prior: Sequence[HistoryEntry] = (), tolerance: float = 0.01) -> float:
    """The smallest noise multiplier whose ``steps`` steps at ``sample_rate``, after ``prior``, stay within the target.

    Bisection on the accountant's own epsilon of the composed history (Opacus'
    ``get_noise_multiplier`` cannot start from a prior history).
    """
    if not (isinstance(target_epsilon, int | float) and 0 < target_epsilon < math.inf):
        raise ConfigError(f"target epsilon must be a positive number, got {target_epsilon!r}")
    check_accountant(accountant)
    prior = list(prior)

    def eps(sigma: float) -> float:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return history_epsilon([*prior, (sigma, sample_rate, steps)], delta=delta, accountant=accountant)

    if history_epsilon(prior, delta=delta, accountant=accountant) >= target_epsilon:
        raise ConfigError(f"target epsilon {target_epsilon:g} is already spent before this release")
    lo, hi = 0.05, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ConfigError(f"target epsilon {target_epsilon:g} cannot be reached at delta {delta:g}")
    while hi - lo > 1e-4 and eps(hi) < target_epsilon - tolerance:
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return float(hi)


def noise_statement(*, dp: bool, reproducible_noise: bool) -> dict[str, Any]:
    """Where a run's DP noise came from, and whom it protects against (results.json ``dp_noise``)."""
    if not dp:
        return {"source": "none", "protects_against_server": False, "note": "trained without differential privacy"}
    if reproducible_noise:
        return {"source": "run-config seed", "protects_against_server": False,
                "note": "reproducible-noise = true: every noise draw and Poisson batch followed the run's seed, round "
                        "and site name, so the noise protected nothing against whoever knows the run config"}
    return {"source": "site OS entropy", "protects_against_server": True,
            "note": "every site drew its DP noise and Poisson batches from generators seeded with its own OS entropy, "
                    "fresh each round; nothing the server sent or can read determined them"}
