"""How good with more data? The same training run (the gzoo.train options after ``--``) on nested subsets of the
training split, scored on the same validation galaxies, as a table and a picture.

    python -m gzoo.tools.learning_curve sizes=[250,500,1000,1600] out=outputs/learning_curve png=docs/learning_curve.png \\
        -- model=lite0 model.image_size=160 data.root=../shared/data/gz2-2k data.labels_csv=training_solutions_partial.csv \\
           data.missing_labels=mask data.val_fraction=0.2 phase=finetune phase.cache_features=true

Everything after ``--`` is passed to ``python -m gzoo.train`` as it is, once per size, with ``data.train_limit=N``
(N of the split's training galaxies, drawn by data.split_seed and nested: a smaller set lies inside a larger one;
the validation galaxies never change), ``name=curve_N`` and ``paths.output_root=<out>/runs``. A size whose run has
finished already (its metrics.json) is read, not trained again, and one stopped midway goes on from its last.ckpt
(resume=true), so a stopped curve is finished by rerunning the same command.

Writes <out>/learning_curve.csv (one row per size: the best val/rmse, the 8-view TTA score when the run made one,
the predict-the-training-mean baseline, epochs and the minutes of the launch that finished the run) and the picture (png=, default <out>/learning_curve.png):
val/rmse against training galaxies on log axes, with a power law through the points carried on to ``total`` galaxies
(61,578: the Kaggle training set) as a dotted line, labelled as the guide it is, not a measurement.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gzoo.config import option, run_tool
from gzoo.errors import GzooError
from gzoo.log import say


@dataclass
class LearningCurveOptions:
    sizes: list[int] = option(
        [250, 500, 1000, 1600],
        "training galaxies of each run (data.train_limit)",
        valid=lambda v: len(v) > 0 and min(v) >= 1,
        must="positive numbers, e.g. [250,500]",
    )
    out: Path = option(Path("outputs/learning_curve"), "where the runs (out/runs), the table and the picture go")
    png: Path | None = option(None, "the picture; null: <out>/learning_curve.png")
    total: int = option(61578, "the power law is carried on to this many training galaxies (the Kaggle training set)", low=1)


def runs_of(o: LearningCurveOptions, size: int) -> Path:
    return o.out / "runs" / f"curve_{size}"


def finished(o: LearningCurveOptions, size: int) -> dict | None:
    """The metrics.json of a size's finished run (there is one run folder per name: <model>/<phase>), or None."""
    found = sorted(runs_of(o, size).glob("*/*/metrics.json"))
    return json.loads(found[0].read_text()) if found else None


def train(o: LearningCurveOptions, size: int, train_args: list[str]) -> dict:
    """One gzoo.train run on ``size`` training galaxies (or the one that finished before); its metrics and minutes."""
    metrics = finished(o, size)
    if metrics is not None:
        say(f"{size} training galaxies: done before ({runs_of(o, size)}), val/rmse {metrics['val/rmse']:.5f}")
        return metrics
    command = [sys.executable, "-m", "gzoo.train", *train_args, f"data.train_limit={size}", f"name=curve_{size}", f"paths.output_root={o.out / 'runs'}"]
    command += go_on(o, size)
    say(f"{size} training galaxies: {' '.join(command[1:])}")
    start = time.monotonic()
    done = subprocess.run(command)
    if done.returncode != 0:
        raise GzooError(f"the run on {size} training galaxies stopped with status {done.returncode} (its own message is above); fix it and rerun this command.")
    metrics = finished(o, size)
    if metrics is None:
        raise GzooError(f"the run on {size} training galaxies ended without a metrics.json under {runs_of(o, size)}.")
    metrics["minutes"] = (time.monotonic() - start) / 60
    (next(runs_of(o, size).glob("*/*/metrics.json")).parent / "curve_minutes.txt").write_text(f"{metrics['minutes']:.2f}\n")
    return metrics


def go_on(o: LearningCurveOptions, size: int) -> list[str]:
    """What gzoo.train needs to go on with a size's run that was stopped before its metrics.json: resume=true from its
    last.ckpt (the same weights an uninterrupted run reaches), or overwrite=true when it stopped before saving one
    (gzoo.train keeps the feature cache); nothing for a size not started."""
    started = sorted(runs_of(o, size).glob("*/*/config.yaml"))
    if not started:
        return []
    if (started[0].parent / "checkpoints" / "last.ckpt").is_file():
        say(f"{size} training galaxies: the run in {started[0].parent} was stopped; continuing it from its last.ckpt (resume=true)")
        return ["resume=true"]
    say(f"{size} training galaxies: the run in {started[0].parent} was stopped before its first checkpoint; starting it again (overwrite=true)")
    return ["overwrite=true"]


def table_of(o: LearningCurveOptions, results: dict[int, dict]) -> pd.DataFrame:
    rows = []
    for size, m in sorted(results.items()):
        minutes_file = next(runs_of(o, size).glob("*/*/curve_minutes.txt"), None)
        minutes = m.get("minutes", float(minutes_file.read_text()) if minutes_file else float("nan"))
        rows.append(
            {
                "train_galaxies": size,
                "val_rmse": m["val/rmse"],
                "val_rmse_tta8": m.get("val/rmse_tta8", float("nan")),
                "baseline_rmse": m["val/rmse_baseline"],
                "epochs": m.get("epochs"),
                "minutes": round(minutes, 2),
            }
        )
    return pd.DataFrame(rows)


def power_law(sizes: np.ndarray, rmse: np.ndarray) -> tuple[float, float]:
    """(b, c) of rmse = b * N^-c, a least-squares line through log N and log rmse."""
    slope, intercept = np.polyfit(np.log(sizes), np.log(rmse), 1)
    return float(np.exp(intercept)), float(-slope)


def draw(table: pd.DataFrame, total: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, rmse = table["train_galaxies"].to_numpy(float), table["val_rmse"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.plot(n, table["baseline_rmse"], "s--", color="0.6", label="predict the training mean")
    ax.plot(n, rmse, "o-", color="C0", label="best val/rmse")
    if table["val_rmse_tta8"].notna().all():
        ax.plot(n, table["val_rmse_tta8"], "^-", color="C1", label="best checkpoint, 8-view TTA")
    for x, y in zip(n, rmse):
        ax.annotate(f"{y:.4f}", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    if len(n) >= 2:
        b, c = power_law(n, rmse)
        xs = np.geomspace(n.min(), total, 50)
        at = b * total**-c
        ax.plot(xs, b * xs**-c, ":", color="C0", label=f"power law through the points, {b:.3f}·N^-{c:.3f} (a guide)")
        ax.plot([total], [at], "o", mfc="none", color="C0")
        ax.annotate(f"{at:.4f} at {total:,} (extrapolated)", (total, at), textcoords="offset points", xytext=(-150, 8), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = matplotlib.ticker.FormatStrFormatter("%.2f")  # RMSE as 0.13, not 1.3 x 10^-1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("training galaxies")
    ax.set_ylabel("RMSE on the validation galaxies")
    ax.set_title(title, fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(o: LearningCurveOptions, train_args: list[str]) -> pd.DataFrame:
    o.out.mkdir(parents=True, exist_ok=True)
    results = {size: train(o, size, train_args) for size in sorted(set(o.sizes))}
    table = table_of(o, results)
    table.to_csv(o.out / "learning_curve.csv", index=False)
    png = o.png or o.out / "learning_curve.png"
    draw(table, o.total, png, textwrap.fill("gzoo.train " + " ".join(train_args), 120))
    print(table.to_string(index=False))
    say(f"the table: {o.out / 'learning_curve.csv'}; the picture: {png}")
    return table


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    return run_tool(lambda o: run(o, train_args), LearningCurveOptions, ours, __doc__)


if __name__ == "__main__":
    sys.exit(main())
