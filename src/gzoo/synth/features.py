"""The true features of a synthetic galaxy: the :class:`Galaxy` dataclass, its constants, and sampling.

Galaxy ``index`` of the data set made with ``seed`` draws from its own generators
``default_rng([seed, index, stream])`` (:func:`_rng`): stream 0 gives its features and then
its volunteers' votes (gzoo.synth.volunteers), stream 1 its image (gzoo.synth.renderer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gzoo.schema import QUESTIONS

FIRST_ID = 100000  # GalaxyID of index 0

# Answer indices of the features (Kaggle order within their question).
ODD_NAMES = QUESTIONS[7].answers  # ring, lens or arc, disturbed, irregular, other, merger, dust lane
RING, LENS, DISTURBED, IRREGULAR, OTHER, MERGER, DUST = range(7)
ODD_PRIOR = (0.14, 0.08, 0.17, 0.14, 0.12, 0.25, 0.10)  # which odd feature a galaxy has
ODD_GUESS = (0.12, 0.08, 0.25, 0.18, 0.22, 0.10, 0.05)  # what a volunteer names when unsure
ROUNDED, BOXY, NO_BULGE = range(3)
RE_RANGE = (17.0, 50.0)  # half-light radius, pixels of the 424 frame (log-uniform)
SB_RANGE = (10.0, 60.0)  # surface brightness at the half-light radius, sky-noise units (log-uniform)
FLOCCULENT = 6  # Galaxy.arms: 0 none, 1-4, 5 "more than four", 6 fragmentary ("can't tell")


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
    f: dict[str, Any] = dict(
        kind=kind,
        artifact=False,
        x=x,
        y=y,
        pa=pa,
        re=re,
        sb=sb,
        q=1.0,
        sersic=float(rng.uniform(2, 4.5)),
        bt=1.0,
        edge_on=False,
        bulge_shape=ROUNDED,
        bar=0.0,
        arms=0,
        pitch=20.0,
        arm_contrast=0.0,
        odd=odd,
    )

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
