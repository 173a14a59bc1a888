import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.validators import ModuleValidator
from torch import nn

from client.training.train import TrainSettings, evaluate, train_local
from common.models import MODELS, build_model
from common.models.ensemble import ProbabilityEnsemble, fit_ensemble_weights
from common.models.fusion import attention_boxes, crop_and_resize
from common.models.zoo import ensemble as zoo_ensemble


def ensemble(num_classes, image_size, members):  # noqa: ANN001, ANN201 - members built by the registry
    return zoo_ensemble(num_classes, image_size, members=members,
                        build=lambda name, n, s: build_model(name, num_classes=n, image_size=s))

CPU = torch.device("cpu")
ZOO = ["resnet18", "resnet50", "densenet121", "densenet169", "fusion", "ensemble", "ensemble-mura"]
TRAINED = [n for n in ZOO if n != "ensemble-mura"]  # its members are trained on their own; it is slow
SIZE = 32



pytestmark = pytest.mark.usefixtures("one_thread")


def _fresh(name, classes=3):
    torch.manual_seed(0)
    return build_model(name, num_classes=classes, image_size=SIZE)


def _signal(n=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(0, 0.1, (n, 1, SIZE, SIZE)).astype(np.float32)
    for i, label in enumerate(y):  # the class is where a bright bar sits
        x[i, 0, 4 + 8 * label : 10 + 8 * label, 8:20] += 1.0
    return x, y


def test_the_zoo_is_registered():
    assert set(ZOO) <= set(MODELS)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_is_dp_ready_maps_images_to_logits_and_has_a_cam_layer(name):
    # Prepare
    model = _fresh(name, classes=5)
    seen = []
    model.cam_layer.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    # Execute
    out = model(torch.rand(2, 1, SIZE, SIZE))
    # Assert
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert any(m is model.cam_layer for m in model.modules())
    assert len(seen) >= 1 and len(seen[0]) == 4 and seen[0][0] == 2  # (N, C, h, w) activations


@pytest.mark.parametrize("name", TRAINED)
def test_one_dp_sgd_step_runs_and_the_weights_load_into_a_plain_model(name):
    # Prepare
    x, y = _signal(n=8)
    model = _fresh(name)
    before = [p.detach().clone() for p in model.parameters()]
    settings = TrainSettings(dp=True, batch_size=8, learning_rate=0.01, noise_multiplier=0.5,
                             poisson_sampling=False, augment=False)
    # Execute
    res = train_local(model, x, y, settings, device=CPU)
    # Assert
    assert res.steps == 1 and np.isfinite(res.loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    _fresh(name).load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("name", ["resnet18", "fusion"])  # the models with forward code of our own
def test_private_step_with_zero_noise_and_huge_clipping_equals_a_plain_step(name):
    # Prepare: exact per-sample gradients make DP-SGD without noise or clipping plain SGD
    x, y = _signal(n=8)
    plain, private = _fresh(name), _fresh(name)
    common = dict(batch_size=8, learning_rate=0.01, momentum=0.0, augment=False, seed=1)
    # Execute
    train_local(plain, x, y, TrainSettings(dp=False, **common), device=CPU)
    train_local(private, x, y, TrainSettings(dp=True, noise_multiplier=0.0, max_grad_norm=1e6,
                                             poisson_sampling=False, **common), device=CPU)
    # Assert
    for (k, a), b in zip(plain.state_dict().items(), private.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", TRAINED)
def test_loss_on_a_tiny_fixed_batch_falls_after_a_few_plain_steps(name):
    x, y = _signal(n=12)
    model = _fresh(name)
    before = evaluate(model, x, y, device=CPU).loss
    train_local(model, x, y, TrainSettings(epochs=4, batch_size=12, learning_rate=0.01, augment=False), device=CPU)
    assert evaluate(model, x, y, device=CPU).loss < before


def test_ensemble_output_is_the_log_of_the_members_mean_probability():
    # Prepare
    torch.manual_seed(1)
    model = ensemble(4, SIZE, members=("cnn", "dnn")).eval()
    x = torch.rand(3, 1, SIZE, SIZE)
    # Execute
    probs = model(x).softmax(dim=1)
    mean = torch.stack([m(x).softmax(dim=1) for m in model.members]).mean(dim=0)
    # Assert
    torch.testing.assert_close(probs, mean)
    torch.testing.assert_close(model(x).exp().sum(dim=1), torch.ones(3))  # already normalised log-probs
    y = torch.tensor([0, 1, 3])
    torch.testing.assert_close(F.cross_entropy(model(x), y), -torch.log(mean[torch.arange(3), y]).mean())


class _Oracle(nn.Module):
    """Knows the label hidden in pixel (0, 0); ``right=False`` always says class 0."""

    def __init__(self, right: bool) -> None:
        super().__init__()
        self.right = right

    def forward(self, x):
        label = x[:, 0, 0, 0].long() if self.right else torch.zeros(len(x), dtype=torch.long)
        return 4.0 * F.one_hot(label, 3).float()


def test_fitted_ensemble_weights_favour_the_accurate_member_and_travel_in_the_state_dict():
    # Prepare
    model = ProbabilityEnsemble([_Oracle(right=False), _Oracle(right=True)], names=["bad", "good"])
    y = torch.arange(30) % 3
    x = torch.zeros(30, 1, 4, 4)
    x[:, 0, 0, 0] = y.float()
    # Execute
    weights = fit_ensemble_weights(model, x, y, steps=200)
    # Assert
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[1] > 0.9
    torch.testing.assert_close(model.state_dict()["member_weights"], weights)


def test_ensemble_cam_layer_follows_the_heaviest_member():
    model = ensemble(3, SIZE, members=("dnn", "cnn"))
    assert model.cam_layer is model.members[1].cam_layer  # the DNN has none


@pytest.mark.parametrize(
    ("hot", "expected"),
    [
        ((0, 0), (0.0, 0.0, 0.5, 0.5)),  # one hot cell in a 4x4 map -> its cell, widened to min_crop
        ((3, 1), (0.125, 0.5, 0.625, 1.0)),  # (row 3, col 1): widened about its centre, kept inside
        (None, (0.0, 0.0, 1.0, 1.0)),  # a flat map -> the whole image
    ],
)
def test_attention_box_spans_the_most_attended_cells(hot, expected):
    fmap = torch.zeros(1, 2, 4, 4)
    if hot is not None:
        fmap[0, 1, hot[0], hot[1]] = 5.0
    box = attention_boxes(fmap, threshold=0.7, min_crop=0.5)
    torch.testing.assert_close(box, torch.tensor([expected]))


def test_crop_and_resize_cuts_the_box_and_resamples_it():
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    whole = crop_and_resize(x, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), 8)
    quarter = crop_and_resize(x, torch.tensor([[0.0, 0.0, 0.5, 0.5]]), 4)
    torch.testing.assert_close(whole, x)
    torch.testing.assert_close(quarter, x[:, :, :4, :4])
