"""The site's own TOML: who it is, where its data is, its labels, preprocessing and privacy.

Example::

    [site]
    name = "hosp-a"
    data-dir = "xrays"                 # relative to this file's folder; default "."
    catalog = "catalog.json"           # the consortium catalog (required to train)
    cache-dir = ".implantfl-cache"     # default <data-dir>/.implantfl-cache
    state-dir = "state"                # privacy ledger; default <this folder>/state
    encoder = "encoder"                # the consortium's public encoder folder (encoder.pt + encoder.json)

    [labels]                           # local label -> catalog id
    "Auralis A1 Taper" = "auralis-a1"

    [preprocess]                       # common.preprocess_params.PreprocessParams, kebab-case
    image-size = 64

    [privacy]                          # client.privacy.PrivacyPolicy, kebab-case
    max-epsilon = 10.0

Sections read by other modules (:data:`DELEGATED_SECTIONS`, e.g. ``[superlink]``,
``[tls]``, ``[auth]`` for :mod:`client.site_connection`) are accepted here and kept
verbatim in :attr:`SiteConfig.extra`; to add a section, add its parser to
:data:`SECTION_PARSERS` or its owner to :data:`DELEGATED_SECTIONS`. Every problem is a
ConfigError raised before any work starts; messages name settings, never paths.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from client.runtime import SiteRuntime
from common.errors import ConfigError
from common.preprocess_params import PreprocessParams

SITE_KEYS = {"name", "data-dir", "catalog", "cache-dir", "state-dir", "device", "encoder"}
# Sections validated by another module; kept verbatim in SiteConfig.extra.
DELEGATED_SECTIONS = {"superlink": "client.site_connection", "tls": "client.site_connection",
                      "auth": "client.site_connection"}
CACHE_DIR_NAME = ".implantfl-cache"


@dataclass(frozen=True)
class SiteConfig:
    """A validated site TOML; paths are absolute."""

    name: str  # the site's name (reported to the server; not patient data)
    data_dir: Path  # images + labels.csv or class subfolders
    catalog: Path | None  # consortium catalog.json; required to train
    cache_dir: Path  # preprocessed tensors
    state_dir: Path  # privacy ledger and other per-site state
    device: str = "auto"  # torch device for local training
    encoder: Path | None = None  # the consortium's public encoder (folder or encoder.pt); needed for head runs
    labels: dict[str, str] | None = None  # local label -> catalog id; None = labels are catalog ids
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    privacy: dict[str, Any] = field(default_factory=dict)  # kebab-case PrivacyPolicy table
    extra: dict[str, Any] = field(default_factory=dict)  # delegated sections, verbatim

    @classmethod
    def load(cls, path: Path) -> SiteConfig:
        """Read and validate a site TOML file."""
        return cls.from_dict(read_toml(path), base=Path(path).expanduser().resolve().parent)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, base: Path) -> SiteConfig:
        """Validate a parsed TOML document; relative paths are taken from ``base``."""
        known = set(SECTION_PARSERS) | set(DELEGATED_SECTIONS)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown section(s) in the site config: {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        for name, value in raw.items():
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{name}] must be a table")
        parsed = {name: parser(raw.get(name, {}), base) for name, parser in SECTION_PARSERS.items()}
        site = parsed["site"]
        return cls(**site, labels=parsed["labels"], preprocess=parsed["preprocess"], privacy=parsed["privacy"],
                   extra={k: dict(raw[k]) for k in DELEGATED_SECTIONS if k in raw})

    def runtime(self) -> SiteRuntime:
        """What the site client needs at run time; checks that the named files exist."""
        if self.catalog is None:
            raise ConfigError("[site] catalog (path to the consortium catalog.json) is required to train")
        if not self.catalog.is_file():
            raise ConfigError("[site] catalog file does not exist")
        if not self.data_dir.is_dir():
            raise ConfigError("[site] data-dir does not exist or is not a folder")
        return SiteRuntime(name=self.name, data_dir=self.data_dir, catalog_path=self.catalog, cache_dir=self.cache_dir,
                           state_dir=self.state_dir, preprocess=self.preprocess, label_map=self.labels,
                           policy=self.privacy or None, device=self.device, encoder_path=self.encoder)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; every failure is a ConfigError without the path."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("the site config file does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"the site config cannot be read ({type(e).__name__})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"the site config is not valid TOML: {e}") from None


# ---------------------------------------------------------------------------- sections
def _parse_site(table: Mapping[str, Any], base: Path) -> dict[str, Any]:
    bad = sorted(set(table) - SITE_KEYS)
    if bad:
        raise ConfigError(f"unknown key(s) in [site]: {', '.join(bad)}; known: {', '.join(sorted(SITE_KEYS))}")
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"[site] {key} must be a non-empty string")
    if "name" not in table:
        raise ConfigError("[site] name is required")
    data_dir = (base / table.get("data-dir", ".")).resolve()
    return {
        "name": table["name"],
        "data_dir": data_dir,
        "catalog": (base / table["catalog"]).resolve() if "catalog" in table else None,
        "cache_dir": (base / table["cache-dir"]).resolve() if "cache-dir" in table else data_dir / CACHE_DIR_NAME,
        "state_dir": (base / table.get("state-dir", "state")).resolve(),
        "device": table.get("device", "auto"),
        "encoder": (base / table["encoder"]).resolve() if "encoder" in table else None,
    }


def _parse_labels(table: Mapping[str, Any], base: Path) -> dict[str, str] | None:
    if not table:
        return None
    bad = sorted(str(k) for k, v in table.items() if not isinstance(v, str) or not v)
    if bad:
        raise ConfigError(f"[labels] values must be catalog ids (strings); not so for: {', '.join(bad)}")
    return {str(k).strip(): str(v).strip() for k, v in table.items()}


def parse_preprocess(table: Mapping[str, Any], base: Path | None = None) -> PreprocessParams:
    """``[preprocess]`` (kebab-case keys of PreprocessParams, checked for type) -> PreprocessParams."""
    types = get_type_hints(PreprocessParams)
    names = {f.name.replace("_", "-"): f.name for f in fields(PreprocessParams)}
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) in [preprocess]: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        want = types[names[key]]
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, int | float) and not isinstance(value, bool) if want is float else
              isinstance(value, int) and not isinstance(value, bool) if want is int else isinstance(value, want))
        if not ok:
            raise ConfigError(f"[preprocess] {key} must be of type {want.__name__}")
        values[names[key]] = float(value) if want is float else value
    return PreprocessParams(**values)


def _parse_privacy(table: Mapping[str, Any], base: Path) -> dict[str, Any]:
    privacy = dict(table)
    if privacy:
        from client.privacy import PrivacyPolicy

        PrivacyPolicy.from_dict(privacy)  # validate now, before any work
    return privacy


# Section name -> parser(table, base folder). SiteConfig.from_dict passes each result on.
SECTION_PARSERS: dict[str, Callable[[Mapping[str, Any], Path], Any]] = {
    "site": _parse_site,
    "labels": _parse_labels,
    "preprocess": parse_preprocess,
    "privacy": _parse_privacy,
}


def load_site_runtime(path: Path) -> SiteRuntime:
    """Validated SiteRuntime for a deployed site (what ``node_config['site-config']`` names)."""
    return SiteConfig.load(path).runtime()


def read_label_map(site_dir: Path) -> dict[str, str] | None:
    """The ``[labels]`` table of ``site_dir/site.toml`` if there is one (synthetic / simple layouts)."""
    toml = Path(site_dir) / "site.toml"
    if not toml.exists():
        return None
    raw = read_toml(toml)
    labels = raw.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, Mapping):
        raise ConfigError("[labels] must be a table")
    return _parse_labels(labels, toml.parent)
