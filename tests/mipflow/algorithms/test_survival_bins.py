"""The survival merges (``mipflow.algorithms.survival_bins``): the scan that skips empty pieces is the
plain greedy scan, and the memo of :func:`nested_bins` answers what the merge would."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mipflow.algorithms import survival_bins
from mipflow.algorithms.survival_bins import _safe_runs, nested_bins, safe_bins


def plain_runs(columns: list[list[int]], min_count: int) -> list[int]:
    """The greedy scan written out piece by piece: close a bin as soon as every series' count in it is 0
    or >= min_count; merge a small remainder backwards; the last piece always closes."""
    def ok(values):
        return all(v == 0 or v >= min_count for v in values)

    closing, sums = [], []
    width = len(columns[0]) if columns else 0
    open_ = [0] * width
    for k, column in enumerate(columns):
        open_ = [a + b for a, b in zip(open_, column)]
        if ok(open_):
            closing.append(k)
            sums.append(open_)
            open_ = [0] * width
    while any(open_) and not ok(open_) and closing:
        closing.pop()
        open_ = [a + b for a, b in zip(open_, sums.pop())]
    if any(open_) or not closing or closing[-1] != len(columns) - 1:
        closing.append(len(columns) - 1)
    return closing


counts = st.integers(1, 4).flatmap(lambda width: st.lists(
    st.lists(st.one_of(st.just(0), st.just(0), st.integers(0, 7)), min_size=width, max_size=width),
    min_size=1, max_size=60))


@settings(max_examples=300, deadline=None)
@given(counts, st.integers(1, 12))
def test_the_scan_over_non_empty_pieces_is_the_plain_scan(columns, min_count) -> None:
    assert _safe_runs(columns, min_count) == plain_runs(columns, min_count)
    assert _safe_runs(np.asarray(columns), min_count) == plain_runs(columns, min_count)
    if len(columns[0]) >= 2:
        events, censored = [c[0] for c in columns], [c[1] for c in columns]
        ends, merged_events, merged_censored = safe_bins(events, censored, min_count)
        assert ends == plain_runs([[d, c] for d, c in zip(events, censored)], min_count)
        assert sum(merged_events) == sum(events) and sum(merged_censored) == sum(censored)


def test_the_memo_answers_what_the_merge_would_and_hands_out_copies() -> None:
    rng = np.random.default_rng(7)
    series = ((rng.random((3, 900)) < 0.05) * rng.integers(1, 5, (3, 900))).tolist()
    survival_bins._NESTED_MEMO.clear()
    first = nested_bins(series, 3)
    direct = tuple(list(v) for v in survival_bins._nested_bins(np.asarray(series, dtype=np.int64), 3, None))
    assert first == direct and len(first[0]) > 1
    first[0].append(-1)  # a caller changing its lists changes nothing the next caller gets
    again = nested_bins(series, 3)
    assert again[0][-1] == 899 and again == direct
    # the threshold and the allowed ends are part of the key
    coarser = nested_bins(series, 9)
    assert coarser != again and coarser == tuple(list(v) for v in survival_bins._nested_bins(
        np.asarray(series, dtype=np.int64), 9, None))
    allowed = again[0][::2] + [899]
    assert set(nested_bins(series, 3, allowed=allowed)[0]) <= set(allowed)
    # a full memo forgets its oldest answers and still answers right
    for k in range(survival_bins._NESTED_MEMO_SIZE + 5):
        nested_bins([[k % 4, 1, 0, 2]], 2)
    assert len(survival_bins._NESTED_MEMO) <= survival_bins._NESTED_MEMO_SIZE
    assert nested_bins(series, 3) == again
