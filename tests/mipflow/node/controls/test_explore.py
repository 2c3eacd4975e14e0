"""Explore mode's keyed noise and its storage (mipflow.node.controls.explore and explore_keys, ADR 0032).

The noise is a deterministic function of (node key, query, data version): the statistical tests
draw it over many distinct versions, so they are reproducible.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mipflow.node.controls.dp_noise import QueryNoise
from mipflow.node.controls.explore import KeyedNoise, standard_draws, suppress_noisy_cells
from mipflow.node.controls.explore_keys import canonical_query, data_version, noise_key, release_key
from mipflow.protocol.request import AnalysisRequest
from tests.mipflow.algorithms.survival_data import STROKE
from tests.nodes import standard_home

KEY = noise_key(b"s" * 32)
SELECTIONS = 2500


def request(**changes) -> AnalysisRequest:
    doc = {"data_model": STROKE.key, "datasets": ("hospital_a", "hospital_b"), "x": (), "y": ("age",),
           "filters": None, "parameters": {"bins": 10}}
    doc.update(changes)
    return AnalysisRequest(**doc)


def query(analysis: AnalysisRequest | None = None, algorithm: str = "multiple_histograms", *, mechanism="laplace",
          epsilon=1.0) -> bytes:
    analysis = analysis or request()
    return canonical_query(algorithm, analysis, STROKE, list(analysis.y) + list(analysis.x), mechanism=mechanism,
                           epsilon=epsilon, delta=0.0)


def frame(n: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2 ** 63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    data = pd.DataFrame({"age": rng.uniform(18, 90, n).round(1), "dataset": rng.choice(["hospital_a", "hospital_b"], n)})
    return keys, data


def version(i: int) -> bytes:
    """A data version (:func:`data_version` is a SHA-256 digest): one per ``i``."""
    return hashlib.sha256(str(i).encode()).digest()


def noisy_histogram(q: bytes, keys: np.ndarray, data: pd.DataFrame, *, mechanism="laplace", at: int = 0
                    ) -> np.ndarray:
    noise = KeyedNoise(mechanism, 1.0, 1e-6, 1, key=KEY, query=q, version=version(at))
    counts = np.histogram(data["age"], bins=10, range=(18, 90))[0]
    return noise.add(counts, 1, block="overall", integer=True)


# --------------------------------------------------------------------------- consistency


def test_same_query_on_the_same_data_version_gets_the_same_noise():
    keys, data = frame(200)
    first = noisy_histogram(query(), keys, data)
    again = noisy_histogram(query(), keys, data)
    assert first.tolist() == again.tolist()
    # a request with the datasets in another order, or another analysis id, is the same query
    assert query(request(datasets=("hospital_b", "hospital_a"))) == query()
    exact = np.histogram(data["age"], bins=10, range=(18, 90))[0]
    assert not np.array_equal(first, exact)  # there is noise
    # another data version (a load or a deletion): independent noise on the same counts
    assert not np.array_equal(noisy_histogram(query(), keys, data, at=1), first)


def test_the_data_version_changes_with_every_load_and_deletion_and_only_then(tmp_path):
    """What the noise is keyed on beside the query (ADR 0032, after the outside review)."""
    import sqlalchemy as sa

    from mipflow.node.home import NodeHome
    from mipflow.node.store.feature_store import FeatureStore
    from tests.mipflow.node.controls.study_helpers import stroke_rows
    from tests.nodes import load_frame

    home = standard_home(tmp_path / "n", "n")
    load_frame(home.root, STROKE, stroke_rows(3, 40, "hospital_a", "a"))
    store = FeatureStore(NodeHome(home.root).db_url)
    try:
        first = data_version(store, STROKE.key)
        assert data_version(store, STROKE.key) == first  # nothing changed: the same version
        load_frame(home.root, STROKE, stroke_rows(4, 5, "hospital_a", "b"))  # rows added
        added = data_version(store, STROKE.key)
        assert added != first
        with store.engine.connect() as conn:  # a patient's consent withdrawn
            pid = conn.execute(sa.select(store.model_table(STROKE).c._pid).limit(1)).scalar_one()
        store.delete_patients([pid])
        assert data_version(store, STROKE.key) not in (first, added)
    finally:
        store.dispose()


@pytest.mark.parametrize("changes", [
    {"parameters": {"bins": 11}}, {"y": ("nihss_admission",)}, {"x": ("sex",)},
    {"filters": {"condition": "AND", "valid": True, "rules": [
        {"id": "age", "field": "age", "type": "double", "input": "number", "operator": "greater_or_equal",
         "value": 18}]}},
    {"datasets": ("hospital_a",)},
], ids=["bins", "variable", "grouping", "filter", "datasets"])
def test_any_change_of_the_query_gets_independent_noise(changes):
    keys, data = frame(300)
    assert query(request(**changes)) != query()
    assert not np.array_equal(noisy_histogram(query(request(**changes)), keys, data), noisy_histogram(query(), keys, data))


def test_noise_parameters_are_part_of_the_key():
    """The same uniforms at two scales would give the exact value away (v = (b2 x1 - b1 x2) / (b2 - b1))."""
    assert query(epsilon=1.0) != query(epsilon=0.5)
    one = KeyedNoise("laplace", 1.0, 0.0, 1, key=KEY, query=query(), version=version(0))
    two = KeyedNoise("laplace", 0.5, 0.0, 1, key=KEY, query=query(), version=version(0))  # same query bytes, other scale
    a, b = one.add([0.0] * 5, 1, block="b"), two.add([0.0] * 5, 1, block="b")
    assert not np.allclose(a * 2, b)  # not the same draws rescaled


def test_blocks_parts_calls_and_elements_get_independent_noise():
    noise = KeyedNoise("laplace", 1.0, 0.0, 2, key=KEY, query=query(), version=version(0))
    a = noise.add([0.0] * 4, 1, block="a")
    b = noise.add([0.0] * 4, 1, block="b")
    a2 = noise.add([0.0] * 4, 1, block="a")  # a second call of the same block
    p = noise.add([0.0] * 4, 1, block="a", part="d1")
    values = np.concatenate([a, b, a2, p])
    assert len(set(values.tolist())) == len(values)


def test_another_node_key_gets_other_noise():
    one = KeyedNoise("laplace", 1.0, 0.0, 1, key=KEY, query=query(), version=version(0)).add([0.0] * 3, 1, block="b")
    two = KeyedNoise("laplace", 1.0, 0.0, 1, key=noise_key(b"t" * 32), query=query(),
                     version=version(0)).add([0.0] * 3, 1, block="b")
    assert not np.array_equal(one, two)


def test_release_key_follows_the_query_and_the_data_version_only():
    """Known before any row is read, so whether a release is a repeat depends on the request and
    the data version alone (ADR 0032, after the outside review)."""
    assert release_key(KEY, query(), version(0)) == release_key(KEY, query(), version(0))
    assert release_key(KEY, query(), version(1)) != release_key(KEY, query(), version(0))
    assert release_key(KEY, query(request(parameters={"bins": 11})), version(0)) != release_key(KEY, query(), version(0))
    assert release_key(noise_key(b"t" * 32), query(), version(0)) != release_key(KEY, query(), version(0))


# --------------------------------------------------------------------------- calibration and cost


def _noise_over_selections(mechanism: str, integer: bool, *, epsilon=0.8, blocks=3, sensitivity=1.0):
    """The noise of one released value over SELECTIONS distinct data versions."""
    out = np.empty(SELECTIONS)
    q = query(mechanism=mechanism, epsilon=epsilon)
    scale = sd = None
    for i in range(SELECTIONS):
        noise = KeyedNoise(mechanism, epsilon, 1e-6, blocks, key=KEY, query=q, version=version(i))
        exact = 1000 if integer else 0.0
        out[i] = noise.add([exact], sensitivity, block="counts" if integer else "sum", integer=integer)[0] - exact
        scale, sd = noise.scale(sensitivity), noise.noise_sd()["counts" if integer else "sum"]["sd"]
    return out, scale, sd


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_noise_of_a_sum_block_has_the_declared_distribution(mechanism):
    draws, scale, sd = _noise_over_selections(mechanism, False, sensitivity=2.5)
    reference = stats.laplace(scale=scale) if mechanism == "laplace" else stats.norm(scale=scale)
    assert sd == pytest.approx(reference.std(), rel=1e-12)
    assert stats.kstest(draws, reference.cdf).pvalue > 1e-3
    assert abs(draws.mean()) < 5 * sd / math.sqrt(SELECTIONS)
    kurtosis = 6.0 if mechanism == "laplace" else 3.0
    assert abs(draws.var() / sd ** 2 - 1) < 5 * math.sqrt((kurtosis - 1) / SELECTIONS)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_noise_of_a_count_block_has_mean_zero_and_the_declared_sd(mechanism):
    draws, scale, sd = _noise_over_selections(mechanism, True)
    assert np.all(draws == np.round(draws))  # counts stay integers
    # rounding to integers adds about 1/12 to the variance of a smooth noise
    kurtosis = 6.0 if mechanism == "laplace" else 3.0
    assert abs(draws.var() / (sd ** 2 + 1 / 12) - 1) < 5 * math.sqrt((kurtosis - 1) / SELECTIONS)
    assert abs(draws.mean()) < 5 * sd / math.sqrt(SELECTIONS)
    # the rounded noise is the continuous keyed draw rounded: its CDF at k + 1/2
    reference = stats.laplace(scale=scale) if mechanism == "laplace" else stats.norm(scale=scale)
    for k in (-3, 0, 2):
        assert abs(np.mean(draws <= k) - reference.cdf(k + 0.5)) < 5 * math.sqrt(0.25 / SELECTIONS)


def test_inverse_cdf_draws():
    u = np.array([0.5, 0.75, 0.25, 1e-12, 1 - 1e-12])
    assert standard_draws("laplace", u) == pytest.approx(stats.laplace.ppf(u), rel=1e-9, abs=1e-12)
    assert standard_draws("gaussian", u) == pytest.approx(stats.norm.ppf(u), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_costs_and_scales_equal_query_noise(mechanism):
    keyed = KeyedNoise(mechanism, 0.6, 1e-6, 3, key=KEY, query=query(), version=version(7))
    plain = QueryNoise(mechanism, 0.6, 1e-6, 3)
    for noise in (keyed, plain):
        for block in ("a", "b"):
            for part in ("d0", "d1"):
                noise.add([5, 7], 1, block=block, part=part, integer=True)
        noise.add([0.3, -0.2], 2.0, block="c")
    assert keyed.scale(2.0) == plain.scale(2.0)
    assert keyed.cost() == plain.cost()
    if mechanism == "laplace":
        assert keyed.cost().epsilon == pytest.approx(0.6, rel=1e-9)


def test_float_values_are_rounded_to_a_grid_below_the_scale():
    noise = KeyedNoise("laplace", 1.0, 0.0, 1, key=KEY, query=query(), version=version(8))
    value = noise.add([1234.56789012345], 3.0, block="sum")[0]
    grid = 2.0 ** (math.floor(math.log2(noise.scale(3.0))) - 20)
    assert value / grid == round(value / grid)
    assert noise.noise_sd()["sum"] == {"sd": pytest.approx(3.0 * math.sqrt(2)), "unit": "released value"}


def test_small_noisy_cells_are_suppressed_without_complements():
    doc = {"histograms": [{"counts": [0, 1, 2, 3, 50]}, {"counts": [[1, 40], [0, 7]]}], "n": 2}
    assert suppress_noisy_cells(doc, 3) == {"histograms": [{"counts": [0, None, None, 3, 50], "suppressed_range": [1, 2]},
                                                           {"counts": [[None, 40], [0, 7]], "suppressed_range": [1, 2]}],
                                            "n": 2}
    # where nothing was hidden the range is stated all the same (the layout never depends on the rows);
    # negative noisy cells are released as they are
    assert suppress_noisy_cells({"counts": [-2, 0, 5]}, 3) == {"counts": [-2, 0, 5], "suppressed_range": [1, 2]}


# --------------------------------------------------------------------------- the admin's commands


def run_cli(capsys, *argv) -> tuple[int, dict | None, str]:
    import json

    from mipflow.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_the_explore_commands_and_exclusivity_with_studies(tmp_path, capsys):
    import json

    from mipflow.node.controls.explore import ExploreRegistry
    from mipflow.node.controls.modes import read_projects
    from tests.mipflow.node.controls.study_helpers import PROJECT, node_home, protocol

    home, _ = node_home(tmp_path / "node")
    registry = ExploreRegistry(home.root, home.key)
    assert registry.for_project(PROJECT) is None
    code, enabled, _ = run_cli(capsys, "explore", "enable", home.root, "--project", PROJECT)
    assert code == 0 and enabled["status"] == "enabled" and enabled["mode"] == "explore"
    assert registry.for_project(PROJECT) == {"mode": "explore", "enabled_at": enabled["enabled_at"]}  # no restart
    assert registry.for_project("other") is None
    code, again, _ = run_cli(capsys, "explore", "enable", home.root, "--project", PROJECT)
    assert code == 0 and again["status"] == "already enabled"
    code, shown, _ = run_cli(capsys, "explore", "show", home.root)
    assert code == 0 and set(shown["explore"]) == {PROJECT}
    assert shown["explore"][PROJECT]["spent"]["epsilon"] == 0
    assert shown["settings"]["explore_epsilon"] == 1.0 and shown["settings"]["explore_budget_epsilon"] == 20.0
    # a project in explore mode cannot get a study, and the reverse
    path = tmp_path / "protocol.json"
    path.write_text(json.dumps(protocol()))
    code, _, err = run_cli(capsys, "study", "approve", home.root, "--project", PROJECT, path)
    assert code == 2 and "is in explore mode" in err and "mipflow explore disable" in err
    code, disabled, _ = run_cli(capsys, "explore", "disable", home.root, "--project", PROJECT)
    assert code == 0 and disabled["status"] == "disabled" and read_projects(home.root) == {}
    assert registry.for_project(PROJECT) is None
    code, _, err = run_cli(capsys, "explore", "disable", home.root, "--project", PROJECT)
    assert code == 2 and "not in explore mode" in err
    code, approved, _ = run_cli(capsys, "study", "approve", home.root, "--project", PROJECT, path)
    assert code == 0 and approved["status"] == "approved"
    code, _, err = run_cli(capsys, "explore", "enable", home.root, "--project", PROJECT)
    assert code == 2 and "has an approved study" in err and "mipflow study withdraw" in err
    code, _, err = run_cli(capsys, "explore", "enable", home.root, "--project", "bad name!")
    assert code == 2 and "not a valid identity" in err


def test_explore_settings_are_checked(tmp_path):
    from mipflow.exceptions import ConfigError
    from mipflow.node.home import NodeSettings

    settings = NodeSettings()
    assert (settings.explore_mechanism, settings.explore_epsilon, settings.explore_budget_epsilon,
            settings.explore_project_budget_epsilon) == ("laplace", 1.0, 20.0, 50.0)
    assert settings.with_value("explore_mechanism", "gaussian").explore_mechanism == "gaussian"
    for key, value in (("explore_mechanism", "uniform"), ("explore_epsilon", 0), ("explore_budget_epsilon", "inf")):
        with pytest.raises(ConfigError):
            settings.with_value(key, value)
