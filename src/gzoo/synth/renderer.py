"""The image of a synthetic galaxy, rendered from its true features with a small physical model.

Sersic bodies and bulges, exponential disks, bars, logarithmic spiral arms, the odd features
(ring, arcs, tails, mergers, dust lanes), stars and artifacts, in SDSS-like colours; then sky
and photon noise, foreground stars and background galaxies, a seeing blur, the asinh stretch of
SDSS colour images, and a 2x upsampling to the 424x424 Kaggle frame. The randomness of an image
comes from the galaxy's stream-1 generator, so images never change the labels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from gzoo.synth.features import (
    BOXY,
    DISTURBED,
    DUST,
    FLOCCULENT,
    IRREGULAR,
    LENS,
    MERGER,
    OTHER,
    RE_RANGE,
    RING,
    Galaxy,
    _rng,
)

SIZE = 424  # Kaggle image side
RES = 212  # render side; the render is upsampled 2x to SIZE
JPEG_QUALITY = 75  # about 13 KB a picture, like the Kaggle JPEGs

# Colours (R, G, B from SDSS i, r, g), mean 1: old stars yellowish, young stars blue.
OLD = np.array([1.3, 1.0, 0.7], np.float32)
DISK = np.array([1.05, 1.0, 0.95], np.float32)
YOUNG = np.array([0.7, 0.95, 1.35], np.float32)
STAR_COLOURS = (OLD, DISK, YOUNG, np.array([1.6, 0.9, 0.5], np.float32))

# Pixel centres of the render grid in 424-frame pixels, origin at the frame centre.
_AXIS = (np.arange(RES, dtype=np.float32) + 0.5) * (SIZE / RES) - SIZE / 2
_X, _Y = np.meshgrid(_AXIS, _AXIS)
# Squared spatial frequencies (cycles per render pixel) for FFT blurring.
PAD = 224  # FFT size: RES plus a margin against wrap-around, with small prime factors (fast)
_F2 = (np.fft.fftfreq(PAD)[:, None] ** 2 + np.fft.rfftfreq(PAD)[None, :] ** 2).astype(np.float32)


def _frame(x0: float, y0: float, angle: float, q: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along and across ``angle`` around (x0, y0); the across axis divided by q."""
    dx, dy = _X - x0, _Y - y0
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, (dy * c - dx * s) / q


def _sersic(r: np.ndarray, re: float, n: float) -> np.ndarray:
    """Sersic profile, 1 at r = re."""
    b = 2 * n - 1 / 3 + 0.009876 / n
    return np.exp(-b * ((r / re) ** (1 / n) - 1))


def _clumps(rng: np.random.Generator, cells: int, strength: float) -> np.ndarray:
    """Smooth random log-normal field of mean ~1: star-forming knots, irregular light."""
    small = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
    field = np.asarray(small.resize((RES, RES), Image.Resampling.BICUBIC))
    return np.exp(strength * field - strength**2 / 2)


def _add(img: np.ndarray, colour: np.ndarray, profile: np.ndarray, amount: float = 1.0) -> None:
    img += (amount * colour)[:, None, None] * profile


def _arms(rng: np.random.Generator, r, theta, g: Galaxy, h: float, start: float, start_angle: float) -> np.ndarray:
    """Logarithmic spiral arms in the disk plane (1 on an arm crest, 0 between arms).

    One arm passes through radius ``start`` at angle ``start_angle`` (the end of a bar).
    """
    m = int(rng.integers(3, 6)) if g.arms == FLOCCULENT else g.arms + (g.arms == 5) * int(rng.integers(0, 2))
    tan_pitch = np.tan(np.radians(g.pitch))
    wind = np.log(np.maximum(r, 1) / h) / tan_pitch
    phase = -m * (start_angle - np.log(start / h) / tan_pitch)
    pattern = (0.5 + 0.5 * np.cos(m * (theta - wind) + phase)) ** 2
    pattern *= 1 - np.exp(-((r / start) ** 2))  # arms begin outside the bulge or bar
    clumps = _clumps(rng, 30, 1.0 if g.arms == FLOCCULENT else 0.5)
    return pattern * (clumps**2 if g.arms == FLOCCULENT else clumps)


def _tail(rng: np.random.Generator, x0: float, y0: float, re: float) -> np.ndarray:
    """A curved tidal tail leaving the galaxy (a one-armed open spiral over part of a turn)."""
    dx, dy = _X - x0, _Y - y0
    r, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    sign = rng.choice([-1, 1])
    wind = sign * np.log(np.maximum(r, 1) / re) / np.tan(np.radians(rng.uniform(25, 40)))
    along = (0.5 + 0.5 * np.cos(theta - wind - rng.uniform(0, 2 * np.pi))) ** 6
    return along * np.exp(-r / (1.6 * re)) * (1 - np.exp(-((r / re) ** 2)))


def _body(g: Galaxy, rng: np.random.Generator) -> np.ndarray:
    """The galaxy itself (with its odd feature), linear flux in sky-noise units, shape (3, RES, RES)."""
    img = np.zeros((3, RES, RES), np.float32)
    x0, y0, re, sb = g.x, g.y, g.re, g.sb
    if g.odd == MERGER:  # the pair is centred between the two galaxies
        angle, sep = rng.uniform(0, 2 * np.pi), rng.uniform(0.9, 2.0) * re
        x0, y0 = x0 - 0.35 * sep * np.cos(angle), y0 - 0.35 * sep * np.sin(angle)
    xd, yd = _frame(x0, y0, g.pa, g.q)
    r = np.hypot(xd, yd)
    tint = rng.normal(0, 0.04, 3).astype(np.float32)  # each galaxy's colour differs a little

    if g.kind == "smooth":
        _add(img, OLD + tint, _sersic(r, re, g.sersic), sb)
    elif g.kind == "disk":
        h = re / 1.68  # exponential scale length
        amp = sb * np.exp(1.68) / np.sqrt(g.q)  # sb at re; inclined disks look brighter
        disk = np.exp(-r / h)
        if g.odd == IRREGULAR:  # lopsided clumpy light instead of an orderly disk
            ox, oy = rng.normal(0, 0.3 * re, 2)
            disk = np.exp(-np.hypot(*_frame(x0 + ox, y0 + oy, g.pa, g.q)) / h) * _clumps(rng, 24, 1.1) ** 1.5
            _add(img, YOUNG + tint, disk, amp * (0.6 + 0.4 * g.arm_contrast))
        else:
            _add(img, DISK + tint, disk, amp * (1 - 0.4 * g.arm_contrast))
        disk_light = disk.sum()
        start, start_angle = 0.6 * re, rng.uniform(0, 2 * np.pi)
        if g.bar:  # in the disk plane, along start_angle
            start *= rng.uniform(1.3, 2.0)
            c, s = np.cos(start_angle), np.sin(start_angle)
            xb, yb = xd * c + yd * s, yd * c - xd * s
            bar = np.exp(-((xb / start) ** 4) - (yb / (0.22 * start)) ** 2)
            _add(img, OLD + tint, bar, amp * 0.4 * g.bar * disk_light / bar.sum())
        if g.arms:
            arms = disk * _arms(rng, r, np.arctan2(yd, xd), g, h, start, start_angle)
            _add(img, YOUNG + tint, arms, amp * 2.0 * g.arm_contrast)
        if g.bt > 0:
            if g.edge_on and g.bulge_shape == BOXY:  # box/peanut: flat light inside a rounded box
                bx, by = _frame(x0, y0, g.pa, rng.uniform(0.5, 0.7))
                size = rng.uniform(0.35, 0.5) * re
                bulge = np.exp(-(((np.abs(bx) ** 4 + np.abs(by) ** 4) ** 0.25 / size) ** 3))
            else:
                rb = np.hypot(*_frame(x0, y0, g.pa, max(g.q, rng.uniform(0.7, 0.95))))
                bulge = _sersic(rb, max(rng.uniform(0.15, 0.25) * re, 2.0), g.sersic)
            _add(img, OLD + tint, bulge, amp * disk_light * g.bt / (1 - g.bt) / bulge.sum())
    else:
        _star_or_artifact(img, g, rng)
        return img

    ring_r = rng.uniform(1.3, 2.1) * re
    if g.odd == RING:
        ring = np.exp(-0.5 * ((r - ring_r) / (0.12 * ring_r)) ** 2) * _clumps(rng, 30, 0.4)
        _add(img, YOUNG, ring, sb * rng.uniform(0.6, 1.2))
    elif g.odd == LENS:  # one or two thin arcs around the galaxy
        rr, theta = np.hypot(_X - x0, _Y - y0), np.arctan2(_Y - y0, _X - x0)
        centre, span = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 0.7)
        for k, amount in enumerate((1.0, rng.choice([0.0, 0.5]))):
            dtheta = np.angle(np.exp(1j * (theta - centre - k * np.pi)))
            arc = np.exp(-0.5 * ((rr - ring_r * (1 - 0.3 * k)) / 2.5) ** 2 - 0.5 * (dtheta / span) ** 2)
            _add(img, YOUNG, arc, sb * 3 * amount)
    elif g.odd == DISTURBED:
        _add(img, 0.5 * (DISK + YOUNG), _tail(rng, x0, y0, re), sb * rng.uniform(2.0, 4.0))
        ox, oy = rng.normal(0, 0.5 * re, 2)
        _add(img, DISK, np.exp(-np.hypot(_X - x0 - ox, _Y - y0 - oy) / re), sb * 1.5)
    elif g.odd == OTHER:  # a polar structure across the main body
        px, py = _frame(x0, y0, g.pa + np.pi / 2 + rng.normal(0, 0.2), 0.12)
        _add(img, YOUNG, np.exp(-np.hypot(px, py) / (1.2 * re)), sb * rng.uniform(3, 5))
    elif g.odd == MERGER:
        x2, y2 = x0 + sep * np.cos(angle), y0 + sep * np.sin(angle)
        r2 = np.hypot(*_frame(x2, y2, rng.uniform(0, np.pi), rng.uniform(0.5, 1.0)))
        colour = OLD if rng.random() < 0.6 else 0.5 * (DISK + YOUNG)
        _add(img, colour, _sersic(r2, re * rng.uniform(0.45, 0.9), rng.uniform(1, 4)), sb * rng.uniform(0.7, 1.5))
        if rng.random() < 0.7:
            _add(img, DISK, _tail(rng, x0, y0, re), sb * rng.uniform(0.7, 1.5))
    elif g.odd == DUST:  # a dark lane along the major axis, reddening what it covers
        lx, ly = _frame(x0, y0, g.pa)
        width = max(0.05 * re if g.edge_on else 0.12 * re, 2.0)
        offset = rng.uniform(-0.5, 0.5) * width
        lane = np.exp(-0.5 * ((ly - offset) / width) ** 2 - (lx / (1.8 * re)) ** 4) * rng.uniform(0.6, 0.9)
        img *= 1 - np.array([0.8, 1.0, 1.15], np.float32)[:, None, None] * np.minimum(lane, 0.85)
    return img


def _star_or_artifact(img: np.ndarray, g: Galaxy, rng: np.random.Generator) -> None:
    """A bright star with halo and diffraction spikes, or an artifact over a faint galaxy."""
    dx, dy = _X - g.x, _Y - g.y
    r = np.hypot(dx, dy)
    if g.artifact:  # a satellite trail, or scattered light from a star off the frame, in one band
        angle = rng.uniform(0, np.pi)
        dist = dx * np.sin(angle) - dy * np.cos(angle)
        colour: np.ndarray = 0.5 * DISK + 0.5 * rng.permutation(np.array([1.9, 0.6, 0.5], np.float32))
        if rng.random() < 0.5:
            _add(img, colour, np.exp(-0.5 * (dist / rng.uniform(1.0, 2.0)) ** 2), g.sb * rng.uniform(0.4, 1.0))
        else:
            glow = np.exp(-np.maximum(dist, 0) / rng.uniform(80, 300)) * (dist > 0)  # sharp edge, slow fade
            _add(img, colour, glow, g.sb * rng.uniform(0.05, 0.15))
        _add(img, OLD, _sersic(r, rng.uniform(4, 8), 2.0), g.sb * 0.3)
        return
    colour = STAR_COLOURS[rng.integers(len(STAR_COLOURS))]
    _add(img, colour, np.exp(-0.5 * (r / rng.uniform(3, 6)) ** 2), g.sb * 40)
    _add(img, colour, (1 + (r / rng.uniform(6, 12)) ** 2) ** -2.0, g.sb * 5)
    length = rng.uniform(12, 40)
    spikes = np.exp(-np.abs(dy) / 1.2 - np.abs(dx) / length) + np.exp(-np.abs(dx) / 1.2 - np.abs(dy) / length)
    _add(img, colour, spikes, g.sb * rng.uniform(0.5, 2))


def _points(img: np.ndarray, rng: np.random.Generator, count: int, flux: tuple[float, float], width: float) -> None:
    """Add ``count`` sources at random places: stars (width 0: one pixel, the seeing blur shapes
    them) or small background galaxies (Gaussians of ``width`` render pixels)."""
    for _ in range(count):
        i, j = rng.integers(0, RES, 2)
        amount = np.exp(rng.uniform(np.log(flux[0]), np.log(flux[1])))
        colour = STAR_COLOURS[rng.integers(len(STAR_COLOURS))]
        if width == 0:
            img[:, i, j] += colour * amount
            continue
        reach = int(3 * width) + 1
        rows = slice(max(i - reach, 0), min(i + reach + 1, RES))
        cols = slice(max(j - reach, 0), min(j + reach + 1, RES))
        yy, xx = np.ogrid[rows, cols]
        stamp = np.exp(-((yy - i) ** 2 + (xx - j) ** 2) / (2 * width**2)) / (2 * np.pi * width**2)
        img[:, rows, cols] += (colour * amount)[:, None, None] * stamp


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """``img`` blurred by a Gaussian of ``sigma`` render pixels (FFT, zero-padded to PAD)."""
    spectrum = np.fft.rfft2(img, s=(PAD, PAD)) * np.exp(-2 * np.pi**2 * sigma**2 * _F2)
    return np.fft.irfft2(spectrum, s=(PAD, PAD))[:, :RES, :RES]


def _stretch(img: np.ndarray) -> np.ndarray:
    """Colour-preserving asinh stretch (Lupton et al. 2004, as for SDSS colour images) to 0..255."""
    soft, top = 6.0, 1500.0
    x = img.mean(axis=0) / soft
    x = np.where(np.abs(x) < 1e-6, 1e-6, x)
    scale = np.arcsinh(x) / x / (soft * np.arcsinh(top / soft))
    return np.clip(img * scale * 255, 0, 255)


NOISE, GAIN = 3.2, 2.0  # sky noise before the seeing blur; the light that doubles its variance
SKY_LEVEL = np.array([0.6, 0.65, 0.3], np.float32)


def render(g: Galaxy, seed: int, index: int) -> Image.Image:
    """The 424x424 RGB image of galaxy ``index`` (features ``g``) of the data set made with ``seed``."""
    rng = _rng(seed, index, 1)
    img = _body(g, rng)
    # Sky noise (smoothed by the seeing, like resampled survey images) plus photon noise.
    light = np.maximum(img.mean(axis=0), 0)
    sigma = rng.uniform(0.7, 1.3) * NOISE * np.sqrt(1 + light / GAIN)
    img += rng.standard_normal((3, RES, RES), dtype=np.float32) * sigma
    _points(img, rng, int(rng.poisson(3)), (40, 2500), 0)  # foreground stars
    _points(img, rng, int(rng.poisson(2)), (40, 600), rng.uniform(1.0, 2.5))  # background galaxies
    # Kaggle images are scaled to the galaxy's size, so small galaxies look blurrier.
    seeing = rng.uniform(0.7, 1.1) * np.sqrt(RE_RANGE[1] / max(g.re, RE_RANGE[0]))
    sky = _blur(img, seeing) + SKY_LEVEL[:, None, None]
    pixels = _stretch(sky).astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BICUBIC)


def jpeg_bytes(image: Image.Image) -> bytes:
    """JPEG encoding with fixed settings (deterministic for a given Pillow)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False)
    return buf.getvalue()
