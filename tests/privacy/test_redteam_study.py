"""An outside review of study mode (ADR 0028, 0035, 0038) by a hostile researcher with a valid grant.

Written from the documents only (docs/privacy.md, the ADRs, the README): the reviewer did not read
the node's controls nor the algorithms.  One node process (``mipflow node serve``) per scenario, with
the **shipped** settings (``NodeHome.init``: explore by default, ``min_row_count`` 10, ``nfilter_tab``
3), holding stroke rows; its admin approves a plausible protocol with the CLI
(``mipflow study approve HOME --project P protocol.json``): variables age, sex, stroke_type,
nihss_admission, followup_days, death_90d; subgroups elderly (age >= 65), women, men; algorithms
linear_regression, logistic_regression, kaplan_meier, ttest_independent, anova_oneway,
multiple_histograms (10 bins).  The researcher sends only requests the study admits, through the
central site's ``run_analysis``, and reads only the results.

The data are realistic for a stroke registry: death within 90 days is common among the elderly and
rare below 65; here exactly one patient under 65 died (the target: a woman aged 52, NIHSS 23,
followed for 41 days).  Every cohort of the family is large (approval passes: population, each
subgroup and its complement >= min_row_count, atom rule), and every group inside every result is
>= nfilter_tab.  But an algorithm's internal groups (levels of a nominal study variable) are not
in the atom rule nor in the suppression pattern (documented as "not yet"), so

* ``test_hole_*`` PASS WHEN THE ATTACK SUCCEEDS (the node leaks);
* ``test_defence_*`` assert a defence that held.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from mipflow.central.rounds import run_analysis
from mipflow.exceptions import FederationError
from mipflow.node.home import NodeHome
from tests.mipflow.algorithms.survival_data import STROKE
from tests.mipflow.node.controls.study_helpers import ELDERLY, MEN, WOMEN, rule, stroke_rows, where
from tests.nodes import grant_all, load_frame, served_clients

PROJECT = "stroke-outcomes-2027"
NODE = "hospital_a"
TARGET = {"age": 52.0, "sex": "F", "nihss_admission": 23.0, "followup_days": 41.0, "death_90d": "yes"}
PROTOCOL = {"name": "stroke-outcomes", "data_model": STROKE.key, "datasets": [NODE],
            "variables": ["age", "sex", "nihss_admission", "followup_days", "death_90d"],
            "population": {"filter": None},
            "subgroups": [{"name": "elderly", "filter": ELDERLY}, {"name": "women", "filter": WOMEN},
                          {"name": "men", "filter": MEN}],
            "algorithms": ["linear_regression", "logistic_regression", "kaplan_meier", "ttest_independent",
                           "anova_oneway", "multiple_histograms"],
            "histogram_bins": 10, "note": "ethics approval 2027/01"}


def registry(seed: int, n: int, prefix: str, *, target: bool) -> pd.DataFrame:
    """Stroke rows: deaths within 90 days among the elderly (about 30 %), none below 65 but the target."""
    frame = stroke_rows(seed, n, NODE, prefix)
    frame["nihss_admission"] = frame["nihss_admission"].fillna(10.0)
    rng = np.random.default_rng(seed + 1000)
    frame["death_90d"] = np.where((frame["age"] >= 65) & (rng.random(n) < 0.3), "yes", "no")
    if target:
        for key, value in TARGET.items():
            frame.loc[0, key] = value
    return frame


def cli(*argv: str) -> dict:
    """``mipflow study ...`` as the node admin runs it; its JSON output."""
    from mipflow.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["study", *argv]) == 0
    return json.loads(out.getvalue())


def approved_node(root: Path, frame: pd.DataFrame) -> Path:
    NodeHome.init(root, NODE)  # the shipped settings
    load_frame(root, STROKE, frame)
    grant_all(root, researcher="*", project=PROJECT)
    (root / "protocol.json").write_text(json.dumps(PROTOCOL))
    approved = cli("approve", str(root), str(root / "protocol.json"), "--project", PROJECT)
    assert approved["status"] == "approved"
    return root


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Any]:
    frame = registry(7, 400, "a", target=False)  # no young death: the level cells pass
    root = approved_node(Path(tmp_path_factory.mktemp("redstudy")), frame)
    with served_clients({NODE: root}) as clients:
        yield clients[NODE]


def request(y, x=(), filters=None, **parameters) -> dict[str, Any]:
    return {"inputdata": {"data_model": STROKE.key, "datasets": [NODE], "x": list(x), "y": list(y),
                          "filters": filters}, "parameters": parameters}


def result(client, algorithm: str, req: dict, researcher: str = "mallory") -> dict:
    outcome = run_analysis(algorithm, req, [client], researcher=researcher, project=PROJECT)
    return outcome.result


def level_counts(client, variable: str, filters, by: str | None = None) -> dict:
    """Level counts of a nominal study variable (a histogram of a nominal y; ADR 0035 leaves these
    to per-result suppression); with ``by``, per level of the grouping variable too."""
    out = result(client, "multiple_histograms", request((variable,), (by,) if by else (), filters, bins=10))
    return {(h["grouping_enum"]): dict(zip(h["bins"], h["counts"])) for h in out["histogram"]}


# --- What the review found, and the rule that now stops it -----------------------------------------------
# With the study approved on these rows, six attacks recovered the target's record from admitted
# requests only: nominal level counts, ANOVA / t-test group means, two linear regressions of
# y ~ death_90d, a logistic model's intercepts, Kaplan-Meier's events (each on the population and on
# the elderly, subtracted: the young deaths, one patient), and an ANOVA before and after a refresh
# of 40 rows (one new death).  Approval and refresh now decide the cells of cohort differences by
# the nominal variables' levels (ADR 0028, level cells), so neither study can be approved.

def study_cli(*argv: str) -> tuple[int, str]:
    """``mipflow study ...`` as the node admin runs it: exit code and error text."""
    from mipflow.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["study", *argv])
    return code, err.getvalue()


def test_the_approval_that_let_six_attacks_through_is_refused_naming_the_cells(tmp_path) -> None:
    from mipflow.node.controls.study import StudyRegistry

    root = tmp_path / "node"
    NodeHome.init(root, NODE)
    load_frame(root, STROKE, registry(7, 160, "a", target=True))
    (root / "protocol.json").write_text(json.dumps(PROTOCOL))
    code, err = study_cli("approve", str(root), str(root / "protocol.json"), "--project", PROJECT)
    assert code == 2
    assert "population minus subgroup 'elderly'" in err and "death_90d=yes: 1 row(s)" in err  # the young death
    assert StudyRegistry(root).for_project(PROJECT) is None  # no exact answers: the node's default mode


def test_a_refresh_whose_new_rows_hold_one_death_is_refused(tmp_path) -> None:
    old = registry(8, 160, "b", target=False)
    root = approved_node(tmp_path / "node", old)
    snapshot = json.loads(next((root / "studies").glob("*.json")).read_text())["snapshot"]
    new = registry(9, 40, "b-new", target=False)
    new["death_90d"] = "no"
    for key, value in {"age": 71.0, "sex": "M", "nihss_admission": 17.0, "followup_days": 12.0,
                       "death_90d": "yes"}.items():
        new.loc[5, key] = value
    load_frame(root, STROKE, new)  # the hospital's next export: 40 rows, one of them a death
    code, err = study_cli("refresh", str(root), "--project", PROJECT)
    assert code == 2 and "death_90d=yes: 1 row(s) added" in err and f"stays on its snapshot of {snapshot}" in err
    assert json.loads(next((root / "studies").glob("*.json")).read_text())["snapshot"] == snapshot


# --- Defences that held ----------------------------------------------------------------------------------

def test_defence_the_young_deaths_cohort_itself_is_refused_by_the_request(node) -> None:
    """The direct route (a filter for the young deaths, the elderly complement, an intersection)
    is refused by the study from the request alone, naming the subgroups."""
    for filters in (where(rule("age", "less", 65)), where(rule("death_90d", "equal", "yes")),
                    where(rule("age", "greater_or_equal", 65), rule("sex", "equal", "F"))):
        with pytest.raises(FederationError, match=r"refused \(study\)"):
            result(node, "anova_oneway", request(("nihss_admission",), ("death_90d",), filters))
