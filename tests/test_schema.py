import numpy as np
import pandas as pd
import pytest

from gzoo import schema
from tests.conftest import SAMPLE, random_fractions


def test_columns_in_kaggle_order():
    assert schema.NUM_ANSWERS == 37
    assert schema.HEADER[0] == "GalaxyID" and len(schema.HEADER) == 38
    assert schema.COLUMNS[:3] == ["Class1.1", "Class1.2", "Class1.3"]
    assert schema.COLUMNS[-1] == "Class11.6"
    # the 0-based column ranges of the reference table
    ranges = {q.number: (sl.start, sl.stop - 1) for q, sl in schema.question_slices()}
    assert ranges == {1: (0, 2), 2: (3, 4), 3: (5, 6), 4: (7, 8), 5: (9, 12), 6: (13, 14), 7: (15, 17), 8: (18, 24), 9: (25, 27), 10: (28, 30), 11: (31, 36)}


def test_parent_first_order_puts_parents_before_children():
    seen = set()
    for q, _ in schema.questions_parent_first():
        assert q.parent is None or q.parent in seen
        seen.update(q.columns)
    assert len(seen) == 37


def test_consistent_table_has_zero_residual_and_a_broken_one_does_not():
    values = random_fractions(50, np.random.default_rng(0))
    assert schema.tree_inconsistency(values)["max_abs"] < 1e-12
    values[3, schema.COLUMN_INDEX["Class10.2"]] += 0.2
    report = schema.tree_inconsistency(values)
    assert report["max_abs"] == pytest.approx(0.2)
    assert report["per_question"]["Q10"] == pytest.approx(0.2)
    assert report["per_question"]["Q1"] < 1e-12


@pytest.mark.skipif(not (SAMPLE / "training_solutions_rev1_6rows.csv").exists(), reason="the real gz2-sample is not at ../shared")
def test_real_kaggle_rows_are_tree_consistent():
    df = pd.read_csv(SAMPLE / "training_solutions_rev1_6rows.csv")
    assert list(df.columns) == schema.HEADER
    assert schema.tree_inconsistency(df[schema.COLUMNS].to_numpy())["max_abs"] < 1e-5
