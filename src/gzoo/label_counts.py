"""How many known labels each answer was trained on, and the answers that rest on too few of them ("thin").

Training records in every checkpoint, under "gzoo_label_counts", how many known (non-empty) values each label
column had in the run's training split: ``{"columns": [...], "known": [...], "train": galaxies}`` (gzoo.callbacks.
RecordLabelCounts). The network outputs a plausible number for every answer, also for one it learned from six
galaxies (gz2-2k's partial labels know Q3-Q5 and Q9-Q11 for 6 of 2,000), so an answer known fewer than
:data:`MIN_KNOWN` times is named: at the end of training, by gzoo.predict (which writes it as NaN with
thin_labels=nan), in gzoo.gallery's row titles and in gzoo.evaluate's report. A checkpoint made before gzoo
recorded the counts has none: its counts are unknown, and nothing is said or marked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from gzoo import schema

#: Known training values below which an answer rests on too few labels. With ~100 galaxies a vote fraction's
#: mean is known to about 0.01-0.03 (its spread is 0.1-0.3), and a mapping from images needs many more; below
#: it the network's number is mostly its guess. gzoo.predict's and gzoo.gallery's min_labels default to it.
MIN_KNOWN = 100
#: The checkpoint key of the record.
KEY = "gzoo_label_counts"
#: The Parquet schema metadata key (and the manifest key) under which gzoo.predict records the thin answers.
OUTPUT_KEY = "gzoo_thin_labels"


def record(columns: Sequence[str], labels: np.ndarray) -> dict:
    """The record of a training split: ``labels`` is its (galaxies, columns) array, NaN where a value is unknown."""
    labels = np.asarray(labels, dtype=np.float64)
    return {"columns": list(columns), "known": [int(n) for n in (~np.isnan(labels)).sum(axis=0)], "train": int(labels.shape[0])}


def of_checkpoint(ckpt: Mapping | str | Path, option: str | None = None) -> dict | None:
    """The record a checkpoint (a dict, or its file: read as gzoo.module.read_checkpoint reads it, ``option``
    naming it in an error) holds, or None: made before gzoo recorded the counts, or a record this gzoo cannot read."""
    if not isinstance(ckpt, Mapping):
        from gzoo.module import read_checkpoint

        ckpt = read_checkpoint(ckpt, option)
    found = ckpt.get(KEY)
    if not isinstance(found, Mapping):
        return None
    columns, known = found.get("columns"), found.get("known")
    if not isinstance(columns, list) or not isinstance(known, list) or len(columns) != len(known):
        return None
    return {"columns": [str(c) for c in columns], "known": [int(n) for n in known], "train": int(found.get("train", 0))}


def thin_columns(counts: Mapping | None, min_known: int = MIN_KNOWN) -> dict[str, int]:
    """The columns known fewer than ``min_known`` times in training, each with its count, in the record's order;
    empty when the counts are unknown (None)."""
    if not counts:
        return {}
    return {c: n for c, n in zip(counts["columns"], counts["known"]) if n < min_known}


def sentence(thin: Mapping[str, int], total: int, min_known: int) -> str:
    """``20 of 37 answers rest on fewer than 100 known training values (Class3.1, ...: 6 each)``: the thin answers,
    grouped by their counts (fewest first); when every one of several answers is thin, their range alone."""
    fewer = f"fewer than {min_known} known training values"
    if len(thin) == total > 1:
        low, high = min(thin.values()), max(thin.values())
        return f"all {total} answers rest on {fewer} ({low} each)" if low == high else f"all {total} answers rest on {fewer} ({low} to {high} each)"
    groups: dict[int, list[str]] = {}
    for column, n in thin.items():
        groups.setdefault(n, []).append(column)
    listed = "; ".join(f"{', '.join(names)}: {n}{' each' if len(names) > 1 else ''}" for n, names in sorted(groups.items()))
    if total == len(thin) == 1:
        ((column, n),) = thin.items()
        return f"{column} rests on {fewer} ({n})"
    return f"{len(thin)} of {total} answers {'rests' if len(thin) == 1 else 'rest'} on {fewer} ({listed})"


def output_record(thin: Mapping[str, int], min_known: int, written: str) -> dict:
    """What gzoo.predict records of the thin answers in its output (the parts' and the merged Parquet's metadata, the
    manifest): each with its count, the threshold, and how they were written (say: as predicted; nan: as NaN)."""
    return {"min_labels": int(min_known), "thin_labels": written, "thin": {str(c): int(n) for c, n in thin.items()}}


def well_labelled_questions(thin: Iterable[str]) -> list[schema.Question]:
    """The decision tree's questions whose answers and parent answer all rest on enough labels: the ones whose
    tree consistency means something (a thin answer's or parent's number is mostly a guess)."""
    thin = set(thin)
    return [q for q in schema.QUESTIONS if not thin & {*q.columns, *([q.parent] if q.parent else [])}]
