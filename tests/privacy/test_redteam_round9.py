"""A ninth outside review: explore mode (the shipped default), study mode and the central site, from the documents only.

The reviewer read README.md, docs/privacy.md and ADR 0008-0046 (explore 0032/0038, study 0028/0035, budgets 0025,
verifiable rounds 0029, sealed sums 0046, k-means 0009/0020) and the test harness; not the controls' nor the
algorithms' source.  Every attack runs through a real node process (``mipflow node serve``) with the shipped
settings (``NodeHome.init``: explore by default, ``min_row_count`` 10, ``nfilter_tab`` 3, ``release_extremes`` 0).

``test_hole_*`` PASS WHILE THE HOLE EXISTS (each asserts what the attack recovers); ``test_defence_*`` assert the
refusal or perturbation that stopped an attack.

Found:

1. **k-means in a study releases a numerical variable's extremes and integer-level counts** (ADR 0009 says a
   cluster's "sum over 3 rows with its count and spread around a public centre does not give any one row").
   The result of an honest one-variable k-means gives, per cluster, the count ``n``, the centre (so the sum
   ``S``) and ``within_ss`` (so the sum of squares ``Q = W + S^2 / n``); in one dimension a cluster is an interval
   between the midpoints of neighbouring centres.  For an integer variable (NIHSS, 0-42) that is enough to solve:
   the top cluster of 3 (``k`` swept 10..14, each an admitted study analysis) is the multiset ``{33, 37, 42}``, so
   the raw maximum 42 leaves although ``release_extremes`` is 0; and a cluster spanning 2-3 integer values gives
   each value's exact count (3 equations, 3 unknowns): over the five analyses, the exact count of every NIHSS value
   0-23, i.e. the column's whole frequency table at integer resolution, finer than any histogram the study
   releases (protocol bins, ADR 0035 pattern), and with the top cluster, values held by one patient each.
   **Closed** (ADR 0050): k-means takes variables declared real only, refused from the request and the data
   model before any row is read; every released cluster holds ``min_row_count`` rows; a study with k-means
   is approved only if no 3 values of a real study variable hold ``min_row_count`` rows (the tie rule).

Tried and held (``test_defence_*``): explore noise keyed apart for filters that canonicalise alike but select
other rows (text values ``"012"``/``"12"``, a ``not`` group against its inner rule); one release, one charge,
for cosmetic rewrites (``and``/``AND``, dataset order); transposed tables drawing independent noise, each charged;
project-name variants (case, spaces, zero-width, full-width letters, ``*``, none) refused at access, so no fresh
project budget; an empty and a one-patient cohort decided alike, on noisy counts, by every explore algorithm.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from mipflow.central.client import NodeClient, NodeEndpoint
from mipflow.central.rounds import run_analysis
from mipflow.exceptions import ConfigError, RequestError
from mipflow.node.controls import study_approval
from mipflow.node.controls.audit import AUDIT_FILE, read_records
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import protocol, rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes
from tests.privacy.test_explore_attacks import Served

pytestmark = pytest.mark.xdist_group("redteam_round9")

NODE = "hospital_a"


# ------------------------------------------------------------------------------------ 1. k-means in a study


def kmeans_registry(seed: int = 5, n: int = 300) -> pd.DataFrame:
    """Stroke rows whose NIHSS is 0-25 but for the three most severe patients (33, 37 and 42)."""
    frame = stroke_rows(seed, n, NODE, "k")
    frame["nihss_admission"] = np.random.default_rng(seed).integers(0, 26, n).astype(float)
    frame.loc[frame.index[:3], "nihss_admission"] = [33.0, 37.0, 42.0]
    return frame


def sweep_request(y: list[str]) -> dict:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": [], "y": y, "filters": None},
            "parameters": {}}


def test_defence_kmeans_on_an_integer_variable_is_refused_from_the_request_in_a_study(tmp_path) -> None:
    """Hole 1, closed (ADR 0050): the same sweep (k-means on NIHSS, k = 10..14, in an approved study that
    allows k-means) is refused by the node from the request and the data model alone, before any row is
    read: NIHSS is declared ``int``, and k-means takes real variables only (``KMeans.y_spec``).  The
    refusal is the same bytes for every ``k`` (it depends on no row), says why and what to use instead;
    the central site refuses it before calling any node; and nothing is released."""
    root = tmp_path / "node"
    NodeHome.init(root, NODE)  # the shipped settings
    frame = kmeans_registry()
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="severity")
    # no real study variable: nothing for the tie rule (test below) to refuse, the study is approved
    document = protocol(datasets=[NODE], variables=["sex", "nihss_admission"], subgroups=[],
                        algorithms=["descriptive_stats", "kmeans"])
    document.pop("survival")
    assert study_approval.approve(NodeHome(root), "severity", document)["status"] == "approved"
    credential = issue_client(root, "central")
    request = sweep_request(["nihss_admission"])
    with running_nodes([root]) as (url,):
        node = Served(url, credential, root, frame)
        replies = []
        for k in range(10, 15):
            request["parameters"] = {"k": k}
            reply = node.call("kmeans", request, project="severity", analysis_id=f"sweep-{k}")
            assert reply.status_code == 400, reply.text
            replies.append(reply.content)
        assert len(set(replies)) == 1  # the same bytes for every k: no row behind it
        message = json.loads(replies[0])["detail"]
        assert "'nihss_admission'" in message and "of type real" in message
        assert "count of each value" in message and "multiple_histograms" in message and "0050" in message
        client = NodeClient(NodeEndpoint(NODE, url, credential.client_id, credential.secret.hex()), retries=0)
        try:
            request["parameters"] = {"k": 10}
            with pytest.raises(RequestError, match="of type real"):
                run_analysis("kmeans", request, [client], researcher="mallory", project="severity")
        finally:
            client.close()
    # the refused steps read no row: the audit records them refused, with no row count
    refused = [r for r in read_records(root / AUDIT_FILE) if r.get("algorithm") == "kmeans"]
    assert len(refused) == 5 and all(r.get("rows") is None for r in refused), refused


def test_defence_a_study_with_kmeans_on_a_real_variable_of_whole_numbers_is_not_approved(tmp_path) -> None:
    """The residual of hole 1 (ADR 0050): a variable declared real that holds whole numbers (here age, in
    years) would give the same per-value counts.  Approval reads the population once and refuses a
    protocol with k-means when the 3 most frequent values of a real study variable hold ``min_row_count``
    rows (the tie rule, ``mipflow.node.controls.study_kmeans``), naming the variable for the admin; the
    same protocol without k-means is approved."""
    root = tmp_path / "node"
    home = NodeHome.init(root, NODE)
    frame = kmeans_registry()
    assert (frame["age"] == frame["age"].round()).all()  # whole years, declared real
    load_frame(root, STROKE, frame)
    document = protocol(datasets=[NODE], variables=["age", "sex", "nihss_admission"], subgroups=[],
                        algorithms=["descriptive_stats", "kmeans"])
    document.pop("survival")
    with pytest.raises(ConfigError) as refused:
        study_approval.approve(home, "severity", document)
    message = str(refused.value)
    assert "'age'" in message and "min_row_count (10)" in message and "Leave kmeans out" in message
    assert study_approval.approve(home, "severity", {**document, "algorithms": ["descriptive_stats"]})[
        "status"] == "approved"


def continuous_registry(seed: int = 5, n: int = 300) -> pd.DataFrame:
    """Stroke rows whose age and glucose are measured, not counted (no two rows tie), in three groups."""
    frame = stroke_rows(seed, n, NODE, "k")
    rng = np.random.default_rng(seed + 1)
    group = rng.integers(0, 3, n)
    frame["age"] = np.array([35.0, 60.0, 82.0])[group] + rng.normal(0.0, 3.0, n)
    frame["glucose_mmol"] = np.array([5.0, 8.0, 11.0])[group] + rng.normal(0.0, 0.6, n)
    return frame


def test_defence_an_honest_kmeans_on_real_variables_in_a_study_answers_and_equals_pooled(tmp_path) -> None:
    """What the fix keeps: k-means on measured (real, untied) variables in an approved study passes the
    tie rule and answers exactly, equal to pooled Lloyd from the same start (numpy) to 1e-9, every
    cluster at least ``min_row_count`` rows."""
    from mipflow.algorithms.kmeans import principal_axis_centres
    from tests.mipflow.algorithms.test_kmeans import numpy_lloyd

    root = tmp_path / "node"
    home = NodeHome.init(root, NODE)
    frame = continuous_registry()
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project="metabolic")
    variables = ["age", "sex", "glucose_mmol"]
    document = protocol(datasets=[NODE], variables=variables, subgroups=[], algorithms=["kmeans"])
    document.pop("survival")
    assert study_approval.approve(home, "metabolic", document)["status"] == "approved"
    credential = issue_client(root, "central")
    request = sweep_request(["age", "glucose_mmol"])
    request["parameters"] = {"k": 3, "maxiter": 50, "tol": 1e-8}
    with running_nodes([root]) as (url,):
        client = NodeClient(NodeEndpoint(NODE, url, credential.client_id, credential.secret.hex()), retries=0)
        try:
            outcome = run_analysis("kmeans", request, [client], researcher="alice", project="metabolic")
        finally:
            client.close()
    assert outcome.mode and not outcome.excluded
    result = outcome.result
    assert "stopped" not in result and result["converged"] is True
    values = frame.dropna(subset=variables)[["age", "glucose_mmol"]].to_numpy(dtype=float)
    start = principal_axis_centres(values.mean(axis=0), np.cov(values, rowvar=False), 3)
    reference = numpy_lloyd(values, start, 1e-8, 50)
    assert result["n_obs"] == len(values) and result["n_iter"] == reference["n_iter"]
    np.testing.assert_allclose(result["centers"], reference["centers"], rtol=1e-9)
    np.testing.assert_allclose(result["inertia"], reference["inertia"], rtol=1e-9)
    assert result["cluster_counts"] == reference["counts"].tolist()
    assert min(result["cluster_counts"]) >= home.settings.min_row_count


# ------------------------------------------------------------------------------ 2-5. explore mode, the default

PROJECTS = tuple(f"p{i}" for i in range(30))
SEX, STROKE_TYPES = ["M", "F"], ["ischaemic", "haemorrhagic", "tia"]


@pytest.fixture(scope="module")
def explore_node(tmp_path_factory) -> Iterator[Served]:
    root = Path(tmp_path_factory.mktemp("redteam9-explore"))
    home = NodeHome.init(root, "hospital")
    assert home.settings.default_mode == "explore"
    frame = pd.concat([stroke_rows(1, 260, "hospital_a", "a"), stroke_rows(2, 120, "hospital_b", "b")],
                      ignore_index=True)
    frame["zip3"] = np.random.default_rng(3).choice(["012", "12", "120", "013"], len(frame))
    load_frame(root, STROKE, frame)
    for project in PROJECTS:
        grant_all(root, researcher="*", project=project)
    credential = issue_client(root, "central")
    with running_nodes([root]) as (url,):
        yield Served(url, credential, root, frame)


_projects = iter(PROJECTS)
_ids = itertools.count()


def ask(node: Served, algorithm: str, project: str, y, x=(), filters=None, datasets=("hospital_a",),
        researcher: str | None = None, **parameters: Any) -> httpx.Response:
    request = {"inputdata": {"data_model": STROKE.key, "datasets": list(datasets), "x": list(x), "y": list(y),
                             "filters": filters}, "parameters": parameters}
    return node.call(algorithm, request, project=project, researcher=researcher or f"mallory-{next(_ids)}")


def table(node: Served, project: str, filters, y="sex", x="stroke_type") -> tuple[np.ndarray, dict]:
    reply = ask(node, "contingency_table", project, (y,), (x,), filters)
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    return np.asarray(doc["aggregates"]["group_counts"]), doc


def exact_table(rows: pd.DataFrame, y="sex", x="stroke_type") -> np.ndarray:
    levels = {"sex": SEX, "stroke_type": STROKE_TYPES}
    rows = rows.dropna(subset=[y, x])
    return np.array([[int(((rows[y] == a) & (rows[x] == b)).sum()) for a in levels[y]] for b in levels[x]]).ravel()


def test_defence_filters_that_canonicalise_alike_but_select_other_rows_draw_independent_noise(explore_node):
    """Noise shared by two different selections would cancel in their difference (ADR 0032).  Tried: text
    values that are equal as numbers (``zip3`` ``"012"`` and ``"12"``), and a ``not`` group against its inner
    rule (complements: with shared noise their sum would be the exact total).  Each pair draws independent
    noise (the noise vectors differ), each release charged."""
    node = explore_node
    a = node.rows[node.rows["dataset"] == "hospital_a"]
    project = next(_projects)
    pairs = [
        ((where(rule("zip3", "equal", "012")), a[a["zip3"] == "012"]),
         (where(rule("zip3", "equal", "12")), a[a["zip3"] == "12"])),
        (({"condition": "AND", "not": True, "rules": [rule("age", "less", 60.0)], "valid": True}, a[~(a["age"] < 60)]),
         (where(rule("age", "less", 60.0)), a[a["age"] < 60])),
    ]
    for (f1, rows1), (f2, rows2) in pairs:
        got1, _ = table(node, project, f1)
        got2, _ = table(node, project, f2)
        assert not np.array_equal(exact_table(rows1), exact_table(rows2))  # other rows
        noise1, noise2 = got1 - exact_table(rows1), got2 - exact_table(rows2)
        assert not np.array_equal(noise1, noise2), (noise1, noise2)
    assert node.spent(project)[1] == 4


def test_defence_cosmetic_rewrites_are_one_release_and_transposes_are_two_charged(explore_node):
    """``and`` against ``AND`` and the datasets' order are the same release (same bytes, charged once); the
    transposed table (``y`` and ``x`` swapped) is another release: its cells carry independent noise, so the two
    do not subtract to exact cells, and it is charged."""
    node = explore_node
    project = next(_projects)
    upper = where(rule("age", "less", 70.0), rule("sex", "equal", "F"))
    lower = {"condition": "and", "rules": upper["rules"], "valid": True}
    first, doc1 = table(node, project, upper)
    again, doc2 = table(node, project, lower)
    assert np.array_equal(first, again) and doc2["privacy"]["repeat"] is True
    both = ask(node, "descriptive_stats", project, ("age",), datasets=("hospital_a", "hospital_b"))
    flipped = ask(node, "descriptive_stats", project, ("age",), datasets=("hospital_b", "hospital_a"))
    assert both.json()["aggregates"] == flipped.json()["aggregates"] and flipped.json()["privacy"]["repeat"] is True
    a = node.rows[node.rows["dataset"] == "hospital_a"]
    straight, _ = table(node, project, None)
    transposed, _ = table(node, project, None, y="stroke_type", x="sex")
    n1 = (straight - exact_table(a)).reshape(3, 2)
    n2 = (transposed - exact_table(a, "stroke_type", "sex")).reshape(2, 3)
    assert not np.array_equal(n1, n2.T), (n1, n2)
    assert node.spent(project)[1] == 4  # the table, descriptive statistics, the whole table, its transpose


@pytest.mark.parametrize("project", ["P0", "p0 ", " p0", "p0\u200b", "\uff500", "*", ""])
def test_defence_project_name_variants_get_no_fresh_budget(explore_node, project):
    """A fresh project budget (ADR 0025) from a variant of a granted project's name: every variant is refused at
    access (an invalid identity, or no grant), before anything is read or charged."""
    reply = ask(explore_node, "descriptive_stats", project, ("age",))
    assert reply.status_code == 403 and reply.json()["control"] == "access", reply.text


EXPLORE_REQUESTS = [
    ("descriptive_stats", ("age",), (), {}),
    ("multiple_histograms", ("age",), (), {"bins": 5}),
    ("linear_regression", ("age",), ("nihss_admission",), {}),
    ("pearson_correlation", ("age",), ("nihss_admission",), {}),
    ("contingency_table", ("sex",), ("stroke_type",), {}),
    ("kaplan_meier", ("followup_days", "death_90d"), (), {"event_level": "yes", "bin_width": 365.0}),
]


def test_defence_an_empty_and_a_one_patient_cohort_are_decided_on_noise_by_every_explore_algorithm(explore_node):
    """The second review's empty-cohort oracle, tried on the other five explore algorithms: an empty cohort is
    decided on its noisy count like a one-patient cohort (no algorithm refuses it for lack of rows: here
    Pearson's noisy count of an empty cohort passed ``min_row_count``), refusals are the same bytes, and every
    step is charged."""
    node = explore_node
    project = next(_projects)
    pid = node.rows.loc[node.rows["dataset"] == "hospital_a", "subjectcode"].iloc[5]
    refusals, answered = set(), []
    for algorithm, y, x, parameters in EXPLORE_REQUESTS:
        for filters in (where(rule("subjectcode", "equal", pid)), where(rule("subjectcode", "equal", "nobody-1"))):
            reply = ask(node, algorithm, project, y, x, filters, **parameters)
            assert reply.status_code in (200, 403), reply.text
            if reply.status_code == 403:
                assert reply.json()["control"] == "min_row_count"
                refusals.add(reply.content)
            else:
                doc = reply.json()
                assert doc["mode"]["mode"] == "explore" and doc["privacy"]["keyed"] is True
                answered.append(doc)
    assert len(refusals) <= 1  # one message, whatever the cohort
    assert node.spent(project)[1] == 2 * len(EXPLORE_REQUESTS)
