"""Evaluation report of a checkpoint: RMSE overall, per question and per answer, beside the
predict-the-training-mean baseline, with and without test-time augmentation.

    python -m gzoo.evaluate ckpt=PATH [split=val|test|all] [tta=1,8] [out=DIR] [overwrite=false]
        [data.root=DIR] [data.labels_csv=NAME] [data.images_dir=NAME] [data.missing_labels=error|mask]
        [config=PATH] [batch_size=32] [num_workers=2] [device=auto] [progress=true]

The run's resolved config (<run_dir>/config.yaml, beside checkpoints/; or config=PATH)
gives the data and the split (data.split_seed, data.val_fraction, data.test_fraction,
data.limit), so split=val is exactly the part the run was validated on. data.root=DIR
evaluates another labelled folder in the Kaggle layout (all of it unless split= says
otherwise). The baseline predicts, for every galaxy, each column's mean over the run's
training part. Unknown (empty) label cells are left out of every RMSE.

Writes into out (default <run_dir>/eval/<split>, or <run_dir>/eval/<folder>-<split> for
another folder): report.json, report.md, rmse_per_answer.png, pred_vs_true.png, and
tensorboard/ (`tensorboard --logdir <out>/tensorboard`).
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from gzoo import cli, schema
from gzoo.data import MISSING_LABEL_MODES, read_catalog, split_ids
from gzoo.errors import GzooError
from gzoo.gallery import SEED_ANSWERS, answer_label
from gzoo.files import atomic_open
from gzoo.predict import load_module, predict_images
from gzoo.train import say

SPLITS = ("train", "val", "test", "all")
OUTPUTS = ("report.json", "report.md", "rmse_per_answer.png", "pred_vs_true.png", "tensorboard")


# ----------------------------------------------------------------------------- numbers


def rmse_table(pred: np.ndarray, true: np.ndarray) -> dict:
    """RMSE over the known (non-NaN) cells of ``true``: overall, per question and per answer.

    Each is one number over all its cells, as Kaggle scores (not a mean of smaller RMSEs);
    NaN where there is no known cell.
    """
    sq = (np.asarray(pred, dtype=np.float64) - true) ** 2  # NaN where true is unknown

    def rmse(cells: np.ndarray) -> float:
        return float(np.sqrt(np.nanmean(cells))) if np.isfinite(cells).any() else float("nan")

    return {
        "rmse": rmse(sq),
        "per_question": {f"Q{q.number}": rmse(sq[:, sl]) for q, sl in schema.question_slices()},
        "per_answer": {c: rmse(sq[:, i]) for i, c in enumerate(schema.COLUMNS)},
    }


def labelled_part(data: DictConfig, part: str) -> tuple[np.ndarray, np.ndarray]:
    """GalaxyIDs and labels (NaN = unknown) of one part of a labelled folder, split as training splits it."""
    catalog = read_catalog(Path(data.root) / data.labels_csv, data.missing_labels)
    if data.get("limit"):
        catalog = catalog.iloc[: data.limit]
    ids = catalog[schema.ID_COLUMN].to_numpy()
    if part != "all":
        ids = split_ids(ids, data.val_fraction, data.test_fraction, data.split_seed)[part]
    return ids, catalog.set_index(schema.ID_COLUMN).loc[ids, schema.COLUMNS].to_numpy()


def read_run_config(ckpt: Path, config: Path | None) -> DictConfig:
    path = config or ckpt.parent.parent / "config.yaml"
    if not path.is_file():
        raise GzooError(f"run config {path} not found; evaluate reads the run's config.yaml (beside checkpoints/) to reproduce its split, or pass config=PATH.")
    return OmegaConf.load(path)


# ----------------------------------------------------------------------------- pictures


def plot_rmse_per_answer(results: dict, baseline: dict) -> Figure:
    """Grouped bars: RMSE per answer for each TTA setting and the baseline."""
    fig = Figure(figsize=(14, 4), layout="constrained")
    ax = fig.subplots()
    series = {f"model, tta={n}": r["per_answer"] for n, r in results.items()} | {"training mean": baseline["per_answer"]}
    width = 0.8 / len(series)
    x = np.arange(schema.NUM_ANSWERS)
    for j, (name, per_answer) in enumerate(series.items()):
        ax.bar(x + (j - (len(series) - 1) / 2) * width, [per_answer[c] for c in schema.COLUMNS], width, label=name)
    ax.set_xticks(x, [c[5:] for c in schema.COLUMNS], rotation=90, fontsize=8)
    ax.set_xlabel("answer (Class...)")
    ax.set_ylabel("RMSE over known cells")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=len(series), frameon=False)
    return fig


def plot_pred_vs_true(pred: np.ndarray, true: np.ndarray, title: str) -> Figure:
    """Predicted against true fraction for the answers of the seed report's galleries."""
    cols = 4
    rows = -(-len(SEED_ANSWERS) // cols)
    fig = Figure(figsize=(3 * cols, 3 * rows), layout="constrained")
    fig.suptitle(title)
    for ax in fig.subplots(rows, cols, squeeze=False).ravel()[len(SEED_ANSWERS) :]:
        ax.set_axis_off()
    for ax, column in zip(fig.axes, SEED_ANSWERS):
        i = schema.COLUMN_INDEX[column]
        known = ~np.isnan(true[:, i])
        ax.scatter(true[known, i], pred[known, i], s=6, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true", ylabel="predicted")
        rmse = np.sqrt(np.mean((pred[known, i] - true[known, i]) ** 2)) if known.any() else np.nan
        ax.set_title(f"{textwrap.fill(answer_label(column), 40)}\nRMSE {rmse:.3f}" if known.any() else f"{column}: no labels", fontsize=8)
    return fig


def _number(value: float, digits: int) -> str:
    return "–" if np.isnan(value) else f"{value:.{digits}f}"  # a dash where no cell was known


def write_markdown(path: Path, report: dict) -> None:
    d, base = report["data"], report["baseline"]
    ttas = list(report["model"])
    lines = [
        f"# Evaluation of {report['checkpoint']}",
        "",
        f"{d['galaxies']} galaxies ({d['known_cells']} known cells) of split `{d['split']}` in `{d['root']}`; "
        f"baseline: each column's mean over the run's {report['baseline_galaxies']} training galaxies.",
        "",
        "| predictions | RMSE | tree inconsistency, max / mean abs | images/s |",
        "|---|---|---|---|",
        *(
            f"| model, tta={n} | {r['rmse']:.5f} | {r['tree_inconsistency']['max_abs']:.3f} / {r['tree_inconsistency']['mean_abs']:.4f} | {r['images_per_second']:.1f} |"
            for n, r in report["model"].items()
        ),
        f"| training mean | {base['rmse']:.5f} | | |",
        "",
        "## RMSE per question",
        "",
        "| question | " + " | ".join(f"tta={n}" for n in ttas) + " | training mean |",
        "|---|" + "---|" * (len(ttas) + 1),
        *(
            f"| Q{q.number} {q.text} | " + " | ".join(_number(report["model"][n]["per_question"][f"Q{q.number}"], 4) for n in ttas)
            + f" | {_number(base['per_question'][f'Q{q.number}'], 4)} |"
            for q in schema.QUESTIONS
        ),
        "",
        "![RMSE per answer](rmse_per_answer.png)",
        "",
        "![predicted against true](pred_vs_true.png)",
        "",
    ]
    with atomic_open(path) as f:
        f.write("\n".join(lines))


# ----------------------------------------------------------------------------- the report


def evaluate(
    ckpt: str | Path,
    split: str | None = None,
    tta: Sequence[int] = (1, 8),
    out: str | Path | None = None,
    overwrite: bool = False,
    data_root: str | None = None,
    data_labels_csv: str | None = None,
    data_images_dir: str | None = None,
    data_missing_labels: str | None = None,
    config: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Score ``ckpt`` on a labelled part; write the report files and return the report."""
    ckpt = Path(ckpt)
    cfg = read_run_config(ckpt, Path(config) if config else None)
    run_data = cfg.data
    data = run_data.copy()
    for key, value in (("root", data_root), ("labels_csv", data_labels_csv), ("images_dir", data_images_dir), ("missing_labels", data_missing_labels)):
        if value is not None:
            data[key] = str(value)
    other_folder = Path(data.root).resolve() != Path(run_data.root).resolve()
    split = split or ("all" if other_folder else "val")
    if split not in SPLITS:
        raise GzooError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    out = Path(out) if out else ckpt.parent.parent / "eval" / (f"{Path(data.root).name}-{split}" if other_folder else split)
    if not overwrite and any((out / name).exists() for name in OUTPUTS):
        raise GzooError(f"{out} already holds an evaluation; pass overwrite=true to replace it, or out=<another folder>.")

    ids, true = labelled_part(data, split)
    if len(ids) == 0:
        raise GzooError(f"split={split} of {data.root} is empty (data.val_fraction={data.val_fraction}, data.test_fraction={data.test_fraction}); choose another split.")
    images_dir = Path(data.root) / data.images_dir
    if not images_dir.is_dir():
        raise GzooError(f"image folder {images_dir} not found; set data.root and data.images_dir to the folder of <GalaxyID>.jpg files.")
    paths = [images_dir / f"{i}.jpg" for i in ids]  # an unreadable or missing one stops prediction, named
    train_ids, train_true = labelled_part(run_data, "train")
    mean = np.nan_to_num(np.nanmean(train_true, axis=0), nan=0.0)  # a column never known predicts 0
    module = load_module(ckpt, device)
    say(f"evaluating {ckpt} on {len(ids)} galaxies (split={split} of {data.root}), tta={','.join(map(str, tta))}")

    report = {
        "checkpoint": str(ckpt),
        "timm_name": module.hparams.timm_name,
        "data": {"root": str(data.root), "labels_csv": data.labels_csv, "split": split, "galaxies": len(ids), "known_cells": int((~np.isnan(true)).sum())},
        "baseline_galaxies": len(train_ids),
        "baseline": rmse_table(np.broadcast_to(mean, true.shape), true),
        "model": {},
    }
    preds = {}
    for n in tta:
        start = time.perf_counter()
        preds[n] = predict_images(module, paths, n, batch_size, num_workers, progress=progress)
        seconds = time.perf_counter() - start
        report["model"][str(n)] = rmse_table(preds[n], true) | {
            "tree_inconsistency": schema.tree_inconsistency(preds[n]),
            "images_per_second": len(ids) / seconds,
        }
        say(f"tta={n}: RMSE {report['model'][str(n)]['rmse']:.5f} (training-mean baseline {report['baseline']['rmse']:.5f})")

    best = max(tta)
    write_report(out, report, preds[best], true, f"tta={best}, split={split}, {len(ids)} galaxies")
    say(f"report in {out} (report.md, report.json, PNGs, tensorboard/)")
    return report


def write_report(out: Path, report: dict, pred: np.ndarray, true: np.ndarray, title: str) -> None:
    """The report's files in ``out``, replacing an earlier report's; ``pred`` is drawn against ``true`` under ``title``."""
    for name in OUTPUTS:
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "rmse_per_answer": plot_rmse_per_answer(report["model"], report["baseline"]),
        "pred_vs_true": plot_pred_vs_true(pred, true, title),
    }
    with SummaryWriter(str(out / "tensorboard")) as tb:
        tb.add_scalar("eval/rmse/baseline", report["baseline"]["rmse"])
        for n, r in report["model"].items():
            tb.add_scalar(f"eval/rmse/tta{n}", r["rmse"])
            tb.add_scalar(f"eval/tree_inconsistency_max/tta{n}", r["tree_inconsistency"]["max_abs"])
            for q, value in r["per_question"].items():
                tb.add_scalar(f"eval/rmse_{q}/tta{n}", value)
        for name, fig in figures.items():
            fig.savefig(out / f"{name}.png", dpi=100)
            with Image.open(out / f"{name}.png") as png:  # the PNG again rather than drawing the figure twice
                tb.add_image(f"eval/{name}", np.asarray(png.convert("RGB")), dataformats="HWC")
    write_markdown(out / "report.md", report)
    with atomic_open(out / "report.json") as f:  # last: its presence means the report is complete
        json.dump(_json_safe(report), f, indent=2, allow_nan=False)


def _json_safe(value):
    """NaN (no known cell) -> null, so that report.json is standard JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and np.isnan(value) else value


OPTIONS: cli.Options = {
    "ckpt": (cli.path, cli.REQUIRED),
    "split": (cli.choice(*SPLITS), None),
    "tta": (cli.integers(1), [1, 8]),
    "out": (cli.path, None),
    "overwrite": (cli.boolean, False),
    "data.root": (cli.path, None),
    "data.labels_csv": (str, None),
    "data.images_dir": (str, None),
    "data.missing_labels": (cli.choice(*MISSING_LABEL_MODES), None),
    "config": (cli.path, None),
    "batch_size": (cli.integer(1), 32),
    "num_workers": (cli.integer(0), 2),
    "device": (str, "auto"),
    "progress": (cli.boolean, True),
}


def main(argv: list[str] | None = None) -> int:
    return cli.run(evaluate, OPTIONS, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
