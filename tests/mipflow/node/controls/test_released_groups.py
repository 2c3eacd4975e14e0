"""Remainders that nest across releases (ADR 0051): a shown set less the shown sets inside it."""
from __future__ import annotations

import numpy as np

from mipflow.node.controls.released_groups import nested_remainders

TAB = 3


def keys(*ranges: range) -> np.ndarray:
    return np.array(sorted(set().union(*map(set, ranges))), dtype=np.uint64)


def test_a_new_coarse_bin_over_old_fine_bins_that_leave_a_small_remainder_is_hidden() -> None:
    """An earlier release showed fine bins of 10 and 8 rows inside a coarse bin of 19 (its third fine bin, 1 row,
    hidden): the coarse bin would give that 1."""
    old = [keys(range(0, 10)), keys(range(10, 18))]
    new = [("coarse", keys(range(0, 19))), ("other", keys(range(19, 40)))]
    assert nested_remainders(new, old, TAB) == {"coarse"}
    # 3 rows hidden inside: no small count
    assert nested_remainders([("coarse", keys(range(0, 21)))], old, TAB) == set()


def test_new_fine_bins_inside_an_old_coarse_bin_hide_their_smallest_when_the_rest_is_small() -> None:
    old = [keys(range(0, 30))]
    new = [("a", keys(range(0, 12))), ("b", keys(range(12, 28)))]  # 2 rows of the old bin hidden now
    assert nested_remainders(new, old, TAB) == {"a"}
    assert nested_remainders(new[:1], old, TAB) == set()  # 18 rows left: no small count


def test_a_release_s_own_cells_are_its_suppression_s_business() -> None:
    """New sets inside a new set (a bin and its level cells) are not compared here (the release's suppression
    holds them); old sets alone neither (released before, nothing new)."""
    assert nested_remainders([("bin", keys(range(0, 11))), ("bin F", keys(range(0, 10)))], [], TAB) == set()
    assert nested_remainders([], [keys(range(0, 11)), keys(range(0, 10))], TAB) == set()
