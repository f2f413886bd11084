"""Output heads: turn the network's 37 raw outputs into vote fractions.

sigmoid  the paper's head: 37 independent sigmoids, each in (0, 1).
tree     the 2014 winner's head, tree-consistent by construction: a non-negative
         activation, each question's answers divided by their sum, then multiplied by
         the parent column's (already scaled) value, parents before children. The tree
         comes from :mod:`gzoo.schema` only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gzoo import schema


def tree_head(raw: torch.Tensor) -> torch.Tensor:
    """(N, 37) raw outputs -> (N, 37) fractions whose answers sum to their parent column (or 1)."""
    column: dict[str, torch.Tensor] = {}  # name -> (N, 1) finished value
    for q, sl in schema.questions_parent_first():
        # exp as the non-negative activation, divided by the group's sum: a softmax, which stays
        # exact for raw values of any size (ReLU or softplus can give a group of zeros).
        group = torch.softmax(raw[:, sl], dim=1)
        if q.parent is not None:
            group = group * column[q.parent]
        for i, name in enumerate(q.columns):
            column[name] = group[:, i : i + 1]
    return torch.cat([column[name] for name in schema.COLUMNS], dim=1)


HEADS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"sigmoid": torch.sigmoid, "tree": tree_head}
