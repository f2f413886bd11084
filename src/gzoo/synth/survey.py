"""Synthetic survey cutouts: a galaxy's light in three bands, in physical flux units, with sky noise, as FITS.

What a survey serves and gzoo.fits reads, made without the network: a Sersic galaxy of a given r magnitude,
petroR90_r (arcsec) and colours (g - r, r - i), blurred by a Gaussian seeing, on a pixel grid of a given scale
(arcsec), in nanomaggies per pixel (the units of SDSS frames and the Legacy Surveys' cutouts, zero point 22.5),
plus Gaussian sky noise of SDSS's depth scaled to the pixel. :func:`write_cutout` writes each band as a FITS file
with a celestial WCS header (astropy.wcs), as survey cutout services do.

    frames = galaxy_frames(RED, pixel_scale=0.262, seed=1)     # (3, 96, 96): g, r, i
    paths = write_cutout(folder, "red", frames, pixel_scale=0.262)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gzoo.fits import NANOMAGGY_ZEROPOINT, SDSS_PIXEL, write_band_files

BANDS = ("g", "r", "i")
#: SDSS's sky noise per 0.396 arcsec pixel, nanomaggies, in g, r, i (about 22.0, 20.9 and 20.3 mag/arcsec^2 skies
#: in 54 s exposures); a pixel of another size has noise in proportion to its side (its area's square root).
SDSS_SKY_SIGMA = (0.016, 0.027, 0.040)


@dataclass(frozen=True)
class SurveyGalaxy:
    """A galaxy as a catalogue describes it: r magnitude (AB), petroR90_r (arcsec), colours, Sersic index, shape."""

    mag_r: float = 16.0
    r90: float = 8.0
    g_r: float = 0.75
    r_i: float = 0.38
    sersic: float = 1.0
    axis_ratio: float = 0.7
    angle: float = 0.5  # radians


#: An early-type galaxy's colours and profile, and a star-forming disk's (SDSS main sample, z ~ 0.05-0.1).
RED = SurveyGalaxy(mag_r=16.0, r90=7.0, g_r=0.95, r_i=0.45, sersic=4.0, axis_ratio=0.8)
BLUE = SurveyGalaxy(mag_r=16.0, r90=9.0, g_r=0.40, r_i=0.18, sersic=1.0, axis_ratio=0.6)


def _sersic_b(n: float) -> float:
    return 2 * n - 1 / 3 + 0.009876 / n


def galaxy_frames(
    galaxy: SurveyGalaxy = BLUE, pixel_scale: float = 0.396, side: int = 96, seeing: float = 1.3, noise: float = 1.0, seed: int = 0
) -> np.ndarray:
    """(3, side, side) float32 g, r, i frames in nanomaggies per pixel, FITS row order (the first row at the bottom).

    The profile's half-light radius is R90 / 2.6 (a disk's R90/R50 is about 2.3, a de Vaucouleurs galaxy's about
    3.3); it is sampled 4x finer than the pixels, blurred by a Gaussian of ``seeing`` arcsec FWHM, and scaled to
    the band's total flux. ``noise`` multiplies SDSS's sky noise (0: noiseless)."""
    rng = np.random.default_rng(seed)
    fine = 4
    axis = (np.arange(side * fine) + 0.5) / fine - side / 2  # pixel units, origin at the centre
    x, y = np.meshgrid(axis, axis)
    c, s = np.cos(galaxy.angle), np.sin(galaxy.angle)
    major, minor = x * c + y * s, (y * c - x * s) / galaxy.axis_ratio
    re = galaxy.r90 / 2.6 / pixel_scale
    r = np.hypot(major, minor)
    profile = np.exp(-_sersic_b(galaxy.sersic) * ((r / re) ** (1 / galaxy.sersic) - 1))
    # Seeing: a Gaussian blur by FFT on the fine grid.
    sigma = seeing / 2.355 / pixel_scale * fine
    fx = np.fft.fftfreq(profile.shape[0])
    kernel = np.exp(-2 * np.pi**2 * sigma**2 * (fx[:, None] ** 2 + fx[None, :] ** 2))
    profile = np.fft.ifft2(np.fft.fft2(profile) * kernel).real
    profile = profile.reshape(side, fine, side, fine).mean(axis=(1, 3))
    profile /= profile.sum()
    flux_r = 10 ** (-0.4 * (galaxy.mag_r - NANOMAGGY_ZEROPOINT))
    fluxes = (flux_r * 10 ** (-0.4 * galaxy.g_r), flux_r, flux_r * 10 ** (0.4 * galaxy.r_i))
    sky = np.asarray(SDSS_SKY_SIGMA) * noise * pixel_scale / SDSS_PIXEL
    frames = np.stack([f * profile + rng.normal(0, s_, profile.shape) for f, s_ in zip(fluxes, sky)])
    return frames[:, ::-1].astype(np.float32)  # north up in the picture: the first FITS row is the bottom


def write_cutout(folder: str | Path, name: str, frames: np.ndarray, pixel_scale: float | None = 0.396, bands=BANDS) -> list[Path]:
    """Write ``frames`` (one per band) as ``folder/<name>_<band>.fits`` with a WCS header of ``pixel_scale`` arcsec
    (None: no WCS); returns the paths in band order."""
    return write_band_files(folder, name, frames, bands, pixel_scale)


__all__ = ["BANDS", "BLUE", "RED", "SDSS_SKY_SIGMA", "SurveyGalaxy", "galaxy_frames", "replace", "write_cutout"]
