"""Every rule of every memory of releases, after a consent registry change, at a holder of the withdrawn patient and
at a non-holder (ADR 0061, amended by the fourteenth review's hole 2): the same decision and the same words, through
the one epoch-aware view (:class:`mipflow.node.controls.epochs.EpochView`).

Each row of the table remembers a set under the epoch before the change ("") -- at the holder with her row, at the
non-holder without -- and then, under the new epoch, asks the rule about a sequence of new sets (each a function of
the rows held now, the same at both nodes): every set but the last must be answered, the last must be decided as
the row says, at both nodes alike, and a refusal must be the same bytes at both."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from mipflow.exceptions import DisclosureError
from mipflow.node.controls.atoms import node_primes
from mipflow.node.controls.epochs import PATIENTS, ROWS, EpochView, phantom, still_held
from mipflow.node.controls.groups import Group, GroupMemory
from mipflow.node.controls.ledger import CohortLedger, cohort_digest
from mipflow.node.controls.pooled_bins import PER_NODE_RELEASE, PooledBindings
from tests.mipflow.node.controls.test_consent_epochs import weighted_outcome

M = 10
MODEL, OTHER = "stroke:0.1", "stroke:0.2"
EPOCH = "withdrawn-1"
PRIMES = node_primes(bytes(range(32)))
HER = np.uint64(500)
NEW = np.arange(1000, 1012, dtype=np.uint64)  # twelve rows loaded after the change (at least M)


def keys(a: int, b: int) -> np.ndarray:
    return np.arange(a, b, dtype=np.uint64)


def nodes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rows remembered before the change and held after it: the holder loses her row, the non-holder nothing."""
    return {"holder": (np.append(keys(0, 199), HER), keys(0, 199)), "non-holder": (keys(0, 199), keys(0, 199))}


def current(rows: np.ndarray) -> Callable[[str], tuple[np.ndarray, np.ndarray]]:
    return lambda data_model: (rows, rows)


def outcome(decide: Callable[[], None]) -> str:
    try:
        decide()
    except DisclosureError as refused:
        assert refused.control == "differencing"
        return "refused: " + str(refused)
    return "answered"


# ---------------------------------------------------------------------------------- one rule per function


def ledger_pairs(tmp: Path, before: np.ndarray, after: np.ndarray, new: list[np.ndarray]) -> list[str]:
    ledger = CohortLedger(tmp)
    ledger.record(MODEL, [before], patients=[before], epoch="")
    out = []
    for cohort in new:
        out.append(outcome(lambda: ledger.check(MODEL, [cohort], M, patients=[cohort], epoch=EPOCH,
                                                current=current(after))))
        ledger.record(MODEL, [cohort], patients=[cohort], epoch=EPOCH)
    return out


def ledger_across_models(tmp: Path, before: np.ndarray, after: np.ndarray, new: list[np.ndarray]) -> list[str]:
    """A cohort of another data model remembered by its patients (its rows have other keys)."""
    ledger = CohortLedger(tmp)
    ledger.record(OTHER, [before + np.uint64(10**6)], patients=[before], epoch="")
    return [outcome(lambda: ledger.check(MODEL, [cohort], M, patients=[cohort], epoch=EPOCH, current=current(after)))
            for cohort in new]


def ledger_chain(tmp: Path, before: np.ndarray, after: np.ndarray, new: list[np.ndarray]) -> list[str]:
    ledger = CohortLedger(tmp)
    ledger.record(MODEL, [before], patients=[before], epoch="")
    out = []
    for cohort in new:
        out.append(outcome(lambda: ledger.check(MODEL, [cohort], M, patients=[cohort], primes=PRIMES, epoch=EPOCH,
                                                current=current(after))))
        ledger.record(MODEL, [cohort], patients=[cohort], epoch=EPOCH)
    return out


def group(rows: np.ndarray, kind: str = "tia") -> Group:
    return Group(kind, rows, cohort_digest(kind, rows), MODEL, rows)


def groups_few_apart(tmp: Path, before: np.ndarray, after: np.ndarray, new: list[np.ndarray]) -> list[str]:
    """A group of another kind (only :func:`few_apart` compares them)."""
    memory = GroupMemory(None)
    memory.record([group(before)], M, epoch="")
    return [outcome(lambda: memory.check([group(g, "other")], M, "min_row_count", epoch=EPOCH,
                                         current=current(after))) for g in new]


def groups_same_kind(tmp: Path, before: np.ndarray, after: np.ndarray, new: list[np.ndarray]) -> list[str]:
    memory = GroupMemory(None)
    memory.record([group(before)], M, epoch="")
    return [outcome(lambda: memory.check([group(g)], M, "min_row_count", epoch=EPOCH, current=current(after)))
            for g in new]


def groups_against_cohorts(tmp: Path, before: np.ndarray, after: np.ndarray, new: list[np.ndarray]) -> list[str]:
    """A new group against a cohort of the ledger remembered before the change."""
    ledger = CohortLedger(tmp)
    ledger.record(MODEL, [before], patients=[before], epoch="")
    memory = GroupMemory(None)
    return [outcome(lambda: memory.check([group(g)], M, "min_row_count", cohorts=ledger.every_release(),
                                         epoch=EPOCH, current=current(after))) for g in new]


def cohorts_against_groups(tmp: Path, before: np.ndarray, after: np.ndarray, new: list[np.ndarray]) -> list[str]:
    """Rule 4 from the cohort side (the fourteenth review's hole 2): a new cohort against a remembered group."""
    memory = GroupMemory(None)
    memory.record([group(before)], M, epoch="")
    return [outcome(lambda: memory.check_cohorts(MODEL, [c], [c], epoch=EPOCH, current=current(after))) for c in new]


def group_cells_in_the_chain(tmp: Path, before: np.ndarray, after: np.ndarray, new: list[np.ndarray]) -> list[str]:
    """A remembered cell in the ledger's chain rule (ADR 0051, thirteenth review)."""
    memory = GroupMemory(None)
    memory.record([group(before)], M, epoch="")
    ledger = CohortLedger(tmp)
    out = []
    for cohort in new:
        out.append(outcome(lambda: ledger.check(MODEL, [cohort], M, primes=PRIMES, epoch=EPOCH, current=current(after),
                                                released=memory.chain_sets(EPOCH, current(after)))))
        ledger.record(MODEL, [cohort], epoch=EPOCH)
    return out


def pooled_bindings(tmp: Path, before: np.ndarray, after: np.ndarray, new: list[np.ndarray]) -> list[str]:
    """A survival release remembered on per-node bins (ADR 0059) against a later one's rows."""
    memory = PooledBindings(tmp)
    memory.remember(PER_NODE_RELEASE, MODEL, cohort_digest(MODEL, before), before, before, epoch="")
    view = EpochView(EPOCH, current(after))
    return ["refused" if memory.near(PER_NODE_RELEASE, MODEL, c, c, M, view=view) else "answered" for c in new]


def weighted(tmp: Path, before: np.ndarray, after: np.ndarray, new: list[np.ndarray]) -> list[str]:
    return [weighted_outcome(before, after, c) for c in new]


def same_rows(after):
    return [after]


def fewer(k: int):
    def rows(after):
        return [after[:-k]]
    rows.__name__ = f"{k}_fewer"
    return rows


def far(after):
    return [after[50:]]


def grown(after):
    return [np.union1d(after, NEW)]


def grown_then_the_new_rows(after):
    return [np.union1d(after, NEW), NEW]


def same_kind_near(after):
    return [np.union1d(after[50:], NEW[:3])]  # 53 rows apart, but 3 rows outside the remembered group


TABLE = [
    ("ledger: pairwise", ledger_pairs, same_rows, "refused"),
    ("ledger: pairwise", ledger_pairs, fewer(9), "refused"),
    ("ledger: pairwise", ledger_pairs, far, "answered"),
    ("ledger: pairwise", ledger_pairs, grown, "answered"),
    ("ledger: across data models", ledger_across_models, same_rows, "refused"),
    ("ledger: across data models", ledger_across_models, fewer(9), "refused"),
    ("ledger: across data models", ledger_across_models, far, "answered"),
    ("ledger: chain", ledger_chain, grown, "answered"),
    ("ledger: chain", ledger_chain, grown_then_the_new_rows, "refused"),
    ("groups: few apart", groups_few_apart, same_rows, "refused"),
    ("groups: few apart", groups_few_apart, fewer(9), "refused"),
    ("groups: few apart", groups_few_apart, grown, "answered"),
    ("groups: same kind", groups_same_kind, same_kind_near, "refused"),
    ("groups: same kind", groups_same_kind, far, "answered"),
    ("groups: against cohorts", groups_against_cohorts, same_rows, "refused"),
    ("groups: against cohorts", groups_against_cohorts, fewer(9), "refused"),
    ("groups: against cohorts", groups_against_cohorts, grown, "answered"),
    ("groups: cohort side", cohorts_against_groups, same_rows, "refused"),
    ("groups: cohort side", cohorts_against_groups, fewer(9), "refused"),
    ("groups: cohort side", cohorts_against_groups, grown, "answered"),
    ("groups: cells in the chain", group_cells_in_the_chain, grown, "answered"),
    ("groups: cells in the chain", group_cells_in_the_chain, grown_then_the_new_rows, "refused"),
    ("pooled bindings", pooled_bindings, same_rows, "refused"),
    ("pooled bindings", pooled_bindings, fewer(9), "refused"),
    ("pooled bindings", pooled_bindings, far, "answered"),
    ("weighted memory", weighted, same_rows, "refused"),
    ("weighted memory", weighted, fewer(3), "refused"),
    ("weighted memory", weighted, far, "answered"),
]


@pytest.mark.parametrize("rule, decide, sequence, expected", TABLE,
                         ids=[f"{r}-{s.__name__}-{e}" for r, _, s, e in TABLE])
def test_every_memory_rule_decides_alike_at_a_holder_and_a_non_holder(tmp_path: Path, rule, decide, sequence,
                                                                       expected: str) -> None:
    outcomes = {}
    for name, (before, after) in nodes().items():
        (tmp_path / name).mkdir()
        outcomes[name] = decide(tmp_path / name, before, after, sequence(after))
    assert outcomes["holder"] == outcomes["non-holder"], rule  # the same decisions, the same bytes
    *earlier, last = outcomes["holder"]
    assert all(o == "answered" for o in earlier), (rule, earlier)
    assert last.split(":")[0] == expected, (rule, last)
    if expected == "refused" and ":" in last:
        assert "consent registry" in last and "min_row_count new rows" in last  # what answers it


def test_without_the_view_the_holder_alone_refuses_the_cohort_equal_to_its_group() -> None:
    """The hole the view closes (fourteenth review, hole 2): the cohort side of the group memory without epochs."""
    decided = {}
    for name, (before, after) in nodes().items():
        memory = GroupMemory(None)
        memory.record([group(before)], M, epoch="")
        decided[name] = outcome(lambda: memory.check_cohorts(MODEL, [after], [after]))
    assert decided["holder"].startswith("refused") and decided["non-holder"] == "answered"


def test_the_view_keeps_sets_of_this_epoch_and_reads_each_data_model_once() -> None:
    reads = []

    def rows_of(data_model: str):
        reads.append(data_model)
        return keys(0, 199), keys(0, 199)

    view = EpochView(EPOCH, rows_of)
    remembered = np.append(keys(0, 199), HER)
    assert view.held(remembered, MODEL, ROWS, EPOCH) is remembered  # this epoch: as remembered, nothing read
    assert reads == []
    assert np.array_equal(view.held(remembered, MODEL, ROWS, ""), keys(0, 199))
    assert np.array_equal(view.held(remembered, MODEL, PATIENTS, "older"), keys(0, 199))
    assert reads == [MODEL]
    chained = view.chain_keys(remembered, MODEL, ROWS, "")
    assert len(chained) == 200 and phantom(MODEL, remembered, ROWS) in chained and HER not in chained
    assert np.array_equal(still_held(remembered, None), remembered)  # rows not known: every key kept
