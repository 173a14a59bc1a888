import numpy as np
import pytest
import torch
import torch.nn.functional as F

from client.training.losses import LOSSES, class_counts, make_loss
from client.training.train import TrainSettings, train_local
from common.models import build_model

# A site holding classes 0 and 1 (three times as many 0s) of a 4-class catalog.
SITE_LABELS = np.array([0, 0, 0, 1, 0, 0, 0, 1])



pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed=0, n=6, classes=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g, requires_grad=True), torch.tensor([0, 1, 0, 0, 1, 0])[:n]


def test_class_counts_pad_to_the_catalog():
    assert class_counts(SITE_LABELS, 4).tolist() == [6.0, 2.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("name", "options"),
    [("ce", {}), ("fedrs", {"fedrs_alpha": 1.0}), ("logit-adjust", {"logit_tau": 0.0})],
)
def test_neutral_settings_equal_cross_entropy(name, options):
    z, y = _batch()
    loss = make_loss(name, SITE_LABELS, **options)(z, y)
    torch.testing.assert_close(loss, F.cross_entropy(z, y))


def test_class_balanced_with_beta_zero_is_cross_entropy():
    z, y = _batch()
    torch.testing.assert_close(make_loss("class-balanced", SITE_LABELS, cb_beta=0.0)(z, y), F.cross_entropy(z, y))


def _cb(z, y, beta):
    from client.training.losses import class_balanced_loss

    return class_balanced_loss(z, y, class_counts(SITE_LABELS), beta=beta)


def test_fedrs_scales_absent_logits_by_alpha():
    # Prepare
    z, y = _batch()
    alpha = 0.3
    scaled = z.detach().clone()
    scaled[:, 2:] *= alpha  # classes 2 and 3 are absent at the site
    # Execute
    loss = make_loss("fedrs", SITE_LABELS, fedrs_alpha=alpha)(z, y)
    loss.backward()
    # Assert
    torch.testing.assert_close(loss, F.cross_entropy(scaled, y))
    ref = scaled.clone().requires_grad_(True)
    F.cross_entropy(ref, y).backward()
    torch.testing.assert_close(z.grad[:, 2:], alpha * ref.grad[:, 2:])  # absent classes pushed down alpha-times less


def test_logit_adjustment_shifts_by_log_priors_and_leaves_absent_classes_alone():
    # Prepare
    z, y = _batch()
    tau = 0.7
    prior = torch.tensor([6 / 8, 2 / 8])
    # Execute
    loss = make_loss("logit-adjust", SITE_LABELS, logit_tau=tau)(z, y)
    loss.backward()
    # Assert: on the present classes it is CE of the shifted logits; absent ones get no gradient
    torch.testing.assert_close(loss, F.cross_entropy(z.detach()[:, :2] + tau * prior.log(), y))
    assert torch.all(z.grad[:, 2:] == 0) and torch.isfinite(z.grad).all()


def test_class_balanced_weights_the_minority_class_up():
    z = torch.zeros(2, 4)
    per_class = [_cb(z[i : i + 1], torch.tensor([c]), 0.9) / F.cross_entropy(z[i : i + 1], torch.tensor([c]))
                 for i, c in enumerate([0, 1])]
    assert per_class[1] > per_class[0]
    # weights are normalised so that the site's mean weight is 1: 6 w0 + 2 w1 = 8
    assert (6 * per_class[0] + 2 * per_class[1]).item() == pytest.approx(8.0)


@pytest.mark.parametrize("name", LOSSES)
def test_batch_loss_is_the_mean_of_per_sample_losses(name):
    # What Opacus' per-sample gradients with loss_reduction="mean" rely on.
    z, y = _batch()
    loss = make_loss(name, SITE_LABELS, fedrs_alpha=0.4, logit_tau=1.0)
    single = torch.stack([loss(z[i : i + 1], y[i : i + 1]) for i in range(len(y))])
    torch.testing.assert_close(loss(z, y), single.mean())


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [("focal", {}, "unknown local loss"), ("fedrs", {"fedrs_alpha": 1.5}, "alpha"),
     ("logit-adjust", {"logit_tau": -1.0}, "tau")],
)
def test_bad_loss_settings_are_refused(name, options, match):
    with pytest.raises(ValueError, match=match):
        make_loss(name, SITE_LABELS, **options)


def test_a_label_outside_the_model_outputs_is_refused():
    with pytest.raises(ValueError, match="outside"):
        make_loss("fedrs", np.array([0, 5]))(torch.zeros(2, 3), torch.tensor([0, 1]))


@pytest.mark.parametrize("name", ["fedrs", "logit-adjust"])
def test_at_a_two_class_site_a_skew_loss_pushes_absent_classes_down_less_than_ce_under_dp(name):
    # Prepare: a manufacturer-like site holding 2 of 4 classes; DP-SGD path (clipping, zero noise, fixed batches)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (16, 1, 32, 32)).astype(np.float32)
    y = np.array([0, 1] * 8)

    def absent_logit(loss: str) -> tuple[float, int]:
        torch.manual_seed(0)
        model = build_model("cnn", num_classes=4, image_size=32)
        settings = TrainSettings(dp=True, batch_size=8, loss=loss, fedrs_alpha=0.0, noise_multiplier=0.0,
                                 max_grad_norm=1.0, poisson_sampling=False, augment=False, epochs=3,
                                 optimizer="sgd", learning_rate=0.5, momentum=0.0)
        res = train_local(model, x, y, settings, device=torch.device("cpu"))
        with torch.no_grad():
            logits = model(torch.from_numpy(x))
        return float((logits[:, 2:] - logits[:, :2].mean(1, keepdim=True)).mean()), res.steps

    # Execute
    ce, ce_steps = absent_logit("ce")
    skew, skew_steps = absent_logit(name)
    # Assert: the same DP steps; the absent classes' logits end higher (less forgotten) than under plain CE
    assert ce_steps == skew_steps == 6
    assert skew > ce + 0.1
