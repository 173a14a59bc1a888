"""The release gate: is a model fit for a surgeon to use? Judged before its release is written.

Two conditions, both on the held-out evaluation data of the run (a simulation's central
test set; a deployment's federated evaluation on the sites' own validation splits):

1. top-1 accuracy beats chance by a one-sided exact binomial test at ``p < ALPHA`` (a model
   that cannot be told apart from guessing is never fit, however the threshold is set);
2. top-1 accuracy reaches the consortium's minimum, run-config ``release-min-accuracy``
   (default :data:`DEFAULT_MIN_ACCURACY` = 0.80: below it the first answer is wrong for
   more than one implant in five, where published single-centre systems reach 95-99% on
   their catalogs; a surgeon still confirms with the operative record, so the minimum is
   a floor, not a target; a consortium raises it as its catalog and data grow).

Chance is the share of the largest class in the evaluation data when known (1 / classes
for a balanced set), else 1 / classes. An unfit release is still written (researchers need
it): its model card's first line says ``NOT FIT FOR CLINICAL USE`` and ``predict`` refuses
it without ``--allow-unfit``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

ALPHA = 0.01  # one-sided significance of "better than chance"
DEFAULT_MIN_ACCURACY = 0.80


@dataclass(frozen=True)
class ReleaseVerdict:
    fit_for_use: bool
    reason: str  # why not fit ("" when fit)
    accuracy: float  # top-1 on the evaluation data
    chance: float  # what guessing the largest class reaches
    p_value: float  # one-sided binomial test of accuracy > chance
    min_accuracy: float  # the consortium minimum it was held to
    examples: int  # evaluation images
    evaluated_on: str  # "central test set" | "federated evaluation on the sites' validation splits" | ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleaseVerdict:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def judge(accuracy: float | None, examples: int, *, chance: float, min_accuracy: float = DEFAULT_MIN_ACCURACY,
          evaluated_on: str) -> ReleaseVerdict:
    """The verdict on a model with top-1 ``accuracy`` over ``examples`` evaluation images."""
    from scipy.stats import binomtest

    if accuracy is None or examples <= 0 or not math.isfinite(float(accuracy)):
        return ReleaseVerdict(False, "no held-out evaluation: the model's accuracy is unknown", float("nan"),
                              chance, float("nan"), min_accuracy, int(max(examples, 0)), evaluated_on)
    accuracy = float(accuracy)
    hits = int(round(accuracy * examples))
    p = float(binomtest(hits, examples, chance, alternative="greater").pvalue)
    reasons = []
    if not p < ALPHA:
        reasons.append(f"top-1 {accuracy:.3f} on {examples} images is not better than chance ({chance:.3f}): "
                       f"one-sided binomial p = {p:.3g}, needs < {ALPHA:g}")
    if accuracy < min_accuracy:
        reasons.append(f"top-1 {accuracy:.3f} is below the consortium minimum {min_accuracy:.2f}")
    return ReleaseVerdict(not reasons, "; ".join(reasons), accuracy, chance, p, min_accuracy, examples, evaluated_on)


def verdict_for(final: dict[str, Any] | None, *, num_classes: int,
                min_accuracy: float = DEFAULT_MIN_ACCURACY) -> ReleaseVerdict:
    """The verdict on a run's ``final`` metrics (results.json's, or a deployment's federated evaluation)."""
    final = final or {}
    examples = int(final.get("examples", 0) or 0)
    support = [int(m.get("support", 0)) for m in (final.get("per_class") or {}).values()]
    chance = max(support) / sum(support) if support and sum(support) > 0 else 1.0 / max(num_classes, 1)
    where = final.get("source") or "the central held-out test set"
    return judge(final.get("accuracy"), examples, chance=chance, min_accuracy=min_accuracy, evaluated_on=where)
