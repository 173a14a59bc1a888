"""Run-config `grad-sample-mode` (validation, `auto` per model, a DP step for every model) and `update-compression` checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from client.training import settings as task
from common import compression
from common.config import COMPRESSIONS, GRAD_SAMPLE_MODES, RunConfig
from common.errors import ConfigError
from common.models import DP_GRAD_SAMPLE_MODE, MODELS, build_model


def test_defaults_are_auto_and_no_compression():
    cfg = RunConfig.from_flower({})
    assert (cfg.grad_sample_mode, cfg.update_compression) == ("auto", "none")
    assert COMPRESSIONS == compression.MODES


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"grad-sample-mode": "fast"}, "grad-sample-mode = 'fast'; choose one of auto"),
        ({"update-compression": "zip"}, "update-compression = 'zip'; choose one of none"),
        ({"grad-sample-mode": "ghost", "local-loss": "fedrs", "proximal-mu": 0.0}, "ghost needs local-loss = ce"),
        ({"grad-sample-mode": "ghost", "proximal-mu": 0.01}, "proximal-mu = 0"),
    ],
)
def test_bad_values_are_refused_before_any_work(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_flower(values)


@pytest.mark.parametrize(
    "values",
    [{"grad-sample-mode": "ghost", "proximal-mu": 0.0}, {"grad-sample-mode": "ghost", "dp": False, "local-loss": "fedrs"},
     {"update-compression": "int8"}],
)
def test_valid_combinations_are_accepted(values):
    cfg = RunConfig.from_flower(values)
    assert cfg.to_flower()["grad-sample-mode"] == values.get("grad-sample-mode", "auto")


@pytest.mark.parametrize(
    ("model", "mode", "expected"),
    [
        ("cnn", "auto", "ew"),  # measured fastest (benchmarks/results/dp_overhead.json)
        ("resnet18", "auto", "ew"),
        ("densenet121", "auto", "hooks"),  # ew fails on MONAI DenseNet
        ("ensemble", "auto", "hooks"),
        ("cnn", "hooks", "hooks"),  # an explicit mode is kept
        ("resnet18", "functorch", "functorch"),
    ],
)
def test_auto_resolves_per_model(model, mode, expected):
    cfg = RunConfig(model=model, grad_sample_mode=mode)
    assert task.grad_sample_mode(cfg, proximal_mu=0.01) == expected


@pytest.mark.parametrize(("loss", "mu", "expected"), [("ce", 0.0, "ghost"), ("fedrs", 0.0, "hooks"), ("ce", 0.01, "hooks")])
def test_auto_never_picks_ghost_where_ghost_clipping_cannot_work(monkeypatch, loss, mu, expected):
    monkeypatch.setitem(task.DP_GRAD_SAMPLE_MODE, "cnn", "ghost")
    cfg = RunConfig(model="cnn", local_loss=loss, proximal_mu=0.0)
    assert task.grad_sample_mode(cfg, proximal_mu=mu) == expected


def test_the_mapping_names_registry_models_and_concrete_modes():
    assert set(DP_GRAD_SAMPLE_MODE) <= set(MODELS)
    assert set(DP_GRAD_SAMPLE_MODE.values()) <= set(GRAD_SAMPLE_MODES) - {"auto"}


def test_train_settings_carry_the_run_config_and_the_resolved_mode():
    # Prepare
    cfg = RunConfig(model="cnn", batch_size=64, local_epochs=3, seed=2, local_loss="fedrs", fedrs_alpha=0.3)
    # Execute
    s = task.train_settings(cfg, 10, 4, noise=1.3, proximal_mu=0.05)
    # Assert
    assert (s.grad_sample_mode, s.batch_size, s.epochs, s.seed) == ("ew", 10, 3, 2 * 100_003 + 4)
    assert (s.noise_multiplier, s.proximal_mu, s.loss, s.fedrs_alpha, s.dp) == (1.3, 0.05, "fedrs", 0.3, True)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_takes_a_dp_step_with_its_auto_mode(name, one_thread):
    # Prepare: zero noise and tight clipping, so the step is the clipped mean gradient
    rng = np.random.default_rng(0)
    x, y = rng.random((4, 1, 32, 32), dtype=np.float32), np.array([0, 1, 2, 0])
    settings = task.train_settings(RunConfig(model=name, image_size=32), 4, 1, noise=0.0, proximal_mu=0.0)
    settings = dataclasses.replace(settings, max_grad_norm=0.01, poisson_sampling=False, augment=False,
                                   optimizer="sgd", momentum=0.0, learning_rate=0.1)
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, image_size=32)
    before = [p.detach().clone() for p in model.parameters()]
    # Execute
    from client.training.train import train_local

    result = train_local(model, x, y, settings, device=torch.device("cpu"))
    # Assert: one step; SGD moved the weights by at most lr * clip (the clipped mean's norm bound)
    moved = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert result.steps == 1 and np.isfinite(result.loss)
    assert 0 < float(moved) <= 0.1 * 0.01 * (1 + 1e-4)
