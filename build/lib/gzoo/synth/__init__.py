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

The parts: ``features`` (the :class:`Galaxy` and its sampling), ``volunteers`` (the votes and
label rows), ``renderer`` (the images), ``writer`` (the data set folder), ``__main__`` (the
command line).
"""

from gzoo.synth.features import (
    BOXY,
    DISTURBED,
    DUST,
    FIRST_ID,
    FLOCCULENT,
    IRREGULAR,
    LENS,
    MERGER,
    NO_BULGE,
    ODD_NAMES,
    OTHER,
    RING,
    ROUNDED,
    Galaxy,
    sample_galaxy,
)
from gzoo.synth.renderer import SIZE, jpeg_bytes, render
from gzoo.synth.volunteers import sample_labels
from gzoo.synth.writer import PARAMS, PARTIAL, TEST_CSV, TEST_DIR, TRAIN_CSV, TRAIN_DIR, VERSION, generate, read_params

__all__ = [
    "BOXY",
    "DISTURBED",
    "DUST",
    "FIRST_ID",
    "FLOCCULENT",
    "IRREGULAR",
    "LENS",
    "MERGER",
    "NO_BULGE",
    "ODD_NAMES",
    "OTHER",
    "PARAMS",
    "PARTIAL",
    "RING",
    "ROUNDED",
    "SIZE",
    "TEST_CSV",
    "TEST_DIR",
    "TRAIN_CSV",
    "TRAIN_DIR",
    "VERSION",
    "Galaxy",
    "generate",
    "jpeg_bytes",
    "read_params",
    "render",
    "sample_galaxy",
    "sample_labels",
]
