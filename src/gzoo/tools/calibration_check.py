"""How well calibrated are the answers' intervals? The table of gzoo.evaluate's calibration section for a run, and the
noise-image control, in one rerunnable command (the numbers in the README's "Uncertainty per answer").

    python -m gzoo.tools.calibration_check ckpt=outputs/unc/lite0/finetune/checkpoints/best.ckpt [out=outputs/calibration_check]

1. The checkpoint and its run's config.yaml are copied into out/ (the run is never written to). A checkpoint trained
   before gzoo calibrated its intervals is calibrated there as training does at its end (gzoo.train.calibrate:
   the dropout spread at tta=1, every spread at tta=8, on the run's validation split).
2. gzoo.evaluate scores the copy on the validation split at tta=1 and 8 with every spread: the coverage of the
   68 % and 90 % intervals, cross-fitted (scaled on one half of the galaxies, scored on the other: the honest number),
   of the stated intervals (in-sample on this split), of the raw spread read as a Gaussian sigma, and of a constant width.
3. The control: gzoo's Python API predicts ``controls`` validation galaxies and as many images of uniform noise
   (uncertainty=dropout, tta=1) and compares the mean width of their 90 % intervals; a calibrated interval widens on
   noise, a constant width cannot.

Prints the tables and writes them to out/calibration_check.md beside the evaluation (out/eval/val/).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from gzoo.config import REQUIRED, option, run_tool
from gzoo.errors import GzooError
from gzoo.log import say


@dataclass
class CalibrationCheckOptions:
    ckpt: Path = option(REQUIRED, "a checkpoint written by gzoo.train, with its run's config.yaml beside checkpoints/")
    out: Path = option(Path("outputs/calibration_check"), "where the copy, its evaluation and the tables go")
    controls: int = option(16, "validation galaxies and noise images in the control", low=1)
    num_workers: int = option(1, "DataLoader worker processes decoding images", low=0)
    overwrite: bool = option(False, "replace an earlier check in out")


def run(o: CalibrationCheckOptions) -> Path:
    from gzoo import evaluate as ev
    from gzoo.api import load
    from gzoo.data import GalaxyZooDataModule
    from gzoo.images import load_image
    from gzoo.train import calibrate

    config = o.ckpt.parent.parent / "config.yaml"
    if not o.ckpt.is_file() or not config.is_file():
        raise GzooError(f"ckpt={o.ckpt} must be a checkpoint with its run's config.yaml at {config}.")
    if (o.out / "calibration_check.md").exists() and not o.overwrite:
        raise GzooError(f"{o.out} already holds a check; pass overwrite=true to replace it, or out=<another folder>.")
    copy = o.out / "checkpoints" / "best.ckpt"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(o.ckpt, copy)
    shutil.copyfile(config, o.out / "config.yaml")
    cfg = OmegaConf.load(config)
    dm = GalaxyZooDataModule.from_config(cfg.data, seed=cfg.seed, progress=False)
    dm.setup()
    if torch.load(copy, map_location="cpu", weights_only=False).get("gzoo_calibration") is None:
        say(f"{o.ckpt} holds no calibration: calibrating the copy as training does at its end")
        calibrate(copy, dm, torch.device("cpu"), "32-true", tta8=True)

    report = ev.evaluate(ev.EvaluateOptions(ckpt=copy, tta=[1, 8], overwrite=True, device="cpu", num_workers=o.num_workers, progress=False))
    md = (o.out / "eval" / "val" / "report.md").read_text()
    section = md[md.index("## Uncertainty") :].split("![coverage")[0].strip()

    model = load(copy, device="cpu")
    galaxies = [load_image(dm.paths[i]) for i in dm.ids("val")[: o.controls].tolist()]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, g.shape, dtype=np.uint8) for g in galaxies]
    known = [c for c, n in report["calibration"]["rows"][0]["cross_fitted"]["90"]["known"].items() if n]
    widths = {}
    for name, images in (("validation galaxies", galaxies), ("uniform noise", noise)):
        table = cast(pd.DataFrame, model.predict(images, uncertainty="dropout", intervals=[90], num_workers=0, progress=False))  # no out: a table
        widths[name] = float(np.mean([(table[f"{c}_hi90"] - table[f"{c}_lo90"]).mean() for c in known]))
    ratio = widths["uniform noise"] / widths["validation galaxies"]
    lines = [
        f"# Calibration check of {o.ckpt}",
        "",
        section,
        "",
        f"## Control: the 90 % interval on noise (uncertainty=dropout, tta=1; mean width over the {len(known)} answers known in validation)",
        "",
        "| images | mean width of the 90 % interval |",
        "|---|---|",
        *(f"| {o.controls} {name} | {w:.3f} |" for name, w in widths.items()),
        "",
        f"Noise / galaxies: {ratio:.2f} (a constant width: 1.00).",
        "",
    ]
    text = "\n".join(lines)
    (o.out / "calibration_check.md").write_text(text)
    print(text)
    return o.out / "calibration_check.md"


def main(argv: list[str] | None = None) -> int:
    return run_tool(run, CalibrationCheckOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
