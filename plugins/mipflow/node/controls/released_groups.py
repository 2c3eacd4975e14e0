"""The rules on a release's groups, and the groups of a release whose small cells are suppressed (ADR 0051).

:func:`check_release_groups` holds the groups a step releases (:mod:`mipflow.node.controls.groups` derives them)
to the group threshold: against the cohort's rows outside them, the ledger's cohorts, every group released
before and in the chain (:func:`chain_groups`).  :func:`check_released_groups` is the control for a release that
suppresses its small cells rather than being refused (a histogram's bins, ``ReleasedGroups.suppressed``): after
the release check it

* **hides the remainders that nest across releases** (:func:`nested_remainders`): the bins of histograms of one
  variable nest on a public grid (``multiple_histograms.GRID_BINS``), so a bin shown now may hold bins an earlier
  release showed (its rows outside them: the earlier release's hidden cells), or an earlier bin may hold bins
  shown now.  A set of rows shown by one release less the sets inside it shown by any (the same variable's
  groups, in :meth:`GroupMemory.of_column`) that leaves 1 .. ``nfilter_tab - 1`` rows would give their count:
  the new release hides its set (or the smallest of its own sets inside the earlier one) instead, re-suppressed
  consistently (:func:`mipflow.node.controls.suppression.suppress_histograms`), until none is left;
* drops the cells the checked aggregates hide and every margin over a hidden cell, then applies the rules to
  what is left; :func:`mipflow.node.controls.groups.remember_groups` keeps exactly that.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mipflow.node.controls.group_stamps import refuse_corrected_groups
from mipflow.node.controls.groups import Group, GroupRelease, _fresh, check_complement, kind_of
from mipflow.node.controls.ledger import _overlap, sorted_unique

if TYPE_CHECKING:
    from mipflow.node.controls.chain import ChainSet
    from mipflow.node.controls.epochs import Current

#: At most this many rounds of :func:`nested_remainders` (each hides at least one more cell).
NESTED_ROUNDS = 64


def check_released_groups(request: Any, context: Any, work: Any) -> None:
    """Control (after ``check_release``): the groups of a release whose small cells are suppressed rather
    than refused (histogram bins, ADR 0051), with the remainders nested across releases hidden too
    (:func:`hide_nested`), less the cells the aggregates hide (``Algorithm.hidden_cells``) and the margins over
    any of those, held as :func:`mipflow.node.controls.groups.check_groups` holds every other release's; what is
    left is what :func:`mipflow.node.controls.groups.remember_groups` keeps."""
    release = work.groups
    if work.explore is not None or release is None or not release.suppressed:
        return
    if context is not None and work.settings.differencing_check and work.study is None:
        hide_nested(context.differencing.groups, request.analysis, work, release)
    hidden = [frozenset(map(tuple, cell)) for cell in work.algo.hidden_cells(work.aggregates, request.analysis,
                                                                                work.model)]
    kinds = {kind_of(release.groups[0].data_model, cell) for cell in hidden} if release.groups else set()

    def shown(group: Group) -> bool:
        if group.cell:
            return group.kind not in kinds
        pairs = frozenset(map(tuple, json.loads(group.kind)[1]))
        return not any(pairs <= cell for cell in hidden)

    work.groups = release = replace(release, groups=tuple(g for g in release.groups if shown(g)))
    if not work.settings.differencing_check or work.study is not None or not release.groups:
        return
    epoch, current, fresh = _fresh(context, work)
    check_release_groups(context.differencing, work, release, fresh, epoch, current)


def nested_remainders(new: Sequence[tuple[str, np.ndarray]], old: Sequence[np.ndarray], tab: int) -> set[str]:
    """The kinds of ``new`` sets (a release's shown groups of one column: ``(kind, sorted row keys)``) to hide so
    that no set shown by a release (new or ``old``: remembered groups of the column) less the sets of either inside
    it holds 1 .. ``tab - 1`` rows, where new and old sets meet (a release's own sets are its suppression's
    business): a new set with a small remainder is hidden, an old one has the smallest new set inside it hidden.
    One round; the caller re-suppresses and asks again.  A remainder of overlapping sets is not a count anyone
    can form exactly: taking it as one is stricter, never looser."""
    sets = [(kind, rows, True) for kind, rows in new if len(rows)] + [(None, rows, False) for rows in old if len(rows)]
    order = sorted(range(len(sets)), key=lambda i: len(sets[i][1]))
    hide: set[str] = set()
    for i in order:
        kind, rows, is_new = sets[i]
        inside = [j for j in order if len(sets[j][1]) < len(rows) and _overlap(sets[j][1], rows) == len(sets[j][1])]
        news = [j for j in inside if sets[j][2]]
        # the sets of the other side inside it (a release's own cells less its other cells: its suppression's),
        # then those of both sides
        other = [j for j in inside if sets[j][2] != is_new]
        for family in (other, inside if other else []):
            if not family:
                continue
            rest = len(rows) - len(sorted_unique(np.concatenate([sets[j][1] for j in family])))
            if 0 < rest < tab:
                if is_new:
                    hide.add(str(kind))
                else:
                    hide.add(str(sets[min(news, key=lambda j: (len(sets[j][1]), str(sets[j][0])))][0]))
                break
    return hide


def hide_nested(memory: Any, analysis: Any, work: Any, release: GroupRelease) -> None:
    """Hide, in ``work.aggregates``, the cells :func:`nested_remainders` names, re-suppressed consistently with
    every cell's true count (the release's groups), until it names none (ADR 0051).  A release without
    ``cell_pairs`` (its cells' (variable, level) pairs in its aggregates' order) is left as it is."""
    from mipflow.node.controls.suppression import suppress_histograms

    pairs_of = getattr(work.algo, "cell_pairs", None)
    if pairs_of is None or not release.groups or not analysis.y:
        return
    data_model, column = release.groups[0].data_model, analysis.y[0]
    layout = [[kind_of(data_model, pairs) for pairs in record] for record in pairs_of(work.aggregates, analysis,
                                                                                      work.model)]
    sizes = {g.kind: len(g.rows) for g in release.groups}
    rows = {g.kind: g.rows for g in release.groups}
    counts = [[sizes.get(kind, 0) for kind in record] for record in layout]
    old = memory.of_column(data_model, column)
    if not old:
        return
    tab = int(work.settings.nfilter_tab)
    forced: set[str] = set()
    for _ in range(NESTED_ROUNDS):
        shown = {kind for record, kept in zip(layout, work.aggregates["histograms"])
                 for kind, count in zip(record, kept["counts"]) if count is not None and kind in rows}
        more = nested_remainders([(kind, rows[kind]) for kind in sorted(shown)], old, tab) - forced
        if not more:
            return
        forced |= more
        force = [(r, b) for r, record in enumerate(layout) for b, kind in enumerate(record) if kind in forced]
        work.aggregates = suppress_histograms(work.aggregates, tab, counts=counts, force=force)


def check_release_groups(guard: Any, work: Any, release: GroupRelease, fresh: Sequence[int], epoch: str,
                         current: Any) -> None:
    """The rules on a release's groups (ADR 0051): the complement, the union as a cohort, every group
    against the memory and the ledger's cohorts, the chain."""
    cohorts = work.cohorts
    if any(0 < len(g.rows) < release.threshold for g in release.groups):
        # a group under the threshold is the release check's refusal (control min_row_count, the node
        # is left out), as for a k-means cluster (ADR 0050): the two refusals stay distinct
        return
    refuse_corrected_groups(guard, release, epoch)
    check_complement(cohorts.sets[0], release.union, release.threshold, release.setting)
    released = guard.groups.chain_sets(epoch, current)
    if release.union_digest not in cohorts.digests:
        guard.ledger.check(cohorts.data_model, [release.union], work.settings.min_row_count,
                           [release.union_digest], primes=guard.primes, released=released, epoch=epoch,
                           current=current, stamps=None if release.union_stamps is None else [release.union_stamps],
                           sums_only=getattr(work, "sums_only", False))
    guard.groups.check(release.groups, release.threshold, release.setting, cohorts=guard.ledger.every_release(),
                       epoch=epoch, current=current)
    chain_groups(guard, cohorts, fresh, release, work.settings.min_row_count, released, epoch, current)


def chain_groups(guard: Any, cohorts: Any, fresh: Sequence[int], release: GroupRelease, min_row_count: int,
                 released: Sequence[ChainSet], epoch: str = "", current: Current | None = None) -> None:
    """The chain rule over the release as one addition (ADR 0051, thirteenth review): the step's fresh
    cohorts and its new cells (at the group threshold) with the ledger's cohorts and the remembered cells
    they are related to (:func:`mipflow.node.controls.chain.chain_allows`; the ledger's refusal).  A release
    whose every cell was released before (under this consent ``epoch``, ADR 0061) adds nothing the cohort's
    own chain (``check_cohort``) missed."""
    from mipflow.node.controls.chain import ChainSet

    cells = [ChainSet(g.data_model, g.rows, g.patients, release.threshold)
             for g in release.groups if g.cell and not guard.groups.known(g, epoch)]
    if not cells:
        return
    steps = [ChainSet(cohorts.data_model, cohorts.sets[i], None if cohorts.patients is None else cohorts.patients[i],
                      min_row_count) for i in fresh]
    guard.ledger.chain(cohorts.data_model, steps + cells, min_row_count, guard.primes, released=released,
                       epoch=epoch, current=current)


