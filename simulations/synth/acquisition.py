"""How a site's scanner turns attenuation into a displayed image.

Each site gets a :class:`SiteStyle` drawn once from one of the named scanner profiles
(the tags of :data:`simulations.datasets.partition.ACQUISITION_STYLES`) plus site-specific jitter:
its own image size and pixel spacing, characteristic curve (contrast, gamma, exposure
offset), detector blur, edge enhancement, quantum-noise level, heel-effect gradient,
and how often its images carry collimation bands, burned-in markers, a cup or cement.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from simulations.synth.anatomy import smooth_noise


@dataclass(frozen=True)
class ScannerProfile:
    """Base tendencies of one kind of scanner / acquisition practice."""

    contrast: float  # slope of the characteristic curve 1 - exp(-contrast * attenuation)
    gamma: float  # display gamma (> 1 darkens mid-tones)
    exposure: float  # additive brightness offset (negative = burned out / overexposed)
    blur: float  # detector blur sigma at difficulty 1, pixels
    sharpen: float  # unsharp-mask amount (CR edge enhancement)
    noise: float  # quantum-noise level at difficulty 1


PROFILES: dict[str, ScannerProfile] = {
    "standard": ScannerProfile(contrast=1.2, gamma=1.0, exposure=0.0, blur=0.7, sharpen=0.3, noise=0.025),
    "high-contrast": ScannerProfile(contrast=1.6, gamma=1.3, exposure=-0.03, blur=0.6, sharpen=0.7, noise=0.025),
    "low-dose-noise": ScannerProfile(contrast=1.2, gamma=1.0, exposure=0.02, blur=0.7, sharpen=0.2, noise=0.05),
    "overexposed": ScannerProfile(contrast=1.0, gamma=1.35, exposure=-0.1, blur=0.8, sharpen=0.3, noise=0.02),
    "underexposed": ScannerProfile(contrast=1.0, gamma=0.75, exposure=0.08, blur=0.8, sharpen=0.2, noise=0.04),
    "soft-focus": ScannerProfile(contrast=1.2, gamma=1.0, exposure=0.0, blur=1.5, sharpen=0.0, noise=0.02),
}


@dataclass(frozen=True)
class SiteStyle:
    """A site's acquisition tendencies (drawn once per site)."""

    profile: str  # key of PROFILES
    rows: int  # image height, px
    cols: int  # image width, px
    mm_per_px: float  # detector pixel spacing, mm
    contrast: float  # see ScannerProfile
    gamma: float
    exposure: float
    blur: float  # pixels, already scaled by the preset's difficulty
    sharpen: float
    noise: float  # already scaled by the preset's difficulty
    heel: float  # strength of the low-frequency exposure gradient
    collimation: float  # probability of visible collimation bands
    bright_bands: float  # probability that a collimation band is bright (unexposed) rather than dark
    markers: float  # probability of burned-in text markers
    cups: float  # probability of a total hip (stem + cup) rather than a hemiarthroplasty
    cement: float  # probability of a cemented stem (visible cement mantle)


def random_style(rng: np.random.Generator, *, profile: str, size: tuple[int, int], difficulty: float) -> SiteStyle:
    """Draw a site's style around ``PROFILES[profile]``.

    Parameters
    ----------
    rng
        The site's random generator.
    profile
        Scanner profile name.
    size
        Nominal ``(rows, cols)``; the site's size varies around it (256-448 px).
    difficulty
        Nuisance strength: scales noise and blur (0 = clean images).

    Returns
    -------
    SiteStyle
    """
    base = PROFILES[profile]
    rows = int(np.clip(size[0] * rng.uniform(0.85, 1.15), 256, 448)) // 16 * 16
    cols = int(np.clip(size[1] * rows / size[0] * rng.uniform(0.92, 1.08), 256, 448)) // 16 * 16

    def jitter(spread: float) -> float:  # multiplicative, log-normal
        return float(np.exp(rng.normal(0.0, spread)))

    return SiteStyle(
        profile=profile, rows=rows, cols=cols,
        mm_per_px=round(float(rng.uniform(340.0, 400.0)) / rows, 4),
        contrast=base.contrast * jitter(0.08), gamma=base.gamma * jitter(0.06),
        exposure=base.exposure + float(rng.normal(0.0, 0.02)),
        blur=base.blur * jitter(0.15) * (0.4 + 0.6 * difficulty), sharpen=base.sharpen * jitter(0.2),
        noise=base.noise * jitter(0.15) * difficulty, heel=float(rng.uniform(0.03, 0.1)),
        collimation=float(rng.uniform(0.2, 0.6)), bright_bands=float(rng.choice([0.0, 0.3, 0.8])),
        markers=float(rng.uniform(0.4, 0.95)), cups=float(rng.uniform(0.3, 0.9)),
        cement=float(rng.uniform(0.1, 0.6)),
    )


def _gradient(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A linear ramp in a random direction plus a very smooth blotch, values ~[-1, 1]."""
    h, w = shape
    a = rng.uniform(0, 2 * np.pi)
    ys = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    return np.float32(np.cos(a)) * xs + np.float32(np.sin(a)) * ys + 0.5 * smooth_noise(shape, rng, 3)


def acquire(attenuation: np.ndarray, style: SiteStyle, rng: np.random.Generator, *, difficulty: float) -> np.ndarray:
    """Attenuation -> displayed intensity in ``[0, 1]``, high = dense (MONOCHROME2 sense).

    Parameters
    ----------
    attenuation
        float32 HxW line integrals (metal ~3, bone < 1).
    style
        The site's style.
    rng
        Per-image random generator (exposure jitter, gradient, noise).
    difficulty
        Nuisance strength for the per-image exposure and gamma jitter.

    Returns
    -------
    numpy.ndarray
        float32 HxW in ``[0, 1]``.
    """
    contrast = style.contrast * float(np.exp(rng.normal(0.0, 0.06 * difficulty)))
    img = 1.0 - np.exp(-contrast * attenuation)
    img *= 1.0 + style.heel * _gradient(img.shape, rng)
    img += style.exposure + float(rng.normal(0.0, 0.03 * difficulty))
    gamma = style.gamma * float(np.exp(rng.normal(0.0, 0.08 * difficulty)))
    img = np.clip(img, 0.0, 1.0) ** np.float32(gamma)
    if style.blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), style.blur)
    if style.sharpen > 0.01:
        img = img + np.float32(style.sharpen) * (img - cv2.GaussianBlur(img, (0, 0), 3.0))
    sigma = np.float32(style.noise) * (0.5 + np.clip(img, 0.0, 1.0))  # quantum-like: grows with signal
    img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
