"""``mura:PATH`` — MURA v1.1 (Stanford musculoskeletal radiographs) as downloaded.

``PATH`` is the ``MURA-v1.1`` folder or the folder holding it. Read, without a header row:
``{train,valid}_image_paths.csv`` (one image path per line, e.g.
``MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png``) and
``{train,valid}_labeled_studies.csv`` (``<study folder>/,<0|1>``). Labels are per study:
``abnormal`` (1) or ``normal`` (0); every view of a study carries its study's label, and
study-level predictions average the views (:func:`simulations.datasets.index.aggregate_by`
with ``key="study"``). The official ``valid`` split is the test set; its patients are
disjoint from ``train``'s, and further splits group by patient.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from common.errors import InvalidInputError
from simulations.datasets.index import DatasetIndex, DatasetRecord, make_index

SPLITS = ("train", "valid")
LABELS = {"0": "normal", "1": "abnormal"}


def _data_dir(root: Path) -> Path:
    for cand in (root, root / "MURA-v1.1"):
        if all((cand / f"{s}_image_paths.csv").is_file() for s in SPLITS):
            return cand
    raise InvalidInputError("mura dataset: expected MURA-v1.1/{train,valid}_image_paths.csv under PATH")


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [[c.strip() for c in row] for row in csv.reader(fh) if row and row[0].strip()]


def _local(data: Path, listed: str) -> PurePosixPath:
    """A CSV path ('MURA-v1.1/train/...') relative to the data folder, whatever it is called."""
    parts = PurePosixPath(listed.replace("\\", "/")).parts
    if len(parts) < 5 or parts[1] not in SPLITS:
        raise InvalidInputError("mura dataset: an image path does not look like MURA-v1.1/<split>/XR_<PART>/...")
    return PurePosixPath(*parts[1:])


def normalise_part(name: str) -> str:
    """'XR_WRIST', 'wrist' or 'Wrist' -> 'wrist'."""
    name = name.strip().lower()
    return name[3:] if name.startswith("xr_") else name


def read_mura(path: str | Path, *, body_part: str | Iterable[str] | None = None) -> DatasetIndex:
    data = _data_dir(Path(path).expanduser().resolve())
    wanted = None
    if body_part is not None:
        parts = body_part.split(",") if isinstance(body_part, str) else list(body_part)
        wanted = {normalise_part(p) for p in parts if p.strip()}
    records, missing, parts_seen = [], 0, set()
    for split in SPLITS:
        studies_csv = data / f"{split}_labeled_studies.csv"
        study_label = {str(_local(data, r[0])): r[1] for r in _rows(studies_csv) if len(r) > 1} if studies_csv.is_file() else {}
        for row in _rows(data / f"{split}_image_paths.csv"):
            rel = _local(data, row[0])
            _, part_dir, patient, study_dir = rel.parts[:4]
            part = normalise_part(part_dir)
            parts_seen.add(part)
            if wanted is not None and part not in wanted:
                continue
            study = str(rel.parent)
            code = study_label.get(study)
            if code is None:  # not listed: fall back on the folder name
                code = "1" if study_dir.endswith("_positive") else "0" if study_dir.endswith("_negative") else None
            if code not in LABELS:
                raise InvalidInputError("mura dataset: a study has no 0/1 label in *_labeled_studies.csv")
            file = data.joinpath(*rel.parts)
            if not file.is_file():
                missing += 1
                continue
            records.append(DatasetRecord(path=file, label=LABELS[code], patient=patient,
                                         study=f"{part_dir}/{patient}/{study_dir}", body_part=part, split=split))
    if missing:
        raise InvalidInputError(f"mura dataset: {missing} listed image(s) are missing; is the download complete?")
    if wanted is not None and not records:
        raise InvalidInputError(f"mura dataset: no images of body part(s) {', '.join(sorted(wanted))}; "
                                f"choose from {', '.join(sorted(parts_seen))}")
    train_patients = {r.patient for r in records if r.split == "train"}
    shared = sum(1 for p in {r.patient for r in records if r.split == "valid"} if p in train_patients)
    return make_index("mura", data, records, component="radiograph-study",
                      notes={"body_parts": sorted({r.body_part for r in records}), "patients_in_both_splits": shared})
