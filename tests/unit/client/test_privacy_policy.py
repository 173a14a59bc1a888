"""Site privacy policy: parsing, refusals, budget exhaustion; the check fails closed."""

import dataclasses
import math

import pytest

from client.training.privacy import (
    BUDGET_EXHAUSTED,
    CHECK_FAILED,
    POLICY_REFUSED,
    Decision,
    LedgerCorruptError,
    PrivacyLedger,
    PrivacyPolicy,
    PrivacyRequest,
    check,
)
from common.errors import (
    ConfigError,
    ImplantFLError,
    PrivacyBudgetExceededError,
    PrivacyPolicyError,
)

POLICY = PrivacyPolicy(max_epsilon=8.0, delta=1e-5, min_noise_multiplier=0.5, max_clip_norm=2.0)
REQUEST = PrivacyRequest(dp=True, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, sample_rate=0.01, steps=100)


class FakeLedger:
    """Answers projections with a fixed epsilon and remembers what it was asked."""

    def __init__(self, epsilon: float = 1.0, error: Exception | None = None) -> None:
        self.epsilon, self.error, self.calls = epsilon, error, []

    def projected_epsilon(self, *, noise_multiplier, sample_rate, steps, delta, accountant=None):
        self.calls.append({"noise_multiplier": noise_multiplier, "sample_rate": sample_rate, "steps": steps,
                           "delta": delta, "accountant": accountant})
        if self.error is not None:
            raise self.error
        return self.epsilon


def test_from_dict_reads_kebab_case_keys():
    # Prepare
    raw = {"max-epsilon": 4, "delta": 1e-6, "min-noise-multiplier": 0.8, "max-clip-norm": 1.5,
           "require-dp": False, "accountant": "prv"}

    # Execute
    policy = PrivacyPolicy.from_dict(raw)

    # Assert
    assert policy == PrivacyPolicy(max_epsilon=4.0, delta=1e-6, min_noise_multiplier=0.8, max_clip_norm=1.5,
                                   require_dp=False, accountant="prv")


def test_empty_policy_takes_the_defaults():
    # Execute
    policy = PrivacyPolicy.from_dict({})

    # Assert
    assert policy == PrivacyPolicy()
    assert policy.require_dp is True and policy.max_epsilon == 10.0


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"max_epsilon": 4.0}, "unknown privacy policy key"),  # snake_case is not the site TOML's spelling
        ({"max-epsilon": 4.0, "max-epsilom": 3.0}, "max-epsilom"),
        ({"epsilon": 4.0}, "unknown"),
        ({"max-epsilon": 0.0}, "max-epsilon"),
        ({"max-epsilon": math.inf}, "max-epsilon"),
        ({"max-epsilon": "8"}, "must be a number"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 0.5}, "delta"),
        ({"min-noise-multiplier": -0.1}, "min-noise-multiplier"),
        ({"min-noise-multiplier": math.nan}, "min-noise-multiplier"),
        ({"max-clip-norm": 0}, "max-clip-norm"),
        ({"max-clip-norm": True}, "must be a number"),
        ({"require-dp": "yes"}, "require-dp"),
        ({"accountant": "gdp"}, "accountant"),
    ],
)
def test_from_dict_rejects_unknown_keys_and_bad_values(raw, fragment):
    # Execute / Assert
    with pytest.raises(ConfigError, match=fragment):
        PrivacyPolicy.from_dict(raw)


@pytest.mark.parametrize(
    ("policy_changes", "request_changes", "reason"),
    [
        ({}, {"dp": False}, "the run trains without DP; this site requires DP"),
        ({}, {"noise_multiplier": 0.3}, "noise multiplier 0.3 below the site minimum 0.5"),
        ({}, {"noise_multiplier": 0.0}, "noise multiplier 0.0 gives no privacy"),
        ({}, {"noise_multiplier": math.nan}, "noise multiplier nan gives no privacy"),
        ({"min_noise_multiplier": 0.0}, {"noise_multiplier": -1.0}, "noise multiplier -1.0 gives no privacy"),
        ({}, {"max_grad_norm": 3.0}, "clip norm 3 above the site maximum 2"),
        ({}, {"max_grad_norm": math.inf}, "clip norm inf is not a positive number"),
        ({}, {"delta": 1e-4}, "delta 0.0001 above the site's delta 1e-05"),
        ({}, {"delta": 0.0}, "delta 0.0 is not a positive number"),
        ({}, {"sample_rate": 1.5}, "sample rate 1.5 is not in (0, 1]"),
        ({}, {"steps": 0}, "steps 0 is not a positive integer"),
        ({}, {"noise_multiplier": 0.3, "max_grad_norm": 3.0},
         "noise multiplier 0.3 below the site minimum 0.5; clip norm 3 above the site maximum 2"),
    ],
)
def test_weaker_privacy_than_the_policy_is_refused(policy_changes, request_changes, reason):
    # Prepare
    policy = dataclasses.replace(POLICY, **policy_changes)
    request = dataclasses.replace(REQUEST, **request_changes)
    ledger = FakeLedger(epsilon=0.1)

    # Execute
    decision = check(policy, request, ledger)

    # Assert: refused before any budget arithmetic
    assert decision == Decision(False, reason, POLICY_REFUSED)
    assert ledger.calls == []


def test_no_dp_is_allowed_only_where_the_site_allows_it():
    # Prepare
    policy = dataclasses.replace(POLICY, require_dp=False)
    ledger = FakeLedger()

    # Execute
    decision = check(policy, dataclasses.replace(REQUEST, dp=False), ledger)

    # Assert
    assert decision == Decision(True)
    assert ledger.calls == []


@pytest.mark.parametrize(
    ("projected", "allowed", "code"),
    [(7.9, True, None), (8.0, True, None), (8.01, False, BUDGET_EXHAUSTED), (math.inf, False, BUDGET_EXHAUSTED),
     (math.nan, False, BUDGET_EXHAUSTED)],
)
def test_budget_is_checked_with_the_site_delta_and_accountant(projected, allowed, code):
    # Prepare
    policy = dataclasses.replace(POLICY, accountant="prv")
    request = dataclasses.replace(REQUEST, delta=1e-6)  # the run may be stricter than the site
    ledger = FakeLedger(epsilon=projected)

    # Execute
    decision = check(policy, request, ledger)

    # Assert
    assert (decision.allowed, decision.code) == (allowed, code)
    assert ledger.calls == [{"noise_multiplier": 1.0, "sample_rate": 0.01, "steps": 100, "delta": 1e-5,
                             "accountant": "prv"}]
    if not allowed:
        assert "above the site budget 8" in decision.reason


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (LedgerCorruptError("privacy ledger f:0123456789: line 2 is corrupt"),
         "privacy check failed: privacy ledger f:0123456789: line 2 is corrupt"),
        (RuntimeError("/secret/site/path exploded"), "privacy check failed (RuntimeError)"),
    ],
)
def test_a_check_that_cannot_be_done_refuses(error, reason):
    # Execute
    decision = check(POLICY, REQUEST, FakeLedger(error=error))

    # Assert: fail closed, and no raw message that could hold a path
    assert decision == Decision(False, reason, CHECK_FAILED)


def test_site_stops_training_when_its_budget_is_spent(tmp_path):
    # Prepare
    policy = dataclasses.replace(POLICY, max_epsilon=2.0)
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    trained = 0

    # Execute: a daemon that trains every round its policy allows
    for server_round in range(1, 20):
        decision = check(policy, REQUEST, ledger)
        if not decision.allowed:
            break
        ledger.record_round(run_id="run-1", round=server_round, noise_multiplier=REQUEST.noise_multiplier,
                            sample_rate=REQUEST.sample_rate, steps=REQUEST.steps, delta=REQUEST.delta)
        trained += 1
    restarted = check(policy, REQUEST, PrivacyLedger(tmp_path / "ledger.jsonl"))

    # Assert: it trained while the budget lasted, never above it, and a restart does not reset it
    assert 1 <= trained < 19
    assert ledger.cumulative_epsilon(policy.delta) <= policy.max_epsilon
    assert decision.code == BUDGET_EXHAUSTED and decision.projected_epsilon > policy.max_epsilon
    assert restarted.code == BUDGET_EXHAUSTED


@pytest.mark.parametrize(
    ("decision", "error"),
    [
        (Decision(False, "spent", BUDGET_EXHAUSTED), PrivacyBudgetExceededError),
        (Decision(False, "weak", POLICY_REFUSED), PrivacyPolicyError),
        (Decision(False, "broken", CHECK_FAILED), ImplantFLError),
    ],
)
def test_refusals_raise_their_error(decision, error):
    # Execute / Assert
    with pytest.raises(error, match=decision.reason):
        decision.raise_if_refused()
    Decision(True).raise_if_refused()  # allowed: no error


def test_reproducible_noise_is_refused_unless_the_site_allows_it():
    from client.training.privacy import PrivacyPolicy, PrivacyRequest, check

    request = PrivacyRequest(dp=True, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, sample_rate=0.1, steps=10,
                             reproducible_noise=True)

    class NoSpend:
        def projected_epsilon(self, **_):
            return 1.0

    refused = check(PrivacyPolicy(), request, NoSpend())
    allowed = check(PrivacyPolicy(allow_reproducible_noise=True), request, NoSpend())
    assert not refused.allowed and refused.code == "policy-refused" and "reproducible" in refused.reason
    assert allowed.allowed
