"""A site's data layout and its labels.

Two layouts are understood, checked in this order:

- ``labels.csv`` in the site folder, header ``file,label``; ``file`` is relative to the
  site folder (POSIX or native separators) and must stay inside it;
- class subfolders: ``<label>/<image>`` (any depth below the label folder).

Local labels are mapped to catalog ids by the site config's ``[labels]`` table; an
unknown label is a :class:`~common.errors.ConfigError` raised before any image is
decoded. Label names are not patient data and are listed; file paths never are (rows of
``labels.csv`` are named by their line number).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.catalog import Catalog
from common.errors import ConfigError

IMAGE_SUFFIXES = {".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ""}
LABELS_CSV = "labels.csv"


@dataclass(frozen=True)
class Item:
    """One labelled file of a site."""

    rel: str  # path relative to the site folder (POSIX)
    label: str  # the site's local label


def list_items(site_dir: Path) -> list[Item]:
    """All labelled files of a site, sorted by relative path.

    Raises
    ------
    ConfigError
        The folder is missing, ``labels.csv`` is malformed, or nothing is labelled.
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise ConfigError("the site's data folder does not exist or is not a folder")
    if (site_dir / LABELS_CSV).exists():
        items = _from_csv(site_dir / LABELS_CSV)
    else:
        items = _from_folders(site_dir)
    if not items:
        raise ConfigError("the site folder has neither a labels.csv with rows nor class subfolders with images")
    return sorted(items, key=lambda i: i.rel)


def _from_csv(path: Path) -> list[Item]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"file", "label"} <= {f.strip() for f in reader.fieldnames}:
                raise ConfigError("labels.csv needs a header row with columns file,label")
            reader.fieldnames = [f.strip() for f in reader.fieldnames]
            items, seen = [], set()
            for row in reader:
                line = reader.line_num
                file, label = (row.get("file") or "").strip(), (row.get("label") or "").strip()
                if not file and not label:
                    continue
                if not file or not label:
                    raise ConfigError(f"labels.csv line {line}: both file and label are required")
                rel = _safe_rel(file, line)
                if rel in seen:
                    raise ConfigError(f"labels.csv line {line}: a file is listed twice")
                seen.add(rel)
                items.append(Item(rel, label))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"labels.csv cannot be read ({type(e).__name__})") from None
    return items


def _safe_rel(file: str, line: int) -> str:
    rel = PurePosixPath(file.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or (rel.parts and rel.parts[0].endswith(":")):
        raise ConfigError(f"labels.csv line {line}: the file must be relative to the site folder and inside it")
    return rel.as_posix()


def _from_folders(site_dir: Path) -> list[Item]:
    items = []
    for class_dir in sorted(p for p in site_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.rglob("*")):
            rel = f.relative_to(site_dir)
            if any(part.startswith(".") for part in rel.parts):
                continue  # caches, hidden files
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append(Item(rel.as_posix(), class_dir.name))
    return items


def map_labels(items: list[Item], catalog: Catalog, label_map: Mapping[str, str] | None) -> dict[str, str]:
    """local label -> catalog id for every label in use.

    Parameters
    ----------
    items
        The site's labelled files.
    catalog
        The consortium catalog.
    label_map
        The site config's ``[labels]``; None means the local labels are catalog ids.

    Raises
    ------
    ConfigError
        Listing every local label without a mapping, or mapped to an id not in the catalog.
    """
    used = sorted({i.label for i in items})
    mapping = dict(label_map) if label_map is not None else {lab: lab for lab in used}
    unknown = [lab for lab in used if lab not in mapping]
    if unknown:
        where = "in the site config's [labels]" if label_map is not None else f"in catalog {catalog.name} v{catalog.version}"
        raise ConfigError(f"unknown label(s), not mapped {where}: {', '.join(repr(u) for u in unknown)}")
    ids = set(catalog.ids)
    bad = sorted({mapping[lab] for lab in used if mapping[lab] not in ids})
    if bad:
        raise ConfigError(f"label(s) mapped to ids that are not in catalog {catalog.name} v{catalog.version}: "
                          f"{', '.join(repr(b) for b in bad)}")
    return {lab: mapping[lab] for lab in used}
