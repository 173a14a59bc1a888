"""What a running site client knows about itself: data, catalog, cache, ledger, policy.

Built from the site's TOML in a deployment (``node_config["site-config"]``) or, in a
simulation, from the runner's list of simulated sites indexed by ``partition-id``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.catalog import Catalog
from common.errors import ConfigError
from common.preprocess_params import PreprocessParams


@dataclass(frozen=True)
class SiteRuntime:
    name: str  # site name, reported to the server (not patient data)
    data_dir: Path  # the site's images and labels
    catalog_path: Path  # the consortium catalog the site trains against
    cache_dir: Path  # preprocessed tensors
    state_dir: Path  # privacy ledger and other per-site state
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    label_map: Mapping[str, str] | None = None  # local label -> catalog id; None: site.toml / identity
    policy: Mapping[str, Any] | None = None  # site privacy policy (kebab-case), None = defaults
    device: str = "auto"
    encoder_path: Path | None = None  # public encoder (folder or encoder.pt) for runs with a head

    def catalog(self) -> Catalog:
        return Catalog.load(self.catalog_path)

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "privacy-ledger.jsonl"


def resolve_site(node_config: Mapping[str, Any], sim_sites: Sequence[SiteRuntime] | None) -> SiteRuntime:
    """Pick this node's site: its own TOML in a deployment, its partition in a simulation."""
    if "site-config" in node_config:
        from client.site_config import load_site_runtime

        return load_site_runtime(Path(str(node_config["site-config"])))
    if sim_sites is not None and "partition-id" in node_config:
        pid = int(node_config["partition-id"])
        if not 0 <= pid < len(sim_sites):
            raise ConfigError(f"partition-id {pid} has no simulated site (there are {len(sim_sites)})")
        return sim_sites[pid]
    raise ConfigError("this node has no site configuration: start it with node config site-config=<site.toml>")
