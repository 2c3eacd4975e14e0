"""One suppression pattern over a study's family (ADR 0035): nothing small follows from all the
released cells of all cohorts and groupings together."""
from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from mipflow.node.controls import study_suppression as ss
from mipflow.node.controls.suppression import suppress_histograms
from tests.mipflow.algorithms.survival_data import STROKE, make_stroke

TAB = 3


def random_family(seed: int) -> tuple[pd.DataFrame, np.ndarray, ss.Layout]:
    """Rows of two datasets; cohorts: population, ``age >= t``, women, each overall and per dataset."""
    rng = np.random.default_rng(seed)
    frame = make_stroke(seed, int(rng.integers(30, 120))).dropna().reset_index(drop=True)
    frame["dataset"] = rng.choice(["a", "b"], len(frame), p=[0.6, 0.4])
    threshold = float(rng.integers(40, 80))
    subgroups = [np.ones(len(frame), bool), (frame["age"] >= threshold).to_numpy(), (frame["sex"] == "F").to_numpy()]
    columns = [s for s in subgroups] + [s & (frame["dataset"] == d).to_numpy() for d in ("a", "b") for s in subgroups]
    membership = np.column_stack(columns)
    nominal = [v for v in ("sex", "stroke_type") if rng.random() < 0.7]
    records = [(None, None)] + [(v, level) for v in nominal for level in STROKE.variable(v).enumeration_codes]
    return frame, membership, ss.Layout("age", int(rng.integers(2, 6)), tuple(records))


LEVELS = {"sex": ("M", "F"), "stroke_type": ("ischaemic", "haemorrhagic", "tia")}


def joint_knowledge(frame, membership, layout, hidden):
    """What the requester knows, built from the atoms independently of the code under test.

    The unknowns are the finest cells (atom, sex, stroke type, bin): every combination, as the
    requester does not know which are empty (the atoms are the ones the rows make: conservative).
    Each count the node releases or that is known (every cohort's row count and level counts) is
    the sum of the finest cells it covers, a 0/1 functional.  Returns the known functionals and,
    for each hidden cell, (functional, true count).
    """
    atoms = np.unique(membership, axis=0)                   # (atoms, cohorts)
    grid = np.array(np.meshgrid(np.arange(len(atoms)), range(2), range(3), range(layout.n_bins),
                                indexing="ij")).reshape(4, -1).T  # (finest, 4): atom, sex, kind, bin

    def covers(c, g=None, level=None, j=None):
        ok = atoms[grid[:, 0], c]
        if g is not None:
            ok = ok & (grid[:, 1 if g == "sex" else 2] == LEVELS[g].index(level))
        if j is not None:
            ok = ok & (grid[:, 3] == j)
        return ok.astype(float)

    lo, hi = STROKE.variable("age").min_value, STROKE.variable("age").max_value
    binned = np.clip(((frame["age"].to_numpy() - lo) / ((hi - lo) / layout.n_bins)).astype(int), 0, layout.n_bins - 1)
    known, hidden_cells = [], []
    for c in range(membership.shape[1]):
        known.append(covers(c))
        known += [covers(c, g, level) for g, level in layout.records if g is not None]
        for r, (g, level) in enumerate(layout.records):
            rows = membership[:, c] if g is None else membership[:, c] & (frame[g] == level).to_numpy()
            for j in range(layout.n_bins):
                if hidden[c, r, j]:
                    hidden_cells.append((covers(c, g, level, j), int(np.count_nonzero(rows & (binned == j)))))
                else:
                    known.append(covers(c, g, level, j))
    return np.array(known), hidden_cells


def subtracted_cells(frame, membership, layout):
    """Every cell of every set the requester can subtract out of the cohorts, built here from the
    atoms (independently of ``derived_sets``): each nested pair's difference and each atom, crossed
    with every record and bin, as (functional over the finest cells, true count)."""
    atoms, which = np.unique(membership, axis=0, return_inverse=True)
    which = np.asarray(which).reshape(-1)
    grid = np.array(np.meshgrid(np.arange(len(atoms)), range(2), range(3), range(layout.n_bins),
                                indexing="ij")).reshape(4, -1).T
    lo, hi = STROKE.variable("age").min_value, STROKE.variable("age").max_value
    binned = np.clip(((frame["age"].to_numpy() - lo) / ((hi - lo) / layout.n_bins)).astype(int), 0, layout.n_bins - 1)
    sets = [np.eye(len(atoms), dtype=bool)[i] for i in range(len(atoms)) if atoms[i].any()]
    C = membership.shape[1]
    sets += [atoms[:, a] & ~atoms[:, b] for a in range(C) for b in range(C)
             if a != b and atoms[:, b].any() and not (atoms[:, b] & ~atoms[:, a]).any()]
    out = []
    for in_set in sets:
        rows = in_set[which]
        for g, level in layout.records:
            ok = in_set[grid[:, 0]]
            mask = rows.copy()
            if g is not None:
                ok = ok & (grid[:, 1 if g == "sex" else 2] == LEVELS[g].index(level))
                mask &= (frame[g] == level).to_numpy()
            for j in range(layout.n_bins):
                out.append(((ok & (grid[:, 3] == j)).astype(float), int(np.count_nonzero(mask & (binned == j)))))
    return out


@pytest.mark.parametrize("seed", range(30))
def test_no_small_cell_of_a_random_family_follows_from_everything_released(seed) -> None:
    frame, membership, layout = random_family(seed)
    counts, hidden = ss.cohort_pattern(frame, membership, layout, STROKE, TAB)
    assert np.array_equal(counts, ss.cells(frame, membership, layout, STROKE))
    assert np.all(hidden[(counts > 0) & (counts < TAB)])  # every small cell hidden, in every cohort
    known, hidden_cells = joint_knowledge(frame, membership, layout, hidden)
    _, sv, vt = np.linalg.svd(known, full_matrices=False)
    basis = vt[sv > 1e-9 * sv[0]]  # the row space of what is known
    small = [(f, count) for f, count in hidden_cells + subtracted_cells(frame, membership, layout)
             if 0 < count < TAB]
    assert small  # the families do hold small cells and small differences
    for f, count in small:  # its functional is outside that span: no combination gives the count
        assert np.linalg.norm(f - basis.T @ (basis @ f)) > 1e-6


def test_a_difference_of_nested_cohorts_is_protected_though_neither_cohort_has_a_small_cell() -> None:
    """Population bin 12, women 10 (both large, and men are no cohort of this family): the men's 2
    follow by subtraction unless one of the two is hidden (the fourth outside review's histograms on
    the population and the elderly, here with sex as the subgroup)."""
    age = [20.0] * 2 + [21.0] * 10 + list(np.linspace(60, 89, 240))
    sex = ["M"] * 2 + ["F"] * 10 + ["F", "M"] * 120
    frame = pd.DataFrame({"age": age, "sex": sex, "stroke_type": "tia", "dataset": "a"})
    membership = np.column_stack([np.ones(len(frame), bool), (frame["sex"] == "F").to_numpy()])
    layout = ss.Layout("age", 4, ((None, None),))
    counts = ss.cells(frame, membership, layout, STROKE)
    men = counts[0, 0] - counts[1, 0]
    assert counts[:, 0, 0].tolist() == [12, 10] and men[0] == 2
    assert np.all((counts == 0) | (counts >= TAB))
    # without the derived sets nothing small is seen, so nothing is hidden: the hole
    assert not ss.family_pattern(counts, membership, layout, TAB).any()
    same, hidden = ss.cohort_pattern(frame, membership, layout, STROKE, TAB)
    assert np.array_equal(same, counts)
    assert hidden[:, 0, 0].any()  # the men's bin no longer follows
    # no released combination gives it: unknowns (sex, bin); known: both row counts, released bins
    def cell(c, j=None):
        f = np.zeros((2, 4))
        f[:, :] = 1.0 if j is None else 0.0
        if j is not None:
            f[:, j] = 1.0
        if c == 1:
            f[0] = 0.0  # women only (row 0: men, row 1: women)
        return f.reshape(-1)
    known = np.array([cell(0), cell(1)] + [cell(c, j) for c in range(2) for j in range(4) if not hidden[c, 0, j]])
    _, sv, vt = np.linalg.svd(known, full_matrices=False)
    basis = vt[sv > 1e-9 * sv[0]]
    men_bin = np.zeros((2, 4))
    men_bin[0, 0] = 1.0
    f = men_bin.reshape(-1)
    assert np.linalg.norm(f - basis.T @ (basis @ f)) > 1e-6
    assert np.count_nonzero(~hidden) >= 4  # large bins elsewhere are still released exactly


@pytest.mark.parametrize("seed", range(8))
def test_the_cells_are_the_histograms_counts_and_a_union_of_datasets_releases_only_sums(seed) -> None:
    frame, membership, layout = random_family(seed)
    counts = ss.cells(frame, membership, layout, STROKE)
    lo, hi = STROKE.variable("age").min_value, STROKE.variable("age").max_value
    expected = np.histogram(frame["age"][membership[:, 1]], bins=layout.n_bins, range=(lo, hi))[0]
    assert counts[1, 0].tolist() == expected.tolist()
    # population = dataset a + dataset b, bin by bin: the relation the pattern is built on
    assert np.array_equal(counts[0], counts[3] + counts[6])


def test_the_cohort_relations_are_exact_and_complete() -> None:
    rng = np.random.default_rng(3)
    membership = rng.random((200, 4)) < 0.5
    membership = np.column_stack([membership, membership[:, 0] | membership[:, 1],
                                  membership[:, 0] & ~membership[:, 1], np.ones(200, bool)])
    relations = ss.cohort_relations(membership)
    assert np.all(relations == np.round(relations))  # integer entries
    assert np.allclose(relations @ membership.T.astype(float), 0.0)
    assert len(relations) == membership.shape[1] - np.linalg.matrix_rank(membership.astype(float))


def test_per_result_suppression_leaves_women_to_subtraction_and_the_family_pattern_does_not() -> None:
    """Population bin 7, men 5, women 2: each result suppressed on its own releases 7 and 5."""
    age = [20.0] * 2 + [21.0] * 5 + list(np.linspace(33, 89, 240))
    sex = ["F"] * 2 + ["M"] * 5 + ["F", "M"] * 120
    frame = pd.DataFrame({"age": age, "sex": sex, "stroke_type": "tia", "dataset": "a"})
    men, women = (frame["sex"] == "M").to_numpy(), (frame["sex"] == "F").to_numpy()
    membership = np.column_stack([np.ones(len(frame), bool), women, men])
    layout = ss.Layout("age", 10, ((None, None),))
    counts = ss.cells(frame, membership, layout, STROKE)
    assert counts[:, 0, 0].tolist() == [7, 2, 5]
    alone = [suppress_histograms({"histograms": [{"grouping_var": None, "grouping_enum": None,
                                                  "counts": counts[c, 0].astype(int).tolist()}]}, TAB)
             ["histograms"][0]["counts"] for c in range(3)]
    assert alone[1][0] is None and alone[0][0] - alone[2][0] == 2  # the hole: 7 - 5
    hidden = ss.family_pattern(counts, membership, layout, TAB)
    assert hidden[:, 0, 0].all()  # bin 0 hidden in all three
    released = np.where(hidden, np.nan, counts)
    assert np.count_nonzero(~np.isnan(released)) >= 0.8 * counts.size  # large cells still released


def test_patterns_are_stored_as_booleans_only_and_read_back(tmp_path) -> None:
    frame, membership, layout = random_family(1)
    counts = ss.cells(frame, membership, layout, STROKE)
    hidden = ss.family_pattern(counts, membership, layout, TAB)
    cohorts = tuple((s, d) for d in (None, "a", "b") for s in (None, "elderly", "women"))
    patterns = ss.Patterns("2027-01-01T00:00:00+00:00", TAB, cohorts, {"age": layout}, {"age": hidden})
    ss.write_patterns(tmp_path, "proj", patterns)
    path = ss.pattern_path(tmp_path, "proj")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with np.load(path, allow_pickle=False) as arrays:
        assert {arrays[n].dtype.kind for n in arrays.files if n != "meta"} == {"b"}
    back = ss.read_patterns(tmp_path, "proj")
    assert back is not None and back.cohorts == cohorts and back.layouts["age"] == layout
    assert np.array_equal(back.hidden["age"], hidden)
