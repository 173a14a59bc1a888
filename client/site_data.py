"""A site's training data: labelled files -> ingest -> QC -> preprocessing -> cached tensors.

``load_site`` is what training, the simulation runner and ``implantfl-client check`` use.
The cache is incremental: a file whose (size, mtime) is unchanged is never decoded again.
Cache files hold tensors, labels and salted hashes of file names: no paths, no patient fields.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.ingest import MultiFrameError, TooLargeError, read_image
from client.layout import list_items, map_labels
from client.qc import MULTIFRAME, TOO_LARGE, UNREADABLE, QCReport, Rejected, check_pixels
from client.site_config import read_label_map
from client.transforms import Sample, build_eval_pipeline
from common.catalog import Catalog
from common.errors import UnreadableImageError
from common.preprocess_params import PreprocessParams
from common.redact import file_token

logger = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclass
class SiteData:
    x: np.ndarray  # float32 (N, 1, S, S) in [0, 1]
    y: np.ndarray  # int64 (N,) catalog indices
    is_val: np.ndarray  # bool (N,): deterministic validation split
    report: QCReport

    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[~self.is_val], self.y[~self.is_val]

    def val(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[self.is_val], self.y[self.is_val]


@dataclass(frozen=True)
class FileResult:
    image: np.ndarray | None  # (S, S) float32, None when rejected
    reason: str | None
    phi: dict[str, bool]


def process_file(path: Path, params: PreprocessParams, pipeline: Any = None) -> FileResult:
    """Ingest, QC and preprocess one file. Never raises for a bad file: returns the reason."""
    pipeline = pipeline or build_eval_pipeline(params)
    try:
        img = read_image(path, params)
    except TooLargeError:
        return FileResult(None, TOO_LARGE, {})
    except MultiFrameError:
        return FileResult(None, MULTIFRAME, {})
    except UnreadableImageError as e:
        logger.info("rejected %s", e)
        return FileResult(None, UNREADABLE, {})
    reason = check_pixels(img.pixels, params)
    if reason:
        return FileResult(None, reason, img.phi)
    try:
        out = pipeline(Sample(img.pixels)).image
    except Rejected as r:
        return FileResult(None, r.reason, img.phi)
    except Exception as e:  # noqa: BLE001 - a bad file never stops the pipeline
        logger.warning("rejected %s: preprocessing failed (%s)", file_token(path), type(e).__name__)
        return FileResult(None, UNREADABLE, img.phi)
    return FileResult(out.astype(np.float32), None, img.phi)


def _salt(cache_dir: Path) -> str:
    path = cache_dir / ".salt"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
    return path.read_text().strip()


def _hid(salt: str, rel: str) -> str:
    return hashlib.sha256((salt + "\0" + rel).encode()).hexdigest()[:20]


def _in_val(rel: str, fraction: float) -> bool:
    return int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) / 2**32 < fraction


def load_site(
    site_dir: Path,
    *,
    catalog: Catalog,
    params: PreprocessParams,
    label_map: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    val_fraction: float = 0.2,
    progress: bool = False,
) -> SiteData:
    """Preprocess a site's labelled images (reusing the cache) into tensors."""
    site_dir = Path(site_dir)
    items = list_items(site_dir)
    mapping = map_labels(items, catalog, label_map if label_map is not None else read_label_map(site_dir))
    key = hashlib.sha256(f"v{CACHE_VERSION};{params.cache_key()};{catalog.fingerprint()}".encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir else None
    salt = _salt(cache_dir) if cache_dir else ""
    old = _read_cache(cache_dir, key) if cache_dir else {}
    pipeline = build_eval_pipeline(params)
    entries: list[dict[str, Any]] = []
    images: list[np.ndarray] = []
    decoded = 0
    ctx = _progress(len(items), site_dir.name) if progress else nullcontext(lambda: None)
    with ctx as advance:
        for item in items:
            path = site_dir / item.rel
            hid = _hid(salt, item.rel) if cache_dir else item.rel
            try:
                st = path.stat()
                stamp = [st.st_size, st.st_mtime_ns]
            except OSError:
                stamp = [-1, -1]
            prev = old.get(hid)
            if prev is not None and prev["stamp"] == stamp:
                entry, image = prev, prev.get("image")
            else:
                res = process_file(path, params, pipeline) if stamp[0] >= 0 else FileResult(None, UNREADABLE, {})
                decoded += 1
                entry = {"stamp": stamp, "reason": res.reason, "phi": res.phi}
                image = res.image
            entry = {**{k: v for k, v in entry.items() if k != "image"}, "hid": hid,
                     "label": catalog.index_of(mapping[item.label]), "val": _in_val(item.rel, val_fraction)}
            entries.append(entry)
            if image is not None:
                images.append(image)
                entry["row"] = len(images) - 1
            else:
                entry.pop("row", None)
            advance()
    if cache_dir is not None and (decoded or not old):
        _write_cache(cache_dir, key, entries, images)
    if decoded:
        logger.info("site %s: preprocessed %d file(s), %d from cache", site_dir.name, decoded, len(items) - decoded)
    return _assemble(entries, images, catalog, params)


def _assemble(entries: list[dict[str, Any]], images: list[np.ndarray], catalog: Catalog, params: PreprocessParams) -> SiteData:
    report = QCReport()
    ys, vals = [], []
    for e in entries:
        report.note_phi(e.get("phi", {}))
        if e.get("reason"):
            report.reject(e["reason"])
        else:
            report.accept(catalog.ids[e["label"]])
            ys.append(e["label"])
            vals.append(e["val"])
    s = params.image_size
    x = np.stack(images)[:, None].astype(np.float32) if images else np.zeros((0, 1, s, s), np.float32)
    return SiteData(x, np.asarray(ys, np.int64), np.asarray(vals, bool), report)


def _read_cache(cache_dir: Path, key: str) -> dict[str, dict[str, Any]]:
    manifest, arrays = cache_dir / f"{key}.json", cache_dir / f"{key}.npz"
    if not manifest.exists() or not arrays.exists():
        return {}
    try:
        entries = json.loads(manifest.read_text())["entries"]
        with np.load(arrays) as npz:
            x = npz["x"]
    except (OSError, ValueError, KeyError) as e:
        logger.warning("cache unreadable (%s); rebuilding", type(e).__name__)
        return {}
    out = {}
    for e in entries:
        if "row" in e:
            e["image"] = x[e["row"]].astype(np.float32)
        out[e["hid"]] = e
    return out


def _write_cache(cache_dir: Path, key: str, entries: list[dict[str, Any]], images: list[np.ndarray]) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    x = np.stack(images).astype(np.float16) if images else np.zeros((0, 1, 1), np.float16)
    tmp = cache_dir / f"{key}.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, x=x)
    os.replace(tmp, cache_dir / f"{key}.npz")
    clean = [{k: v for k, v in e.items() if k in ("hid", "stamp", "reason", "phi", "row")} for e in entries]
    (cache_dir / f"{key}.json.tmp").write_text(json.dumps({"version": CACHE_VERSION, "entries": clean}))
    os.replace(cache_dir / f"{key}.json.tmp", cache_dir / f"{key}.json")


def _progress(total: int, name: str):  # noqa: ANN202
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def ctx():  # noqa: ANN202
        with Progress(TextColumn(f"[bold]preprocessing {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=True) as p:
            task = p.add_task("pre", total=total)
            yield lambda: p.advance(task)

    return ctx()
