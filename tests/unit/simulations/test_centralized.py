"""The pooled baseline: non-private by default, DP-SGD on the pooled data when asked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.config import RunConfig
from simulations.centralized import train_centralized

CLASSES = ["a", "b", "c"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _splits(seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Two 'sites' and a test set of 16x16 images whose class is a bright quadrant."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        x = rng.normal(0, 0.1, (n, 1, 16, 16)).astype(np.float32)
        for i, c in enumerate(y):
            x[i, 0, (c // 2) * 8:(c // 2) * 8 + 8, (c % 2) * 8:(c % 2) * 8 + 8] += 1.0
        return x, y.astype(np.int64)

    return [make(40), make(24)], make(30)


CFG = RunConfig(model="dnn", image_size=16, num_server_rounds=2, local_epochs=1, batch_size=16, optimizer="adam",
                learning_rate=0.01, target_epsilon=4.0, dp=True)


def test_without_dp_the_baseline_reports_no_privacy_even_for_a_dp_run_config():
    # Execute
    res = train_centralized(*_splits(), CFG, CLASSES, device=torch.device("cpu"))
    # Assert
    assert res.privacy is None and res.train_examples == 64 and len(res.accuracy_per_epoch) == 2


def test_with_dp_the_pooled_run_spends_the_planned_epsilon_and_says_so():
    # Execute: the pooled data as one DP site, noise planned for epsilon 4 over the run's 2 passes
    res = train_centralized(*_splits(), CFG, CLASSES, device=torch.device("cpu"), dp=True)
    # Assert: every ledger field, epsilon at the target (the planner's tolerance), sampling 16 of 64
    p = res.privacy
    assert p is not None and set(p) == {"epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant"}
    assert 3.9 <= p["epsilon"] <= 4.0 + 1e-6 and p["noise_multiplier"] > 0
    assert p["sample_rate"] == pytest.approx(16 / 64) and p["steps"] == 2 * 4 and p["delta"] == CFG.delta


def test_with_dp_and_no_target_the_configured_noise_is_used():
    cfg = CFG.replace(target_epsilon=0.0, noise_multiplier=1.3)
    res = train_centralized(*_splits(), cfg, CLASSES, device=torch.device("cpu"), dp=True)
    assert res.privacy["noise_multiplier"] == 1.3 and res.privacy["epsilon"] > 0


@pytest.mark.parametrize(("flags", "private"), [([], False), (["--dp", "--target-epsilon", "6"], True)])
def test_the_centralized_command_is_private_only_when_asked(tmp_path, capsys, flags, private):
    from simulations.cli import main

    # Execute: the smoke preset asks its sites for DP; the pooled command follows --dp only
    code = main(["centralized", "--preset", "smoke", "--rounds", "1", "--local-epochs", "1", "--out",
                 str(tmp_path / "run"), *flags, "--json"])
    # Assert
    assert code == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["dp"] is private and ("privacy" in results) is private
    if private:  # at most the target (Opacus samples at 1 / steps per epoch, at most batch / examples)
        assert 4.0 < results["privacy"]["pooled"]["epsilon"] <= 6.0 + 1e-6
