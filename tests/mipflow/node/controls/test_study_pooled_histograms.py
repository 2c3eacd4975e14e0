"""A study's histograms suppressed on pooled counts (ADR 0035, amendment of 2026-12-08), in process.

The MIP dementia exports split over three hospitals as in ``tests/privacy/test_honest_day_dementia.py`` (the
approved study: AD/CN/MCI patients of the larger exports; subgroups women, men, AD, CN).  Checked here:
every shown cell is the pooled numpy histogram's count, every small pooled cell is hidden, the pooled pattern
shows more bins than the nodes' own patterns let through, no small cell of any cohort, nested difference or
atom follows from everything the family shows (checked on the atoms, built from the subgroups' bits
independently of ``derived_sets``), and no node's own small cell follows from what the central site gets (the
shown pooled cells of every cohort, every node's margins, the zeros) nor reads out of a node's masked part.
The same on random splits of stroke rows over three nodes, and the zeros of a set's empty record (women in the
record of men) are needed.
"""
from __future__ import annotations

import types
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mipflow.node.controls import study_pooled_histograms as sph
from mipflow.node.controls.study_suppression import cells, derived_sets, family_pattern, layouts
from mipflow.node.controls.suppression import null_basis

TAB = 3
HOLDINGS = {"hosp0": ["desd-synthdata1", "edsd3", "desd-synthdata0", "edsd0", "ppmi0", "ppmi3"],
            "hosp1": ["desd-synthdata4", "desd-synthdata5", "edsd7", "desd-synthdata2", "edsd1", "ppmi1", "ppmi4"],
            "hosp2": ["desd-synthdata7", "desd-synthdata8", "desd-synthdata3", "edsd2", "edsd8", "ppmi2"]}
STUDY_DATASETS = ["desd-synthdata1", "desd-synthdata4", "desd-synthdata5", "desd-synthdata7", "desd-synthdata8"]
VARS = ["subjectageyears", "gender", "alzheimerbroadcategory", "minimentalstate", "lefthippocampus",
        "righthippocampus", "leftamygdala", "leftententorhinalarea", "csfglobal"]
NOMINAL = ("gender", "alzheimerbroadcategory")
SUBGROUPS = (("gender", "F"), ("gender", "M"), ("alzheimerbroadcategory", "AD"), ("alzheimerbroadcategory", "CN"))
K = len(SUBGROUPS)


@pytest.fixture(scope="module")
def split(shared_dir: Path, dementia_model):
    folder = shared_dir / "data" / "dementia_v_0_1"
    frames = {}
    for node, held in HOLDINGS.items():
        frame = pd.concat([pd.read_csv(folder / f"{d}.csv", dtype=str) for d in held if d in STUDY_DATASETS],
                          ignore_index=True)[["dataset", *VARS]]
        numeric = [v for v in VARS if v not in NOMINAL]
        frame[numeric] = frame[numeric].apply(pd.to_numeric)
        frame = frame.dropna(subset=VARS)
        frames[node] = frame[frame["alzheimerbroadcategory"] != "Other"].reset_index(drop=True)
    protocol = types.SimpleNamespace(variables=VARS, survival=None, algorithms=["multiple_histograms"],
                                     histogram_bins=10)
    return frames, {layout.variable: layout for layout in layouts(protocol, dementia_model)}, dementia_model


def subgroup_masks(frame: pd.DataFrame) -> np.ndarray:
    return np.column_stack([frame[code].to_numpy() == level for code, level in SUBGROUPS])


def pooled_of(split, variable):
    frames, lay, model = split
    layout = lay[variable]
    atoms = {n: sph.node_atom_cells(f, subgroup_masks(f), layout, model) for n, f in frames.items()}
    return layout, atoms, sum(atoms.values())


@pytest.mark.parametrize("variable", ["minimentalstate", "subjectageyears"])
def test_every_shown_cell_is_the_pooled_numpy_count_and_every_small_pooled_cell_is_hidden(split, variable) -> None:
    frames, _, model = split
    layout, _, pooled = pooled_of(split, variable)
    counts, hidden = sph.pooled_pattern(pooled, layout, K, TAB)
    rows = pd.concat(frames.values(), ignore_index=True)
    var = model.variable(variable)
    cohorts = [np.ones(len(rows), dtype=bool), *subgroup_masks(rows).T]
    shown_any = 0
    for c, cohort in enumerate(cohorts):
        for r, (g, level) in enumerate(layout.records):
            mask = cohort if g is None else cohort & (rows[g].to_numpy() == level)
            truth = np.histogram(rows.loc[mask, variable], bins=layout.n_bins,
                                 range=(float(var.min_value), float(var.max_value)))[0]
            np.testing.assert_array_equal(counts[c, r], truth)
            assert not np.any(~hidden[c, r] & (truth > 0) & (truth < TAB)), (c, r, truth, hidden[c, r])
            shown_any += int((~hidden[c, r] & (truth >= TAB)).sum())
    assert shown_any > 0


def node_pattern(frame, layout, model) -> np.ndarray:
    membership = np.column_stack([np.ones(len(frame), dtype=bool), subgroup_masks(frame)])
    derived = derived_sets(membership)
    system = np.hstack([membership, derived])
    return family_pattern(cells(frame, system, layout, model), system, layout, TAB, derived=derived.shape[1])


def test_the_pooled_pattern_shows_more_of_the_population_s_mmse_histogram_than_the_nodes_own_patterns(split) -> None:
    """The finding measured in process: per node, a bin is shown only where every node released it (ADR 0005)."""
    frames, _, model = split
    layout, _, pooled = pooled_of(split, "minimentalstate")
    counts, hidden = sph.pooled_pattern(pooled, layout, K, TAB)
    per_node = np.any([node_pattern(f, layout, model)[0, 0] for f in frames.values()], axis=0)
    safe = int(((counts[0, 0] == 0) | (counts[0, 0] >= TAB)).sum())
    assert safe == 10
    assert int((~per_node).sum()) == 2  # only the two empty bins
    assert sph.shown_bins(hidden, 0) == 5  # 0, 0, 17, 78, 147 of 0 0 4 5 4 21 17 43 78 147


# --------------------------------------------------------------------------- independent checks on the atoms


def known_sets(present_bits: np.ndarray) -> list[np.ndarray]:
    """Every cohort, nested difference and atom over the present atoms, from the bits alone."""
    n = len(present_bits)
    cohorts = [np.ones(n, dtype=bool), *present_bits.T]
    sets = list(cohorts)
    for a, b in product(cohorts, cohorts):
        if (b <= a).all() and (a & ~b).any() and not np.array_equal(a, b):
            sets.append(a & ~b)
    sets.extend(np.eye(n, dtype=bool))
    return sets


def structure(layout, n_sets: np.ndarray) -> list[np.ndarray]:
    """Per set (a vector over atoms): its records' level sums equal the overall bin, and each record's margin."""
    from mipflow.node.controls.study_suppression import within_relations

    within = within_relations(layout)  # over one set's (r, j) cells
    return [np.kron(s.astype(float)[None, :], within) for s in n_sets]


def cell_vector(weights: np.ndarray, r: int, j: int, layout) -> np.ndarray:
    R, J = len(layout.records), layout.n_bins
    unit = np.zeros(R * J)
    unit[r * J + j] = 1.0
    return np.kron(weights.astype(float), unit)


def shown_zeros(layout, x: np.ndarray, bits: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """The atoms' cells ``(present atoms, records, bins)`` known to be 0 from a shown cohort cell of 0 (counts
    are not negative)."""
    out = np.zeros(x.shape, dtype=bool)
    for c, cohort in enumerate([np.ones(len(bits), dtype=bool), *bits.T]):
        total = x[cohort].sum(axis=0)
        out[cohort] |= ((total == 0) & ~hidden[c])[None]
    return out


def pooled_determined(layout, pooled: np.ndarray, hidden: np.ndarray) -> list[bool]:
    """Unknowns: the pooled atoms' cells.  Known: every shown cell of every cohort and record (every release the
    family allows), every set's structure and margins, the zeros a shown 0 or a margin of 0 gives (counts are not
    negative).  Per small cell of a cohort, nested difference or atom:
    whether it is determined."""
    present = np.flatnonzero(pooled.reshape(len(pooled), -1).any(axis=1))
    bits = sph.subgroup_atoms(pooled.shape[0].bit_length() - 1)[present]
    x = pooled[present]
    sets = known_sets(bits)
    R, J = len(layout.records), layout.n_bins
    known = structure(layout, sets)
    cohorts = [np.ones(len(present), dtype=bool), *bits.T]
    zero = shown_zeros(layout, x, bits, hidden) | (x.sum(axis=2, keepdims=True) == 0)
    known.append(np.eye(zero.size)[zero.reshape(-1)])
    for c, cohort in enumerate(cohorts):
        known += [cell_vector(cohort, r, j, layout)[None, :] for r in range(R) for j in range(J) if not hidden[c, r, j]]
    null = null_basis(np.vstack(known))
    out = []
    for s in sets:
        for r, j in product(range(R), range(J)):
            value = int(np.einsum("a,a->", s.astype(np.int64), x[:, r, j]))
            if 0 < value < TAB:
                out.append(bool(np.all(np.abs(cell_vector(s, r, j, layout) @ null) <= 1e-6)))
    return out


def node_determined(layout, atoms: dict, pooled: np.ndarray, hidden: np.ndarray) -> tuple[list[bool], list[bool]]:
    """Unknowns: every node's atoms' cells.  Known to the central site: the shown pooled cells of every cohort
    and record, a 0 at every node in every atom of a shown cohort cell of 0 and wherever the node's margin is
    0 (counts are not negative), and every node's own structure and margins of every cohort, nested difference and atom (released
    per node by other algorithms: conservative).  Per node's small cell (of a cohort, nested difference or
    atom): whether it is determined; then the same had each node's shown counts reached the central site one by
    one (no masking)."""
    present = np.flatnonzero(pooled.reshape(len(pooled), -1).any(axis=1))
    bits = sph.subgroup_atoms(pooled.shape[0].bit_length() - 1)[present]
    sets = known_sets(bits)
    nodes = list(atoms)
    N, A, R, J = len(nodes), len(present), len(layout.records), layout.n_bins
    block = A * R * J

    def at(node: int, row: np.ndarray) -> np.ndarray:
        out = np.zeros((row.shape[0], N * block))
        out[:, node * block:(node + 1) * block] = row
        return out

    known = [at(n, s) for n in range(N) for s in structure(layout, sets)]
    cohorts = [np.ones(A, dtype=bool), *bits.T]
    zero = shown_zeros(layout, pooled[present], bits, hidden)
    for n, node in enumerate(nodes):
        empty = zero | (atoms[node][present].sum(axis=2, keepdims=True) == 0)
        known.append(at(n, np.eye(block)[empty.reshape(-1)]))
    shown = [(c, r, j) for c in range(len(cohorts)) for r in range(R) for j in range(J) if not hidden[c, r, j]]
    known += [np.tile(cell_vector(cohorts[c], r, j, layout), N)[None, :] for c, r, j in shown]
    clear = [at(n, cell_vector(cohorts[c], r, j, layout)[None, :]) for n in range(N) for c, r, j in shown]

    def read(null: np.ndarray) -> list[bool]:
        out = []
        for n, node in enumerate(nodes):
            x = atoms[node][present]
            for s in sets:
                for r, j in product(range(R), range(J)):
                    value = int(np.einsum("a,a->", s.astype(np.int64), x[:, r, j]))
                    if 0 < value < TAB:
                        t = at(n, cell_vector(s, r, j, layout)[None, :])[0]
                        out.append(bool(np.all(np.abs(t @ null) <= 1e-6)))
        return out

    return read(null_basis(np.vstack(known))), read(null_basis(np.vstack(known + clear)))


@pytest.mark.parametrize("variable", ["minimentalstate", "subjectageyears"])
def test_no_two_releases_of_the_family_subtract_to_a_small_pooled_cell(split, variable) -> None:
    layout, _, pooled = pooled_of(split, variable)
    _, hidden = sph.pooled_pattern(pooled, layout, K, TAB)
    found = pooled_determined(layout, pooled, hidden)
    assert found and not any(found)  # small cells exist, none follows
    # the counter-check: only the primary cells hidden, some small cell follows
    assert any(pooled_determined(layout, pooled, (pooled_counts(pooled) > 0) & (pooled_counts(pooled) < TAB)))


def pooled_counts(pooled: np.ndarray) -> np.ndarray:
    """The cohorts' cells ``(1 + k, records, bins)`` of pooled atoms, from the bits."""
    k = pooled.shape[0].bit_length() - 1
    return np.stack([pooled[sph.cohort_of(c, k)].sum(axis=0) for c in range(1 + k)])


@pytest.mark.parametrize("variable", ["minimentalstate", "subjectageyears"])
def test_a_node_s_small_cell_follows_from_nothing_the_central_site_gets(split, variable) -> None:
    layout, atoms, pooled = pooled_of(split, variable)
    _, hidden = sph.pooled_pattern(pooled, layout, K, TAB)
    masked, clear = node_determined(layout, atoms, pooled, hidden)
    assert masked and not any(masked)
    # the counter-check: had each node's shown counts reached the central site one by one, some would follow
    assert any(clear)


def random_split(seed: int):
    """Stroke rows over three nodes; subgroups ``age >= t`` and women; the histogram of NIHSS by 0-2 nominal
    variables, 2-5 bins; per node atoms' cells."""
    from tests.mipflow.algorithms.survival_data import STROKE, make_stroke

    rng = np.random.default_rng(seed)
    frame = make_stroke(seed, int(rng.integers(40, 150))).dropna().reset_index(drop=True)
    node = rng.choice(3, len(frame), p=[0.5, 0.3, 0.2])
    threshold = float(rng.integers(40, 80))
    masks = np.column_stack([(frame["age"] >= threshold).to_numpy(), (frame["sex"] == "F").to_numpy()])
    nominal = [v for v in ("sex", "stroke_type") if rng.random() < 0.7]
    records = [(None, None)] + [(v, level) for v in nominal for level in STROKE.variable(v).enumeration_codes]
    from mipflow.node.controls.study_suppression import Layout

    layout = Layout("nihss_admission", int(rng.integers(2, 6)), tuple(records))
    atoms = {f"n{i}": sph.node_atom_cells(frame[node == i].reset_index(drop=True), masks[node == i], layout, STROKE)
             for i in range(3)}
    return frame, masks, layout, atoms, sum(atoms.values())


@pytest.mark.parametrize("seed", range(16))
def test_random_splits_show_pooled_counts_and_leak_no_small_cell(seed) -> None:
    from tests.mipflow.algorithms.survival_data import STROKE

    frame, masks, layout, atoms, pooled = random_split(seed)
    counts, hidden = sph.pooled_pattern(pooled, layout, 2, TAB)
    var = STROKE.variable(layout.variable)
    for c, cohort in enumerate([np.ones(len(frame), dtype=bool), *masks.T]):
        for r, (g, level) in enumerate(layout.records):
            rows = cohort if g is None else cohort & (frame[g].to_numpy() == level)
            truth = np.histogram(frame.loc[rows, layout.variable], bins=layout.n_bins,
                                 range=(float(var.min_value), float(var.max_value)))[0]
            np.testing.assert_array_equal(counts[c, r], truth)
            assert not np.any(~hidden[c, r] & (truth > 0) & (truth < TAB))
    assert not any(pooled_determined(layout, pooled, hidden))
    assert not any(node_determined(layout, atoms, pooled, hidden)[0])


def test_a_node_s_masked_parts_read_nothing_alone_and_the_sum_is_the_shown_pooled_counts(split) -> None:
    """Round 0: a node's atoms' cells sealed masked; round 1: its own counts on the shown cells, masked.  The
    central site (or a peer) reading one part, or two of three, gets uniform elements; only the three add up."""
    from mipflow.secagg.crypto import KeyPair
    from mipflow.secagg.sealed_masks import mask_sums, unmask_parts

    layout, atoms, pooled = pooled_of(split, "minimentalstate")
    keys = [KeyPair.generate() for _ in atoms]
    participants = {n: k.public_bytes for n, k in zip(atoms, keys)}
    own = list(atoms.values())
    sealed = [mask_sums(k, participants, b"a|multiple_histograms|sealed|0", {"atoms": a}) for k, a in zip(keys, own)]
    np.testing.assert_array_equal(unmask_parts(sealed)["atoms"], pooled)
    for part, plain in zip(sealed, own):
        alone = unmask_parts([part])["atoms"]
        assert np.mean(alone == plain) < 0.05 and np.all(np.abs(alone).max() > 1 << 32)
    assert np.mean(unmask_parts(sealed[:2])["atoms"] == own[0] + own[1]) < 0.05
    counts, hidden = sph.pooled_pattern(unmask_parts(sealed)["atoms"], layout, K, TAB)
    for cohort in range(1 + K):
        replies = [mask_sums(k, participants, b"a|multiple_histograms|1", sph.node_release(a, hidden, cohort, K))
                   for k, a in zip(keys, own)]
        shown = sph.central_counts(unmask_parts(replies), len(keys))
        assert shown == [[None if h else int(c) for c, h in zip(rc, rh)]
                         for rc, rh in zip(counts[cohort], hidden[cohort])]
        for reply, a in zip(replies, own):
            alone = unmask_parts([reply])["counts"]
            mine = np.asarray(a)[sph.cohort_of(cohort, K)].sum(axis=0)
            assert np.mean(alone == mine) < 0.05
        # a node's release carries 0, never its own count, on a hidden cell
        for a in own:
            release = sph.node_release(a, hidden, cohort, K)
            assert not np.any(release["counts"][hidden[cohort]])


def test_central_reading_refuses_flags_that_are_not_every_node() -> None:
    with pytest.raises(ValueError):
        sph.central_counts({"counts": np.array([[5, 0]]), "shown": np.array([[3, 2]])}, 3)
    assert sph.central_counts({"counts": np.array([[5, 0]]), "shown": np.array([[3, 0]])}, 3) == [[5, None]]


def test_atoms_are_the_subgroup_bits_in_a_fixed_order() -> None:
    bits = sph.subgroup_atoms(3)
    assert bits.shape == (8, 3) and len({b.tobytes() for b in bits}) == 8
    masks = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(bits[sph.atom_of(masks)], masks)


@pytest.mark.parametrize("seed", [34, 42, 46])
def test_a_set_s_record_with_no_rows_is_known_zero_and_the_pattern_protects_through_it(seed, monkeypatch) -> None:
    """A subgroup of women has no rows in the record of men: its cells there are 0, known to the requester
    (margins are known, counts are not negative).  On ADR 0035's relations alone some small pooled cell follows
    through them on these splits; with them none does."""
    _, _, layout, _, pooled = random_split(seed)
    _, hidden = sph.pooled_pattern(pooled, layout, 2, TAB)
    assert not any(pooled_determined(layout, pooled, hidden))
    monkeypatch.setattr(sph, "ZEROS", "none")
    _, without = sph.pooled_pattern(pooled, layout, 2, TAB)
    assert any(pooled_determined(layout, pooled, without))


@pytest.mark.xfail(strict=True, reason="ADR 0035 amendment 2026-12-08, left: the per-node family pattern "
                   "(study_suppression.family_pattern) omits the known zeros of a set's empty record (women in the "
                   "record of men), so a small cell follows through them; adding known_zeros there changes every "
                   "stored pattern (a refresh)")
@pytest.mark.parametrize("seed", [34, 42, 46])
def test_the_per_node_pattern_of_one_node_holding_every_row_leaks_no_small_cell_through_empty_records(seed) -> None:
    from mipflow.node.controls.study_suppression import cohort_pattern
    from tests.mipflow.algorithms.survival_data import STROKE

    frame, masks, layout, _, pooled = random_split(seed)
    _, hidden = cohort_pattern(frame, np.column_stack([np.ones(len(frame), dtype=bool), masks]), layout, STROKE, TAB)
    assert not any(pooled_determined(layout, pooled, hidden))
