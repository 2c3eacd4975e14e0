"""Filters on column arrays keep SQL's three-valued logic and refuse what they cannot do exactly (ADR 0049).

The equality of whole selections with the SQL read, operator by operator, is in ``test_snapshot.py``;
here the rules on small hand-made columns.
"""
from __future__ import annotations

import numpy as np
import pytest

from mipflow.node.query.masks import MaskColumn, Unsupported, filter_mask

from tests.mipflow.node.query.cases import MODEL, group, rule, where

NAN = float("nan")
AGE = np.array([50.0, NAN, 70.0, 64.0])
GRADE = np.array([0, -1, 2, 1])  # codes into the levels below; -1 missing
COLUMNS = {
    "age": MaskColumn(null=np.isnan(AGE), values=AGE),
    "grade": MaskColumn(null=GRADE < 0, codes=GRADE, levels=[1, 2, 3]),
    "score": MaskColumn(null=np.zeros(4, dtype=bool), values=np.array([0.0, 2.0 ** 53, 1.0, 2.0]), exact=False),
}


def column(var):
    if var.code not in COLUMNS:
        raise Unsupported(var.code)
    return COLUMNS[var.code]


@pytest.mark.parametrize("filters, expected", [
    pytest.param(where("age", "greater", 55), [False, False, True, True], id="comparison"),
    pytest.param(group("AND", rule("age", "greater", 55), negate=True), [True, False, False, False],
                 id="not-of-unknown-stays-unknown"),
    pytest.param(where("age", "not_between", [60, 65]), [True, False, True, False], id="not_between"),
    pytest.param(where("age", "is_null"), [False, True, False, False], id="is_null"),
    pytest.param(where("grade", "in", ["1", 3]), [True, False, True, False], id="in-levels"),
    pytest.param(where("grade", "not_equal", "1"), [False, False, True, True], id="not_equal-missing-unknown"),
    pytest.param(group("OR", rule("age", "is_null"), rule("grade", "equal", "3")), [False, True, True, False],
                 id="or-true-over-unknown"),
    pytest.param(group("OR", rule("age", "greater", 60), rule("grade", "equal", "1"), negate=True),
                 [False, False, False, False], id="not-or-with-unknown"),
    pytest.param(None, None, id="no-filter"),
])
def test_three_valued_logic(filters, expected):
    got = filter_mask(filters, MODEL, column)
    assert (got is None and expected is None) or got.tolist() == expected


SMALL = {"score": MaskColumn(null=np.zeros(2, dtype=bool), values=np.array([1.0, 2.0]))}


@pytest.mark.parametrize("filters, columns", [
    pytest.param(where("note", "equal", "plain"), COLUMNS, id="text-variable"),
    pytest.param(where("score", "equal", 2), COLUMNS, id="integers-beyond-2-53-in-the-column"),
    pytest.param(where("score", "less", 2 ** 60), SMALL, id="integer-operand-beyond-2-53"),
])
def test_what_is_not_exact_is_refused(filters, columns):
    def column(var):
        if var.code not in columns:
            raise Unsupported(var.code)
        return columns[var.code]

    with pytest.raises(Unsupported):
        filter_mask(filters, MODEL, column)
    if columns is SMALL:  # the same column with an operand float64 holds exactly
        assert filter_mask(where("score", "less", 2), MODEL, column).tolist() == [True, False]


def test_text_levels_never_equal_numbers():
    """SQLite: ``'1' = 1`` is false; a text level is not the number it spells."""
    text = {"grade": MaskColumn(null=np.zeros(2, dtype=bool), codes=np.array([0, 1]), levels=["1", 1])}
    got = filter_mask(where("grade", "equal", "1"), MODEL, lambda var: text[var.code])
    assert got.tolist() == [False, True]
