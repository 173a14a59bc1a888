"""Where a simulation's data comes from, and the simulated sites built on it.

Without ``--data`` the preset's synthetic federation is generated once into a cache
folder and reused. A federation folder has the synthetic layout: ``catalog.json``,
``sites/<site>/`` and ``test/`` (see ``docs/data-layout.md``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from client.site.config import SiteConfig
from common.catalog import Catalog
from common.errors import ConfigError
from common.preprocess_params import PreprocessParams

logger = logging.getLogger(__name__)


def default_cache_root() -> Path:
    return Path(os.environ.get("IMPLANTFL_CACHE", Path.home() / ".cache" / "implantfl"))


def ensure_synthetic(preset: str, seed: int, *, cache_root: Path | None = None, progress: bool = False) -> Path:
    """Generate the synthetic federation for (preset, seed) unless it already exists."""
    from simulations.synth import generate

    root = (cache_root or default_cache_root()) / "synth" / f"{preset}-seed{seed}"
    done = root / "federation.json"
    if done.exists():
        logger.info("reusing generated federation for preset %s, seed %d", preset, seed)
        return root
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    generate(tmp, preset=preset, seed=seed, progress=progress)
    tmp.rename(root)
    return root


@dataclass(frozen=True)
class Federation:
    root: Path
    catalog: Catalog
    site_dirs: dict[str, Path]  # site name -> folder
    test_dir: Path | None

    @classmethod
    def open(cls, root: Path) -> Federation:
        if not (root / "catalog.json").exists() or not (root / "sites").is_dir():
            raise ConfigError("a federation folder needs catalog.json and sites/<site>/ (see docs/data-layout.md)")
        sites = {p.name: p for p in sorted((root / "sites").iterdir()) if p.is_dir()}
        if not sites:
            raise ConfigError("the federation folder has no sites")
        test = root / "test"
        return cls(root, Catalog.load(root / "catalog.json"), sites, test if test.is_dir() else None)

    def kinds(self) -> dict[str, str]:
        meta = self.root / "federation.json"
        if not meta.exists():
            return {}
        return {s["name"]: s.get("kind", "") for s in json.loads(meta.read_text()).get("sites", [])}


def simulated_sites(
    fed: Federation,
    *,
    state_dir: Path,
    cache_dir: Path,
    params: PreprocessParams,
    names: list[str] | None = None,
    policy: dict | None = None,
    encoder_path: Path | None = None,
) -> list[SiteConfig]:
    """One SiteConfig per simulated site, each with its own ledger folder ``state_dir/<site>``."""
    chosen = names or list(fed.site_dirs)
    return [
        SiteConfig(
            name=name,
            data_dir=fed.site_dirs[name],
            catalog_path=fed.root / "catalog.json",
            cache_dir=cache_dir / name,
            state_dir=state_dir / name,
            preprocess=params,
            policy=policy,
            encoder_path=encoder_path,
        )
        for name in chosen
    ]
