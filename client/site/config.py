"""The site record: who a site is, where its data is, its labels, preprocessing and privacy.

One record for a deployed site (read from its ``site.toml``) and a simulated one (built by
the simulation runner): :class:`SiteConfig`. A running ClientApp finds its site with
:func:`resolve_site` (its TOML in a deployment, its partition in a simulation).

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

    [privacy]                          # client.training.privacy.PrivacyPolicy, kebab-case
    max-epsilon = 10.0

Sections read by other modules (:data:`DELEGATED_SECTIONS`, e.g. ``[superlink]``,
``[tls]``, ``[auth]`` for :mod:`client.site.connection`) are accepted here and kept
verbatim in :attr:`SiteConfig.extra`; to add a section, add its parser to
:data:`SECTION_PARSERS` or its owner to :data:`DELEGATED_SECTIONS`. Every problem is a
ConfigError raised before any work starts; messages name settings, never paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from common.catalog import Catalog
from common.errors import ConfigError
from common.preprocess_params import PreprocessParams
from common.toml_file import read_toml

SITE_KEYS = {"name", "data-dir", "catalog", "cache-dir", "state-dir", "device", "encoder"}
# Sections validated by another module; kept verbatim in SiteConfig.extra.
DELEGATED_SECTIONS = {"superlink": "client.site.connection", "tls": "client.site.connection",
                      "auth": "client.site.connection"}
CACHE_DIR_NAME = ".implantfl-cache"


@dataclass(frozen=True)
class SiteConfig:
    """A site: what its client needs at run time (paths absolute)."""

    name: str  # the site's name (reported to the server; not patient data)
    data_dir: Path  # images + labels.csv or class subfolders
    catalog_path: Path | None  # consortium catalog.json; required to train
    cache_dir: Path  # preprocessed images and encoder features
    state_dir: Path  # privacy ledger and other per-site state
    device: str = "auto"  # torch device for local training
    encoder_path: Path | None = None  # the consortium's public encoder; needed for runs with a head
    label_map: dict[str, str] | None = None  # local label -> catalog id; None: data folder's site.toml / identity
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    policy: dict[str, Any] | None = None  # kebab-case PrivacyPolicy table; None = the defaults
    extra: dict[str, Any] = field(default_factory=dict)  # delegated sections, verbatim

    @classmethod
    def load(cls, path: Path) -> SiteConfig:
        """Read and validate a site TOML file."""
        return cls.from_dict(read_toml(path, what="the site config file"), base=Path(path).expanduser().resolve().parent)

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
        return cls(**parsed["site"], label_map=parsed["labels"], preprocess=parsed["preprocess"],
                   policy=parsed["privacy"] or None, extra={k: dict(raw[k]) for k in DELEGATED_SECTIONS if k in raw})

    def checked(self) -> SiteConfig:
        """This record, after checking that what training needs exists (a catalog file, a data folder)."""
        if self.catalog_path is None:
            raise ConfigError("[site] catalog (path to the consortium catalog.json) is required to train")
        if not self.catalog_path.is_file():
            raise ConfigError("[site] catalog file does not exist")
        if not self.data_dir.is_dir():
            raise ConfigError("[site] data-dir does not exist or is not a folder")
        return self

    def catalog(self) -> Catalog:
        if self.catalog_path is None:
            raise ConfigError("[site] catalog (path to the consortium catalog.json) is required")
        return Catalog.load(self.catalog_path)

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "privacy-ledger.jsonl"


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
        "catalog_path": (base / table["catalog"]).resolve() if "catalog" in table else None,
        "cache_dir": (base / table["cache-dir"]).resolve() if "cache-dir" in table else data_dir / CACHE_DIR_NAME,
        "state_dir": (base / table.get("state-dir", "state")).resolve(),
        "device": table.get("device", "auto"),
        "encoder_path": (base / table["encoder"]).resolve() if "encoder" in table else None,
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
        from client.training.privacy import PrivacyPolicy

        PrivacyPolicy.from_dict(privacy)  # validate now, before any work
    return privacy


# Section name -> parser(table, base folder). SiteConfig.from_dict passes each result on.
SECTION_PARSERS: dict[str, Callable[[Mapping[str, Any], Path], Any]] = {
    "site": _parse_site,
    "labels": _parse_labels,
    "preprocess": parse_preprocess,
    "privacy": _parse_privacy,
}


def load_site_runtime(path: Path) -> SiteConfig:
    """The checked site record of a deployed site (what ``node_config['site-config']`` names)."""
    return SiteConfig.load(path).checked()


def resolve_site(node_config: Mapping[str, Any], sim_sites: Sequence[SiteConfig] | None) -> SiteConfig:
    """Pick this node's site: its own TOML in a deployment, its partition in a simulation."""
    if "site-config" in node_config:
        return load_site_runtime(Path(str(node_config["site-config"])))
    if sim_sites is not None and "partition-id" in node_config:
        pid = int(node_config["partition-id"])
        if not 0 <= pid < len(sim_sites):
            raise ConfigError(f"partition-id {pid} has no simulated site (there are {len(sim_sites)})")
        return sim_sites[pid]
    raise ConfigError("this node has no site configuration: start it with node config site-config=<site.toml>")


def label_map_of(site_dir: Path, configured: Mapping[str, str] | None) -> dict[str, str] | None:
    """The one rule for a site's label map: its config's ``[labels]``, else the data folder's ``site.toml``'s.

    None means the local labels must be catalog ids.
    """
    return dict(configured) if configured is not None else read_label_map(site_dir)


def read_label_map(site_dir: Path) -> dict[str, str] | None:
    """The ``[labels]`` table of ``site_dir/site.toml`` if there is one (synthetic / simple layouts)."""
    toml = Path(site_dir) / "site.toml"
    if not toml.exists():
        return None
    raw = read_toml(toml, what="the data folder's site.toml")
    labels = raw.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, Mapping):
        raise ConfigError("[labels] must be a table")
    return _parse_labels(labels, toml.parent)
