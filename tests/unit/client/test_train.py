import numpy as np
import pytest
import torch

from client.training.train import TrainSettings, evaluate, train_local
from common.models import build_model

CPU = torch.device("cpu")


def _data(n=48, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.1, (n, 1, 32, 32)).astype(np.float32)
    for i, label in enumerate(y):  # a learnable signal: a bright square whose place is the class
        x[i, 0, 4 + 8 * label : 10 + 8 * label, 8:20] += 1.0
    return x, y


def _fresh(name="cnn"):
    torch.manual_seed(0)
    return build_model(name, num_classes=3, image_size=32)


def test_dp_with_zero_noise_and_huge_clipping_equals_plain_training():
    # Prepare: identical models, identical (non-Poisson) batches, no augmentation
    x, y = _data()
    plain, private = _fresh(), _fresh()
    common = dict(epochs=1, batch_size=16, learning_rate=0.1, momentum=0.0, augment=False, seed=1)
    # Execute
    train_local(plain, x, y, TrainSettings(dp=False, **common), device=CPU)
    train_local(private, x, y, TrainSettings(dp=True, noise_multiplier=0.0, max_grad_norm=1e6,
                                             poisson_sampling=False, **common), device=CPU)
    # Assert
    for (k, a), b in zip(plain.state_dict().items(), private.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def test_dp_noise_changes_the_result_and_is_reported():
    x, y = _data()
    a, b = _fresh(), _fresh()
    res = train_local(a, x, y, TrainSettings(dp=True, noise_multiplier=1.0, batch_size=16), device=CPU)
    train_local(b, x, y, TrainSettings(dp=False, batch_size=16), device=CPU)
    assert res.sample_rate == pytest.approx(1 / 3)
    assert res.steps == 3 and res.noise_multiplier == 1.0
    assert any(not torch.allclose(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_seeded_plain_training_is_deterministic():
    x, y = _data()
    a, b = _fresh(), _fresh()
    train_local(a, x, y, TrainSettings(seed=5), device=CPU)
    train_local(b, x, y, TrainSettings(seed=5), device=CPU)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_dp_trained_weights_load_into_a_plain_model():
    x, y = _data()
    model = _fresh()
    train_local(model, x, y, TrainSettings(dp=True, batch_size=16), device=CPU)
    state = model.state_dict()
    assert not any(k.startswith("_module.") for k in state)
    _fresh().load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", ["cnn", "dnn"])
def test_training_learns_a_simple_signal(name):
    x, y = _data(n=96)
    model = _fresh(name)
    before = evaluate(model, x, y, device=CPU).loss
    train_local(model, x, y, TrainSettings(epochs=8, batch_size=16, optimizer="adam", learning_rate=0.005), device=CPU)
    after = evaluate(model, x, y, device=CPU)
    assert after.loss < before
    assert after.accuracy > 0.8


@pytest.mark.parametrize("mode", ["hooks", "ew", "ghost"])
def test_empty_poisson_batches_take_a_noise_only_step_in_every_mode(mode):
    # Prepare: 6 images, expected batch 1: each Poisson batch is empty with probability (5/6)^6 ~ 0.33
    x, y = _data(n=6)
    model = _fresh()
    before = [p.detach().clone() for p in model.parameters()]
    settings = TrainSettings(epochs=3, batch_size=1, dp=True, grad_sample_mode=mode, noise_multiplier=1.0, seed=0)
    # Execute
    result = train_local(model, x, y, settings, device=CPU)
    # Assert: every step was taken (6 per epoch), empty ones included, and the model moved
    assert result.steps == 18
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _dp_weights(settings, x, y):
    model = _fresh()
    train_local(model, x, y, settings, device=CPU)
    return [p.detach().clone() for p in model.state_dict().values()]


def test_dp_noise_is_secret_two_runs_with_the_same_settings_differ():
    # Prepare: everything the server knows (model init, seed, settings) is identical
    x, y = _data()
    settings = TrainSettings(dp=True, noise_multiplier=1.0, batch_size=16, seed=3)
    # Execute
    a, b = _dp_weights(settings, x, y), _dp_weights(settings, x, y)
    # Assert: the noise and the Poisson batches came from the site's OS entropy, not from seed
    assert any(not torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_dp_without_noise_still_samples_secret_poisson_batches():
    # Zero noise, huge clip: only the Poisson batches can differ between two runs, and they do
    x, y = _data()
    settings = TrainSettings(dp=True, noise_multiplier=0.0, max_grad_norm=1e6, batch_size=8, seed=3, augment=False)
    a, b = _dp_weights(settings, x, y), _dp_weights(settings, x, y)
    assert any(not torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_reproducible_noise_seed_gives_identical_weights():
    x, y = _data()
    settings = TrainSettings(dp=True, noise_multiplier=1.0, batch_size=16, seed=3, noise_seed=1234)
    a, b = _dp_weights(settings, x, y), _dp_weights(settings, x, y)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_dp_noise_does_not_follow_the_global_torch_seed(monkeypatch):
    # A site that re-seeds torch's global generator (as model code does) must not fix the noise.
    x, y = _data()
    settings = TrainSettings(dp=True, noise_multiplier=1.0, batch_size=16, seed=3)
    torch.manual_seed(0)
    a = _dp_weights(settings, x, y)
    torch.manual_seed(0)
    b = _dp_weights(settings, x, y)
    assert any(not torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_dp_optimizer_uses_opacus_floating_point_defence():
    # Opacus' secure-mode noise (sum of 2n Gaussians) is on for every DP optimizer we build
    from client.training.train import _loader, _make_private

    x, y = _data()
    model = _fresh()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _, dp_opt, _, loader = _make_private(model, opt, _loader(x, y, 16, shuffle=True, seed=0), torch.nn.CrossEntropyLoss(),
                                         TrainSettings(dp=True, batch_size=16), CPU)
    assert dp_opt.secure_mode is True
    assert dp_opt.generator is not None
    assert loader.batch_sampler.generator is not None
