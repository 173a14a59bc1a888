"""The DP modes benchmarks/dp_overhead compares clip like Opacus' reference (hooks)."""

import numpy as np
import pytest
import torch


def _dp_data(n=16):
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 32, 32), dtype=np.float32), rng.integers(0, 3, n)


def _train(mode, x, y, **kw):
    from client.training.train import TrainSettings, train_local
    from common.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", num_classes=3, image_size=32)
    settings = TrainSettings(dp=True, grad_sample_mode=mode, **{"batch_size": 4, **kw})
    result = train_local(model, x, y, settings, device=torch.device("cpu"))
    return result, torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("mode", ["ew", "ghost"])
def test_dp_mode_clips_like_hooks(mode):
    # Prepare: zero noise, tight clipping (every per-sample gradient is clipped), same batches
    x, y = _dp_data()
    kw = dict(noise_multiplier=0.0, max_grad_norm=0.01, poisson_sampling=False)
    # Execute
    _, hooks = _train("hooks", x, y, **kw)
    _, other = _train(mode, x, y, **kw)
    # Assert
    torch.testing.assert_close(other, hooks, rtol=0, atol=1e-6)


def test_ghost_clipping_survives_empty_poisson_batches():
    # Prepare: 3 examples with batch size 1: Poisson sampling draws empty batches
    x, y = _dp_data(3)
    # Execute
    result, weights = _train("ghost", x, y, epochs=4, batch_size=1)
    # Assert: every step counted (the accountant's view), weights still finite
    assert result.steps == 12
    assert torch.isfinite(weights).all()


def test_ghost_clipping_refuses_losses_it_cannot_clip():
    x, y = _dp_data()
    with pytest.raises(ValueError, match="ghost"):
        _train("ghost", x, y, loss="fedrs")
