"""Pose of an implant in an image: local design coordinates <-> image pixels.

Local coordinates are in reference units (see :mod:`simulations.synth.catalog_spec`):
``x`` points lateral, ``y`` down the femoral shaft, the origin is the stem's shoulder
centre. The pose mirrors (left hip), rotates in plane, scales to pixels and translates.
``twist`` is an out-of-plane rotation of the implant about the shaft axis (leg rotation),
which foreshortens every lateral extent of the implant by ``cos(twist)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

SHIFT = 4  # fractional bits used with :meth:`Pose.poly` in cv2 drawing calls
_ONE = 1 << SHIFT


@dataclass(frozen=True)
class Pose:
    """Where and how an implant lies in an image."""

    cx: float  # image x (px) of the local origin
    cy: float  # image y (px) of the local origin
    scale: float  # pixels per reference unit
    angle: float  # in-plane rotation, degrees (positive = clockwise on screen)
    flip: bool  # mirror left/right (a left hip)
    twist: float = 0.0  # out-of-plane rotation about the shaft, degrees (implant only)

    def _rotation(self) -> np.ndarray:
        a = np.deg2rad(self.angle)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` local points to ``(N, 2)`` float pixel coordinates ``(x, y)``."""
        p = np.array(pts, dtype=np.float64).reshape(-1, 2) * self.scale
        p[:, 0] *= np.cos(np.deg2rad(self.twist))
        if self.flip:
            p[:, 0] = -p[:, 0]
        return p @ self._rotation().T + np.array([self.cx, self.cy])

    def poly(self, pts: np.ndarray) -> np.ndarray:
        """``int32`` polygon for cv2 drawing with ``shift=SHIFT`` (sub-pixel precision)."""
        return np.round(self.to_px(pts) * _ONE).astype(np.int32).reshape(-1, 1, 2)

    def fixed(self, pt: np.ndarray) -> tuple[int, int]:
        """One local point as a cv2 fixed-point ``(x, y)`` for ``shift=SHIFT``."""
        x, y = np.round(self.to_px(pt)[0] * _ONE).astype(int)
        return int(x), int(y)

    def length_px(self, units: float) -> float:
        """A length in reference units, in pixels (ignores twist)."""
        return units * self.scale

    def untwisted(self) -> Pose:
        """The same pose without the implant's out-of-plane rotation (for the anatomy)."""
        return replace(self, twist=0.0)

    def to_local(self, px: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_px` for ``twist == 0``: ``(N, 2)`` pixels to local points."""
        p = (np.asarray(px, dtype=np.float64).reshape(-1, 2) - np.array([self.cx, self.cy])) @ self._rotation()
        if self.flip:
            p[:, 0] = -p[:, 0]
        return p / self.scale


@dataclass(frozen=True)
class Canvas:
    """An axis-aligned local-coordinate raster covering an image, at the image's pixel scale.

    Anatomy is rendered here (where the shaft runs along the rows, so profiles along the
    shaft are 1-D) and warped into the image once with :meth:`warp`.
    """

    pose: Pose  # maps local points to *canvas* pixels (no rotation, no flip)
    u: np.ndarray  # (1, W) float32 local x of each canvas column
    v: np.ndarray  # (H, 1) float32 local y of each canvas row
    matrix: np.ndarray  # 2x3 affine: canvas pixel -> image pixel
    image_shape: tuple[int, int]

    @classmethod
    def covering(cls, pose: Pose, shape: tuple[int, int], pad: int = 2) -> Canvas:
        """The canvas whose warp by ``pose`` covers an image of ``shape``."""
        h, w = shape
        flat = pose.untwisted()
        corners = flat.to_local(np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=np.float64))
        lo = np.floor(corners.min(0) * flat.scale) - pad
        hi = np.ceil(corners.max(0) * flat.scale) + pad
        cols, rows = int(hi[0] - lo[0]), int(hi[1] - lo[1])
        u = ((np.arange(cols) + lo[0]) / flat.scale).astype(np.float32)[None, :]
        v = ((np.arange(rows) + lo[1]) / flat.scale).astype(np.float32)[:, None]
        linear = flat._rotation() @ np.diag([-1.0 if flat.flip else 1.0, 1.0])
        offset = linear @ lo + np.array([flat.cx, flat.cy])
        matrix = np.hstack([linear, offset[:, None]]).astype(np.float64)
        canvas_pose = Pose(cx=-lo[0], cy=-lo[1], scale=flat.scale, angle=0.0, flip=False)
        return cls(canvas_pose, u, v, matrix, (h, w))

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the canvas."""
        return self.v.shape[0], self.u.shape[1]

    def warp(self, raster: np.ndarray) -> np.ndarray:
        """Map a canvas-sized raster into the image."""
        h, w = self.image_shape
        return cv2.warpAffine(raster, self.matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
