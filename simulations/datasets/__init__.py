"""Public datasets as downloaded -> a federation folder, never downloading anything.

``--dataset KIND:PATH`` with KIND one of ``folder``, ``csv``, ``kaggle-hip``, ``mura``
opens the data in place (:func:`open_dataset` -> :class:`DatasetIndex`);
:func:`build_federation` holds out a test split (the dataset's own, else a stratified,
patient-disjoint one), partitions the rest into sites (``simulations.datasets.partition``) and
links everything into the layout the runner reads (:func:`materialize`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.errors import ConfigError
from simulations.datasets.index import (
    DatasetIndex,
    DatasetRecord,
    aggregate_by,
    average_by_key,
    label_id,
    make_index,
)
from simulations.datasets.materialize import materialize, read_studies

TEST_SPLITS = ("valid", "test")


def _adapters() -> dict[str, Callable[..., DatasetIndex]]:
    from simulations.datasets.folder import read_folder
    from simulations.datasets.kaggle_hip import read_kaggle_hip
    from simulations.datasets.manifest import read_manifest
    from simulations.datasets.mura import read_mura

    return {"folder": read_folder, "csv": read_manifest, "kaggle-hip": read_kaggle_hip, "mura": read_mura}


KINDS = ("folder", "csv", "kaggle-hip", "mura")


def open_dataset(spec: str, *, body_part: str | None = None) -> DatasetIndex:
    """``'kaggle-hip:/data/hip'`` -> its index. ``body_part`` filters MURA (e.g. ``wrist``)."""
    kind, sep, path = spec.partition(":")
    if not sep or not path or kind not in KINDS:
        raise ConfigError(f"--dataset must be KIND:PATH with KIND one of {', '.join(KINDS)}")
    if not Path(path).expanduser().exists():
        raise ConfigError(f"--dataset {kind}: the path does not exist")
    if kind == "mura":
        return _adapters()[kind](path, body_part=body_part)
    if body_part is not None:
        index = _adapters()[kind](path)
        wanted = {b.strip().lower() for b in body_part.split(",")}
        return index.subset(lambda r: (r.body_part or "").lower() in wanted)
    return _adapters()[kind](path)


def split_test(index: DatasetIndex, *, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): the dataset's own valid/test split if it has one, else a
    per-class stratified split of patients (of images when there is no patient key)."""
    own = np.array([r.split in TEST_SPLITS for r in index.records])
    if own.any():
        return np.flatnonzero(~own), np.flatnonzero(own)
    if not 0.0 < fraction < 1.0:
        raise ConfigError("test fraction must be in (0, 1)")
    labels = index.labels()
    groups = index.groups("patient")
    keys = groups.astype(str) if groups is not None else np.arange(len(labels)).astype(str)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    unit_label = np.array([labels[first[u]] for u in range(len(first))])
    rng = np.random.default_rng(seed)
    test_units: list[int] = []
    for k in np.unique(unit_label):
        units = rng.permutation(np.flatnonzero(unit_label == k))
        take = min(len(units) - 1, max(1, math.floor(fraction * len(units) + 0.5))) if len(units) > 1 else 0
        test_units.extend(units[:take].tolist())
    is_test = np.isin(inverse, test_units)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def build_federation(
    dataset: str | DatasetIndex,
    out: str | Path,
    partition: str = "dirichlet:sites=4,alpha=0.5",
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    body_part: str | None = None,
    overwrite: bool = False,
):  # noqa: ANN201 - returns (Path, Partition, DatasetIndex)
    """Open (or take) a dataset, split, partition and materialise it; returns (out, partition, index).

    The partition's indices are positions in the training rows; the returned partition is
    re-indexed to record numbers of ``index``.
    """
    from simulations.datasets.partition import Partition, make_partition

    index = open_dataset(dataset, body_part=body_part) if isinstance(dataset, str) else dataset
    train, test = split_test(index, fraction=test_fraction, seed=seed)
    labels = index.labels()
    groups = index.groups("patient")
    part = make_partition(
        partition, labels[train], seed=seed, groups=None if groups is None else groups[train],
        manufacturers=index.manufacturers(), site_of=[index.records[i].site for i in train],
    )
    sites = {s: train[idx] for s, idx in part.sites.items()}
    path = materialize(index, out, sites, test, kinds=part.kinds, styles=part.styles, spec=part.spec,
                       overwrite=overwrite)
    return path, Partition(sites, part.kinds, part.styles, part.spec), index


__all__ = [
    "KINDS", "DatasetIndex", "DatasetRecord", "aggregate_by", "average_by_key", "build_federation", "label_id",
    "make_index", "materialize", "open_dataset", "read_studies", "split_test",
]
