"""A site's data layout: ``labels.csv`` (file,label) or class subfolders; labels -> catalog ids."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.catalog import Catalog
from common.errors import ConfigError

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass(frozen=True)
class Item:
    rel: str  # path relative to the site folder (POSIX)
    label: str  # local label


def list_items(site_dir: Path) -> list[Item]:
    """All labelled files of a site, in a stable order."""
    labels_csv = site_dir / "labels.csv"
    if labels_csv.exists():
        try:
            with open(labels_csv, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames is None or not {"file", "label"} <= set(reader.fieldnames):
                    raise ConfigError("labels.csv needs a header row with columns file,label")
                items = [Item(r["file"].strip(), r["label"].strip()) for r in reader if r.get("file")]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise ConfigError(f"labels.csv cannot be read ({type(e).__name__})") from e
        return sorted(items, key=lambda i: i.rel)
    if not site_dir.is_dir():
        raise ConfigError("the site's data folder does not exist or is not a folder")
    items = []
    for class_dir in sorted(p for p in site_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and (f.suffix.lower() in IMAGE_SUFFIXES or f.suffix == ""):
                items.append(Item(f.relative_to(site_dir).as_posix(), class_dir.name))
    if not items:
        raise ConfigError("the site folder has neither labels.csv nor class subfolders with images")
    return items


def map_labels(items: list[Item], catalog: Catalog, label_map: Mapping[str, str] | None) -> dict[str, str]:
    """local label -> catalog id for every label used; unknown labels are one clear error."""
    used = sorted({i.label for i in items})
    mapping = dict(label_map) if label_map is not None else {lab: lab for lab in used}
    unknown = [lab for lab in used if lab not in mapping]
    if unknown:
        raise ConfigError(f"label(s) not mapped to the catalog in the site config: {', '.join(unknown)}")
    bad = sorted({mapping[lab] for lab in used if mapping[lab] not in set(catalog.ids)})
    if bad:
        raise ConfigError(f"label(s) mapped to ids that are not in catalog {catalog.name} v{catalog.version}: {', '.join(bad)}")
    return {lab: mapping[lab] for lab in used}
