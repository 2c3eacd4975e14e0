"""Central federated analysis DAGs: one per algorithm, triggered from a Params form.

Nodes are Airflow connections (``mipflow_node_<name>``: host = node API URL,
login = client id, password = client secret).  The default node list comes
from ``MIPFLOW_NODE_CONN_IDS`` (comma-separated) and can be changed in the
form.  Each run: check the request -> :class:`FederatedAnalysisOperator`
(rounds across nodes) -> store the result with provenance -> log a summary.
An analysis runs on behalf of the Airflow user who triggered the run (the
researcher) in the project named in the form; every node checks both against
its own grants.  ``federation_metadata`` syncs what every node holds (datasets
only for the triggering user and project; a scheduled run syncs data models).
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

from airflow.sdk import DAG, Param, get_current_context, task

from mipflow_airflow.dags import default_args, federation_pool
from mipflow_airflow.operators.federated import FederatedAnalysisOperator

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFAULT_NODES = [c for c in os.environ.get("MIPFLOW_NODE_CONN_IDS", "").split(",") if c]
DEFAULT_MODEL = os.environ.get("MIPFLOW_DEFAULT_DATA_MODEL", "stroke:0.1")
#: Pool of the tasks that call nodes (MIPFLOW_POOLS=1; see docs/adr/0017-operability.md), else default_pool.
NODE_POOL = {"pool": federation_pool()} if federation_pool() else {}

_ALT = Param("two-sided", type="string", enum=["two-sided", "less", "greater"], title="Alternative hypothesis")


def _alpha(default: float, title: str) -> Param:
    return Param(default, type="number", minimum=0, maximum=1, title=title)


_N_SPLITS = Param(5, type="integer", minimum=2, maximum=20, title="Number of folds")
_SEED = Param(0, type="integer", minimum=0, title="Seed of the fold assignment at each node")

#: algorithm -> (label, y is a list?, x allowed?, x is a list?, algorithm parameters as Params)
ALGORITHMS: dict[str, tuple[str, bool, bool, bool, dict[str, Param]]] = {
    "descriptive_stats": ("Descriptive statistics (no raw min/max)", True, True, True, {}),
    "pearson_correlation": ("Pearson correlation", True, True, True,
                            {"alpha": _alpha(0.95, "Confidence level")}),
    "linear_regression": ("Linear regression (OLS)", False, True, True, {}),
    "logistic_regression": ("Logistic regression", False, True, True, {
        "positive_class": Param("", type="string", title="Positive class (a level of y)")}),
    "ttest_onesample": ("One-sample t-test", False, False, False, {
        "alt_hypothesis": _ALT, "alpha": _alpha(0.05, "Significance level"),
        "mu": Param(0.0, type="number", title="Hypothesised mean")}),
    "ttest_independent": ("Independent two-sample t-test", False, True, False, {
        "alt_hypothesis": _ALT, "alpha": _alpha(0.05, "Significance level"),
        "groupA": Param("", type="string", title="Group A (a level of x)"),
        "groupB": Param("", type="string", title="Group B (a level of x)")}),
    "ttest_paired": ("Paired t-test", False, True, False, {
        "alt_hypothesis": _ALT, "alpha": _alpha(0.05, "Significance level")}),
    "anova_oneway": ("One-way ANOVA with Tukey HSD", False, True, False, {}),
    "multiple_histograms": ("Histograms (small bins suppressed)", False, True, True, {
        "bins": Param(20, type="integer", minimum=1, maximum=100, title="Bins")}),
    "contingency_table": ("Contingency table: chi-squared, G-test, Fisher (2x2)", False, True, False, {
        "yates_correction": Param("yes", type="string", enum=["yes", "no"],
                                  title="Yates' continuity correction (2x2 tables)"),
        "alt_hypothesis": _ALT,
        "alpha": _alpha(0.05, "Significance level (odds and risk ratio intervals)")}),
    "linear_regression_cv": ("Linear regression, k-fold cross-validation", False, True, True, {
        "n_splits": _N_SPLITS, "seed": _SEED}),
    "logistic_regression_cv": ("Logistic regression, k-fold cross-validation", False, True, True, {
        "positive_class": Param("", type="string", title="Positive class (a level of y)"),
        "n_splits": _N_SPLITS, "seed": _SEED,
        "roc_bins": Param(50, type="integer", minimum=2, maximum=1000, title="ROC bins (AUC is binned)")}),
    "naive_bayes_gaussian_cv": ("Gaussian naive Bayes, k-fold cross-validation", False, True, True, {
        "n_splits": _N_SPLITS, "seed": _SEED}),
    "naive_bayes_categorical_cv": ("Categorical naive Bayes, k-fold cross-validation", False, True, True, {
        "n_splits": _N_SPLITS, "seed": _SEED}),
    "kaplan_meier": ("Kaplan-Meier curves and log-rank test (binned times)", True, True, False, {
        "event_level": Param("yes", type="string", minLength=1, title="Event level (a level of the event variable)"),
        "bin_width": Param(1.0, type="number", exclusiveMinimum=0, title="Time bin width"),
        "max_time": Param(None, type=["number", "null"], title="End of follow-up (if not declared)"),
        "alpha": _alpha(0.95, "Confidence level")}),
    "cox_regression": ("Cox proportional hazards regression (binned times)", True, True, True, {
        "event_level": Param("yes", type="string", minLength=1, title="Event level (a level of the event variable)"),
        "bin_width": Param(1.0, type="number", exclusiveMinimum=0, title="Time bin width"),
        "max_time": Param(None, type=["number", "null"], title="End of follow-up (if not declared)"),
        "ties": Param("breslow", type="string", enum=["breslow", "efron"], title="Tied event times",
                      description="events sharing a time bin: Breslow's or Efron's approximation")}),
    "kmeans": ("K-means (federated Lloyd iterations)", True, False, False, {
        "k": Param(4, type="integer", minimum=1, maximum=100, title="Clusters (k)"),
        "maxiter": Param(100, type="integer", minimum=1, maximum=100, title="Maximum iterations"),
        "tol": Param(0.0001, type="number", minimum=0, maximum=1,
                     title="Tolerance (Frobenius norm of the centre shift)"),
        "init": Param("pca", type="string", enum=["pca", "exareme2"],
                      title="Initial centres (exareme2 needs release_extremes at the nodes)")}),
    "anova": ("Two-way ANOVA (x: two nominal factors, with interaction)", False, True, True, {
        "sstype": Param(2, type="integer", enum=[1, 2], title="Type of sums of squares (1 or 2)")}),
    "pca": ("Principal component analysis (standardised variables)", True, False, False, {}),
    "pca_with_transformation": ("PCA after log / exp / center / standardize", True, False, False, {
        "data_transformation": Param({}, type=["object", "null"], title="Transformations",
                                     description='e.g. {"log": ["age"], "standardize": ["glucose_mmol"]}')}),
    "cmh_test": ("Cochran-Mantel-Haenszel test (x: exposure, stratum; stratified 2x2 tables)", False, True, True, {
        "exposure_level": Param("", type="string", title="Exposure level (against the others; empty: two levels)"),
        "outcome_level": Param("", type="string", title="Outcome level (against the others; empty: two levels)"),
        "continuity_correction": Param("no", type="string", enum=["yes", "no"], title="Continuity correction"),
        "tarone_adjustment": Param("no", type="string", enum=["yes", "no"],
                                   title="Tarone's adjustment of the Breslow-Day test"),
        "alpha": _alpha(0.05, "Significance level (common odds ratio interval)")}),
}


def _form(y_list: bool, has_x: bool, x_list: bool, extra: dict[str, Param]) -> dict[str, Param]:
    params: dict[str, Param] = {
        "data_model": Param(DEFAULT_MODEL, type="string", title="Data model (CODE:VERSION)"),
        "datasets": Param([], type="array", items={"type": "string"}, minItems=1, title="Datasets"),
        "y": (Param([], type="array", items={"type": "string"}, minItems=1, title="Variables (y)") if y_list
              else Param("", type="string", minLength=1, title="Dependent variable (y)")),
    }
    if has_x:
        params["x"] = (Param([], type="array", items={"type": "string"}, title="Covariates (x)") if x_list
                       else Param("", type="string", title="Covariate / grouping variable (x)"))
    params["filters"] = Param(None, type=["object", "null"], title="Filters (jQuery QueryBuilder JSON)")
    params.update(extra)
    params["nodes"] = Param(DEFAULT_NODES, type="array", items={"type": "string"},
                            title="Node connections", description="Airflow connection ids of the nodes")
    params["project"] = Param("", type="string", minLength=1, title="Project",
                              description="the project this analysis belongs to (nodes check their grants)")
    params["min_nodes"] = Param(1, type="integer", minimum=1, title="Minimum contributing nodes",
                                description="3 or more recommended: with fewer, one node's aggregates "
                                            "can be read off the result")
    params["secure_aggregation"] = Param("auto", type="string", enum=["auto", "on", "off"],
                                         title="Secure aggregation",
                                         description="mask each node's aggregates so that only their sum is "
                                                     "seen centrally (auto: on from 3 nodes; ADR 0014)")
    return params


def _request(algorithm_params: list[str]) -> dict:
    p = get_current_context()["params"]

    def as_list(value):
        if value in (None, ""):
            return []
        return value if isinstance(value, list) else [value]

    parameters = {k: p[k] for k in algorithm_params if p.get(k) not in (None, "")}
    return {"inputdata": {"data_model": p["data_model"], "datasets": as_list(p["datasets"]),
                          "x": as_list(p.get("x")), "y": as_list(p["y"]), "filters": p.get("filters")},
            "parameters": parameters}


for _name, (_label, _y_list, _has_x, _x_list, _extra) in ALGORITHMS.items():
    with DAG(
        dag_id=f"federated_{_name}",
        description=f"Federated {_label}: aggregates only, equal to the pooled analysis",
        schedule=None,
        start_date=START,
        catchup=False,
        params=_form(_y_list, _has_x, _x_list, _extra),
        tags=["mipflow", "central", "federated"],
        default_args=default_args(),
        render_template_as_native_obj=True,
        doc_md=__doc__,
    ):

        @task(task_id="build_request")
        def build_request(algorithm_params: list[str]) -> dict:
            """Turn the form into a MIP / Exareme2 request."""
            return _request(algorithm_params)

        request = build_request(list(_extra))
        analysis = FederatedAnalysisOperator(
            task_id="run_analysis",
            algorithm=_name,
            request=request,
            node_conn_ids="{{ params.nodes }}",
            min_nodes="{{ params.min_nodes }}",
            project="{{ params.project }}",
            **NODE_POOL,
            secure_aggregation="{{ params.secure_aggregation }}",
        )

        @task(task_id="store_and_report")
        def store_and_report(outcome: dict) -> str:
            """Store the result with provenance and log a readable summary."""
            from mipflow.central.results import ResultStore, summary_lines

            context = get_current_context()
            run_id = context["run_id"]
            who = getattr(context.get("dag_run"), "triggering_user_name", None)
            path = ResultStore().save(run_id, {**outcome, "triggered_by": who})
            for line in summary_lines(outcome):
                print(line)
            print(f"result stored: {path}")
            return str(path)

        store_and_report(analysis.output)


with DAG(
    dag_id="federation_metadata",
    description="Sync what each node holds (data models, datasets, counts above threshold)",
    schedule="@hourly",
    start_date=START,
    catchup=False,
    params={"nodes": Param(DEFAULT_NODES, type="array", items={"type": "string"}, title="Node connections"),
            "project": Param("", type="string", title="Project (datasets listed for you in this project)")},
    tags=["mipflow", "central"],
    default_args=default_args(),
):

    @task(**NODE_POOL)
    def sync_metadata() -> dict:
        """What every node holds, for the triggering user and the form's project (:mod:`mipflow.central.metadata`)."""
        from mipflow.central.metadata import sync_metadata as sync
        from mipflow_airflow.hooks.node import NodeHook
        from mipflow_airflow.operators.federated import triggering_user

        context = get_current_context()
        clients = {}
        try:
            for conn_id in context["params"]["nodes"]:
                clients[conn_id] = NodeHook(conn_id).get_conn()
            return sync(clients, researcher=triggering_user(context), project=context["params"].get("project"))
        finally:
            for client in clients.values():
                client.close()

    sync_metadata()
