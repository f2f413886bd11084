"""Synthetic Galaxy Zoo 2 data: rendered galaxies voted on by virtual volunteers.

Every galaxy gets true features (smooth or disk or star, shape, bulge, bar, arms, an
odd feature); an image is rendered from them with a small physical model, and 30-50
virtual volunteers, who see the features through noise that grows as the galaxy gets
fainter and smaller, walk the GZ2 decision tree (gzoo.schema) and vote. The vote
fractions are weighted exactly as in the Kaggle table, so every row is tree-consistent.

The output has the Kaggle layout (training_solutions_rev1.csv, images_training_rev1/,
images_test_rev1/) plus test_solutions_rev1.csv (the test truth) and synth.json (the
parameters; written last, so its presence means the folder is complete).

    python -m gzoo.synth out=DIR n_train=N n_test=M seed=S [overwrite=true] [workers=W] [progress=false]

(defaults: n_train=1000 n_test=200 seed=0 workers=1). Python: ``generate(out, n_train, n_test, seed)``;
``sample_labels(n, seed)`` gives the features and label rows without rendering images.

Everything follows from the seed: galaxy ``index`` draws from its own generators
``default_rng([seed, index, stream])``, so the files are byte-for-byte reproducible.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from gzoo import cli
from gzoo.errors import GzooError
from gzoo.schema import COLUMN_INDEX, HEADER, ID_COLUMN, NUM_ANSWERS, QUESTIONS, questions_parent_first

#: Bump when the renderer or the vote model changes, so old folders no longer match.
VERSION = 1
SIZE = 424  # Kaggle image side
RES = 212  # render side; the render is upsampled 2x to SIZE
FIRST_ID = 100000  # GalaxyID of index 0
JPEG_QUALITY = 75  # about 13 KB a picture, like the Kaggle JPEGs

TRAIN_CSV = "training_solutions_rev1.csv"
TEST_CSV = "test_solutions_rev1.csv"
TRAIN_DIR = "images_training_rev1"
TEST_DIR = "images_test_rev1"
PARAMS = "synth.json"
PARTIAL = "synth.partial.json"  # our own marker while a run is in progress

# Answer indices of the features (Kaggle order within their question).
ODD_NAMES = QUESTIONS[7].answers  # ring, lens or arc, disturbed, irregular, other, merger, dust lane
RING, LENS, DISTURBED, IRREGULAR, OTHER, MERGER, DUST = range(7)
ODD_PRIOR = (0.14, 0.08, 0.17, 0.14, 0.12, 0.25, 0.10)  # which odd feature a galaxy has
ODD_GUESS = (0.12, 0.08, 0.25, 0.18, 0.22, 0.10, 0.05)  # what a volunteer names when unsure
ROUNDED, BOXY, NO_BULGE = range(3)
RE_RANGE = (17.0, 50.0)  # half-light radius, pixels of the 424 frame (log-uniform)
SB_RANGE = (10.0, 60.0)  # surface brightness at the half-light radius, sky-noise units (log-uniform)
FLOCCULENT = 6  # Galaxy.arms: 0 none, 1-4, 5 "more than four", 6 fragmentary ("can't tell")

# column -> (question number, answer index): how a question is reached from its parent
_ANSWER_OF = {c: (q.number, i) for q in QUESTIONS for i, c in enumerate(q.columns)}


@dataclass(frozen=True)
class Galaxy:
    """The true features of one synthetic galaxy (lengths in pixels of the 424 frame)."""

    kind: str  # "smooth", "disk" or "star" (star or artifact)
    artifact: bool  # for kind "star": an artifact (trail, scattered light) instead of a star
    x: float  # centre, relative to the frame centre
    y: float
    pa: float  # position angle of the major axis, radians
    re: float  # half-light radius
    sb: float  # surface brightness at re, in units of the sky noise
    q: float  # apparent axis ratio (minor/major)
    sersic: float  # Sersic index of the smooth body or the bulge
    bt: float  # bulge-to-total light (1 for smooth galaxies)
    edge_on: bool
    bulge_shape: int  # edge-on disks: ROUNDED, BOXY or NO_BULGE
    bar: float  # bar strength, 0 = no bar
    arms: int  # 0 none, 1-4, 5 more than four, FLOCCULENT
    pitch: float  # arm pitch angle, degrees
    arm_contrast: float  # 0..1, how strongly the arms stand out
    odd: int  # -1 none, else the Q8 answer index (RING ... DUST)
    visibility: float  # 0..1: how clearly volunteers can see it (bright and large = 1)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Generator for one galaxy: stream 0 = features and votes, 1 = the image."""
    return np.random.default_rng([seed, index, stream])


# ----------------------------------------------------------------------------- features


def _sample_features(rng: np.random.Generator) -> Galaxy:
    u = rng.random()
    kind = "star" if u < 0.03 else "smooth" if u < 0.46 else "disk"
    odd = int(rng.choice(7, p=ODD_PRIOR)) if kind != "star" and rng.random() < 0.22 else -1
    if odd == IRREGULAR:
        kind = "disk"
    re = float(np.exp(rng.uniform(np.log(RE_RANGE[0]), np.log(RE_RANGE[1]))))
    sb = float(np.exp(rng.uniform(np.log(SB_RANGE[0]), np.log(SB_RANGE[1]))))
    x, y = (float(v) for v in np.clip(rng.normal(0, 3, 2), -8, 8))
    pa = float(rng.uniform(0, np.pi))
    f = dict(kind=kind, artifact=False, x=x, y=y, pa=pa, re=re, sb=sb, q=1.0, sersic=float(rng.uniform(2, 4.5)),
             bt=1.0, edge_on=False, bulge_shape=ROUNDED, bar=0.0, arms=0, pitch=20.0, arm_contrast=0.0, odd=odd)

    if kind == "star":
        f.update(artifact=bool(rng.random() < 0.3), re=4.0, sb=float(rng.uniform(20, 60)), x=x / 2, y=y / 2)
    elif kind == "smooth":
        shape = rng.choice(3, p=(0.4, 0.45, 0.15))  # round, in between, cigar
        f["q"] = float(rng.uniform(*((0.8, 1.0), (0.48, 0.68), (0.2, 0.36))[shape]))
    else:
        edge_on = odd != IRREGULAR and rng.random() < (0.6 if odd == DUST else 0.18)
        if edge_on:
            shape = int(rng.choice(3, p=(0.45, 0.25, 0.30)))
            bt = (float(rng.uniform(0.15, 0.4)), float(rng.uniform(0.3, 0.5)), 0.0)[shape]
            # Kaggle frames scale with the galaxy's extent, which for an edge-on disk is its length.
            f.update(edge_on=True, bulge_shape=shape, bt=bt, q=float(rng.uniform(0.1, 0.24)), sersic=2.0, re=re * 1.3)
        else:
            cls = rng.choice(4, p=(0.15, 0.35, 0.35, 0.15))  # bulge: none, noticeable, obvious, dominant
            bt = float(rng.uniform(*((0.0, 0.03), (0.07, 0.15), (0.23, 0.38), (0.5, 0.7))[cls]))
            q = float(rng.uniform(0.65, 1.0) if odd == RING else rng.uniform(0.4, 1.0))
            f.update(bt=bt, q=q)
            if odd == IRREGULAR:
                f.update(bt=float(rng.uniform(0, 0.05)), arm_contrast=float(rng.uniform(0.3, 1.0)))
            else:
                if rng.random() < 0.3:
                    f["bar"] = float(rng.uniform(0.4, 1.0))
                if rng.random() < 0.75:
                    arms = int(rng.choice([1, 2, 3, 4, 5, FLOCCULENT], p=(0.08, 0.44, 0.15, 0.1, 0.08, 0.15)))
                    pitch_cls = rng.choice(3, p=(0.35, 0.4, 0.25))  # tight, medium, loose
                    pitch = float(rng.uniform(*((7, 13), (17, 23), (28, 40))[pitch_cls]))
                    f.update(arms=arms, pitch=pitch, arm_contrast=float(rng.uniform(0.3, 1.0)))

    # Volunteers see large, bright galaxies clearly; small, faint ones poorly.
    size = 1.0 if kind == "star" else np.clip(np.log(f["re"] / RE_RANGE[0]) / np.log(RE_RANGE[1] / RE_RANGE[0]), 0, 1)
    light = np.clip(np.log(f["sb"] / SB_RANGE[0]) / np.log(SB_RANGE[1] / SB_RANGE[0]), 0, 1)
    f["visibility"] = float(0.1 + 0.9 * np.sqrt(size * light))
    return Galaxy(**f)


def sample_galaxy(seed: int, index: int) -> Galaxy:
    """The true features of galaxy ``index`` of the data set made with ``seed``."""
    return _sample_features(_rng(seed, index, 0))


# ----------------------------------------------------------------------------- votes


def _featuredness(g: Galaxy) -> float:
    """How strongly the galaxy shows a disk or features: > 0 leans "features or disk"."""
    if g.kind == "smooth":
        return -0.8 + (0.6 if g.odd in (DISTURBED, IRREGULAR, MERGER) else 0.0)
    if g.edge_on:
        return 0.9
    structure = 0.3 + 1.0 * (1 - g.bt) + 0.3 * (g.arms > 0) + 0.2 * (g.bar > 0)
    return structure * (0.4 + 0.6 * g.visibility) - 0.2


def _vote(g: Galaxy, rng: np.random.Generator) -> np.ndarray:
    """The 37 Kaggle fractions from 30-50 virtual volunteers walking the decision tree."""
    n = int(rng.integers(30, 51))
    v = g.visibility
    # GZ2 down-weighted unreliable volunteers; most keep weight 1.
    weight = np.where(rng.random(n) < 0.8, 1.0, rng.uniform(0.2, 1.0, n))
    # Each volunteer's perception error: own skill times how hard the galaxy is to see.
    error = rng.uniform(0.5, 1.5, n) * (0.4 + 0.9 * (1 - v))

    def seen(value: float, scale: float) -> np.ndarray:
        return value + scale * error * rng.standard_normal(n)

    def chance(p: float) -> np.ndarray:
        return rng.random(n) < p

    def pick(truth: int, p_right: float, guess_p) -> np.ndarray:
        """The true answer with probability p_right, else a guess drawn from guess_p."""
        guess = rng.choice(len(guess_p), n, p=guess_p)
        return np.where(chance(p_right), truth, guess) if truth >= 0 else guess

    a = {}  # question number -> each volunteer's answer index (Kaggle order)
    if g.kind == "star":
        star, feat = chance(0.55 + 0.4 * v), -0.6
    else:  # compact faint galaxies are now and then taken for stars
        star, feat = chance(0.005 + 0.05 * (1 - v) ** 2), _featuredness(g)
    a[1] = np.where(star, 2, np.where(seen(feat, 1.3) > 0, 1, 0))  # smooth / features / star
    a[2] = np.where(seen(g.q, 0.15) < 0.3, 0, 1)  # edge-on: looks thin
    a[3] = np.where(chance(0.2 + 0.75 * g.bar * v if g.bar else 0.04 + 0.12 * (1 - v)), 0, 1)  # bar
    p_spiral = 0.25 + 0.7 * g.arm_contrast * (0.3 + 0.7 * v) if g.arms else 0.05 + 0.2 * (1 - v)
    a[4] = np.where(chance(p_spiral), 0, 1)  # spiral arms
    a[5] = np.digitize(seen(g.bt, 0.12), [0.05, 0.2, 0.45])  # bulge: none < noticeable < obvious < dominant
    a[6] = np.where(chance(0.4 + 0.55 * v if g.odd >= 0 else 0.04 + 0.15 * (1 - v)), 0, 1)  # anything odd
    a[7] = 2 - np.digitize(seen(g.q, 0.15), [0.42, 0.72])  # round / in between / cigar
    a[8] = pick(g.odd, 0.35 + 0.55 * v, ODD_GUESS)  # which odd feature
    shape = g.bulge_shape if g.edge_on else (ROUNDED if g.bt > 0.1 else NO_BULGE)
    a[9] = pick(shape, 0.45 + 0.5 * v, (0.5, 0.15, 0.35))  # edge-on bulge shape
    a[10] = np.digitize(seen(g.pitch, 10.0), [15, 25])  # tight < medium < loose
    if 1 <= g.arms <= 5:  # arm count: right, one off, or "can't tell"
        near = np.clip(g.arms - 1 + rng.choice([-1, 1], n), 0, 4)
        unsure = np.where(chance(0.5), near, 5)
        a[11] = np.where(chance(0.3 + 0.6 * v * g.arm_contrast), g.arms - 1, unsure)
    else:  # fragmentary or no arms: mostly "can't tell"
        a[11] = pick(5, 0.4 + 0.5 * v, (0.1, 0.35, 0.2, 0.15, 0.2))

    # Fractions among those who reached the question, times the parent column (Kaggle).
    row = np.zeros(NUM_ANSWERS)
    reached = {}
    for q, sl in questions_parent_first():
        if q.parent is None:
            mask = np.ones(n, bool)
        else:
            pq, pa = _ANSWER_OF[q.parent]
            mask = reached[pq] & (a[pq] == pa)
        reached[q.number] = mask
        total = weight[mask].sum()
        if total > 0:
            counts = np.bincount(a[q.number][mask], weights=weight[mask], minlength=len(q.answers))
            row[sl] = (1.0 if q.parent is None else row[COLUMN_INDEX[q.parent]]) * counts / total
    return np.minimum(row, 1.0)  # rounding can leave 1 + 1e-16


def _labels(seed: int, index: int) -> tuple[Galaxy, np.ndarray]:
    rng = _rng(seed, index, 0)
    g = _sample_features(rng)
    return g, _vote(g, rng)


def sample_labels(n: int, seed: int = 0, start: int = 0) -> tuple[list[Galaxy], pd.DataFrame]:
    """Features and Kaggle label rows of galaxies ``start .. start+n-1``, without images.

    The rows are the ones ``generate`` writes for the same seed and indices.
    """
    pairs = [_labels(seed, i) for i in range(start, start + n)]
    return [g for g, _ in pairs], _table(start, [row for _, row in pairs])


def _table(first: int, rows: list[np.ndarray]) -> pd.DataFrame:
    """Kaggle label table of the galaxies with indices first, first+1, ..."""
    table = pd.DataFrame(np.array(rows).reshape(len(rows), NUM_ANSWERS), columns=HEADER[1:])
    table.insert(0, ID_COLUMN, np.arange(FIRST_ID + first, FIRST_ID + first + len(rows), dtype=np.int64))
    return table


# ----------------------------------------------------------------------------- images

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
    field = np.asarray(small.resize((RES, RES), Image.BICUBIC))
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
        colour = 0.5 * DISK + 0.5 * rng.permutation(np.array([1.9, 0.6, 0.5], np.float32))
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
    return Image.fromarray(pixels).resize((SIZE, SIZE), Image.BICUBIC)


def jpeg_bytes(image: Image.Image) -> bytes:
    """JPEG encoding with fixed settings (deterministic for a given Pillow)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the data set


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_params(out: Path) -> dict | None:
    """The parameters of the complete synthetic data set in ``out`` (its synth.json), or None."""
    return _read_json(Path(out) / PARAMS)


def _make(job: tuple[int, int, str]) -> np.ndarray:
    """Label row of one galaxy; writes its image (runs in worker processes too)."""
    seed, index, folder = job
    g, row = _labels(seed, index)
    (Path(folder) / f"{FIRST_ID + index}.jpg").write_bytes(jpeg_bytes(render(g, seed, index)))
    return row


def _write_csv(path: Path, first: int, rows: list[np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _table(first, rows).to_csv(tmp, index=False, float_format="%.8g")  # 8 digits keep the tree sums within 1e-7
    os.replace(tmp, path)


def _run(jobs: list[tuple[int, int, str]], workers: int):
    """Label rows of the jobs, in order; images written on the way."""
    if workers == 1:
        yield from map(_make, jobs)
    else:  # spawn: safe even when the caller holds CUDA or threads
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            yield from pool.imap(_make, jobs, chunksize=16)


def _prepare(out: Path, params: dict, overwrite: bool) -> None:
    """Empty ``out`` of earlier outputs, refusing to replace a different data set unless ``overwrite``."""
    present = [name for name in (TRAIN_CSV, TEST_CSV, TRAIN_DIR, TEST_DIR, PARAMS, PARTIAL) if (out / name).exists()]
    unfinished_same = PARAMS not in present and _read_json(out / PARTIAL) == params
    if present and not overwrite and not unfinished_same:
        held = read_params(out)
        what = "synthetic, " + ", ".join(f"{k}={v}" for k, v in held.items()) if held else ", ".join(present)
        raise GzooError(f"{out} already holds a different data set ({what}); pass overwrite=true to replace it.")
    for name in present:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()


def generate(out: Path, n_train: int, n_test: int, seed: int = 0, progress: bool = True,
             overwrite: bool = False, workers: int = 1) -> Path:
    """Write a synthetic data set in the Kaggle layout to ``out`` and return ``out``.

    Galaxies 0 .. n_train-1 are the training set, the next n_test the test set; GalaxyID is
    100000 + index. If ``out`` already holds this very data set (same synth.json), nothing
    is written; a different one is only replaced with ``overwrite=True``. ``workers`` > 1
    renders in that many processes (same files).
    """
    out = Path(out)
    checks = (("n_train", n_train, 1), ("n_test", n_test, 0), ("seed", seed, 0), ("workers", workers, 1))
    for name, value, low in checks:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise GzooError(f"{name} must be an integer >= {low}, got {value!r}.")
    params = {"n_train": int(n_train), "n_test": int(n_test), "seed": int(seed), "version": VERSION}
    if read_params(out) == params:
        if progress:
            print(f"{out} already holds this synthetic data set; nothing to do.", file=sys.stderr)
        return out
    if out.exists() and not out.is_dir():
        raise GzooError(f"{out} is a file, not a folder.")
    _prepare(out, params, overwrite)
    for folder in (TRAIN_DIR, TEST_DIR):
        (out / folder).mkdir(parents=True)
    (out / PARTIAL).write_text(json.dumps(params))

    jobs = [(params["seed"], i, str(out / (TRAIN_DIR if i < n_train else TEST_DIR))) for i in range(n_train + n_test)]
    rows = []
    with tqdm(total=len(jobs), desc="synthetic galaxies", unit="img", disable=not progress) as bar:
        for row in _run(jobs, workers):
            rows.append(row)
            bar.update()

    _write_csv(out / TRAIN_CSV, 0, rows[:n_train])
    _write_csv(out / TEST_CSV, n_train, rows[n_train:])
    tmp = out / (PARAMS + ".tmp")
    tmp.write_text(json.dumps(params, indent=1) + "\n")
    os.replace(tmp, out / PARAMS)  # last: its presence means the folder is complete
    (out / PARTIAL).unlink()
    return out


# ----------------------------------------------------------------------------- command line

OPTIONS: cli.Options = {
    "out": (cli.path, cli.REQUIRED),
    "n_train": (cli.integer(1), 1000),
    "n_test": (cli.integer(0), 200),
    "seed": (cli.integer(0), 0),
    "overwrite": (cli.boolean, False),
    "workers": (cli.integer(1), 1),
    "progress": (cli.boolean, True),
}


def _generate_and_print(**args) -> None:
    print(generate(**args))


def main(argv: list[str] | None = None) -> int:
    return cli.run(_generate_and_print, OPTIONS, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
