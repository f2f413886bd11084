"""Write a synthetic Galaxy Zoo 2 data set (gzoo.synth) in the Kaggle layout to the folder ``out``.

    python -m gzoo.synth out=DIR n_train=N n_test=M seed=S [overwrite=true] [workers=W] [progress=false]

The same options give the same files, byte for byte; a folder that already holds this very
data set is left as it is, and a different one is only replaced with overwrite=true.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gzoo.config import REQUIRED, option, run_tool
from gzoo.log import say
from gzoo.synth.writer import generate


@dataclass
class SynthOptions:
    out: Path = option(REQUIRED, "the folder to write the data set to")
    n_train: int = option(1000, "training galaxies (training_solutions_rev1.csv, images_training_rev1/)", low=1)
    n_test: int = option(200, "test galaxies after them (test_solutions_rev1.csv, images_test_rev1/)", low=0)
    seed: int = option(0, "the seed every feature, vote and image follows from", low=0)
    overwrite: bool = option(False, "replace a different data set already in out")
    workers: int = option(1, "processes rendering images (the files are the same)", low=1)
    progress: bool = option(True, "show a progress bar")


def synth(options: SynthOptions) -> Path:
    """Generate the data set the options describe and say where it is."""
    out = generate(
        options.out.expanduser(), options.n_train, options.n_test, options.seed, progress=options.progress, overwrite=options.overwrite, workers=options.workers
    )
    say(f"synthetic data set in {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_tool(synth, SynthOptions, argv, doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
