"""The dp-stats round at the server: checked releases, summed in site order, solved into the global head."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.dp_stats import feature_stats, solve_head
from server.stats_round import solve_global, validate_stats_replies


def _reply(make_reply, site, arrays, *, examples=20, noise=0.0, node=1):  # noqa: ANN001, ANN202
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
        "metrics": MetricRecord({"num-examples": examples, "noise-multiplier": float(noise)}),
        "site": ConfigRecord({"name": site, "status": "ok", "reason": "", "payload": "dp-stats"}),
    })
    return make_reply(content, src_node_id=node)


def _site_stats(seed, n=20, c=3, d=4):  # noqa: ANN001, ANN202
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return feature_stats(x, rng.integers(0, c, n), c)


def test_exact_releases_sum_to_the_pooled_solution(make_reply):
    parts = [_site_stats(k) for k in range(3)]
    replies = [_reply(make_reply, f"site-{k}", s.to_arrays("cosine"), node=k + 1) for k, s in enumerate(parts)]
    verdicts, accepted = validate_stats_replies(replies, num_classes=3, dim=4, solver="cosine")
    head = solve_global(accepted, solver="cosine", ridge=1.0)
    expected, _ = solve_head(parts[0] + parts[1] + parts[2], solver="cosine")
    assert [v.status for v in verdicts] == ["ok"] * 3
    np.testing.assert_allclose(head["weight"].numpy(), expected, rtol=1e-5)
    assert head["bias"].numpy().shape == (3,)


@pytest.mark.parametrize(("damage", "fragment"), [
    (lambda a: {**a, "sums": a["sums"][:2]}, "wrong shape"),
    (lambda a: {**a, "sums": np.full_like(a["sums"], np.nan)}, "non-finite"),
    (lambda a: {**a, "sums": a["sums"] * 1000}, "implausible"),
    (lambda a: {**a, "extra": np.zeros(2)}, "unexpected"),
])
def test_a_bad_release_is_rejected_with_its_reason_and_the_others_are_used(make_reply, damage, fragment):
    good, bad = _site_stats(0), _site_stats(1)
    replies = [_reply(make_reply, "good", good.to_arrays("cosine"), node=1),
               _reply(make_reply, "bad", damage(bad.to_arrays("cosine")), node=2)]
    verdicts, accepted = validate_stats_replies(replies, num_classes=3, dim=4, solver="cosine")
    by_site = {v.site: v for v in verdicts}
    assert by_site["good"].status == "ok" and set(accepted) == {"good"}
    assert by_site["bad"].status == "rejected" and fragment in by_site["bad"].reason


def test_noise_a_site_declares_widens_what_is_plausible(make_reply):
    arrays = _site_stats(0).to_arrays("cosine")
    arrays["sums"] = arrays["sums"] + 2.0  # what noise of std ~0.6 x 1 could not plausibly give 12 entries
    tight = validate_stats_replies([_reply(make_reply, "s", arrays, examples=2, noise=0.0)], num_classes=3, dim=4,
                                   solver="cosine")[0][0]
    noisy = validate_stats_replies([_reply(make_reply, "s", arrays, examples=2, noise=3.0)], num_classes=3, dim=4,
                                   solver="cosine")[0][0]
    assert tight.status == "rejected" and noisy.status == "ok"


def test_no_accepted_release_leaves_no_head():
    assert solve_global({}, solver="cosine", ridge=1.0) is None
