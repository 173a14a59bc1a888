"""A site's preprocessed-image cache: one ``.npz`` and one JSON manifest per parameter set.

Layout of ``cache_dir``::

    .salt                 random, stays at the site: file ids cannot be reversed elsewhere
    <key>.npz             x: float32 (M, S, S), the accepted images
    <key>.json            {"version", "params", "entries": [{id, size, mtime_ns, reason, phi, row}]}

``key`` hashes the preprocessing parameters and :data:`PIPELINE_VERSION`, so a cache
built with other parameters or older preprocessing code is never reused. Images do not
depend on the catalog or the labels, so neither is part of the key: relabelling a site
re-uses every image. A file is re-processed only when its (size, mtime_ns) changed.
Files are identified by a salted hash of their relative path: the cache holds no path,
no file name and no patient field (QC reasons and PHI finding *names* only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.preprocess_params import PreprocessParams

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # layout of the files
PIPELINE_VERSION = 6  # bump when ingest / segmentation / transforms change their output


@dataclass
class CacheEntry:
    """What the cache remembers about one file."""

    stamp: tuple[int, int]  # (size, mtime_ns) when it was processed
    reason: str | None  # QC reason, None if accepted
    phi: list[str] = field(default_factory=list)  # PHI finding names present in the file
    image: np.ndarray | None = None  # (S, S) float32 when accepted


class SiteCache:
    """Read and write one site's cache for one parameter set.

    Parameters
    ----------
    cache_dir
        Folder of the cache (created on first write).
    params
        Preprocessing parameters; they choose the cache key.
    """

    def __init__(self, cache_dir: Path, params: PreprocessParams) -> None:
        self.dir = Path(cache_dir)
        self.params = params
        self.key = cache_key(params)
        self._salt: str | None = None

    @property
    def manifest_path(self) -> Path:
        return self.dir / f"{self.key}.json"

    @property
    def arrays_path(self) -> Path:
        return self.dir / f"{self.key}.npz"

    def file_id(self, rel: str) -> str:
        """Salted hash naming a file (relative path) inside the cache."""
        if self._salt is None:
            self._salt = _salt(self.dir)
        return hashlib.sha256((self._salt + "\0" + rel).encode("utf-8")).hexdigest()[:24]

    def load(self) -> dict[str, CacheEntry]:
        """File id -> entry; empty when there is no usable cache."""
        if not self.manifest_path.exists() or not self.arrays_path.exists():
            return {}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if manifest.get("version") != CACHE_VERSION:
                return {}
            with np.load(self.arrays_path) as npz:
                x = npz["x"]
            out = {}
            for e in manifest["entries"]:
                row = e.get("row")
                image = np.asarray(x[row], np.float32) if row is not None else None
                out[str(e["id"])] = CacheEntry((int(e["size"]), int(e["mtime_ns"])), e.get("reason"),
                                               [str(p) for p in e.get("phi", [])], image)
            return out
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            logger.warning("cache unreadable (%s); it will be rebuilt", type(e).__name__)
            return {}

    def save(self, entries: dict[str, CacheEntry]) -> None:
        """Write all entries atomically (arrays first, then the manifest that points into them)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        s = self.params.image_size
        images = [e.image for e in entries.values() if e.image is not None]
        x = np.stack(images).astype(np.float32) if images else np.zeros((0, s, s), np.float32)
        rows, next_row = [], 0
        for fid, e in entries.items():
            row = None
            if e.image is not None:
                row, next_row = next_row, next_row + 1
            rows.append({"id": fid, "size": e.stamp[0], "mtime_ns": e.stamp[1], "reason": e.reason,
                         "phi": sorted(e.phi), "row": row})
        tmp = self.arrays_path.with_suffix(".npz.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, x=x)
        os.replace(tmp, self.arrays_path)
        manifest: dict[str, Any] = {"version": CACHE_VERSION, "pipeline": PIPELINE_VERSION,
                                    "params": self.params.to_dict(), "entries": rows}
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest), encoding="utf-8")
        os.replace(tmp, self.manifest_path)


def cache_key(params: PreprocessParams) -> str:
    """Short hash of everything that changes a cached image."""
    text = f"cache{CACHE_VERSION};pipeline{PIPELINE_VERSION};{params.cache_key()}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _salt(cache_dir: Path) -> str:
    path = cache_dir / ".salt"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f".salt.{os.getpid()}.tmp"
        tmp.write_text(secrets.token_hex(16), encoding="utf-8")
        try:
            os.link(tmp, path)  # first writer wins; never replace a salt others already used
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system
            if not path.exists():
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text(encoding="utf-8").strip()
