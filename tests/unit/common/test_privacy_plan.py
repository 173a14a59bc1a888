"""Privacy planner: noise for a target epsilon, epsilon per round, and its CLI."""

import argparse
import json
import math

import pytest

from common.errors import ConfigError
from common.privacy_plan import epsilon_for, make_accountant, plan

PLANS = [
    # rounds, epochs, batch size, examples, target epsilon, delta, accountant
    (5, 1, 32, 1000, 4.0, 1e-5, "rdp"),
    (10, 2, 64, 6400, 1.0, 1e-5, "rdp"),
    (3, 1, 50, 5000, 8.0, 1e-6, "rdp"),
    (3, 2, 32, 1000, 4.0, 1e-5, "prv"),
]


@pytest.mark.parametrize(("rounds", "epochs", "batch", "examples", "target", "delta", "accountant"), PLANS)
def test_plan_reaches_target_epsilon(rounds, epochs, batch, examples, target, delta, accountant):
    # Prepare / Execute
    result = plan(rounds=rounds, epochs=epochs, batch_size=batch, examples=examples,
                  target_epsilon=target, delta=delta, accountant=accountant)

    # Assert: never above the target, within the search tolerance of it
    assert result.epsilon_per_round[-1] <= target
    assert result.epsilon_per_round[-1] == pytest.approx(target, abs=0.01)
    assert result.sample_rate == 1 / math.ceil(examples / batch)  # Opacus' rule, what training uses
    assert result.steps_per_round == epochs * math.ceil(examples / batch)
    assert len(result.epsilon_per_round) == rounds
    assert all(a < b for a, b in zip(result.epsilon_per_round, result.epsilon_per_round[1:], strict=False))


def test_epsilon_per_round_matches_the_accountant():
    # Prepare: the RDP path scales one per-step RDP curve; check it against plain stepping
    accountant, rounds = "rdp", 6
    result = plan(rounds=rounds, epochs=1, batch_size=20, examples=1000, target_epsilon=3.0, accountant=accountant)

    # Execute: an Opacus accountant stepped through the same history, round by round
    independent = []
    for r in range(1, rounds + 1):
        acc = make_accountant(accountant)
        for _ in range(r * result.steps_per_round):
            acc.step(noise_multiplier=result.noise_multiplier, sample_rate=result.sample_rate)
        independent.append(acc.get_epsilon(delta=result.delta))

    # Assert
    assert result.epsilon_per_round == pytest.approx(independent, rel=1e-9)


def test_more_noise_spends_less_epsilon():
    # Prepare / Execute
    eps = [epsilon_for(nm, 0.02, steps=200, delta=1e-5) for nm in (0.7, 1.0, 2.0)]

    # Assert
    assert eps[0] > eps[1] > eps[2] > 0


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"rounds": 0}, "rounds"),
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 2.5}, "batch size"),
        ({"examples": True}, "examples"),
        ({"batch_size": 2000}, "larger than"),
        ({"target_epsilon": 0.0}, "target epsilon"),
        ({"target_epsilon": math.inf}, "target epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "gdp"}, "accountant"),
        ({"target_epsilon": 1e-9}, "cannot be reached"),
    ],
)
def test_plan_rejects_bad_input(overrides, fragment):
    # Prepare
    kwargs = {"rounds": 2, "epochs": 1, "batch_size": 32, "examples": 1000, "target_epsilon": 2.0} | overrides

    # Execute / Assert
    with pytest.raises(ConfigError, match=fragment):
        plan(**kwargs)


def _cli_args(*argv: str) -> argparse.Namespace:
    from simulations import privacy_plan_cli

    parser = argparse.ArgumentParser()
    privacy_plan_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["privacy-plan", *argv])


def test_cli_json_prints_one_object(capsys):
    # Prepare
    args = _cli_args("--rounds", "4", "--epochs", "1", "--batch-size", "32", "--examples", "1000",
                     "--target-epsilon", "3", "--json")

    # Execute
    rc = args.func(args)
    out = json.loads(capsys.readouterr().out)

    # Assert
    assert rc == 0
    assert out["rounds"] == 4 and len(out["epsilon_per_round"]) == 4
    assert out["epsilon_per_round"][-1] <= 3.0
    assert out["noise_multiplier"] > 0 and out["accountant"] == "rdp" and out["delta"] == 1e-5


def test_cli_table_shows_noise_and_every_round(capsys):
    # Prepare
    args = _cli_args("--rounds", "3", "--epochs", "1", "--batch-size", "32", "--examples", "1000",
                     "--target-epsilon", "3")

    # Execute
    rc = args.func(args)
    out = capsys.readouterr().out

    # Assert
    expected = plan(rounds=3, epochs=1, batch_size=32, examples=1000, target_epsilon=3.0)
    assert rc == 0
    assert f"{expected.noise_multiplier:.4f}" in out
    assert all(f"{eps:.3f}" in out for eps in expected.epsilon_per_round)


@pytest.mark.parametrize(("examples", "batch"), [(110, 32), (160, 32), (7, 16), (1000, 20)])
def test_the_planned_sample_rate_is_the_one_opacus_trains_with(examples, batch):
    # Prepare: Opacus' Poisson loader over the same data and batch size
    import torch
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset

    from common.privacy_plan import sample_rate

    loader = DataLoader(TensorDataset(torch.zeros(examples, 1)), batch_size=min(batch, examples))
    # Execute
    dp_loader = DPDataLoader.from_data_loader(loader)
    # Assert: one rule for the plan and for training (110 images at batch 32: 0.25, not 0.29)
    assert sample_rate(examples, batch) == pytest.approx(1 / len(dp_loader))
    assert sample_rate(examples, batch) == pytest.approx(dp_loader.sample_rate)


@pytest.mark.parametrize(("target", "prior"), [(8.0, ()), (2.0, ()), (8.0, ((3.0, 0.25, 40),))])
def test_one_shot_noise_reaches_the_target_after_what_was_spent(target, prior):
    from common.privacy_plan import history_epsilon, one_shot_noise

    z = one_shot_noise(target, delta=1e-5, prior=prior)
    spent = history_epsilon([*prior, (z, 1.0, 1)], delta=1e-5)
    assert spent <= target
    assert spent == pytest.approx(target, abs=0.02)
