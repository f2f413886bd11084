"""The score: the masked loss and the masked RMSE (over every known value, never a mean of batches)."""

import math

import numpy as np
import pytest
import torch

from gzoo import schema
from gzoo.heads import tree_head
from gzoo.metrics import MaskedRMSE, baseline_rmse, masked_mse, rmse, rmse_table, tree_cross_entropy


def test_masked_cells_change_neither_loss_nor_metric():
    pred, target = torch.rand(6, 37), torch.rand(6, 37)
    mask = (torch.rand(6, 37) > 0.3).float()
    other = torch.where(mask.bool(), target, torch.rand(6, 37))  # differs only where mask is 0
    assert masked_mse(pred, target, mask) == masked_mse(pred, other, mask)
    a, b = MaskedRMSE(), MaskedRMSE()
    a.update(pred, target, mask), b.update(pred, other, mask)
    assert a.compute() == b.compute()
    assert masked_mse(pred, other, torch.ones_like(mask)) != masked_mse(pred, target, torch.ones_like(mask))


def test_rmse_is_over_all_values_of_the_epoch_not_a_mean_of_batches():
    rng = np.random.default_rng(1)
    metric, preds, targets, masks = MaskedRMSE(), [], [], []
    for n in (3, 11, 1):  # uneven batches: a mean of per-batch RMSEs would differ
        p, t, m = rng.random((n, 37)), rng.random((n, 37)), (rng.random((n, 37)) > 0.4).astype(float)
        metric.update(torch.tensor(p), torch.tensor(t), torch.tensor(m))
        preds.append(p), targets.append(t), masks.append(m)
    p, t, m = (np.concatenate(x) for x in (preds, targets, masks))
    expected = np.sqrt(((p - t) ** 2)[m == 1].mean())
    assert metric.compute().item() == pytest.approx(expected, rel=1e-12)
    per_batch = np.mean([np.sqrt(((a - b) ** 2)[c == 1].mean()) for a, b, c in zip(preds, targets, masks)])
    assert abs(per_batch - expected) > 1e-3  # the check above can tell the two apart
    empty = MaskedRMSE()
    empty.update(torch.tensor(p), torch.tensor(t), torch.zeros(p.shape))
    assert math.isnan(empty.compute().item())  # no known value: NaN, not 0


def test_numpy_rmse_leaves_out_nan_cells_and_the_table_splits_by_question():
    rng = np.random.default_rng(2)
    pred, true = rng.random((20, 37)), rng.random((20, 37))
    true[rng.random(true.shape) < 0.3] = np.nan
    known = ~np.isnan(true)
    assert rmse(pred, true) == pytest.approx(np.sqrt(((pred - true)[known] ** 2).mean()), rel=1e-12)
    assert math.isnan(rmse(pred, np.full_like(true, np.nan)))
    table = rmse_table(pred, true)
    assert table["rmse"] == rmse(pred, true)
    assert list(table["per_question"]) == [f"Q{q.number}" for q, _ in schema.question_slices()]
    assert list(table["per_answer"]) == schema.COLUMNS
    assert table["per_answer"]["Class1.1"] == pytest.approx(rmse(pred[:, 0], true[:, 0]))


def test_baseline_predicts_the_training_mean_for_every_galaxy():
    rng = np.random.default_rng(3)
    true, train_mean = rng.random((15, 37)), rng.random(37)
    assert baseline_rmse(train_mean, true) == pytest.approx(np.sqrt(((true - train_mean) ** 2).mean()), rel=1e-12)
    assert baseline_rmse(true.mean(axis=0), true) < baseline_rmse(train_mean, true)  # the mean is the best constant


def tree_consistent_target() -> torch.Tensor:
    """One galaxy's 37 Kaggle fractions, each question's answers summing to its parent column (or 1)."""
    answers = {
        1: (0.2, 0.7, 0.1), 2: (0.1, 0.6), 3: (0.2, 0.4), 4: (0.3, 0.3), 5: (0.0, 0.3, 0.3, 0.0), 6: (0.3, 0.7),
        7: (0.1, 0.1, 0.0), 8: (0.3, 0, 0, 0, 0, 0, 0), 9: (0.1, 0.0, 0.0), 10: (0.3, 0.0, 0.0), 11: (0.0, 0.3, 0, 0, 0, 0),
    }  # fmt: skip
    target = torch.tensor([v for q in schema.QUESTIONS for v in answers[q.number]], dtype=torch.float64)
    assert np.abs(schema.tree_residuals(target.numpy()[None])).max() < 1e-12
    return target


def test_soft_label_cross_entropy_equals_the_hand_computed_value():
    """Galaxy A: Q1, Q2 and Q6 known (Q3 half known, so left out); galaxy B: nothing known (not in the mean).
    The prediction is the tree head's: uniform shares everywhere except Q1, whose logits (ln 2, 0, 0) give (1/2, 1/4, 1/4).
    By hand: Q1 -(0.2 ln 1/2 + 0.7 ln 1/4 + 0.1 ln 1/4) = 1.8 ln 2; Q2 -(0.1 + 0.6) ln 1/2 = 0.7 ln 2 (its parent's 0.7
    weighs the distribution (1/7, 6/7)); Q6 -(0.3 + 0.7) ln 1/2 = ln 2. In all 3.5 ln 2, over one counted galaxy."""
    target = torch.stack([tree_consistent_target(), torch.rand(37, dtype=torch.float64)])
    mask = torch.zeros(2, 37, dtype=torch.float64)
    for name in ["Class1.1", "Class1.2", "Class1.3", "Class2.1", "Class2.2", "Class3.1", "Class6.1", "Class6.2"]:
        mask[0, schema.COLUMN_INDEX[name]] = 1
    raw = torch.zeros(2, 37, dtype=torch.float64)
    raw[:, 0] = math.log(2)
    pred = tree_head(raw)
    assert tree_cross_entropy(pred, target, mask).item() == pytest.approx(3.5 * math.log(2), rel=1e-9)
    # a tree-consistent prediction equal to the target scores less than the uniform one (each question's cross-entropy is
    # least at the volunteers' distribution), and the gradient reaches the raw outputs
    full = torch.ones(1, 37, dtype=torch.float64)
    raw_t = torch.zeros(1, 37, dtype=torch.float64, requires_grad=True)
    loss = tree_cross_entropy(tree_head(raw_t), target[:1], full)
    loss.backward()
    assert raw_t.grad is not None and raw_t.grad.abs().max() > 0
    assert tree_cross_entropy(target[:1], target[:1], full) < loss
