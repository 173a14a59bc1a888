import pytest

from common.config import RunConfig
from common.errors import ConfigError


def test_defaults_roundtrip_through_flower_mapping():
    # Prepare
    cfg = RunConfig(num_server_rounds=3, model="dnn", dp=False)
    # Execute
    back = RunConfig.from_flower(cfg.to_flower())
    # Assert
    assert back == cfg
    assert "num-server-rounds" in cfg.to_flower()


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"learning-rate": -1.0}, "learning-rate"),
        ({"strategy": "fedfoo"}, "choose one of"),
        ({"accountant": "gdp"}, "choose one of"),
        ({"delta": 0.5}, "delta"),
        ({"min-fit-sites": 5, "min-available-sites": 2}, "min-fit-sites"),
        ({"batch-size": 2.5}, "integer"),
        ({"dp": "maybe"}, "true or false"),
        ({"learning-rate": "fast"}, "number"),
    ],
)
def test_out_of_range_or_badly_typed_values_are_rejected(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig.from_flower(values)


def test_unknown_keys_are_rejected_with_the_known_keys_listed():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_flower({"num-rounds": 3, "lr": 0.1})
    message = str(info.value)
    assert "lr" in message and "num-rounds" in message
    assert "num-server-rounds" in message  # the user sees what they meant


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("False", False), (True, True)])
def test_booleans_accept_toml_and_cli_spellings(raw, expected):
    assert RunConfig.from_flower({"dp": raw}).dp is expected


def test_ignored_keys_are_skipped():
    cfg = RunConfig.from_flower({"server-round": 4, "model": "cnn"}, ignore=("server-round",))
    assert cfg.model == "cnn"


def test_pyproject_app_config_is_valid():
    import tomllib
    from pathlib import Path

    data = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    from server.app import SERVER_KEYS

    declared = data["tool"]["flwr"]["app"]["config"]
    cfg = RunConfig.from_flower(declared, ignore=SERVER_KEYS)
    assert cfg.num_server_rounds >= 1
    # Flower refuses --run-config keys that pyproject does not declare: declare them all.
    assert set(RunConfig.keys()) <= set(declared)
