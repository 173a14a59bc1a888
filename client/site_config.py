"""The site's own TOML: who it is, where its data is, its labels, preprocessing and privacy.

Example::

    [site]
    name = "hosp-a"
    data-dir = "xrays"                 # relative to this file's folder; default "."
    catalog = "catalog.json"           # the consortium catalog (required to train)
    cache-dir = ".implantfl-cache"     # default <data-dir>/.implantfl-cache
    state-dir = "state"                # privacy ledger; default <this folder>/state

    [labels]                           # local label -> catalog id
    "Auralis A1 Taper" = "auralis-a1"

    [preprocess]                       # common.preprocess_params.PreprocessParams, kebab-case
    image-size = 64

    [privacy]                          # client.privacy.PrivacyPolicy, kebab-case
    max-epsilon = 10.0

The ``[superlink]``, ``[tls]`` and ``[auth]`` sections belong to client.site_connection.
Every problem is a ConfigError raised before any work starts; messages name settings,
never paths.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.runtime import SiteRuntime
from common.errors import ConfigError
from common.preprocess_params import PreprocessParams

SECTIONS = {"site", "labels", "preprocess", "privacy", "superlink", "tls", "auth"}
SITE_KEYS = {"name", "data-dir", "catalog", "cache-dir", "state-dir", "device"}


@dataclass(frozen=True)
class SiteConfig:
    name: str
    data_dir: Path
    catalog: Path | None
    cache_dir: Path
    state_dir: Path
    device: str = "auto"
    labels: dict[str, str] | None = None
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    privacy: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> SiteConfig:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("the site config file does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"the site config cannot be read ({type(e).__name__})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"the site config is not valid TOML: {e}") from None
        return cls.from_dict(raw, base=Path(path).expanduser().resolve().parent)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, base: Path) -> SiteConfig:
        unknown = sorted(set(raw) - SECTIONS)
        if unknown:
            raise ConfigError(f"unknown section(s) in the site config: {', '.join(unknown)}")
        site = dict(raw.get("site", {}))
        bad = sorted(set(site) - SITE_KEYS)
        if bad:
            raise ConfigError(f"unknown key(s) in [site]: {', '.join(bad)}")
        if not isinstance(site.get("name", ""), str) or not site.get("name"):
            raise ConfigError("[site] name is required")
        data_dir = (base / str(site.get("data-dir", "."))).resolve()
        labels = raw.get("labels")
        if labels is not None and not all(isinstance(v, str) for v in labels.values()):
            raise ConfigError("[labels] values must be catalog ids (strings)")
        preprocess = PreprocessParams.from_dict({k.replace("-", "_"): v for k, v in raw.get("preprocess", {}).items()})
        privacy = dict(raw.get("privacy", {}))
        if privacy:
            from client.privacy import PrivacyPolicy

            PrivacyPolicy.from_dict(privacy)  # validate now
        return cls(
            name=str(site["name"]),
            data_dir=data_dir,
            catalog=(base / str(site["catalog"])).resolve() if "catalog" in site else None,
            cache_dir=(base / str(site["cache-dir"])).resolve() if "cache-dir" in site else data_dir / ".implantfl-cache",
            state_dir=(base / str(site.get("state-dir", "state"))).resolve(),
            device=str(site.get("device", "auto")),
            labels=dict(labels) if labels is not None else None,
            preprocess=preprocess,
            privacy=privacy,
        )

    def runtime(self) -> SiteRuntime:
        if self.catalog is None:
            raise ConfigError("[site] catalog (path to the consortium catalog.json) is required to train")
        if not self.catalog.is_file():
            raise ConfigError("[site] catalog file does not exist")
        if not self.data_dir.is_dir():
            raise ConfigError("[site] data-dir does not exist or is not a folder")
        return SiteRuntime(name=self.name, data_dir=self.data_dir, catalog_path=self.catalog, cache_dir=self.cache_dir,
                           state_dir=self.state_dir, preprocess=self.preprocess, label_map=self.labels,
                           policy=self.privacy or None, device=self.device)


def load_site_runtime(path: Path) -> SiteRuntime:
    """Validated SiteRuntime for a deployed site (what ``node_config['site-config']`` names)."""
    return SiteConfig.load(path).runtime()


def read_label_map(site_dir: Path) -> dict[str, str] | None:
    """The ``[labels]`` table of ``site_dir/site.toml`` if there is one (synthetic / simple layouts)."""
    toml = site_dir / "site.toml"
    if not toml.exists():
        return None
    try:
        labels = tomllib.loads(toml.read_text(encoding="utf-8")).get("labels")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"the site's site.toml cannot be read ({type(e).__name__})") from None
    return dict(labels) if labels is not None else None
