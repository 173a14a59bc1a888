"""The site's privacy policy, and the check every round must pass before training.

The policy is the site's, not the server's: a run asking for less protection than the
policy allows is refused, and so is a round that would take the site's cumulative
epsilon (from its ledger) above its budget. The check fails closed: a malformed request,
a value that is not a number, or any error while reading the ledger refuses the round.

Reasons quote only the request's and the policy's numbers, which are not patient data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

from common.errors import (
    ConfigError,
    ImplantFLError,
    PrivacyBudgetExceededError,
    PrivacyPolicyError,
)
from common.privacy_plan import ACCOUNTANTS

logger = logging.getLogger(__name__)

POLICY_REFUSED = "policy-refused"  # the run asks for weaker privacy than the site allows
BUDGET_EXHAUSTED = "budget-exhausted"  # this round would exceed the site's epsilon budget
CHECK_FAILED = "error"  # the check itself could not be completed (e.g. ledger unreadable)
MAX_POLICY_DELTA = 1e-2  # a delta above this gives no meaningful guarantee


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"privacy policy {key} must be a number, got {type(value).__name__}")
    return float(value)


@dataclass(frozen=True)
class PrivacyPolicy:
    """What a site allows; defaults apply to keys its site config leaves out."""

    max_epsilon: float = 10.0  # cumulative epsilon budget at this site, over all runs
    delta: float = 1e-5  # the site's delta: budgets and projections are stated at it
    min_noise_multiplier: float = 0.5  # lowest DP-SGD noise multiplier a run may use
    max_clip_norm: float = 10.0  # highest per-sample clipping norm a run may use
    require_dp: bool = True  # refuse any run that trains without DP-SGD
    accountant: str = "rdp"  # accountant the budget is checked with: rdp | prv
    # accept runs whose DP noise is seeded from the run config (reproducible-noise): only a researcher's
    # simulated sites set this; the server could regenerate and subtract such noise
    allow_reproducible_noise: bool = False
    # SHA-256 of the public encoders this site computes features with (empty = any encoder the run names,
    # as long as the site's own encoder file has that hash)
    allowed_encoders: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = (
            ("max-epsilon", self.max_epsilon, lambda v: 0 < v < math.inf, "positive and finite"),
            ("delta", self.delta, lambda v: 0 < v <= MAX_POLICY_DELTA, f"in (0, {MAX_POLICY_DELTA:g}]"),
            ("min-noise-multiplier", self.min_noise_multiplier, lambda v: 0 <= v < math.inf, ">= 0 and finite"),
            ("max-clip-norm", self.max_clip_norm, lambda v: 0 < v < math.inf, "positive and finite"),
        )
        for key, value, ok, expected in checks:
            if not ok(_number(key, value)):
                raise ConfigError(f"privacy policy {key} must be {expected}, got {value!r}")
        if isinstance(self.allowed_encoders, str) or not all(isinstance(h, str) for h in self.allowed_encoders):
            raise ConfigError("privacy policy allowed-encoders must be a list of SHA-256 strings")
        object.__setattr__(self, "allowed_encoders", tuple(h.strip().lower() for h in self.allowed_encoders))
        for key, flag in (("require-dp", self.require_dp), ("allow-reproducible-noise", self.allow_reproducible_noise)):
            if not isinstance(flag, bool):
                raise ConfigError(f"privacy policy {key} must be true or false, got {type(flag).__name__}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"privacy policy accountant must be one of {', '.join(ACCOUNTANTS)}, "
                              f"got {self.accountant!r}")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The kebab-case keys a site config may set."""
        return tuple(f.name.replace("_", "-") for f in fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyPolicy:
        """Parse a kebab-case mapping (a site TOML's ``[privacy]`` table).

        Raises
        ------
        ConfigError
            On an unknown key, a value of the wrong type or out of range.
        """
        if not isinstance(data, Mapping):
            raise ConfigError("the privacy policy must be a table of key = value")
        unknown = sorted(str(k) for k in data if k not in cls.keys())
        if unknown:
            raise ConfigError(f"unknown privacy policy key(s): {', '.join(unknown)}; "
                              f"expected some of: {', '.join(cls.keys())}")
        return cls(**{str(k).replace("-", "_"): v for k, v in data.items()})


@dataclass(frozen=True)
class PrivacyRequest:
    """What a run asks of a site for one round."""

    dp: bool  # train with DP-SGD
    noise_multiplier: float  # DP-SGD noise multiplier
    max_grad_norm: float  # per-sample clipping norm
    delta: float  # the run's delta
    sample_rate: float  # Poisson sample rate of each step
    steps: int  # optimizer steps this round will take
    reproducible_noise: bool = False  # the noise would be seeded from the run config, which the server knows


@dataclass(frozen=True)
class Decision:
    """Whether a round may train; if not, a short reason and a machine code."""

    allowed: bool
    reason: str | None = None  # human text; only request and policy numbers
    code: str | None = None  # policy-refused | budget-exhausted | error; None when allowed
    projected_epsilon: float | None = None  # site epsilon after the round, when it was computed

    def raise_if_refused(self) -> None:
        """Raise the error matching a refusal; do nothing when allowed."""
        if self.allowed:
            return
        if self.code == BUDGET_EXHAUSTED:
            raise PrivacyBudgetExceededError(self.reason or "privacy budget exhausted")
        if self.code == POLICY_REFUSED:
            raise PrivacyPolicyError(self.reason or "refused by the site's privacy policy")
        raise ImplantFLError(self.reason or "privacy check failed")


class _Projects(Protocol):
    def projected_epsilon(
        self, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str | None = None
    ) -> float: ...


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _policy_problems(policy: PrivacyPolicy, request: PrivacyRequest) -> list[str]:
    problems = []
    if request.reproducible_noise is not False and not policy.allow_reproducible_noise:
        problems.append("the run asks for reproducible noise (seeded from the run config, so the server could "
                        "remove it); this site's policy does not allow it")
    noise, clip, delta = request.noise_multiplier, request.max_grad_norm, request.delta
    if not (_finite(noise) and noise > 0):
        problems.append(f"noise multiplier {noise} gives no privacy")
    elif not noise >= policy.min_noise_multiplier:
        problems.append(f"noise multiplier {noise:g} below the site minimum {policy.min_noise_multiplier:g}")
    if not (_finite(clip) and clip > 0):
        problems.append(f"clip norm {clip} is not a positive number")
    elif not clip <= policy.max_clip_norm:
        problems.append(f"clip norm {clip:g} above the site maximum {policy.max_clip_norm:g}")
    if not (_finite(delta) and delta > 0):
        problems.append(f"delta {delta} is not a positive number")
    elif not delta <= policy.delta:
        problems.append(f"delta {delta:g} above the site's delta {policy.delta:g}")
    if not (_finite(request.sample_rate) and 0 < request.sample_rate <= 1):
        problems.append(f"sample rate {request.sample_rate} is not in (0, 1]")
    if isinstance(request.steps, bool) or not isinstance(request.steps, int) or request.steps < 1:
        problems.append(f"steps {request.steps} is not a positive integer")
    return problems


def _check(policy: PrivacyPolicy, request: PrivacyRequest, ledger: _Projects) -> Decision:
    if request.dp is not True:
        if policy.require_dp:
            return Decision(False, "the run trains without DP; this site requires DP", POLICY_REFUSED)
        logger.warning("training without DP: the site policy allows it, the ledger records nothing")
        return Decision(True)
    problems = _policy_problems(policy, request)
    if problems:
        return Decision(False, "; ".join(problems), POLICY_REFUSED)
    projected = ledger.projected_epsilon(
        noise_multiplier=request.noise_multiplier, sample_rate=request.sample_rate, steps=request.steps,
        delta=policy.delta, accountant=policy.accountant,
    )
    if not projected <= policy.max_epsilon:  # also refuses nan
        reason = (f"epsilon would reach {projected:.3g} after this round, above the site budget "
                  f"{policy.max_epsilon:g} (delta {policy.delta:g})")
        return Decision(False, reason, BUDGET_EXHAUSTED, projected)
    return Decision(True, projected_epsilon=projected)


def check(policy: PrivacyPolicy, request: PrivacyRequest, ledger: _Projects) -> Decision:
    """Decide whether this site may train one round as ``request`` asks.

    Parameters
    ----------
    policy
        The site's policy.
    request
        What the run asks for this round.
    ledger
        The site's :class:`~client.training.privacy.ledger.PrivacyLedger` (anything with its
        ``projected_epsilon``).

    Returns
    -------
    Decision
        Allowed, or refused with code ``policy-refused`` (the run asks for weaker
        privacy than the policy), ``budget-exhausted`` (the site's epsilon after this
        round would exceed ``max_epsilon``) or ``error`` (the check could not be done;
        refused, fail closed).
    """
    try:
        return _check(policy, request, ledger)
    except ImplantFLError as e:  # our messages hold no paths
        logger.error("privacy check failed: %s", e)
        return Decision(False, f"privacy check failed: {e}", CHECK_FAILED)
    except Exception as e:  # noqa: BLE001 - fail closed, and never pass a raw message on
        logger.exception("privacy check failed")
        return Decision(False, f"privacy check failed ({type(e).__name__})", CHECK_FAILED)
