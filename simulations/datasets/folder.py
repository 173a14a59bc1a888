"""``folder:PATH`` — one sub-folder per label: ``PATH/<label>/<image>`` (sub-folders below allowed)."""

from __future__ import annotations

from pathlib import Path

from common.errors import InvalidInputError
from simulations.datasets.index import DatasetIndex, DatasetRecord, image_files, make_index


def read_folder(path: str | Path) -> DatasetIndex:
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise InvalidInputError("folder dataset: the path is not a folder")
    records = [
        DatasetRecord(path=f, label=label_dir.name)
        for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for f in image_files(label_dir)
    ]
    if not records:
        raise InvalidInputError("folder dataset: no images in PATH/<label>/ sub-folders")
    return make_index("folder", root, records)
