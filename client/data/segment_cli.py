"""``implantfl-client segment``: write each file's implant mask, so a user sees what the pipeline cuts.

Mounted into ``client.cli`` with ``segment_cli.add_parsers(sub)``. Each FILE goes through
the same ingest as training (DICOM LUTs, bit depth, resampling) and the run-wide
segmenter; ``DIR/<file stem>.mask.png`` is an 8-bit PNG at the input's stored size, 255 on
the implant metal the pipeline found (stem, neck, head, a cup close to them), 0 elsewhere.
A file with no implant found, or that cannot be read, gets no mask and its QC reason; one
the quality gate rejects for another reason (a foreign object, say) gets its mask and
that reason.
Exits 0 when at least one mask was written, 1 when none was.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.errors import ConfigError

SEGMENTERS = ("threshold", "unet")


def add_parsers(sub: Any) -> None:
    """Add ``segment`` to the ``implantfl-client`` subcommands."""
    p = sub.add_parser("segment", help="write each file's implant mask (what preprocessing cuts) as a PNG",
                       description="Segment the implant on each FILE as training does and write "
                                   "DIR/<file stem>.mask.png (0 or 255, at the input's size).")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="DICOM, PNG, JPEG or TIFF radiographs")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the masks (created)")
    p.add_argument("--segmenter", choices=SEGMENTERS, default="threshold",
                   help="threshold: the edge-level threshold segmenter of the pipeline (default); unet: a learned "
                        "U-Net (--segmenter-model)")
    p.add_argument("--segmenter-model", type=Path, metavar="DIR",
                   help="with --segmenter unet: the folder implantfl-sim train-segmenter wrote")
    p.add_argument("--config", type=Path, help="site.toml: its [preprocess] settings (target pixel spacing)")
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per file")
    p.set_defaults(func=cmd_segment)


def cmd_segment(args: argparse.Namespace) -> int:
    params = _params(args.config)
    stems = [f.stem for f in args.files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ConfigError(f"two files would write the same mask ({', '.join(dupes[:3])}.mask.png): "
                          "segment them into different --out folders")
    segment = None
    if args.segmenter == "unet":
        if args.segmenter_model is None:
            raise ConfigError("--segmenter unet needs --segmenter-model DIR (implantfl-sim train-segmenter --out DIR)")
        from client.data.learned_segmentation import LearnedSegmenter

        segment = LearnedSegmenter(args.segmenter_model).segment
    args.out.mkdir(parents=True, exist_ok=True)
    answers = [segment_file(f, args.out, params, segment) for f in args.files]
    if args.json:
        print(json.dumps(answers, indent=2))
    else:
        for a in answers:
            what = f"mask {a['mask']}" if a["mask"] else "no mask"
            note = f" (quality gate: {a['qc']})" if a["qc"] else ""
            print(f"{a['file']}: {what}{note}")
    return 0 if any(a["mask"] for a in answers) else 1


def segment_file(path: Path, out: Path, params: Any, segment: Any = None) -> dict[str, Any]:
    """Segment one file and write its mask; what was done, as a JSON-ready dict (never raises for a bad file).

    ``segment``: image -> Segmentation (default: the pipeline's threshold segmenter).
    """
    from client.data.ingest import IngestError, read_image
    from client.data.qc import NO_IMPLANT, check_segmentation
    from client.data.segmentation import segment_implant

    answer: dict[str, Any] = {"file": path.name, "mask": None, "qc": None, "box": None, "implant_fraction": 0.0}
    try:
        img = read_image(path, params)
        seg = (segment or segment_implant)(img.image)
    except IngestError as e:
        answer["qc"] = e.reason
        return answer
    answer["qc"] = check_segmentation(seg)
    if seg.box is None or answer["qc"] == NO_IMPLANT:  # what was found is not metal: nothing to show
        return answer
    mask = seg.mask
    stored = img.fields.get("stored_shape")
    if stored and tuple(stored) != mask.shape:  # resampled on ingest: back to the file's own pixels
        mask = cv2.resize(mask, (int(stored[1]), int(stored[0])), interpolation=cv2.INTER_NEAREST)
    mask = np.where(mask > 0, 255, 0).astype(np.uint8)
    target = out / f"{path.stem}.mask.png"
    ok, buf = cv2.imencode(".png", mask)
    if not ok:
        raise OSError("PNG encoding failed")
    target.write_bytes(buf.tobytes())
    answer.update(mask=str(target), box=list(seg.box), implant_fraction=round(float((mask > 0).mean()), 5))
    return answer


def _params(config: Path | None) -> Any:
    from common.preprocess_params import PreprocessParams

    if config is None:
        return PreprocessParams()
    from client.site.config import SiteConfig

    return SiteConfig.load(config).preprocess  # a bad file is a ConfigError naming the key
