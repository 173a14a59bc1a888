"""``csv:PATH`` — a manifest with a header: ``file,label[,site][,patient][,study][,body_part][,manufacturer]``.

``file`` is absolute or relative to the manifest's folder. Rows are reported by number,
never by path, in errors.
"""

from __future__ import annotations

import csv
from pathlib import Path

from common.errors import InvalidInputError
from simulations.datasets.index import DatasetIndex, DatasetRecord, make_index

OPTIONAL = ("site", "patient", "study", "body_part", "manufacturer")


def read_manifest(path: str | Path) -> DatasetIndex:
    manifest = Path(path).expanduser().resolve()
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip() for h in (rows[0].keys() if rows else [])]
    except OSError as e:
        raise InvalidInputError(f"csv dataset: the manifest cannot be read ({type(e).__name__})") from e
    if not rows:
        raise InvalidInputError("csv dataset: the manifest has no rows")
    if "file" not in header or "label" not in header:
        raise InvalidInputError("csv dataset: the manifest needs a header with columns file,label")
    unknown = set(header) - {"file", "label", *OPTIONAL}
    if unknown:
        raise InvalidInputError(f"csv dataset: unknown column(s) {', '.join(sorted(unknown))}")
    records, makers, missing = [], {}, []
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not row["file"] or not row["label"]:
            raise InvalidInputError(f"csv dataset: row {n} has an empty file or label")
        file = Path(row["file"]).expanduser()
        file = file if file.is_absolute() else manifest.parent / file
        if not file.is_file():
            missing.append(n)
            continue
        if row.get("manufacturer"):
            if makers.setdefault(row["label"], row["manufacturer"]) != row["manufacturer"]:
                raise InvalidInputError(f"csv dataset: row {n} gives label a second manufacturer")
        records.append(DatasetRecord(
            path=file.resolve(), label=row["label"], site=row.get("site") or None,
            patient=row.get("patient") or None, study=row.get("study") or None,
            body_part=row.get("body_part") or None,
        ))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise InvalidInputError(f"csv dataset: {len(missing)} row(s) name a file that does not exist (rows {shown})")
    return make_index("csv", manifest, records, manufacturers=makers)
