"""``kaggle-hip:PATH`` — the Aseptic Loose Hip Implant X-Ray Database as downloaded.

Layout: ``PATH/Data/Control/*.png`` and ``PATH/Data/Loose/*.png`` (``PATH`` may also be
the ``Data`` folder itself). Two classes, ``control`` and ``loose``; no patient key, so
splits are per image. Some files are palette (colour type 3) or RGBA (6) PNGs rather
than greyscale: the index notes how many of each, and ingest must convert them to one
grey channel (``cv2.IMREAD_GRAYSCALE`` does; an alpha channel is dropped).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from common.errors import InvalidInputError
from simulations.datasets.index import DatasetIndex, DatasetRecord, image_files, make_index

CLASSES = ("Control", "Loose")
_PNG_COLOUR = {0: "grey", 2: "rgb", 3: "palette", 4: "grey-alpha", 6: "rgba"}


def png_colour_type(path: Path) -> str:
    """PNG colour type from the IHDR chunk ("grey", "palette", "rgba", ...); "other" if not a PNG."""
    with path.open("rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return "other"
    return _PNG_COLOUR.get(head[25], "other")


def read_kaggle_hip(path: str | Path) -> DatasetIndex:
    root = Path(path).expanduser().resolve()
    data = root / "Data" if (root / "Data").is_dir() else root
    if not all((data / c).is_dir() for c in CLASSES):
        raise InvalidInputError("kaggle-hip dataset: expected PATH/Data/Control/ and PATH/Data/Loose/")
    records = [DatasetRecord(path=f, label=c.lower()) for c in CLASSES for f in image_files(data / c)]
    if not records:
        raise InvalidInputError("kaggle-hip dataset: no images in Data/Control or Data/Loose")
    colours = Counter(png_colour_type(r.path) for r in records)
    return make_index("kaggle-hip", root, records, component="hip-implant",
                      notes={"png_colour_types": dict(sorted(colours.items()))})
