"""The Galaxy Zoo 2 decision tree: 11 questions, 37 answers, Kaggle column order.

This module is the one source of truth for the tree. Data loading, the model's
output head, the metrics and the tests all read it from here.

In the Kaggle table a later question's fractions are multiplied by the fraction
of the answer that led to it, so each question's answers sum to its parent
column (or to 1 for the two root questions, Q1 and Q6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gzoo.errors import GzooError


@dataclass(frozen=True)
class Question:
    number: int  # 1..11, as in the Kaggle column names ("Class<number>.<answer>")
    text: str
    answers: tuple[str, ...]
    parent: str | None  # the column whose value this question's answers sum to; None = sums to 1

    @property
    def columns(self) -> list[str]:
        return [f"Class{self.number}.{i + 1}" for i in range(len(self.answers))]


QUESTIONS: tuple[Question, ...] = (
    Question(1, "smooth, or features/disk, or star/artifact?", ("smooth", "features or disk", "star or artifact"), None),
    Question(2, "edge-on disk?", ("yes", "no"), "Class1.2"),
    Question(3, "bar through the centre?", ("yes", "no"), "Class2.2"),
    Question(4, "spiral arm pattern?", ("yes", "no"), "Class2.2"),
    Question(5, "bulge prominence", ("no bulge", "just noticeable", "obvious", "dominant"), "Class2.2"),
    # Kaggle renormalised Q6 to sum to 1 for every galaxy.
    Question(6, "anything odd?", ("yes", "no"), None),
    Question(7, "how rounded?", ("completely round", "in between", "cigar-shaped"), "Class1.1"),
    Question(8, "the odd feature", ("ring", "lens or arc", "disturbed", "irregular", "other", "merger", "dust lane"), "Class6.1"),
    Question(9, "bulge shape of the edge-on disk", ("rounded", "boxy", "no bulge"), "Class2.1"),
    Question(10, "how tightly wound are the arms?", ("tight", "medium", "loose"), "Class4.1"),
    Question(11, "how many arms?", ("1", "2", "3", "4", "more than four", "can't tell"), "Class4.1"),
)

#: The 37 answer columns in Kaggle order.
COLUMNS: list[str] = [c for q in QUESTIONS for c in q.columns]
#: The Kaggle header: the id column then the 37 answers.
ID_COLUMN = "GalaxyID"
HEADER: list[str] = [ID_COLUMN, *COLUMNS]
NUM_ANSWERS = len(COLUMNS)
assert NUM_ANSWERS == 37

#: column name -> 0-based index among the 37 answers
COLUMN_INDEX: dict[str, int] = {c: i for i, c in enumerate(COLUMNS)}


def label_columns(labels: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The label columns a run learns: ``gz2`` (or None) = the 37 Kaggle answers; a list = those columns, each in [0, 1]."""
    if labels is None or labels == "gz2":
        return list(COLUMNS)
    if isinstance(labels, str) or not all(isinstance(c, str) and c for c in labels) or not labels:
        raise GzooError(f"data.labels must be gz2 or a list of column names such as [is_bar,is_merger], got {labels!r}.")
    if len(set(labels)) != len(labels):
        raise GzooError(f"data.labels names a column twice: {list(labels)}.")
    return list(labels)


def is_gz2(columns: list[str] | tuple[str, ...]) -> bool:
    """Whether the columns are the 37 Kaggle answers, to which the decision tree applies (tree head, tree checks)."""
    return list(columns) == COLUMNS


def question_slices() -> list[tuple[Question, slice]]:
    """Each question with the slice of its answers among the 37 columns."""
    out, start = [], 0
    for q in QUESTIONS:
        out.append((q, slice(start, start + len(q.answers))))
        start += len(q.answers)
    return out


def parent_index(q: Question) -> int | None:
    """0-based column index of the question's parent answer (None for root questions)."""
    return None if q.parent is None else COLUMN_INDEX[q.parent]


def questions_parent_first() -> list[tuple[Question, slice]]:
    """Questions ordered so that every parent column is computed before its children."""
    done: set[str] = set()
    ordered: list[tuple[Question, slice]] = []
    pending = question_slices()
    while pending:
        for item in pending:
            q, _ = item
            if q.parent is None or q.parent in done:
                ordered.append(item)
                done.update(q.columns)
                pending.remove(item)
                break
        else:  # pragma: no cover - the table above is a tree
            raise ValueError("the decision tree has a cycle")
    return ordered


def tree_residuals(values: np.ndarray) -> np.ndarray:
    """Per galaxy and question, how far the answers' sum is from what the tree demands.

    ``values`` has shape (N, 37) (NaN allowed for unknown cells; a question with any
    unknown cell gets NaN). Returns shape (N, 11): sum(answers) - parent value (or - 1
    for the root questions Q1 and Q6).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != NUM_ANSWERS:
        raise ValueError(f"expected an array of shape (N, {NUM_ANSWERS}), got {values.shape}")
    out = np.empty((values.shape[0], len(QUESTIONS)))
    for j, (q, sl) in enumerate(question_slices()):
        target = 1.0 if q.parent is None else values[:, COLUMN_INDEX[q.parent]]
        out[:, j] = values[:, sl].sum(axis=1) - target
    return out


def tree_inconsistency(values: np.ndarray, questions: list[Question] | None = None) -> dict[str, float | dict[str, float]]:
    """Summary of how far a table of fractions is from tree-consistency.

    Returns ``max_abs`` (the worst |sum - parent| over all galaxies and questions),
    ``mean_abs`` and ``per_question`` (max |residual| per question, keyed "Q1".."Q11").
    Unknown (NaN) cells are ignored. A consistent table (real Kaggle rows) gives
    ``max_abs`` of about 1e-6. ``questions``: only those (default: all 11).
    """
    keep = [j for j, q in enumerate(QUESTIONS) if questions is None or q in questions]
    res = np.abs(tree_residuals(values))[:, keep]
    known = ~np.isnan(res)
    per_q = {f"Q{QUESTIONS[j].number}": float(res[known[:, i], i].max()) if known[:, i].any() else float("nan") for i, j in enumerate(keep)}
    return {
        "max_abs": float(res[known].max()) if known.any() else float("nan"),
        "mean_abs": float(res[known].mean()) if known.any() else float("nan"),
        "per_question": per_q,
    }


#: The answers whose galleries the seed report shows (its Figures 23-31 and more): galleries and evaluation plots.
SEED_ANSWERS = ("Class1.1", "Class1.3", "Class2.1", "Class3.1", "Class4.1", "Class5.1", "Class5.2", "Class5.4", "Class6.1", "Class11.1", "Class11.3")


def answer_label(column: str) -> str:
    """'Class4.1' -> 'Class4.1 spiral arm pattern? yes'."""
    question, answer = (int(n) for n in column.removeprefix("Class").split("."))
    q = QUESTIONS[question - 1]
    return f"{column} {q.text} {q.answers[answer - 1]}"
