"""A study's cohorts chained with everything the node answered before, at approval and at refresh (ADR 0028 amended).

At approval (twenty-second review, hole 4) and at every refresh (issue 14), the study's distinct cohorts go as one
addition through the chain rule against every cohort of the ledger and every cell of the group memory, under the
node's consent epoch (:meth:`mipflow.node.controls.ledger.CohortLedger.chain`: the window and the exact backstop with
its union rule, ADR 0030).  At a refresh, the study's **own** earlier cohorts (recorded at its approval and at its
earlier refreshes; their digests are kept in the study's record, :data:`RECORD_KEY`) stay in the family but are
seen as the study remembers them: no rows left out and no phantom unit for a consent epoch moved since (ADR 0061),
as the refresh's atom rule already sees the snapshot it replaces.  Their difference with the refreshed cohorts is
the refresh's own rules' (rows added, removed and changed, per cell and net); ADR 0028's amendment gives the
argument.  Refusals carry no count: which atoms the rule met is data.
"""
from __future__ import annotations

from typing import Any, Collection, Iterable

import numpy as np

from mipflow.exceptions import ConfigError, DisclosureError

#: The study record's list of the digests of every cohort the study recorded in the ledger (approval, refreshes).
RECORD_KEY = "ledger_digests"

#: What to change after an approval's refusal, and after a refresh's (static words).
APPROVAL_HINT = "choose a broader population or other subgroups"
REFRESH_HINT = ("wait until more rows are loaded, or withdraw the study and approve one with a broader population "
                "or other subgroups")


def chain_with_answered(root: Any, ledger: Any, data_model: str,
                        sets: list[tuple[str, np.ndarray, np.ndarray | None]], min_row_count: int, primes: Any,
                        epoch: str = "", own: Collection[str] = (), hint: str = APPROVAL_HINT) -> None:
    """The chain rule over the study's cohorts (``sets``: label, rows, patients) as one addition to everything the
    node answered before (the ledger's cohorts and the group memory's cells, every data model): a study population
    completing a chain of standard-mode cohorts is not approved, nor refreshed.  ``epoch``: the node's consent epoch
    (a set of an earlier one: its phantom unit, ADR 0061); ``own``: digests of the study's own earlier cohorts, seen
    as remembered (:func:`own_digests`).  Raises :class:`ConfigError` in static words."""
    from mipflow.node.controls.chain import ChainSet
    from mipflow.node.controls.groups import GroupMemory

    groups = GroupMemory(root)
    try:
        released = groups.chain_sets(epoch)
    finally:
        groups.close()
    new = [ChainSet(data_model, keys, patients, min_row_count) for _, keys, patients in sets]
    try:
        ledger.chain(data_model, new, min_row_count, primes, released=released, epoch=epoch, own=own)
    except DisclosureError:
        raise ConfigError(f"a combination of the study's cohorts with cohorts or groups this node already answered "
                          f"for would single out fewer than min_row_count ({min_row_count}) patients (differencing): "
                          f"{hint}") from None


def own_digests(old: Any, family: Any, data_model: str) -> set[str]:
    """The ledger digests of ``old``'s (a :class:`~mipflow.node.controls.study.Study`) cohorts recorded at its
    approval and earlier refreshes.  A study recorded before they were kept: its snapshot's population and
    subgroups, and their parts per dataset of ``family`` (the refreshed family) as far as the snapshot's rows are
    still in the population (exact when none left it; a part not rebuilt is seen as any other answered cohort)."""
    from mipflow.node.controls.ledger import cohort_digest

    recorded = old.record.get(RECORD_KEY)
    if recorded is not None:
        return set(recorded)
    cohorts = [old.population, *old.subgroups.values()]
    out = {cohort_digest(data_model, keys) for keys in cohorts}
    for mine in family.per_dataset.values():
        rows = mine[None]
        out |= {cohort_digest(data_model, np.intersect1d(keys, rows, assume_unique=True)) for keys in cohorts}
    return out


def recorded_digests(data_model: str, sets: Iterable[tuple[str, np.ndarray, Any]],
                     earlier: Collection[str] = ()) -> list[str]:
    """The record's :data:`RECORD_KEY` after recording ``sets``: ``earlier`` and theirs, sorted."""
    from mipflow.node.controls.ledger import cohort_digest

    return sorted(set(earlier) | {cohort_digest(data_model, keys) for _, keys, _ in sets})
