"""Lay a dataset index out as a federation folder the runner reads, without copying images.

Layout (the same as the synthetic generator's)::

    OUT/catalog.json
    OUT/federation.json                 source, partition spec, site kinds/styles/sizes
    OUT/sites/<site>/images/000001.png  symlink -> the original file
    OUT/sites/<site>/labels.csv         file,label  (file relative to the site folder)
    OUT/sites/<site>/site.toml          [site] name = ...; [labels] local name -> catalog id
    OUT/test/...                        likewise, but labels are catalog ids (docs/data-layout.md),
                                        plus studies.csv (file,study,body_part) when the
                                        dataset groups images into studies

Link names are running numbers, so no patient or study key appears in a file name. A
site's label column holds the dataset's own label names, which ``[labels]`` maps to
catalog ids.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import tomli_w

from common.errors import ConfigError
from simulations.datasets.index import DatasetIndex, DatasetRecord

TEST = "test"


def materialize(
    index: DatasetIndex,
    out: str | Path,
    sites: Mapping[str, Sequence[int]],
    test: Sequence[int],
    *,
    kinds: Mapping[str, str] | None = None,
    styles: Mapping[str, str] | None = None,
    spec: str = "",
    overwrite: bool = False,
) -> Path:
    """Write ``out`` for site -> record indices and the test record indices; returns ``out``."""
    out = Path(out)
    _check_disjoint(sites, test, len(index))
    if TEST in sites:
        raise ConfigError("a site cannot be called 'test'")
    _clear(out, overwrite=overwrite)
    (out / "sites").mkdir(parents=True)
    index.catalog.save(out / "catalog.json")
    for name, rows in sites.items():
        _write_site(index, out / "sites" / name, name, rows)
    _write_site(index, out / TEST, TEST, test, as_ids=True)
    meta = {
        "source": {"kind": index.kind, "records": len(index)},
        "partition": spec,
        "sites": [{"name": s, "kind": (kinds or {}).get(s, ""), "style": (styles or {}).get(s, ""), "size": len(r)}
                  for s, r in sites.items()],
        "test": {"size": len(test)},
    }
    (out / "federation.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _check_disjoint(sites: Mapping[str, Sequence[int]], test: Sequence[int], n: int) -> None:
    seen: set[int] = set()
    for rows in [*sites.values(), test]:
        rows = [int(r) for r in rows]
        if any(not 0 <= r < n for r in rows):
            raise ConfigError("a partition index is outside the dataset")
        if seen.intersection(rows) or len(set(rows)) != len(rows):
            raise ConfigError("an image is assigned to two sites (or to a site and the test set)")
        seen.update(rows)


def _clear(out: Path, *, overwrite: bool) -> None:
    ours = [out / "sites", out / TEST, out / "catalog.json", out / "federation.json"]
    if any(p.exists() or p.is_symlink() for p in ours):
        if not overwrite:
            raise ConfigError("the output folder already holds a federation; pass overwrite to replace it")
        for p in ours:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)  # removes our links, never what they point at
            elif p.exists() or p.is_symlink():
                p.unlink()


def _write_site(index: DatasetIndex, folder: Path, name: str, rows: Sequence[int], *, as_ids: bool = False) -> None:
    """One site folder; ``as_ids``: the test set, labelled by catalog id, with study keys."""
    images = folder / "images"
    images.mkdir(parents=True)
    width = max(6, len(str(len(rows))))
    entries = []
    for i, r in enumerate(sorted(int(r) for r in rows), start=1):
        rec = index.records[r]
        rel = f"images/{i:0{width}d}{rec.path.suffix.lower()}"
        os.symlink(rec.path, folder / rel)
        entries.append((rel, rec))
    def label(rec: DatasetRecord) -> str:
        return index.label_ids[rec.label] if as_ids else rec.label

    with (folder / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label"])
        w.writerows((rel, label(rec)) for rel, rec in entries)
    mapping = dict(sorted({label(rec): index.label_ids[rec.label] for _, rec in entries}.items()))
    site_toml = {"site": {"name": name}, "labels": mapping}
    (folder / "site.toml").write_text(tomli_w.dumps(site_toml), encoding="utf-8")
    if as_ids and any(rec.study for _, rec in entries):
        with (folder / "studies.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "study", "body_part"])
            w.writerows((rel, rec.study or "", rec.body_part or "") for rel, rec in entries)


def read_studies(test_dir: str | Path) -> dict[str, tuple[str, str]]:
    """``test/studies.csv`` as file -> (study, body part); empty when the dataset has no studies."""
    path = Path(test_dir) / "studies.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["file"]: (row["study"], row["body_part"]) for row in csv.DictReader(fh)}
