"""The virtual volunteers: 30-50 of them see a galaxy's true features through noise, walk the
GZ2 decision tree (gzoo.schema) and vote; the vote fractions are weighted exactly as in the
Kaggle table, so every label row is tree-consistent.

Volunteers see large, bright galaxies clearly (``Galaxy.visibility`` near 1) and small, faint
ones poorly; their votes draw from the galaxy's stream-0 generator, after its features.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gzoo.schema import COLUMN_INDEX, HEADER, ID_COLUMN, NUM_ANSWERS, QUESTIONS, questions_parent_first
from gzoo.synth.features import (
    DISTURBED,
    FIRST_ID,
    IRREGULAR,
    MERGER,
    NO_BULGE,
    ODD_GUESS,
    ROUNDED,
    Galaxy,
    _rng,
    _sample_features,
)

# column -> (question number, answer index): how a question is reached from its parent
_ANSWER_OF = {c: (q.number, i) for q in QUESTIONS for i, c in enumerate(q.columns)}


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
    reached: dict[int, np.ndarray] = {}
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
