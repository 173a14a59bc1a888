"""The common output of every dataset adapter: a list of records plus a catalog.

A record names one image as downloaded (absolute path, never copied) with its label name
and whatever grouping the dataset knows: site, patient, study, body part, and the
dataset's own split. The catalog is derived from the label names: ids are lower-case
``[a-z0-9._-]``, classes are sorted by id, so the same label set always gives the same
catalog and model output order.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.catalog import Catalog, ImplantClass
from common.errors import CatalogError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


@dataclass(frozen=True)
class DatasetRecord:
    path: Path  # absolute path of the image exactly as downloaded
    label: str  # the dataset's own label name (mapped to a catalog id by ``label_id``)
    site: str | None = None  # originating site, when the dataset says
    patient: str | None = None  # patient key (for patient-disjoint splits), when known
    study: str | None = None  # study key (views of one examination), when known
    body_part: str | None = None  # e.g. "wrist" (MURA), when known
    split: str | None = None  # the dataset's own split ("train", "valid"), when it has one


@dataclass(frozen=True)
class DatasetIndex:
    kind: str  # adapter name: folder | csv | kaggle-hip | mura
    root: Path  # the folder (or manifest) the records were read from
    records: tuple[DatasetRecord, ...]
    catalog: Catalog
    label_ids: Mapping[str, str]  # dataset label name -> catalog id
    notes: Mapping[str, object] = field(default_factory=dict)  # adapter facts (e.g. PNG colour types)

    def __len__(self) -> int:
        return len(self.records)

    def labels(self) -> np.ndarray:
        """Catalog index of every record, shape (N,)."""
        return np.array([self.catalog.index_of(self.label_ids[r.label]) for r in self.records], dtype=np.int64)

    def groups(self, by: str = "patient") -> np.ndarray | None:
        """Group key per record (``patient`` or ``study``); None when the dataset has none."""
        keys = [getattr(r, by) for r in self.records]
        if all(k is None for k in keys):
            return None
        return np.array([k if k is not None else f"_record{i}" for i, k in enumerate(keys)], dtype=object)

    def manufacturers(self) -> list[str]:
        """Manufacturer of every catalog class, in catalog order."""
        return [c.manufacturer for c in self.catalog]

    def subset(self, keep: Callable[[DatasetRecord], bool]) -> DatasetIndex:
        """The records for which ``keep`` is true; the catalog shrinks to their labels."""
        records = [r for r in self.records if keep(r)]
        return make_index(self.kind, self.root, records, manufacturers=self._manufacturer_map(),
                          component=self.catalog.classes[0].component, notes=dict(self.notes))

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.label_ids[r.label] for r in self.records).items()))

    def _manufacturer_map(self) -> dict[str, str]:
        by_id = {c.id: c.manufacturer for c in self.catalog}
        return {name: by_id[cid] for name, cid in self.label_ids.items()}


_BAD = re.compile(r"[^a-z0-9._-]+")


def label_id(name: str) -> str:
    """Catalog id for a label name: lower-case, runs of other characters -> ``-``."""
    cid = _BAD.sub("-", name.strip().lower()).strip("-._")[:64]
    if not cid:
        raise CatalogError(f"label {name!r} has no letters or digits to make a catalog id from")
    return cid


def make_index(
    kind: str,
    root: Path,
    records: Iterable[DatasetRecord],
    *,
    manufacturers: Mapping[str, str] | None = None,
    component: str = "femoral-stem",
    notes: Mapping[str, object] | None = None,
) -> DatasetIndex:
    """Build the index and its catalog from records (``manufacturers``: label name -> maker)."""
    records = tuple(records)
    if not records:
        raise CatalogError(f"{kind}: no images found")
    names = sorted({r.label for r in records})
    ids: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name in names:
        cid = label_id(name)
        if cid in owner:
            raise CatalogError(f"labels {owner[cid]!r} and {name!r} both map to catalog id {cid!r}; rename one")
        owner[cid] = name
        ids[name] = cid
    makers = manufacturers or {}
    classes = tuple(
        ImplantClass(id=cid, manufacturer=str(makers.get(owner[cid], "unknown")), model=owner[cid], component=component)
        for cid in sorted(owner)
    )
    return DatasetIndex(kind=kind, root=root, records=records, catalog=Catalog(kind, "1", classes), label_ids=ids,
                        notes=dict(notes or {}))


def average_by_key(keys: Sequence[str], probs: np.ndarray, labels: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Mean probability per key (first-seen order), and each key's majority label.

    MURA labels whole studies, so a study's views share one label; ``labels`` may come
    from any per-image source (e.g. the runner's test set with ``test/studies.csv``).
    """
    if not len(keys) == len(probs) == len(labels):
        raise ValueError("one key, one probability row and one label per image")
    rows: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        rows.setdefault(k, []).append(i)
    p, y = np.asarray(probs), np.asarray(labels, dtype=np.int64)
    mean = np.stack([p[r].mean(axis=0) for r in rows.values()])
    majority = np.array([np.bincount(y[r]).argmax() for r in rows.values()], dtype=np.int64)
    return list(rows), mean, majority


def aggregate_by(index: DatasetIndex, probs: np.ndarray, *, key: str = "study",
                 rows: Sequence[int] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Average per-image probabilities over each ``key`` group of ``index`` (MURA: a study's views).

    ``probs[i]`` belongs to record ``rows[i]`` (default: record ``i``). Returns the group
    keys, their mean probabilities (G, C) and their labels (G,).
    """
    rows = list(range(len(index))) if rows is None else list(rows)
    keys = [getattr(index.records[r], key) or f"_record{r}" for r in rows]
    return average_by_key(keys, probs, index.labels()[rows])


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), skipping hidden files and folders."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
