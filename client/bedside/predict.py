"""Identify the implant on one radiograph at the bedside: top-k classes, ``unknown``, Grad-CAM.

Every file goes through exactly the steps a training image goes through:
``client.data.site_data.process_file`` (ingest, the pixel QC check and the deterministic eval
pipeline) with the release's own ``preprocess.json``. Then the model's outputs are temperature-scaled with the
release's ``calibration.json`` and the top-k classes are reported.

An answer is flagged ``unknown`` when the image is out of the model's distribution:

- the quality gate found no implant, a foreign object, or a blank/saturated image, or the
  file is a colour picture (a predict-only check: radiographs are grey); no class is
  named then, as the model never saw such images in training; or
- the calibrated top probability is below the release's ``unknown_threshold``, or (a
  release on a public encoder) the image's features are further from every catalog class
  than the release's ``feature_threshold`` allows (:mod:`common.open_set`: the distance to
  the nearest class ray in the encoder's projected space, or, for a release calibrated
  before it, the cosine to the nearest class direction): an implant design the catalog
  does not hold.

With ``set_level`` an answer also carries the smallest candidate set that holds the true
implant with that probability (split conformal, :mod:`common.conformal`), the
manufacturers in it, and the coverage the release measured on its test set.

A release its gate judged unfit (:mod:`common.release_gate`) is refused unless the caller
allows it; then every answer carries the warning.

Files that cannot be answered at all (not an image, too small, too large, multi-frame when
the release rejects them) get an ``error`` with the QC reason instead. Logs name files by
salted token only; the file names in the answers are the ones the user typed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from client.data.ingest import read_image
from client.data.qc import (
    BLANK,
    FOREIGN_OBJECT,
    MULTIFRAME,
    NO_IMPLANT,
    TOO_LARGE,
    TOO_SMALL,
    UNREADABLE,
)
from client.data.site_data import process_file
from client.data.transforms import CropROI, Sample, build_eval_pipeline
from common.errors import InvalidInputError
from common.open_set import RAY_DISTANCE
from common.redact import file_token
from common.release_files import Release, load_release

logger = logging.getLogger(__name__)

COLOUR_PICTURE = "colour-picture"  # predict-only check: a colour photograph or drawing
OOD_REASONS = (NO_IMPLANT, FOREIGN_OBJECT, BLANK, COLOUR_PICTURE)  # reported as ``unknown``, not errors
LOW_CONFIDENCE = "low-confidence"
FAR_FROM_CATALOG = "far-from-catalog"  # the features lie far from every catalog class (common.open_set)


class UnfitReleaseError(InvalidInputError):
    """The release's gate judged it not fit for clinical use (``predict --allow-unfit`` overrides)."""


@dataclass
class Prediction:
    """One file's answer: ``top_k`` + ``unknown`` (+ ``cam``), or an ``error``."""

    file: str
    top_k: list[dict[str, Any]] = field(default_factory=list)  # manufacturer, model, id, probability
    unknown: bool = False
    reason: str | None = None  # why unknown: a QC reason or "low-confidence"
    cam: str | None = None  # Grad-CAM overlay written, if asked
    error: str | None = None  # why the file could not be answered
    detail: str = ""  # a human sentence for the error or the unknown flag
    candidates: dict[str, Any] | None = None  # the conformal set: level, ids, manufacturers, coverage measured
    warning: str | None = None  # set when the release is not fit for clinical use (allowed by the caller)
    gate: dict[str, Any] | None = None  # the release gate's verdict: fit_for_use, reason, accuracy

    @property
    def answered(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            out = {"file": self.file, "error": self.error, "detail": self.detail}
        else:
            out = {k: v for k, v in asdict(self).items() if k not in ("error", "detail", "warning")}
            out["detail"] = self.detail
        if self.warning:
            out["warning"] = self.warning
        if self.gate is not None:
            out["gate"] = self.gate
        return out


@dataclass(frozen=True)
class Prepared:
    """A file after ingest and preprocessing, ready for the model."""

    image: np.ndarray | None  # (S, S) model input; None when QC stopped it
    roi: np.ndarray | None  # the ROI crop of the ingested image (before CLAHE / resize)
    reason: str | None  # QC reason when the image was stopped
    detail: str = ""


class Predictor:
    """A loaded release ready to answer files one by one (CPU by default)."""

    def __init__(self, release: Release | Path, *, device: str | torch.device = "cpu", allow_unfit: bool = False) -> None:
        self.release = release if isinstance(release, Release) else load_release(Path(release))
        gate = self.release.info.get("release")
        self.warning = None
        if gate is not None and not gate.get("fit_for_use", False):
            self.warning = f"NOT FIT FOR CLINICAL USE: {gate.get('reason', 'the release gate refused it')}"
            if not allow_unfit:
                raise UnfitReleaseError(f"this release is not fit for clinical use ({gate.get('reason', '')}); "
                                        "predict refuses it (--allow-unfit answers anyway, with a warning)")
        self.device = torch.device(device)
        self.model = self.release.model.to(self.device).eval()
        from common.open_set import head_directions

        self.directions = head_directions(self.model)
        self.params = self.release.preprocess
        self.pipeline = build_eval_pipeline(self.params)
        self._crop = CropROI(self.params.roi_margin)

    # ------------------------------------------------------------------ steps
    def prepare(self, path: Path, *, with_roi: bool = False) -> Prepared:
        """Ingest + QC + eval preprocessing: ``client.data.site_data.process_file``, as for a training image.

        ``with_roi`` also returns the ROI crop of the ingested image (for Grad-CAM overlays).
        """
        path = Path(path)
        if is_colour_picture(path):
            return Prepared(None, None, COLOUR_PICTURE, _OOD_TEXT[COLOUR_PICTURE])
        res = process_file(path, self.params, self.pipeline)
        if res.reason is not None:
            return Prepared(None, None, res.reason, _OOD_TEXT.get(res.reason, _ERROR_TEXT.get(res.reason, "")))
        image = res.image.astype(np.float32)
        return Prepared(image, self.roi(path) if with_roi else None, None)

    def roi(self, path: Path) -> np.ndarray | None:
        """The region of the ingested image the model input was cut from (display only)."""
        try:
            pixels = read_image(path, self.params).pixels
            seg = self.pipeline(Sample(pixels)).seg
        except InvalidInputError:
            return None
        return self._crop(Sample(pixels, seg)).image if seg is not None else None

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (C,) of one preprocessed (S, S) image."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(self.device)
        with torch.no_grad():
            logits = self.model(x)
        return self.release.calibration.probabilities(logits)[0]

    def feature_score(self, image: np.ndarray) -> float | None:
        """The release's feature score of one preprocessed image (None without an encoder): the distance of its
        projected features to the nearest class ray, or the cosine to the nearest class direction
        (``calibration.json``'s ``feature_metric``; :mod:`common.open_set`)."""
        if self.directions is None:
            return None
        from common.open_set import projected_features, score

        r = projected_features(self.model.encoder, np.asarray(image, np.float32)[None, None])
        return float(score(r, self.directions, self.release.calibration.feature_metric)[0])

    def candidates(self, probs: np.ndarray, level: str) -> dict[str, Any]:
        """The conformal candidate set at ``level`` (one of the release's levels)."""
        from common.conformal import prediction_set

        cal = self.release.calibration
        if level not in cal.conformal:
            offered = ", ".join(sorted(cal.conformal)) or "none (the release was not calibrated)"
            raise InvalidInputError(f"the release offers candidate sets at levels {offered}, not {level}")
        classes = self.release.catalog.classes
        members = [classes[i] for i in prediction_set(probs, cal.conformal[level])]
        makers = sorted({c.manufacturer for c in members})
        return {"level": float(level), "ids": [c.id for c in members], "manufacturers": makers,
                "several_manufacturers": len(makers) > 1, "coverage_measured": cal.conformal_coverage.get(level)}

    def top_k(self, probs: np.ndarray, k: int) -> list[dict[str, Any]]:
        order = np.argsort(-probs, kind="stable")[: max(1, k)]
        classes = self.release.catalog.classes
        return [{"manufacturer": classes[i].manufacturer, "model": classes[i].model, "id": classes[i].id,
                 "probability": round(float(probs[i]), 4)} for i in order]

    # ------------------------------------------------------------------ one file
    def predict_file(self, path: Path, *, top_k: int = 3, cam_path: Path | None = None, name: str | None = None,
                     set_level: str | None = None) -> Prediction:
        """Answer one file; never raises for a bad file (the answer carries the error)."""
        shown = name if name is not None else str(path)
        prep = self.prepare(path, with_roi=cam_path is not None)
        if prep.reason in OOD_REASONS:
            logger.info("predict %s: unknown (%s)", file_token(path), prep.reason)
            return Prediction(shown, unknown=True, reason=prep.reason, detail=_OOD_TEXT[prep.reason],
                              warning=self.warning)
        if prep.image is None:
            logger.info("predict %s: not answered (%s)", file_token(path), prep.reason)
            return Prediction(shown, error=prep.reason, detail=prep.detail, warning=self.warning)
        probs = self.probabilities(prep.image)
        best = float(probs.max())
        cal = self.release.calibration
        threshold = cal.unknown_threshold
        answer = Prediction(shown, top_k=self.top_k(probs, top_k), warning=self.warning)
        score = self.feature_score(prep.image)
        if score is not None and bool(cal.far_from_catalog(np.array([score]))[0]):
            answer.unknown, answer.reason = True, FAR_FROM_CATALOG
            measured = (f"distance {score:.3f} > {cal.feature_threshold:.3f}" if cal.feature_metric == RAY_DISTANCE
                        else f"similarity {score:.3f} < {cal.feature_threshold:.3f}")
            answer.detail = (f"its features are far from every implant in the catalog ({measured}): most likely a "
                             "design the catalog does not hold")
        elif best < threshold:
            answer.unknown, answer.reason = True, LOW_CONFIDENCE
            answer.detail = (f"top probability {best:.3f} is below the release's unknown threshold {threshold:.3f}: "
                             "this implant may not be in the catalog, or the image is unlike the training images")
        if set_level is not None:
            answer.candidates = self.candidates(probs, set_level)
        if cam_path is not None:
            try:
                answer.cam = str(self.write_cam(prep, int(probs.argmax()), cam_path))
            except OSError as e:  # the answer stands without its overlay
                logger.warning("Grad-CAM overlay for %s not written (%s)", file_token(path), type(e).__name__)
        logger.info("predict %s: top-1 %s p=%.3f unknown=%s", file_token(path), answer.top_k[0]["id"], best, answer.unknown)
        return answer

    def cam(self, image: np.ndarray, class_index: int) -> np.ndarray:
        from client.bedside.gradcam import grad_cam

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(self.device)
        return grad_cam(self.model, x, class_index=class_index)

    def write_cam(self, prep: Prepared, class_index: int, path: Path) -> Path:
        from client.bedside.gradcam import cam_panel, write_png

        assert prep.image is not None
        heat = self.cam(prep.image, class_index)
        roi = prep.roi if prep.roi is not None else prep.image
        return write_png(path, cam_panel(prep.image, roi, heat))


_OOD_TEXT = {
    NO_IMPLANT: "no implant was found on this image",
    FOREIGN_OBJECT: "more than one implant-like object is on the image; crop to one implant",
    BLANK: "the image is blank or saturated",
    COLOUR_PICTURE: "this is a colour picture, not a radiograph",
}
_ERROR_TEXT = {
    UNREADABLE: "not a readable DICOM, PNG or JPEG image",
    TOO_SMALL: "the image is smaller than the release accepts",
    TOO_LARGE: "the image is larger than the release accepts",
    MULTIFRAME: "multi-frame images are rejected by this release",
}
COLOUR_SATURATION = 0.25  # HSV saturation above which a pixel counts as coloured
COLOUR_SHARE = 0.2  # a file with more coloured pixels than this is a picture, not an X-ray


def is_colour_picture(path: Path) -> bool:
    """True for a raster file whose pixels are largely coloured (radiographs are grey).

    Grey radiographs saved as RGB, or with small coloured annotations, stay well below
    ``COLOUR_SHARE``. DICOM files (and anything OpenCV cannot decode) are left to ingest.
    """
    try:
        data = np.fromfile(path, np.uint8)
    except (OSError, ValueError):
        return False
    if len(data) >= 132 and bytes(data[128:132]) == b"DICM":
        return False
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        return False
    if bgr is None or bgr.size == 0:
        return False
    saturation = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[..., 1].astype(np.float32) / 255.0
    return float((saturation > COLOUR_SATURATION).mean()) > COLOUR_SHARE


def _without_token(message: str) -> str:
    """``f:abc123: not a readable image file`` -> ``not a readable image file``."""
    head, sep, tail = message.partition(": ")
    return tail if sep and head.startswith("f:") else message


def cam_names(files: Iterable[Path], cam_dir: Path) -> list[Path]:
    """One overlay path per file, ``<stem>.cam.png``, made unique within the batch."""
    seen: dict[str, int] = {}
    out = []
    for f in files:
        stem = Path(f).stem or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(cam_dir / (f"{stem}.cam.png" if n == 0 else f"{stem}-{n + 1}.cam.png"))
    return out


def predict_files(
    files: list[Path],
    release: Path | Release,
    *,
    top_k: int = 3,
    cam_dir: Path | None = None,
    on_file: Callable[[Prediction], None] | None = None,
    set_level: str | None = None,
    allow_unfit: bool = False,
) -> list[Prediction]:
    """Answer every file in order; ``on_file`` is called after each (progress bars)."""
    predictor = Predictor(release, allow_unfit=allow_unfit)
    if set_level is not None:
        predictor.candidates(np.full(len(predictor.release.catalog), 1.0 / len(predictor.release.catalog)), set_level)
    cams = cam_names(files, cam_dir) if cam_dir is not None else [None] * len(files)
    answers = []
    gate = predictor.release.info.get("release")
    summary = {k: gate[k] for k in ("fit_for_use", "reason", "accuracy", "examples", "evaluated_on")} if gate else None
    for f, cam in zip(files, cams, strict=True):
        answer = predictor.predict_file(Path(f), top_k=top_k, cam_path=cam, name=str(f), set_level=set_level)
        answer.gate = summary
        answers.append(answer)
        if on_file is not None:
            on_file(answer)
    return answers
