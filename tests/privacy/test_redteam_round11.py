"""An eleventh outside review: algorithms, parameters and channels earlier rounds left alone, from the documents only.

The reviewer read README.md, docs/privacy.md and the ADRs (0012 PCA, 0026 folds, 0032/0038 explore, 0028 study,
0034 longitudinal, 0036 GEE, 0041 LMM, 0043 standing analyses), and the test harness; not the controls' nor the
algorithms' source while looking for attacks.  Every attack runs through real node processes (``mipflow node serve``).
Threat models: a hostile researcher with a valid grant, against the shipped default (explore mode), an approved
study and a project the admin set to standard mode; and the central site with its credentials.

``test_hole_*`` PASS WHILE THE HOLE IS OPEN (each asserts what the attack recovers); ``test_defence_*`` assert the
refusal or perturbation that stopped an attack, naming the control.

Found:

1. **``pca_with_transformation``'s ``exp`` releases the extreme patient's record** (study and standard mode).  ADR
   0012: "log/exp are applied by the nodes to their rows", then the node releases ``n``, means and co-moments.  The
   exponential of a variable is dominated by its largest value: ``log(sum exp(2 g)) / 2`` is the maximum of ``g``
   (``release_extremes`` 0 says no raw extreme leaves), and the co-moment of ``exp(g)`` with any other variable is that
   patient's value of it, weighted by ``exp(g_max)``: the patient with the highest glucose, her age and NIHSS, exact
   to 1e-9, from one admitted request of an approved study (the protocol lists the algorithm; the transformation is a
   request parameter no approval looks at).  **Closed** (ADR 0053): in a study the protocol fixes ``log``/``exp``
   and approval checks them on every cohort; every mode holds exp-weighted sums to ``min_row_count`` rows' worth
   (``sum w / max w``, control ``dominated_sums``).
2. **The transformations' errors answer by the rows** (study mode says "admission and refusal depend on the request
   and the protocol only").  ``log`` of a cohort holding a follow-up of 0 days, and ``exp`` of a cohort holding one
   of more than 709 days (overflow), are 400s; one over 354.9 days gives a 500 (an infinite sum of squares the
   node cannot serialise); the same request on another subgroup is answered.  Subgroup by
   subgroup, the study tells which subgroups hold the one patient who left on the day of admission.  **Closed**
   (ADR 0053): in a study such requests are refused by the request alone; every mode refuses a release that is not
   finite with one fixed message (control ``non_finite``), never a 500.
3. **The metadata's ``data_version`` tells whether a withdrawn patient was at the hospital** (the central site, no
   grant needed, nothing charged).  ADR 0043 keys the version "because an unkeyed digest would date a consent
   withdrawal", but the keyed version still changes exactly when a withdrawal deletes rows and at no other time
   without a new batch (``batches_loaded`` and ``latest_batches`` unchanged): a central site that knows when a
   person withdrew everywhere (a withdrawal sent to the whole network) learns at which hospitals she was a patient.
   **Closed**: the version follows a keyed digest of the registry's withdrawn set as applied, recorded at every
   application whether or not it deleted rows (``test_defence_the_data_version_moves_alike_...``).

4. **A perfectly separated logistic regression hands the central site two patients' records through masked sums**
   (the honest-but-curious central site, in an approved study, under secure aggregation).  The Newton rounds go on
   as the coefficients diverge; the pooled Hessian and gradient are then sums whose weights ``p (1 - p)`` vanish
   for every row but the two nearest the boundary, so the central site's unmasked sums are those two rows'
   covariate vectors.  Masking hides which node; the masked-release bound of ADR 0027 ("a function of the vectors X
   would have released in the clear, each past X's controls") holds and does not help: no control looked at how many
   rows a weighted sum effectively holds.  **Closed** (ADR 0054, control ``effective_rows``): the node refuses a
   round whose weights rest on fewer than ``min_row_count`` rows in effect, and the fit ends with an error.

Held (``test_defence_*``): the separated logistic regression (hole 4, since ADR 0054); CMH's ``exposure_level`` binarisation (the node checks the unmerged three-way cells);
naive Bayes' class x level counts; patients, not rows, in GEE and the mixed model; the per-researcher explore budget
across any number of project names of a researcher-only grant; duplicated roles (a variable twice, an outcome as its
own grouping) that would double a row's weight in a noisy release; every transformation attack in explore mode.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from mipflow.exceptions import ConfigError
from mipflow.node.controls import modes, study_approval
from mipflow.node.controls.access import AccessRegistry
from mipflow.node.home import NodeHome
from mipflow.protocol.signing import issue_client, signed_headers
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import ELDERLY, MEN, WOMEN, protocol, rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, running_nodes, standard_home
from tests.privacy.test_explore_attacks import Served

pytestmark = pytest.mark.xdist_group("redteam_round11")

NODE = "hospital_a"
STUDY, STANDARD, BROWSE = "severity", "audit", "browse"
#: the patient with the highest glucose (what hole 1 must not give back)
TARGET = {"glucose_mmol": 37.93, "age": 61.4, "nihss_admission": 23.0}
#: the one patient who left follow-up on the day of admission (hole 2): a woman over 65
EARLY = {"sex": "F", "age": 78.0, "followup_days": 0.0}
STUDY_VARIABLES = ["age", "sex", "glucose_mmol", "nihss_admission", "followup_days"]


def registry(n: int = 200, seed: int = 11) -> pd.DataFrame:
    """Stroke rows with measured (real) ages and glucose; follow-up of at least a day and under 700 days except
    for the two targets' rows."""
    frame = stroke_rows(seed, n, NODE, "r11")
    rng = np.random.default_rng(seed)
    frame["age"] = np.round(rng.uniform(30, 85, n), 1)
    frame["glucose_mmol"] = np.round(rng.uniform(3, 12, n), 2)
    frame["nihss_admission"] = rng.integers(0, 30, n).astype(float)
    frame["followup_days"] = rng.integers(1, 700, n).astype(float)
    frame.loc[frame.index[1], list(TARGET)] = list(TARGET.values())
    frame.loc[frame.index[2], list(EARLY)] = list(EARLY.values())
    return frame


def pca(transformation: dict | None, y: list[str], filters: dict | None = None) -> dict[str, Any]:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": [], "y": y, "filters": filters},
            "parameters": {"data_transformation": transformation}}


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Served]:
    """The shipped settings (``NodeHome.init``: explore by default, ``release_extremes`` 0); the admin approved a
    study for project ``severity`` (PCA with transformations and descriptive statistics of five variables,
    subgroups women, men, elderly), set project ``audit`` to standard mode, and left ``browse`` at the default."""
    root = Path(tmp_path_factory.mktemp("round11")) / "node"
    home = NodeHome.init(root, NODE)
    frame = registry()
    load_frame(root, STROKE, frame)
    for project in (STUDY, STANDARD, BROWSE):
        grant_all(root, researcher="*", project=project)
    AccessRegistry(root).grant(researcher="alice", data_model="*", datasets="*", algorithms="*", expires="never",
                               note="a researcher-only grant")
    document = protocol(datasets=[NODE], variables=STUDY_VARIABLES, algorithms=["pca_with_transformation",
                                                                                 "descriptive_stats"],
                        subgroups=[{"name": "women", "filter": WOMEN}, {"name": "men", "filter": MEN},
                                   {"name": "elderly", "filter": ELDERLY}])
    document.pop("survival")
    assert study_approval.approve(home, STUDY, document)["status"] == "approved"
    modes.set_mode(root, STANDARD, "standard")
    assert NodeHome(root).settings.release_extremes == 0
    credential = issue_client(root, "central")
    with running_nodes([root]) as (url,):
        yield Served(url, credential, root, frame)


def extreme_record(reply: dict, variables: list[str], transformed: str) -> dict[str, float]:
    """The record of the row with the largest ``transformed`` value, from the released n, means and co-moments of
    ``exp(transformed)`` and the other variables: sum exp(2 g) = m2 + n mean^2 gives max g; sum v exp(g) / sum exp(g)
    gives that row's v (the other rows weigh exp(g_i - g_max) < 1e-11 here)."""
    moments = reply["aggregates"]["moments"]
    n, mean, m2 = moments["n"], np.asarray(moments["mean"]), np.asarray(moments["m2"])
    e = variables.index(transformed)
    record = {transformed: math.log(m2[e, e] + n * mean[e] ** 2) / 2}
    total = n * mean[e]
    for v, name in enumerate(variables):
        if v != e:
            record[name] = (m2[v, e] + n * mean[v] * mean[e]) / total
    return record


def no_data_in(text: str) -> None:
    """A refusal names the rule and the request's own words: no value of the rows, no count."""
    for value in ("37.9", "61.4", "23.0", "78.0", "0.0", "row(s)"):
        assert value not in text, text


def test_defence_pca_exp_transformation_is_refused_in_a_study_and_when_dominated_in_standard_mode(node) -> None:
    """Hole 1, closed (ADR 0053).  Class: a non-linear transformation parameter of an admitted algorithm.  In the
    study the transformations are the protocol's (like ``histogram_bins``): this protocol fixes none, so ``exp`` on
    glucose is refused from the request (control ``study``, the message says what to send).  In standard mode the
    exp-weighted sums hold fewer than ``min_row_count`` rows' worth (the highest glucose takes nearly all their
    weight): refused ``dominated_sums``, the co-moments never sent.  The same request without ``exp`` is answered
    in both (the extreme record is not in plain moments)."""
    variables = ["glucose_mmol", "age", "nihss_admission"]
    for project, control in ((STUDY, "study"), (STANDARD, "dominated_sums")):
        reply = node.call("pca_with_transformation", pca({"exp": ["glucose_mmol"]}, variables), project=project)
        assert (reply.status_code, reply.json()["control"]) == (403, control), reply.text
        assert "aggregates" not in reply.json()
        no_data_in(reply.json()["refused"])
        plain = node.call("pca_with_transformation", pca({"standardize": ["age"]}, variables), project=project)
        assert plain.status_code == 200, plain.text
    study = node.call("pca_with_transformation", pca({"exp": ["glucose_mmol"]}, variables), project=STUDY)
    assert 'data_transformation {}' in study.json()["refused"]  # the protocol's: none for these variables
    assert node.rows["glucose_mmol"].nlargest(2).iloc[1] < 12  # one patient: an extreme, not a group


def test_defence_transformation_requests_of_a_study_are_decided_by_the_request(node) -> None:
    """Hole 2, closed (ADR 0053).  Class: data-dependent errors in study mode.  ``log`` and ``exp`` of the follow-up
    are not the protocol's transformations: every subgroup gets the same refusal, byte for byte (control ``study``),
    whether or not it holds the patient with 0 days; ``exp`` of the follow-up (whose sums would overflow) and of
    age are refused alike, before any row is read.  The same requests with the protocol's transformations (none)
    are answered on every subgroup."""
    variables = ["age", "followup_days"]
    subgroups = (None, WOMEN, MEN, ELDERLY)
    for transformation in ({"log": ["followup_days"]}, {"exp": ["followup_days"]}, {"exp": ["age"]}):
        replies = [node.call("pca_with_transformation", pca(transformation, variables, subgroup), project=STUDY)
                   for subgroup in subgroups]
        assert {(r.status_code, r.json()["control"]) for r in replies} == {(403, "study")}, transformation
        assert len({r.content.replace(b'"node":"hospital_a",', b"") for r in replies}) == 1
        no_data_in(replies[0].json()["refused"])
    answered = [node.call("pca_with_transformation", pca({"center": ["age"]}, variables, subgroup), project=STUDY)
                for subgroup in subgroups]
    assert [r.status_code for r in answered] == [200] * 4
    early = node.rows[node.rows["followup_days"] <= 0]
    assert len(early) == 1 and early["sex"].iloc[0] == "F" and early["age"].iloc[0] >= 65
    assert 354.9 < node.rows["followup_days"].max() < 709.78  # exp would overflow the sum of squares


def test_defence_approval_checks_the_protocols_transformations_on_every_cohort(node) -> None:
    """ADR 0053: the admin's one data-reading step.  A protocol fixing ``exp`` of glucose is not approved (its
    exp-weighted sums are one patient's), nor one fixing ``log`` of the follow-up (a value of 0); one fixing ``log``
    of age is, and its requests (with that transformation, and only with it) are answered on the population and
    every subgroup: the released means are those of log(age) on the subgroup's rows, exactly."""
    home = NodeHome(node.root)
    base = dict(datasets=[NODE], variables=STUDY_VARIABLES, algorithms=["pca_with_transformation"],
                subgroups=[{"name": "women", "filter": WOMEN}, {"name": "men", "filter": MEN},
                           {"name": "elderly", "filter": ELDERLY}])
    for transformation, complaint in (({"exp": ["glucose_mmol"]}, "exp of 'glucose_mmol'"),
                                      ({"log": ["followup_days"]}, "log of 'followup_days'")):
        document = protocol(**base, data_transformation=transformation)
        document.pop("survival")
        with pytest.raises(ConfigError, match=complaint):
            study_approval.approve(home, "transforms", document)
    document = protocol(**base, data_transformation={"log": ["age"]})
    document.pop("survival")
    assert study_approval.approve(home, "transforms", document)["status"] == "approved"
    grant_all(node.root, researcher="*", project="transforms")
    variables = ["age", "glucose_mmol"]
    for subgroup, rows in ((None, node.rows), (WOMEN, node.rows[node.rows["sex"] == "F"]),
                           (MEN, node.rows[node.rows["sex"] == "M"]), (ELDERLY, node.rows[node.rows["age"] >= 65])):
        reply = node.call("pca_with_transformation", pca({"log": ["age"]}, variables, subgroup), project="transforms")
        assert reply.status_code == 200, reply.text
        mean = reply.json()["aggregates"]["moments"]["mean"]
        assert mean[0] == pytest.approx(np.log(rows["age"]).mean(), rel=1e-12)
        assert mean[1] == pytest.approx(rows["glucose_mmol"].mean(), rel=1e-12)
        refused = node.call("pca_with_transformation", pca(None, variables, subgroup), project="transforms")
        assert (refused.status_code, refused.json()["control"]) == (403, "study")
        assert '"log": ["age"]' in refused.json()["refused"]


def test_defence_a_release_that_is_not_finite_is_refused_with_one_message(tmp_path) -> None:
    """ADR 0053, every mode.  A standard-mode node with every threshold at 1 (the Exareme2 suite's settings):
    ``exp`` of a follow-up over 354.9 days makes the sum of squares infinite.  The node refuses (403, control
    ``non_finite``, one fixed message naming no value), where it answered 500; ``exp`` of age is answered."""
    from mipflow.node.controls.finite import NON_FINITE_MESSAGE

    root = tmp_path / "node"
    home = standard_home(root, NODE)
    for key in ("min_row_count", "nfilter_subset", "nfilter_tab", "nfilter_glm"):
        home.set_setting(key, 1)
    frame = registry()
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project=STANDARD)
    credential = issue_client(root, "central")
    with running_nodes([root]) as (url,):
        served = Served(url, credential, root, frame)
        overflow = served.call("pca_with_transformation", pca({"exp": ["followup_days"]}, ["age", "followup_days"]),
                               project=STANDARD)
        assert (overflow.status_code, overflow.json()["control"]) == (403, "non_finite"), overflow.text
        assert overflow.json()["refused"] == NON_FINITE_MESSAGE
        no_data_in(overflow.json()["refused"])
        fine = served.call("pca_with_transformation", pca({"exp": ["age"]}, ["age", "followup_days"]),
                           project=STANDARD)
        assert fine.status_code == 200, fine.text
        assert set(fine.json()["aggregates"]) == {"moments", "group_n"}
    assert 354.9 < frame["followup_days"].max() < 709.78


def test_defence_transformations_are_refused_by_the_request_in_explore_mode(node) -> None:
    """The shipped default: PCA (with or without transformations) has no noisy release, so ``check_explore``
    refuses both attacks above from the request alone (control ``explore``), the same bytes whatever the rows."""
    replies = [node.call("pca_with_transformation", pca(t, v), project=BROWSE)
               for t, v in (({"exp": ["glucose_mmol"]}, ["glucose_mmol", "age"]), ({"log": ["followup_days"]},
                                                                                    ["age", "followup_days"]))]
    assert [r.status_code for r in replies] == [403, 403]
    assert {r.json()["control"] for r in replies} == {"explore"}
    assert replies[0].json()["refused"] == replies[1].json()["refused"]


def test_defence_duplicated_roles_are_refused_before_a_noisy_release(node) -> None:
    """Class: sensitivity of a noisy release (ADR 0032: one row changes one cell by one).  A variable named twice
    (Pearson), the same variable as both margins of a contingency table, and Kaplan-Meier grouped by its own event
    variable would count a row twice or put it in a cell chosen by its outcome; each is a 400 from the request."""
    base = {"data_model": STROKE.key, "datasets": [NODE], "filters": None}
    tries = {
        "pearson_correlation": {"inputdata": {**base, "x": [], "y": ["age", "age"]}, "parameters": {}},
        "contingency_table": {"inputdata": {**base, "x": ["sex"], "y": ["sex"]}, "parameters": {}},
        "kaplan_meier": {"inputdata": {**base, "x": ["death_90d"], "y": ["followup_days", "death_90d"]},
                         "parameters": {"event_level": "yes", "bin_width": 30, "max_time": 360}},
    }
    for algorithm, request in tries.items():
        reply = node.call(algorithm, request, project=BROWSE)
        assert reply.status_code == 400, (algorithm, reply.text)


def test_defence_a_researcher_only_grant_has_one_explore_budget_across_project_names(node) -> None:
    """Class: explore budget accounting across projects.  A grant naming a researcher and no project admits any
    project name, so each name brings a fresh project budget (50); the researcher's own budget (20, for good)
    still binds: 20 rewrites of one cohort under 20 project names are answered, the 21st is refused ``dp_budget``.
    Another researcher id under that grant is refused ``access``."""
    statuses = []
    for k in range(21):
        request = {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": [], "y": ["age"],
                                 "filters": where(rule("age", "greater", 18.0 + k / 1000))}, "parameters": {}}
        reply = node.call("descriptive_stats", request, project=f"fresh-{k}", researcher="alice")
        statuses.append((reply.status_code, reply.json().get("control")))
    assert statuses[:20] == [(200, None)] * 20
    assert statuses[20] == (403, "dp_budget")
    other = node.call("descriptive_stats", {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": [],
                                                          "y": ["age"], "filters": None}, "parameters": {}},
                      project="fresh-0", researcher="alice2")
    assert (other.status_code, other.json()["control"]) == (403, "access")


# ------------------------------------------------------------------------------- standard mode, nominal cells


def nominal_registry(n: int = 240) -> pd.DataFrame:
    """Balanced sex, stroke types and deaths; 20 TIA patients of whom one woman and four men died (the three-way
    cell TIA x women x died holds 1, every two-way cell 5 or more); six had thrombolysis, one of whom died; three
    patients aged 19 with six visits each (18 rows)."""
    frame = stroke_rows(21, n, NODE, "nom")
    idx = np.arange(n)
    frame["sex"] = np.where(idx % 2 == 0, "F", "M")
    frame["stroke_type"] = np.where(idx % 4 < 2, "ischaemic", "haemorrhagic")
    frame["death_90d"] = np.where(idx % 3 == 0, "yes", "no")
    frame["thrombolysis"] = "no"
    frame["age"] = np.random.default_rng(21).integers(30, 90, n).astype(float)
    tia = frame.index[20:40]
    frame.loc[tia, "stroke_type"] = "tia"
    frame.loc[tia, "death_90d"] = "no"
    women = [i for i in tia if frame.loc[i, "sex"] == "F"]
    men = [i for i in tia if frame.loc[i, "sex"] == "M"]
    frame.loc[women[:1] + men[:4], "death_90d"] = "yes"
    thrombolysed = frame.index[60:66]
    frame.loc[thrombolysed, "thrombolysis"] = "yes"
    frame.loc[thrombolysed, "death_90d"] = ["yes", "no", "no", "no", "no", "no"]
    frame["visitid"] = "v1"
    repeated = frame.index[100:118]
    frame.loc[repeated, "subjectcode"] = [f"rep-{k // 6}" for k in range(18)]
    frame.loc[repeated, "visitid"] = [f"v{k % 6 + 1}" for k in range(18)]
    frame.loc[repeated, "age"] = 19.0
    frame.loc[repeated, "nihss_admission"] = np.arange(18, dtype=float)
    return frame


@pytest.fixture(scope="module")
def standard_node(tmp_path_factory) -> Iterator[Served]:
    root = Path(tmp_path_factory.mktemp("round11-standard")) / "node"
    standard_home(root, NODE)
    frame = nominal_registry()
    load_frame(root, STROKE, frame, visit_column="visitid")
    grant_all(root, researcher="*", project=STANDARD)
    credential = issue_client(root, "central")
    with running_nodes([root]) as (url,):
        yield Served(url, credential, root, frame)


def test_defence_cmh_exposure_levels_do_not_merge_a_three_way_cell_of_one_away(standard_node) -> None:
    """Class: a parameter that merges nominal levels (``cmh_test``'s ``exposure_level``: that level against the
    others).  With TIA x women x died = 1, the binarised tables "ischaemic vs others" and "haemorrhagic vs others"
    hold no small cell, and their difference would give the TIA cell per stratum.  The node checks the unmerged
    (stratum, exposure, outcome) cells: every level is refused ``nfilter_tab``, while the two-way table of the same
    cohort (cells of 5 or more) is answered."""
    base = {"data_model": STROKE.key, "datasets": [NODE], "filters": None, "y": ["death_90d"]}
    table = standard_node.call("contingency_table", {"inputdata": {**base, "x": ["stroke_type"]}, "parameters": {}},
                               project=STANDARD)
    assert table.status_code == 200, table.text
    for level in ("ischaemic", "haemorrhagic", "tia"):
        reply = standard_node.call("cmh_test", {"inputdata": {**base, "x": ["stroke_type", "sex"]},
                                                "parameters": {"exposure_level": level, "outcome_level": "yes"}},
                                   project=STANDARD)
        assert (reply.status_code, reply.json()["control"]) == (403, "nfilter_tab"), level


def test_defence_naive_bayes_class_by_level_counts_hold_no_single_patient(standard_node) -> None:
    """Class: per-class level counts of ``naive_bayes_categorical_cv`` (each fold's class x level table).  The one
    thrombolysed patient who died is a cell of 1: refused ``nfilter_tab`` before any fold's counts leave."""
    reply = standard_node.call("naive_bayes_categorical_cv",
                               {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "filters": None,
                                              "x": ["thrombolysis"], "y": ["death_90d"]}, "parameters": {}},
                               project=STANDARD)
    assert (reply.status_code, reply.json()["control"]) == (403, "nfilter_tab")


def test_defence_repeated_measures_models_count_patients_not_rows(standard_node) -> None:
    """Class: repeated measures (ADR 0036, 0041).  A filter selecting three patients with six visits each (18 rows,
    over ``min_row_count``) is answered by a linear regression (rows are counted there, a documented limit) but
    refused ``min_row_count`` by GEE and the mixed model: they release per-patient sums, and three patients'
    sums are three records."""
    request = {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": ["followup_days"],
                             "y": ["nihss_admission"], "filters": where(rule("age", "less", 20))}, "parameters": {}}
    rows = standard_node.call("linear_regression", request, project=STANDARD)
    assert rows.status_code == 200, rows.text
    assert rows.json()["rows"] == 18
    for algorithm in ("gee", "linear_mixed_model"):
        reply = standard_node.call(algorithm, request, project=STANDARD)
        assert (reply.status_code, reply.json()["control"]) == (403, "min_row_count"), (algorithm, reply.text)


# ------------------------------------------------------------- the central site: Newton iterates under masking


HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")


def separated_federation() -> tuple[pd.DataFrame, tuple[float, float], tuple[float, float]]:
    """Three hospitals of 80 rows that thrombolyse by protocol under 80 years (thrombolysis perfectly
    separated by age); the oldest thrombolysed patient (79.6 years, NIHSS 17, at hospital_a) and the
    youngest not thrombolysed (80.4, 17, at hospital_b) are the two rows nearest the boundary."""
    frames = []
    for i, hospital in enumerate(HOSPITALS):
        frame = stroke_rows(40 + i, 80, hospital, hospital)
        rng = np.random.default_rng(40 + i)
        frame["age"] = np.round(np.where(rng.random(80) < 0.5, rng.uniform(30, 75, 80), rng.uniform(85, 90, 80)), 1)
        frame["nihss_admission"] = rng.integers(0, 30, 80).astype(float)
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    oldest, youngest = (79.6, 17.0), (80.4, 17.0)
    data.loc[5, ["age", "nihss_admission"]] = oldest  # hospital_a
    data.loc[100, ["age", "nihss_admission"]] = youngest  # hospital_b
    data["thrombolysis"] = np.where(data["age"] < 80, "yes", "no")
    return data, oldest, youngest


def test_defence_a_separated_logistic_regression_stops_before_its_masked_sums_are_two_patients(tmp_path):
    """Hole 4, closed (ADR 0054).  Class: late rounds of an iterative fit whose weights concentrate on a
    few rows (honest-but-curious central site; study mode; secure aggregation).  The admins approved a
    study with logistic regression of thrombolysis on age and NIHSS, perfectly separated by age.  The
    attack: as the Newton iterates diverge, the weights ``p (1 - p)`` and ``y - p`` vanish for every row
    but the two nearest the boundary, so the central site's unmasked gradient ``g`` and Hessian ``H``
    give ``(H[0] + g) / (H00 + g0)`` and ``(H[0] - g) / (H00 - g0)``, those two patients' covariate
    vectors (exact to 0.01 before the defence).

    Now each node computes the effective rows of its round's weights, ``(sum w)^2 / sum w^2``, and
    refuses (control ``effective_rows``, in its audit record) the round where they fall under
    ``min_row_count``: hospital_a (its oldest thrombolysed patient now carries most of its residual weight)
    refuses, the analysis ends with an error naming the node, the control and the separation, and no
    coefficients; no restart refits the others.  The last round every node answered, unmasked, no
    longer gives either record (the weighted means it gives are more than a year of age away)."""
    from mipflow.central.rounds import run_analysis
    from mipflow.exceptions import MipflowError
    from mipflow.node.controls.audit import AUDIT_FILE, AuditLog
    from mipflow.secagg.central_side import unmask_sum
    from tests.nodes import PROJECT, pinned_federation, recording_clients

    data, oldest, youngest = separated_federation()
    request = {"inputdata": {"data_model": STROKE.key, "datasets": list(HOSPITALS), "x": ["age", "nihss_admission"],
                             "y": ["thrombolysis"], "filters": None},
               "parameters": {"positive_class": "yes", "max_iter": 16}}
    with pinned_federation(tmp_path, data, STROKE, HOSPITALS) as (roots, clients, _):
        for root in roots.values():
            document = protocol(datasets=list(HOSPITALS), variables=["age", "nihss_admission", "thrombolysis"],
                                subgroups=[], algorithms=["logistic_regression"])
            document.pop("survival")
            assert study_approval.approve(NodeHome(root), PROJECT, document)["status"] == "approved"
        with recording_clients(list(clients.values())) as (recording, seen):
            with pytest.raises(MipflowError, match="perfect separation") as info:
                run_analysis("logistic_regression", request, recording, researcher="tester", project=PROJECT)
        refused = {name: [r for r in AuditLog(root / AUDIT_FILE).records()
                          if r.get("endpoint") == "/v1/steps" and r.get("decision") == "refused"]
                   for name, root in roots.items()}
    message = str(info.value)
    assert "node(s) hospital_a refused it under effective_rows" in message and "No coefficients" in message
    assert [r["control"] for r in refused["hospital_a"]] == ["effective_rows"]
    assert refused["hospital_b"] == refused["hospital_c"] == []
    assert all(reply.get("mode", {}).get("study") for _, _, reply in seen)
    assert all(set(reply["aggregates"]) == {"secure_aggregation"} for _, _, reply in seen)  # masked, every round
    answered = {r for r in {r for _, r, _ in seen} if sum(1 for _, q, _ in seen if q == r) == len(HOSPITALS)}
    last = max(answered)
    # the refused round: hospital_b's and hospital_c's masked replies only, which do not sum without hospital_a's
    assert last >= 2 and max(r for _, r, _ in seen) == last + 1
    means = np.asarray(unmask_sum([reply["aggregates"] for _, r, reply in seen if r == 0])["moments"]["mean"])
    pooled = unmask_sum([reply["aggregates"] for _, r, reply in seen if r == last])
    g, h = np.asarray(pooled["gradient"]), np.asarray(pooled["hessian"])
    assert pooled["n"] == len(data)
    treated = (h[0] + g)[1:] / (h[0, 0] + g[0]) + means
    untreated = (h[0] - g)[1:] / (h[0, 0] - g[0]) + means
    assert abs(treated[0] - oldest[0]) > 1.0 and abs(untreated[0] - youngest[0]) > 1.0


# ------------------------------------------------------------------------------------ the central site's metadata


def test_defence_the_data_version_moves_alike_for_a_member_and_a_stranger_withdrawing(tmp_path) -> None:
    """Hole 3, closed.  Class: metadata as a membership channel (ADR 0043's ``data_version``), for the central
    site (its credentials, no grant, nothing charged).  Withdrawals go through the consent path of every ingest
    (``apply_withdrawals``): of a person who was never at this hospital, then of a patient.  The version used to
    stay for the first and move for the second (it followed the datasets registry, which only a deletion
    rewrites).  Now it follows the registry's withdrawn set as applied: it moves for both, alike, and applying
    the same registry again moves it for neither; no load is listed either way."""
    from mipflow.node.ingest.capture import ConsentRegistry
    from mipflow.node.ingest.pipeline import apply_withdrawals
    from mipflow.node.deid.pseudonyms import Pseudonymiser
    from mipflow.node.store.feature_store import FeatureStore

    root = tmp_path / "node"
    home = NodeHome.init(root, NODE)
    frame = stroke_rows(31, 60, NODE, "patient")
    pseudonyms = Pseudonymiser(home.key())
    stored = frame.assign(subjectcode=[pseudonyms.pseudonym(pid) for pid in frame["subjectcode"]])
    load_frame(root, STROKE, stored)  # as an ingest stores them: keyed pseudonyms
    credential = issue_client(root, "central")

    def withdraw(*people: str) -> int:
        lines = "".join(f"{person},withdrawn\n" for person in people)
        (tmp_path / "consent.csv").write_text("patient_id,consent\n" + lines)
        store = FeatureStore(NodeHome(root).db_url)
        try:
            return apply_withdrawals(store, ConsentRegistry.load(tmp_path / "consent.csv"), home.key())
        finally:
            store.dispose()

    with running_nodes([root]) as (url,):
        def version() -> dict:
            path = "/v1/metadata"
            headers = signed_headers(credential.client_id, credential.secret, "GET", path, b"")
            reply = httpx.get(url + path, headers=headers, timeout=30)
            assert reply.status_code == 200, reply.text
            model = next(m for m in reply.json()["data_models"] if m["data_model"] == STROKE.key)
            return model["data_version"]

        seen = [version()]
        assert withdraw("someone-never-treated-here") == 0
        seen.append(version())
        assert withdraw("someone-never-treated-here") == 0  # the same registry, applied again (next night)
        seen.append(version())
        assert withdraw("someone-never-treated-here", "patient-7") == 1
        seen.append(version())
        assert withdraw("someone-never-treated-here", "patient-7") == 0
        seen.append(version())
    moved = [a["version"] != b["version"] for a, b in zip(seen, seen[1:])]
    assert moved == [True, False, True, False]  # a stranger's withdrawal and a member's look alike
    assert all({k: v[k] for k in ("batches_loaded", "latest_batches")} ==
               {k: seen[0][k] for k in ("batches_loaded", "latest_batches")} for v in seen)
