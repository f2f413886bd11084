"""Evaluation report of a checkpoint: RMSE overall, per question and per answer, beside the
predict-the-training-mean baseline, with and without test-time augmentation.

    python -m gzoo.evaluate ckpt=PATH [split=val|test|train|all] [tta=[1,8]] [data.root=DIR | data.catalog=FILE] ...

The run's data module is rebuilt from its resolved config (<run_dir>/config.yaml, beside
checkpoints/; or config=PATH), so split=val is by construction exactly the part the run was
validated on: the same catalogue, limit, split and images left out. data.root=DIR scores another
labelled folder in the Kaggle layout (the 37 answers; a run trained on its own catalogue with its
own labels is refused: name a catalogue instead), data.catalog=FILE (with data.id_column,
data.file_column) a CSV or Parquet catalogue holding the run's label columns; either is scored
whole unless split= says otherwise. The report says how many of the galaxies scored were in the
run's training part (the same image file, or the same integer id). The baseline predicts, for
every galaxy, each column's mean over the run's training part. Unknown (empty) label cells are
left out of every RMSE. Every output folder is checked to be writable before anything is scored.

Each answer's spread (uncertainty=[dropout,views,both]; gzoo.uncertainty) is judged by how often its intervals
hold the true fraction: the coverage of the 68 % and 90 % intervals, overall and per question, cross-fitted
(scaled on one half of the galaxies, scored on the other), of the checkpoint's stated intervals, of the raw
spread as a Gaussian sigma, and of a constant width (the baseline).

Writes into out (default <run_dir>/eval/<split>, or <run_dir>/eval/<folder or catalogue>-<split>
for other data): report.json, report.md, rmse_per_answer.png, pred_vs_true.png, calibration.png
(expected against observed coverage), and tensorboard/ (`tensorboard --logdir <out>/tensorboard`); with
predictions=FILE.csv or FILE.parquet (the format by the extension) also each galaxy's predictions, the id then
the run's label columns (and with predictions_spread=true each answer's spread, Class1.1_std ...).

Answers known for fewer than 100 galaxies of the run's training split (gzoo.label_counts: the checkpoint's record, or
for an older checkpoint counted in the run's training split) are named in the report and the log, and the tree
inconsistency is given also over the questions whose answers and parent answer all rest on enough labels.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from gzoo import label_counts, schema
from gzoo.config import REQUIRED, option, run_tool
from gzoo.data import MISSING_LABEL_MODES, PARTS, GalaxyZooDataModule
from gzoo.data.split import split_mismatch, split_record
from gzoo.device import PRECISIONS
from gzoo.errors import GzooError
from gzoo.inference import id_column_name, predict_loader, tta_angles
from gzoo.io import atomic_open, output_lock, table_suffix, write_table
from gzoo.log import say
from gzoo.metrics import mean_prediction, rmse, rmse_table
from gzoo.module import load_net
from gzoo.schema import SEED_ANSWERS, answer_label
from gzoo.uncertainty import METHODS, SAMPLES, coverage_curve, coverage_rows, plot_coverage

OUTPUTS = ("report.json", "report.md", "rmse_per_answer.png", "pred_vs_true.png", "calibration.png", "tensorboard")


@dataclass
class OtherData:
    root: Path | None = option(None, "another labelled folder in the Kaggle layout (default: the run's data)")
    labels_csv: str | None = option(None, "its labels file (default: the run's)")
    images_dir: str | None = option(None, "its image folder (default: the run's)")
    catalog: Path | None = option(None, "a .csv or .parquet catalogue with an id column, a file column and the run's label columns, scored instead")
    id_column: str | None = option(None, "the catalogue's id column (default: the run's data.id_column)")
    file_column: str | None = option(None, "the catalogue's image file column (default: the run's data.file_column)")
    missing_labels: str | None = option(None, "error or mask: how its empty cells are read (default: the run's)", choices=(None, *MISSING_LABEL_MODES))


@dataclass
class EvaluateOptions:
    ckpt: Path = option(REQUIRED, "a checkpoint written by gzoo.train")
    split: str | None = option(None, "the part scored: val (default), test, train, or all (default for another folder)", choices=(None, *PARTS))
    tta: list[int] = option([1, 8], "the test-time augmentations compared (views per galaxy; see gzoo.inference)", low=1)
    out: Path | None = option(None, "the report folder (default <run_dir>/eval/<split>)")
    predictions: Path | None = option(None, "also write each galaxy's predictions (the largest tta) to this .csv or .parquet file (format by extension)")
    overwrite: bool = option(False, "replace an earlier report in out")
    data: OtherData = field(default_factory=OtherData)
    config: Path | None = option(None, "the run's config.yaml (default: beside the checkpoint's checkpoints/ folder)")
    batch_size: int = option(32, "galaxies per batch", low=1)
    num_workers: int = option(2, "DataLoader worker processes decoding images", low=0)
    device: str = option("auto", "auto (the GPU if there is one), cpu, cuda ...")
    precision: str = option("auto", "auto = bf16-mixed on a GPU that has it, else 32-true", choices=PRECISIONS)
    progress: bool = option(True, "show progress bars")
    uncertainty: list[str] = option(
        list(METHODS),
        "the answers' spreads whose intervals' coverage is reported, at each tta (views and both at tta >= 2); [] for none",
        valid=lambda v: all(m in METHODS for m in v),
        must=f"a list among {', '.join(METHODS)}",
    )
    samples: int = option(SAMPLES, "dropout samples per galaxy for the dropout and both spreads", low=2)
    predictions_spread: bool = option(False, "with predictions=, also the first uncertainty spread per answer (Class1.1_std ...) at the largest tta")


def read_run_config(ckpt: Path, config: Path | None) -> DictConfig:
    path = config or ckpt.parent.parent / "config.yaml"
    if not path.is_file():
        raise GzooError(f"run config {path} not found; evaluate reads the run's config.yaml (beside checkpoints/) to reproduce its split, or pass config=PATH.")
    return cast(DictConfig, OmegaConf.load(path))  # a run's config.yaml is a mapping


def checkpoint_record(ckpt: Path) -> dict | None:
    """The split record a checkpoint carries (gzoo.data.split.RecordSplit), or None (none, or not a checkpoint: load_net says so)."""
    if not ckpt.is_file():
        return None  # load_net says so in its own sentence
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True).get("gzoo_split")
    except Exception:
        return None  # not a checkpoint: load_net says so


def check_split(ckpt: Path, cfg: DictConfig, config: Path) -> None:
    """The run config describes the split the checkpoint was trained on (its record, see gzoo.data.split.RecordSplit),
    so that split=val scores galaxies the model never trained on; a checkpoint without a record is not checked."""
    record = checkpoint_record(ckpt)
    if record is None:
        return
    try:
        differs = split_mismatch(record, cfg.data)
    except OSError:
        return  # the labels file cannot be read: the data module says so
    if differs:
        raise GzooError(
            f"{config} does not belong to checkpoint {ckpt}: the checkpoint was trained with {differs}, so its split differs "
            "and split=val could score galaxies it trained on; pass config=<the config.yaml of the run that wrote it>."
        )


def locate_run_data(cfg: DictConfig, config: Path, ckpt: Path, given: dict) -> None:
    """The run's own data (its data.root, or data.catalog for a catalogue run) where its config says.

    A config may record a path relative to the folder training ran in. Found from here, it is read; not
    found, nothing is guessed: the user names the run's data with data.root= (data.catalog=), which then
    stands for the run's data (``given`` loses it) once its labels are those the checkpoint recorded.
    """
    key = "catalog" if cfg.data.get("catalog") else "root"
    recorded = Path(str(cfg.data[key])).expanduser()
    if recorded.is_absolute() or recorded.exists():
        return
    what = "catalogue" if key == "catalog" else "data folder"
    if key not in given:
        raise GzooError(
            f"{config} records data.{key}={recorded}, a path relative to the folder training ran in, and there is no {recorded} in {Path.cwd()}; "
            f"pass data.{key}=<the run's {what}> (or run from the folder training ran in)."
        )
    named = Path(given.pop(key)).expanduser().absolute()
    cfg.data[key] = str(named)
    record = checkpoint_record(ckpt)
    try:
        differs = record is not None and split_record(cfg.data)["labels_sha256"] != record.get("labels_sha256")
    except OSError:
        return  # no labels there: the data module says so
    if differs:
        assert record is not None  # differs needs one
        raise GzooError(
            f"{config} records data.{key}={recorded}, relative to the folder training ran in, and data.{key}={named} is not the run's {what} "
            f"(its labels differ from those checkpoint {ckpt} was trained on, in {record['root']}); pass data.{key}=<the run's {what}>, "
            "or run from the folder training ran in to score other data."
        )


def scored_data_overrides(cfg: DictConfig, given: dict) -> dict:
    """The data module options that read the data asked for (``given``: the data.* options set) in place of the run's.

    data.root (with labels_csv, images_dir) reads a folder in the Kaggle layout, so it can score only a run that
    learned the 37 gz2 answers; data.catalog reads a catalogue (its id and file columns default to the run's).
    """
    folder = [k for k in ("root", "labels_csv", "images_dir") if k in given]
    columns = [k for k in ("id_column", "file_column") if k in given]
    overrides = {"missing_labels": given["missing_labels"]} if "missing_labels" in given else {}
    if "catalog" in given:
        if folder:
            raise GzooError(f"data.catalog= scores a catalogue and data.{folder[0]}= a folder in the Kaggle layout; pass one of them, not both.")
        return overrides | {"layout": "catalog", "catalog": str(given["catalog"])} | {k: given[k] for k in columns}
    if columns:
        raise GzooError(f"data.{columns[0]}= names a column of data.catalog=; pass data.catalog=<the catalogue> too.")
    if not folder:
        return overrides
    if cfg.data.get("catalog"):  # a catalogue run: the folder is read in the Kaggle layout, never the run's catalogue
        labels = schema.label_columns(cast(list, OmegaConf.to_container(cfg.data.labels)) if isinstance(cfg.data.labels, ListConfig) else cfg.data.labels)
        if not schema.is_gz2(labels):
            raise GzooError(
                f"the run learned its own labels ({', '.join(labels)}) from catalogue {cfg.data.catalog}, and data.{folder[0]}= reads a folder in the "
                f"Kaggle layout (the 37 gz2 answers); pass data.catalog=<a catalogue with columns {cfg.data.id_column}, {cfg.data.file_column}, "
                f"{', '.join(labels)}> instead."
            )
        if "root" not in given:
            raise GzooError(
                f"the run read catalogue {cfg.data.catalog}, and data.{folder[0]}= names a file of a folder in the Kaggle layout; pass data.root=<that folder> too."
            )
        overrides |= {"layout": "kaggle", "catalog": None}
    return overrides | {k: str(given[k]) for k in folder}


def same_galaxies(a: GalaxyZooDataModule, b: GalaxyZooDataModule) -> bool:
    """Whether two data modules read the same catalogue (or labels file and image folder)."""
    if (a.catalog_path is None) != (b.catalog_path is None):
        return False
    if a.catalog_path is not None and b.catalog_path is not None:  # both or neither, by now
        return a.catalog_path.resolve() == b.catalog_path.resolve() and (a.id_column, a.file_column) == (b.id_column, b.file_column)
    return a.labels_path.resolve() == b.labels_path.resolve() and a.images_path.resolve() == b.images_path.resolve()


def count_in_training(data: GalaxyZooDataModule, ids: np.ndarray, run_data: GalaxyZooDataModule) -> int:
    """How many of ``ids`` (galaxies of ``data``) were in the run's training part: the same image file, or the same integer id
    (a Kaggle GalaxyID: gz2-sample's galaxies are gz2-2k's, in other files)."""
    train = run_data.ids("train").tolist()
    files = {run_data.paths[i].resolve() for i in train}
    numbers = {i for i in train if isinstance(i, int)}
    return sum(1 for i in ids.tolist() if (isinstance(i, int) and i in numbers) or data.paths[i].resolve() in files)


# ----------------------------------------------------------------------------- pictures


def plot_rmse_per_answer(results: dict, baseline: dict) -> Figure:
    """Grouped bars: RMSE per answer for each TTA setting and the baseline."""
    fig = Figure(figsize=(14, 4), layout="constrained")
    ax = fig.subplots()
    series = {f"model, tta={n}": r["per_answer"] for n, r in results.items()} | {"training mean": baseline["per_answer"]}
    width = 0.8 / len(series)
    columns = list(baseline["per_answer"])  # the 37 answers, or the run's own labels
    gz2 = schema.is_gz2(columns)
    x = np.arange(len(columns))
    for j, (name, per_answer) in enumerate(series.items()):
        ax.bar(x + (j - (len(series) - 1) / 2) * width, [per_answer[c] for c in columns], width, label=name)
    ax.set_xticks(x, [c[5:] if gz2 else c for c in columns], rotation=90, fontsize=8)
    ax.set_xlabel("answer (Class...)" if gz2 else "label")
    ax.set_ylabel("RMSE over known cells")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=len(series), frameon=False)
    return fig


def plot_pred_vs_true(pred: np.ndarray, true: np.ndarray, title: str, columns: list[str] | None = None) -> Figure:
    """Predicted against true fraction for the answers of the seed report's galleries (own labels: the first 8)."""
    columns = list(schema.COLUMNS) if columns is None else list(columns)
    shown = SEED_ANSWERS if schema.is_gz2(columns) else columns[:8]
    index = {c: i for i, c in enumerate(columns)}
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig = Figure(figsize=(3 * cols, 3 * rows), layout="constrained")
    fig.suptitle(title)
    for ax in fig.subplots(rows, cols, squeeze=False).ravel()[len(shown) :]:
        ax.set_axis_off()
    for ax, column in zip(fig.axes, shown):
        i = index[column]
        known = ~np.isnan(true[:, i])
        ax.scatter(true[known, i], pred[known, i], s=6, alpha=0.5)
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="true", ylabel="predicted")
        title = f"{textwrap.fill(answer_label(column) if column in schema.COLUMN_INDEX else column, 40)}\nRMSE {rmse(pred[:, i], true[:, i]):.3f}"
        ax.set_title(title if known.any() else f"{column}: no labels", fontsize=8)
    return fig


def _number(value: float, digits: int) -> str:
    return "–" if np.isnan(value) else f"{value:.{digits}f}"  # a dash where no cell was known


def in_training_sentence(d: dict) -> str:
    """What report.md and the log say of the galaxies scored that the run trained on."""
    n, total = d["in_training"], d["galaxies"]
    if n == 0:
        return f"none of the {total} galaxies scored was in the run's training part (matched by image file and integer id)"
    return (
        f"{n} of the {total} galaxies scored {'was' if n == 1 else 'were'} in the run's training part (the same image file or integer id), "
        "so their RMSE is not a score on unseen galaxies"
    )


def _tree(t: dict) -> str:
    return f"{_number(t['max_abs'], 3)} / {_number(t['mean_abs'], 4)}"


def thin_markdown(counts: dict | None) -> list[str]:
    """report.md's paragraph on the answers that rest on too few labels (none when there are none, or they are unknown)."""
    if not counts or not counts["thin"]:
        return []
    where = "as the checkpoint records" if counts["counted_from"] == "checkpoint" else "counted in the run's training split: the checkpoint records none"
    listed = ", ".join(f"{c} ({n})" for c, n in counts["thin"].items())
    well = counts.get("well_labelled_questions")
    tree = (
        f" The tree inconsistency is given over all questions, and over the {len(well)} questions whose answers and parent answer "
        f"rest on enough labels ({', '.join(well)}): a thin answer's number is mostly a guess, and so is its part of the tree's sums."
        if well
        else ""
    )
    return [
        "## Answers that rest on few labels",
        "",
        f"{len(counts['thin'])} of the {len(counts['known'])} answers had fewer than {counts['min_labels']} known values among the run's "
        f"{counts['train']} training galaxies ({where}): {listed}. The network predicts them all the same, mostly guessing; "
        "their RMSE here rests on the few known cells of this split, and `python -m gzoo.predict thin_labels=nan` writes them as NaN." + tree,
        "",
    ]


def write_markdown(path: Path, report: dict) -> None:
    d, base = report["data"], report["baseline"]
    ttas = list(report["model"])
    gz2 = schema.is_gz2(list(base["per_answer"]))  # the 37 answers: the tree and its questions; own labels: neither
    well = "well_labelled_questions" in report.get("label_counts", {})
    tree = (" tree inconsistency, max / mean abs |" + (" same, well-labelled questions |" if well else "")) if gz2 else ""
    seen = in_training_sentence(d)
    lines = [
        f"# Evaluation of {report['checkpoint']}",
        "",
        f"{d['galaxies']} galaxies ({d['known_cells']} known cells) of split `{d['split']}` in `{d.get('catalog') or d['root']}`; "
        f"baseline: each column's mean over the run's {report['baseline_galaxies']} training galaxies.",
        "",
        f"{seen[0].upper()}{seen[1:]}.",
        "",
        f"| predictions | RMSE |{tree} images/s |",
        "|---|---|" + ("---|" if gz2 else "") + ("---|" if gz2 and well else "") + "---|",
        *(
            f"| model, tta={n} | {r['rmse']:.5f} |"
            + (f" {r['tree_inconsistency']['max_abs']:.3f} / {r['tree_inconsistency']['mean_abs']:.4f} |" if gz2 else "")
            + (f" {_tree(r['tree_inconsistency_well_labelled'])} |" if gz2 and well else "")
            + f" {r['images_per_second']:.1f} |"
            for n, r in report["model"].items()
        ),
        f"| training mean | {base['rmse']:.5f} |" + (" |" if gz2 else "") + (" |" if gz2 and well else "") + " |",
        "",
        *thin_markdown(report.get("label_counts")),
    ]
    if gz2:
        lines += [
            "## RMSE per question",
            "",
            "| question | " + " | ".join(f"tta={n}" for n in ttas) + " | training mean |",
            "|---|" + "---|" * (len(ttas) + 1),
            *(
                f"| Q{q.number} {q.text} | "
                + " | ".join(_number(report["model"][n]["per_question"][f"Q{q.number}"], 4) for n in ttas)
                + f" | {_number(base['per_question'][f'Q{q.number}'], 4)} |"
                for q in schema.QUESTIONS
            ),
            "",
        ]
    else:
        lines += [
            "## RMSE per label",
            "",
            "| label | " + " | ".join(f"tta={n}" for n in ttas) + " | training mean |",
            "|---|" + "---|" * (len(ttas) + 1),
            *(
                f"| {c} | " + " | ".join(_number(report["model"][n]["per_answer"][c], 4) for n in ttas) + f" | {_number(v, 4)} |"
                for c, v in base["per_answer"].items()
            ),
            "",
        ]
    lines += ["![RMSE per answer](rmse_per_answer.png)", "", "![predicted against true](pred_vs_true.png)", ""]
    if "calibration" in report:
        lines += calibration_markdown(report["calibration"], gz2)
    with atomic_open(path) as f:
        f.write("\n".join(lines))


def _share(value: float | None) -> str:
    return "–" if value is None or np.isnan(value) else f"{value:.3f}"


def calibration_markdown(cal: dict, gz2: bool) -> list[str]:
    """report.md's section on the answers' intervals: coverage per spread and tta, then per question (or label)."""
    rows = cal["rows"]
    fitted = cal["calibrated_on"]
    stated = (
        f"the intervals gzoo.predict writes, from the checkpoint's calibration (fitted on the run's {fitted['split']} split, "
        f"{fitted['galaxies']} galaxies: on those galaxies this is not a test)"
        if fitted
        else "none: the checkpoint holds no calibration, so gzoo.predict writes spreads without intervals"
    )
    lines = [
        "## Uncertainty: how often each answer's interval holds the true fraction",
        "",
        "The share of known true vote fractions inside each answer's central 68 % and 90 % interval, every known cell counted once "
        "(an answer known for a few galaxies weighs little). *Cross-fitted*: the interval's scale fitted on one half of these galaxies "
        "and scored on the other half, and the other way round: the method's honest coverage. "
        f"*Stated*: {stated}. *±σ*: the raw spread read as a Gaussian sigma. *Widest quarter*: the 90 % coverage on the quarter of "
        f"known cells with the widest {rows[0]['spread']} spread (a constant width covers too few of them). Dropout samples: {cal['samples']}.",
        "",
        "| spread | tta | mean std | ±σ 68 % / 90 % | cross-fitted 68 % | cross-fitted 90 % | width of the 90 % | 90 % on the widest quarter | stated 68 % | stated 90 % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        x, g, st = r["cross_fitted"], r["gaussian"], r["stated"] or {}
        sigma = f"{_share(g['68'])} / {_share(g['90'])}" if g else "–"
        lines.append(
            f"| {r['spread']} | {r['tta']} | {r['mean_std']:.4f} | {sigma} | {_share(x['68']['overall'])} | "
            f"{_share(x['90']['overall'])} | {x['90']['width']:.3f} | {_share(x['90']['widest_quarter'])} | "
            f"{_share(st['68']['overall']) if st else '–'} | {_share(st['90']['overall']) if st else '–'} |"
        )
    per = "per_question" if gz2 else "per_answer"
    names = [f"Q{q.number}" for q in schema.QUESTIONS] if gz2 else list(rows[0]["cross_fitted"]["90"]["per_answer"])
    known = rows[0]["cross_fitted"]["90"]["known"]
    counts = {f"Q{q.number}": sum(known[c] for c in q.columns) for q in schema.QUESTIONS} if gz2 else known
    titles = {f"Q{q.number}": f"Q{q.number} {q.text}" for q in schema.QUESTIONS} if gz2 else {}
    lines += [
        "",
        f"Cross-fitted coverage (68 % / 90 %) per {'question' if gz2 else 'label'}; *known*: the known cells (a thin one is noisy, and "
        "an answer with fewer than 20 known values takes the scale of all answers):",
        "",
        f"| {'question' if gz2 else 'label'} | known | " + " | ".join(f"{r['spread']}, tta={r['tta']}" for r in rows) + " |",
        "|---|---|" + "---|" * len(rows),
        *(
            f"| {titles.get(name, name)} | {counts[name]} | "
            + " | ".join(f"{_share(r['cross_fitted']['68'][per][name])} / {_share(r['cross_fitted']['90'][per][name])}" for r in rows)
            + " |"
            for name in names
        ),
        "",
        "![coverage of the intervals](calibration.png)",
        "",
    ]
    return lines


# ----------------------------------------------------------------------------- the report


def evaluate(o: EvaluateOptions) -> dict:
    """Score ``o.ckpt`` on a labelled part; write the report files and return the report."""
    config = o.config or o.ckpt.parent.parent / "config.yaml"
    cfg = read_run_config(o.ckpt, o.config)
    given = {k: v for k, v in vars(o.data).items() if v is not None}
    locate_run_data(cfg, config, o.ckpt, given)
    check_split(o.ckpt, cfg, config)
    overrides = scored_data_overrides(cfg, given)

    def data_module(**options) -> GalaxyZooDataModule:
        return GalaxyZooDataModule.from_config(cfg.data, seed=cfg.seed, progress=o.progress, **options)

    run_data = data_module()
    data = data_module(**overrides) if overrides else run_data
    other = not same_galaxies(data, run_data)
    if other:  # all of the other data (not the run's limit); no crop cache written into it, nor one of the run's data made for its mean
        data, run_data = data_module(**overrides, limit=None, crop_cache=None), data_module(crop_cache=None)
    split = o.split or ("all" if other else "val")
    called = data.catalog_path.stem if data.catalog_path is not None else data.root.resolve().name
    out = o.out or o.ckpt.parent.parent / "eval" / (f"{called}-{split}" if other else split)

    # Every output checked before anything is scored: a wrong folder, or another evaluation writing it, ends here, not after the work.
    if o.predictions is not None:
        table_suffix(o.predictions, "predictions")
        if o.predictions.is_dir():
            raise GzooError(f"predictions={o.predictions} is a folder; give the file to write, e.g. predictions={o.predictions / 'predictions.csv'}.")
    with ExitStack() as held:
        held.enter_context(output_lock(out, "out", overwrite=True))  # the report's own files are checked next, under the lock
        if o.predictions is not None:
            held.enter_context(output_lock(o.predictions, "predictions", o.overwrite))
        if not o.overwrite and any((out / name).exists() for name in OUTPUTS):
            raise GzooError(f"{out} already holds an evaluation; pass overwrite=true to replace it, or out=<another folder>.")
        return _score(o, data, run_data, split, out)


def _score(o: EvaluateOptions, data: GalaxyZooDataModule, run_data: GalaxyZooDataModule, split: str, out: Path) -> dict:
    """Score the checkpoint on ``split`` of ``data`` (baseline: ``run_data``'s training mean); write the report into ``out``."""
    data.setup()
    ids, true = data.ids(split), data.labels(split)
    source = data.catalog_path or data.root
    if len(ids) == 0:
        raise GzooError(
            f"split={split} of {source} is empty (data.val_fraction={data.val_fraction}, data.test_fraction={data.test_fraction}); choose another split."
        )
    run_data.setup()
    net = load_net(o.ckpt, o.device).set_speed(channels_last=True)
    say(f"evaluating {o.ckpt} on {len(ids)} galaxies (split={split} of {source}), tta={','.join(map(str, o.tta))}")

    report: dict[str, Any] = {
        "checkpoint": str(o.ckpt),
        "timm_name": net.timm_name,
        "data": {
            "root": str(data.root),
            "labels_csv": data.labels_path.name,
            **({"catalog": str(data.catalog_path)} if data.catalog_path is not None else {}),
            "split": split,
            "galaxies": len(ids),
            "known_cells": int((~np.isnan(true)).sum()),
            "in_training": count_in_training(data, ids, run_data),  # the same image file or integer id as a training galaxy
        },
        "baseline_galaxies": len(run_data.ids("train")),
        "baseline": rmse_table(mean_prediction(run_data.train_mean(), len(ids)), true, data.columns),
        "ids": [i.item() if isinstance(i, np.generic) else i for i in ids],
        "model": {},
    }
    say(in_training_sentence(report["data"]))
    thin = thin_report(o.ckpt, run_data)
    well = label_counts.well_labelled_questions(thin["thin"])
    if thin["thin"]:
        report["label_counts"] = thin
        if schema.is_gz2(data.columns) and well:
            thin["well_labelled_questions"] = [f"Q{q.number}" for q in well]
        said = label_counts.sentence(thin["thin"], len(data.columns), thin["min_labels"])
        say(f"{said}: the report names them" + (f" and scores the tree also over the {len(well)} questions that rest on enough labels" if well else ""))
    preds, stds = {}, {}
    for n in o.tta:
        start = time.perf_counter()
        loader = data.loader(split, views=tuple(tta_angles(n)), batch_size=o.batch_size, num_workers=o.num_workers)
        methods = spreads_at(o.uncertainty, n, net.dropout_p)
        batches = list(predict_loader(net, loader, n, o.precision, o.progress, uncertainty=methods, samples=o.samples))
        preds[n] = np.concatenate([b["pred"] for b in batches])
        stds[n] = {m: np.concatenate([b["std"][m] for b in batches]) for m in methods}
        seconds = time.perf_counter() - start
        report["model"][str(n)] = rmse_table(preds[n], true, data.columns) | {"images_per_second": len(ids) / seconds}
        if schema.is_gz2(data.columns):  # the decision tree applies to the 37 answers only
            report["model"][str(n)]["tree_inconsistency"] = schema.tree_inconsistency(preds[n])
            if "well_labelled_questions" in report.get("label_counts", {}):  # thin answers' guesses left out of the tree's sums
                report["model"][str(n)]["tree_inconsistency_well_labelled"] = schema.tree_inconsistency(preds[n], well)
        say(f"tta={n}: RMSE {report['model'][str(n)]['rmse']:.5f} (training-mean baseline {report['baseline']['rmse']:.5f})")

    best = max(o.tta)
    if any(stds.values()):
        report["calibration"] = calibration_report(true, preds, stds, data.columns, net.calibration, o.samples)
        for row in report["calibration"]["rows"]:
            say(f"{row['spread']}, tta={row['tta']}: the 90 % interval covers {row['cross_fitted']['90']['overall']:.3f} of the known fractions (cross-fitted)")
    more = {"calibration": plot_calibration(true, preds, stds)} if "calibration" in report else {}
    write_report(out, report, preds[best], true, f"tta={best}, split={split}, {len(ids)} galaxies", more)
    say(f"report in {out} (report.md, report.json, PNGs, tensorboard/)")
    if o.predictions is not None:
        table = pd.DataFrame(preds[best], columns=data.columns)
        if o.predictions_spread and stds[best]:
            std = next(iter(stds[best].values()))
            table = pd.concat([table, pd.DataFrame(std, columns=[f"{c}_std" for c in data.columns])], axis=1)
        table.insert(0, id_column_name(list(report["ids"])), pd.Series(report["ids"], dtype=object).infer_objects())
        o.predictions.parent.mkdir(parents=True, exist_ok=True)
        say(f"predictions (tta={best}) of {len(ids)} galaxies in {write_table(table, o.predictions, 'predictions', float_format='%.6f')}")
    return report


def thin_report(ckpt: Path, run_data: GalaxyZooDataModule) -> dict:
    """How many known values each label had in the run's training split, and those below gzoo.label_counts.MIN_KNOWN
    ("thin"): the checkpoint's record, or for a checkpoint made before gzoo recorded it, counted from the run's
    training split (the one its baseline is the mean of; the same gzoo.label_counts.record training writes)."""
    counts, where = label_counts.of_checkpoint(ckpt), "checkpoint"
    if counts is None:
        counts, where = label_counts.record(run_data.columns, run_data.labels("train")), "training split"
    return {
        "counted_from": where,
        "min_labels": label_counts.MIN_KNOWN,
        "train": counts["train"],
        "known": dict(zip(counts["columns"], counts["known"])),
        "thin": label_counts.thin_columns(counts),
    }


def spreads_at(methods: list[str], tta: int, dropout: float) -> list[str]:
    """The spreads of ``methods`` that can be made at ``tta`` (views need two views, dropout a tail with dropout; both
    at tta=1 would be dropout again)."""
    return [m for m in methods if (m == "dropout" or tta >= 2) and (m == "views" or dropout > 0)]


def calibration_report(true: np.ndarray, preds: dict, stds: dict, columns: list[str], record: dict | None, samples: int) -> dict:
    """The coverage of each spread's intervals at each tta, and of a constant width (gzoo.uncertainty.coverage_rows)."""
    rows = []
    for n, by_method in stds.items():
        if by_method:
            rows += coverage_rows(true, preds[n], by_method, n, REPORTED_LEVELS, columns, record)
    fitted = {"split": record["split"], "galaxies": record["galaxies"]} if record else None
    return {"levels": list(REPORTED_LEVELS), "samples": samples, "calibrated_on": fitted, "rows": rows}


#: The levels (in %) of the intervals whose coverage the report gives.
REPORTED_LEVELS = (68, 90)


def plot_calibration(true: np.ndarray, preds: dict, stds: dict) -> Figure:
    """Expected against observed coverage at the largest tta with spreads: each spread's calibrated intervals (cross-fitted),
    its raw spread read as a Gaussian sigma (dashed), and a constant width."""
    n = max(k for k, v in stds.items() if v)
    curves = {}
    for method, std in stds[n].items():
        curves[f"{method}, calibrated (cross-fitted)"] = coverage_curve(true, preds[n], std, gaussian=False)
        curves[f"{method}, raw spread as a sigma"] = coverage_curve(true, preds[n], std, gaussian=True)
    curves["constant width (cross-fitted)"] = coverage_curve(true, preds[n], np.zeros_like(preds[n]), gaussian=False)
    return plot_coverage(curves, f"coverage of the answers' intervals, tta={n}")


def write_report(out: Path, report: dict, pred: np.ndarray, true: np.ndarray, title: str, more: dict[str, Figure] | None = None) -> None:
    """The report's files in ``out``, replacing an earlier report's; ``pred`` is drawn against ``true`` under ``title``;
    ``more``: other figures by name (calibration: the coverage of the answers' intervals)."""
    for name in OUTPUTS:
        shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "rmse_per_answer": plot_rmse_per_answer(report["model"], report["baseline"]),
        "pred_vs_true": plot_pred_vs_true(pred, true, title, list(report["baseline"]["per_answer"])),
        **(more or {}),
    }
    with SummaryWriter(str(out / "tensorboard")) as tb:
        tb.add_scalar("eval/rmse/baseline", report["baseline"]["rmse"])
        for n, r in report["model"].items():
            tb.add_scalar(f"eval/rmse/tta{n}", r["rmse"])
            if "tree_inconsistency" in r:
                tb.add_scalar(f"eval/tree_inconsistency_max/tta{n}", r["tree_inconsistency"]["max_abs"])
            if "tree_inconsistency_well_labelled" in r:
                tb.add_scalar(f"eval/tree_inconsistency_max_well_labelled/tta{n}", r["tree_inconsistency_well_labelled"]["max_abs"])
            for q, value in r["per_question"].items():
                tb.add_scalar(f"eval/rmse_{q}/tta{n}", value)
        for row in report.get("calibration", {}).get("rows", []):
            for level, table in row["cross_fitted"].items():
                tb.add_scalar(f"eval/coverage{level}/{row['spread'].replace(' ', '_')}_tta{row['tta']}", table["overall"])
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
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and np.isnan(value) else value


def main(argv: list[str] | None = None) -> int:
    return run_tool(evaluate, EvaluateOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
