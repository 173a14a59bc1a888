"""Experiment presets: small named configurations, each saying why it exists.

A preset is a TOML file here: ``description``, the synthetic-data preset it uses
(``synth-preset``) and a ``[run]`` table of run-config keys (``common.config.RunConfig``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from common.config import RunConfig
from common.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    synth_preset: str
    run: dict[str, Any]

    def run_config(self, **overrides: Any) -> RunConfig:
        return RunConfig.from_flower({**self.run, **overrides})


def available() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> Preset:
    if name not in available():
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(available())}")
    data = tomllib.loads(resources.files(__name__).joinpath(f"{name}.toml").read_text())
    unknown = set(data) - {"description", "synth-preset", "run"}
    if unknown:
        raise ConfigError(f"preset {name}: unknown key(s) {', '.join(sorted(unknown))}")
    preset = Preset(name, str(data.get("description", "")), str(data.get("synth-preset", name)), dict(data.get("run", {})))
    preset.run_config()  # validate now: a bad preset stops before any work
    return preset
