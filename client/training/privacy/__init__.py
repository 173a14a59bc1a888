"""Site-side differential privacy: the site's policy, and the ledger that audits its spend.

``PrivacyLedger`` keeps every DP round a site trained (across rounds, runs and restarts)
and rebuilds the Opacus accountant from it; ``check`` refuses a round that the site's
``PrivacyPolicy`` forbids or that would exceed its epsilon budget.
"""

from client.training.privacy.ledger import LedgerCorruptError, LedgerRow, PrivacyLedger
from client.training.privacy.policy import (
    BUDGET_EXHAUSTED,
    CHECK_FAILED,
    POLICY_REFUSED,
    Decision,
    PrivacyPolicy,
    PrivacyRequest,
    check,
)

__all__ = [
    "BUDGET_EXHAUSTED",
    "CHECK_FAILED",
    "POLICY_REFUSED",
    "Decision",
    "LedgerCorruptError",
    "LedgerRow",
    "PrivacyLedger",
    "PrivacyPolicy",
    "PrivacyRequest",
    "check",
]
