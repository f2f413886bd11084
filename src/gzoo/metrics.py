"""The score: RMSE over every known value, as Kaggle computes it, and the predict-the-mean baseline.

sqrt(sum of squared errors / number of known cells), one number over all the galaxies and
answers counted, never a mean of per-batch or per-column RMSEs. Unknown cells (mask 0, or NaN
in a numpy table) are left out. :class:`MaskedRMSE` is the one implementation: training logs
it per epoch (summed across DDP processes), and :func:`rmse` and :func:`rmse_table` use it for
numpy tables (evaluation reports, the baseline).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from gzoo import schema


class MaskedRMSE(Metric):
    """RMSE over every known value seen since the last reset (NaN if none was known)."""

    full_state_update = False
    sum_sq: torch.Tensor  # states, made by add_state
    count: torch.Tensor

    def __init__(self):
        super().__init__()
        self.add_state("sum_sq", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        mask = mask.double()
        self.sum_sq += ((pred.double() - target.double()) ** 2 * mask).sum()
        self.count += mask.sum()

    def compute(self) -> torch.Tensor:
        return torch.where(self.count > 0, torch.sqrt(self.sum_sq / self.count.clamp_min(1)), torch.nan)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The training loss: mean squared error over the cells where mask is 1."""
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp_min(1)


def tree_cross_entropy(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The per-question soft-label cross-entropy (``optim.loss=soft_ce``, for the tree head's 37 answers).

    Each question's predicted answers, divided by their sum, are a distribution (the tree head's softmax
    over that question); the target's answers sum to the fraction of volunteers who were asked it (the
    parent's, 1 for Q1 and Q6). The loss is -sum over questions and answers of target x log(predicted
    share): each question's cross-entropy against the volunteers' answer distribution, weighted by the
    share of volunteers asked it. A question counts only where every one of its answers is known (mask 1);
    the sum is divided by the number of galaxies with at least one such question.
    """
    total = pred.new_zeros(())
    counted = torch.zeros(len(pred), dtype=torch.bool, device=pred.device)
    for _, sl in schema.question_slices():
        known = mask[:, sl].bool().all(dim=1)
        share = pred[:, sl] / pred[:, sl].sum(dim=1, keepdim=True).clamp_min(eps)
        ce = -(target[:, sl] * torch.log(share.clamp_min(eps))).sum(dim=1)
        total = total + torch.where(known, ce, torch.zeros_like(ce)).sum()
        counted |= known
    return total / counted.sum().clamp_min(1)


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    """RMSE of ``pred`` over the known (non-NaN) cells of ``true``; NaN where none is known."""
    true_t = torch.as_tensor(np.array(true, dtype=np.float64))
    known = ~torch.isnan(true_t)
    metric = MaskedRMSE()
    metric.update(torch.as_tensor(np.array(pred, dtype=np.float64)), true_t.nan_to_num(), known)
    return float(metric.compute())


def rmse_table(pred: np.ndarray, true: np.ndarray, columns: list[str] | None = None) -> dict:
    """:func:`rmse` overall, per question (the 37 Kaggle columns only) and per label column (default: the 37 answers)."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    columns = list(schema.COLUMNS) if columns is None else list(columns)
    questions = schema.question_slices() if schema.is_gz2(columns) else []
    return {
        "rmse": rmse(pred, true),
        "per_question": {f"Q{q.number}": rmse(pred[:, sl], true[:, sl]) for q, sl in questions},
        "per_answer": {c: rmse(pred[:, i], true[:, i]) for i, c in enumerate(columns)},
    }


def mean_prediction(train_mean: np.ndarray, n: int) -> np.ndarray:
    """The baseline's predictions for n galaxies: each column's training mean, for every galaxy."""
    return np.broadcast_to(np.asarray(train_mean, dtype=np.float64), (n, len(train_mean)))


def baseline_rmse(train_mean: np.ndarray, true: np.ndarray) -> float:
    """RMSE of predicting each column's training mean for every galaxy of ``true``."""
    return rmse(mean_prediction(train_mean, len(true)), true)
