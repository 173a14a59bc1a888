"""Pose of an implant in an image: local design units -> image pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pose:
    cx: float  # image x (px) of the stem shoulder centre
    cy: float  # image y (px) of the stem shoulder centre
    scale: float  # pixels per design reference length
    angle: float  # in-plane rotation, degrees
    flip: bool  # mirror left/right (a left hip)

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """Map (N, 2) local points (x lateral, y down the shaft) to integer-ready pixels."""
        p = np.asarray(pts, dtype=np.float64) * self.scale
        if self.flip:
            p[:, 0] = -p[:, 0]
        a = np.deg2rad(self.angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return p @ rot.T + np.array([self.cx, self.cy])

    def poly(self, pts: np.ndarray) -> np.ndarray:
        """int32 polygon for cv2 drawing (sub-pixel precision via shift=4)."""
        return np.round(self.to_px(pts) * 16).astype(np.int32).reshape(-1, 1, 2)


SHIFT = 4  # cv2 fractional bits used with Pose.poly
