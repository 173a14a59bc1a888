"""A site's training data: labelled files -> ingest -> QC -> preprocessing -> cached tensors.

:func:`load_site` is what training, the simulation runner and ``implantfl-client check``
use. With a ``cache_dir`` it is incremental (see :mod:`client.data.cache`): on unchanged
input it decodes nothing. A bad file never stops it: it is counted under its QC reason.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.data.cache import CacheEntry, SiteCache
from client.data.ingest import IngestError, read_image
from client.data.layout import Item, list_items, map_labels
from client.data.qc import BLANK, NO_IMPLANT, UNREADABLE, QCReport, Rejected, check_pixels
from client.data.raster import RASTER_SOURCES, percentile_window
from client.data.stored_image import StoredImage
from client.data.transforms import Compose, Sample, build_eval_pipeline
from client.site.config import label_map_of
from common.catalog import Catalog
from common.errors import ConfigError, InvalidInputError
from common.parallel import default_workers
from common.preprocess_params import PreprocessParams
from common.redact import file_token

logger = logging.getLogger(__name__)

WINDOWABLE = (BLANK, NO_IMPLANT)  # gate reasons a percentile window can turn around for a dark raster


@dataclass
class SiteData:
    """A site's accepted images, ready for training.

    Attributes
    ----------
    x
        float32 (N, 1, S, S) in [0, 1], S = ``params.image_size``.
    y
        int64 (N,) catalog indices.
    is_val
        bool (N,): deterministic split by a hash of each file's relative path.
    report
        QC counts (accepted, rejected by reason, per class, PHI findings).
    decoded
        Files decoded by this call (0 when everything came from the cache).
    cached
        Files whose result came from the cache.
    files
        Each accepted image's path relative to the site folder, in the order of ``x``
        (researcher-side evaluation maps test images to studies with it). It stays in
        this process: never logged, cached or sent.
    keys
        Each accepted image's salted file id and file stamp (size, mtime), in the order of
        ``x``: what later caches (features) are keyed by. No path, no patient value.
    """

    x: np.ndarray
    y: np.ndarray
    is_val: np.ndarray
    report: QCReport
    decoded: int = 0
    cached: int = 0
    files: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()

    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[~self.is_val], self.y[~self.is_val]

    def val(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[self.is_val], self.y[self.is_val]


@dataclass(frozen=True)
class FileResult:
    """One file after ingest, QC and preprocessing."""

    image: np.ndarray | None  # (S, S) float32; None when rejected
    reason: str | None  # QC reason when rejected
    phi: list[str] = field(default_factory=list)  # PHI finding names


def process_file(path: Path, params: PreprocessParams, pipeline: Compose | None = None) -> FileResult:
    """Ingest, QC and preprocess one file. Never raises for a bad file: returns the reason.

    A raster (PNG, TIFF, JPEG) that the gate finds blank or without an implant is tried
    once more, windowed by its own percentiles, as a VOI window would show it (a dark or
    low-contrast export); rasters that pass as they are keep their exact model input.
    """
    token = file_token(path)
    try:
        img = read_image(path, params)
    except IngestError as e:
        logger.info("rejected %s: %s (%s)", token, e.reason, e.detail)
        return FileResult(None, e.reason)
    run = pipeline or build_eval_pipeline(params)
    out, reason = _preprocess(img.image, img.fields.get("stored_shape"), params, run, token)
    if reason in WINDOWABLE and img.fields.get("source") in RASTER_SOURCES:
        windowed = percentile_window(img.pixels)
        if windowed is not None:
            retried, again = _preprocess(windowed, img.fields.get("stored_shape"), params, run, token)
            if again is None:
                logger.info("%s: windowed by its percentiles (a dark or low-contrast raster)", token)
                out, reason = retried, None
    if reason is None:
        return FileResult(out, None, img.phi)
    logger.info("rejected %s: %s", token, reason)
    return FileResult(None, reason, img.phi)


def _preprocess(pixels: np.ndarray | StoredImage, stored_shape: object, params: PreprocessParams, run: Compose,
                token: str) -> tuple[np.ndarray | None, str | None]:
    reason = check_pixels(pixels, params, stored_shape)
    if reason is not None:
        return None, reason
    try:
        return np.asarray(run(Sample(pixels)).image, np.float32), None
    except Rejected as r:
        return None, r.reason
    except InvalidInputError as e:  # our own messages (e.g. TransformError) name no file
        logger.warning("rejected %s: preprocessing failed (%s)", token, e)
    except Exception as e:  # noqa: BLE001 - a bad file never stops the pipeline
        logger.warning("rejected %s: preprocessing failed (%s)", token, type(e).__name__)
    return None, UNREADABLE


def in_val_split(rel: str, fraction: float) -> bool:
    """Deterministic validation membership of a file from its relative path."""
    return int(hashlib.sha256(rel.encode("utf-8")).hexdigest()[:8], 16) / 2**32 < fraction


def load_site(
    site_dir: Path,
    *,
    catalog: Catalog,
    params: PreprocessParams,
    label_map: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    val_fraction: float = 0.2,
    progress: bool = False,
    workers: int | None = None,
) -> SiteData:
    """Preprocess a site's labelled images (reusing the cache) into tensors.

    Parameters
    ----------
    site_dir
        The site's data folder (``labels.csv`` or class subfolders).
    catalog
        Consortium catalog; labels become ``catalog.index_of(id)``.
    params
        Preprocessing parameters.
    label_map
        Local label -> catalog id. None: ``site_dir/site.toml``'s ``[labels]`` if any,
        else the local labels must be catalog ids.
    cache_dir
        Where to keep preprocessed tensors; None = no cache.
    val_fraction
        Fraction of files (by a hash of their relative path) in the validation split.
    progress
        Show a rich progress bar.
    workers
        Processes decoding in parallel (1 = in this process). None: every available core
        when there are at least :data:`common.parallel.PARALLEL_MIN_JOBS` files to decode,
        else 1. Each file's result is the same either way.

    Raises
    ------
    ConfigError
        Unknown labels, a malformed ``labels.csv``, bad arguments (before any decoding).
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ConfigError("val-fraction must be between 0 and 1")
    if workers is not None and workers < 1:
        raise ConfigError("workers must be >= 1")
    site_dir = Path(site_dir)
    items = list_items(site_dir)
    mapping = map_labels(items, catalog, label_map_of(site_dir, label_map))
    cache = SiteCache(cache_dir, params) if cache_dir is not None else None
    old = cache.load() if cache is not None else {}
    ids = [cache.file_id(i.rel) if cache is not None else hashlib.sha256(i.rel.encode()).hexdigest()[:24] for i in items]
    entries: dict[str, CacheEntry] = {}
    todo: list[tuple[str, Item, tuple[int, int]]] = []
    for fid, item in zip(ids, items, strict=True):
        stamp = _stamp(site_dir / item.rel)
        prev = old.get(fid)
        if prev is not None and prev.stamp == stamp and stamp[0] >= 0:
            entries[fid] = prev
        else:
            todo.append((fid, item, stamp))
    n_workers = workers if workers is not None else default_workers(len(todo))
    with _progress(len(items), progress) as advance:
        advance(len(items) - len(todo))
        for (fid, _, stamp), res in zip(todo, _run(site_dir, [t[1] for t in todo], params, n_workers, advance),
                                        strict=True):
            entries[fid] = CacheEntry(stamp, res.reason, list(res.phi), res.image)
    if cache is not None and (todo or set(old) != set(entries) or not cache.manifest_path.exists()):
        cache.save({fid: entries[fid] for fid in ids})
    if todo:
        logger.info("site %s: processed %d file(s), %d from cache", file_token(site_dir), len(todo), len(items) - len(todo))
    data = _assemble(items, [entries[fid] for fid in ids], ids, mapping, catalog, params, val_fraction)
    data.decoded, data.cached = len(todo), len(items) - len(todo)
    return data


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return -1, -1


def _run(site_dir: Path, items: list[Item], params: PreprocessParams, workers: int,
         advance: Callable[[int], None]) -> Iterator[FileResult]:
    """Results in item order, from this process or a pool of ``workers``."""
    paths = [site_dir / i.rel for i in items]
    if workers == 1 or len(paths) < 2:
        pipeline = build_eval_pipeline(params)
        for p in paths:
            yield process_file(p, params, pipeline)
            advance(1)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        for res in pool.map(process_file, paths, [params] * len(paths), chunksize=4):
            yield res
            advance(1)


def _assemble(items: list[Item], entries: list[CacheEntry], ids: list[str], mapping: Mapping[str, str],
              catalog: Catalog, params: PreprocessParams, val_fraction: float) -> SiteData:
    report = QCReport()
    images, ys, vals, files, keys = [], [], [], [], []
    for item, e, fid in zip(items, entries, ids, strict=True):
        report.note_phi(e.phi)
        if e.reason is not None or e.image is None:
            report.reject(e.reason or UNREADABLE)
            continue
        cid = mapping[item.label]
        report.accept(cid)
        images.append(e.image)
        ys.append(catalog.index_of(cid))
        vals.append(in_val_split(item.rel, val_fraction))
        files.append(item.rel)
        keys.append(f"{fid}:{e.stamp[0]}:{e.stamp[1]}")
    s = params.image_size
    x = np.stack(images)[:, None].astype(np.float32) if images else np.zeros((0, 1, s, s), np.float32)
    return SiteData(x, np.asarray(ys, np.int64), np.asarray(vals, bool), report, files=tuple(files), keys=tuple(keys))


@contextmanager
def _progress(total: int, show: bool) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    if not console.is_terminal:  # a transient bar in a log file would leave only a blank line behind
        yield lambda n: None
        return
    with Progress(TextColumn("[bold]preprocessing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, console=console) as bar:
        task = bar.add_task("preprocess", total=total)
        yield lambda n: bar.advance(task, n)
