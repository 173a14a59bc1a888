import pytest
import torch
from opacus.validators import ModuleValidator

from common.errors import ConfigError
from common.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_is_dp_ready_and_maps_images_to_catalog_logits(name):
    # Prepare
    model = build_model(name, num_classes=12, image_size=64)
    # Execute
    errors = ModuleValidator.validate(model, strict=False)
    out = model(torch.rand(3, 1, 64, 64))
    # Assert
    assert errors == []
    assert out.shape == (3, 12)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_seeded_builds_are_identical(name):
    torch.manual_seed(3)
    a = build_model(name, num_classes=5, image_size=32).state_dict()
    torch.manual_seed(3)
    b = build_model(name, num_classes=5, image_size=32).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ConfigError, match="cnn"):
        build_model("vgg", num_classes=3, image_size=64)
