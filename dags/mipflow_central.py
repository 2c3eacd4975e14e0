"""Central federated analysis DAGs: one per algorithm, triggered from a Params form.

Nodes are Airflow connections (``mipflow_node_<name>``: host = node API URL,
login = client id, password = client secret).  The default node list comes
from ``MIPFLOW_NODE_CONN_IDS`` (comma-separated) and can be changed in the
form.  Each run: check the request -> :class:`FederatedAnalysisOperator`
(rounds across nodes) -> store the result with provenance -> log a summary.
``federation_metadata`` syncs what every node holds.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

from airflow.sdk import DAG, Param, get_current_context, task

from operators.mipflow_federated import FederatedAnalysisOperator

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFAULT_NODES = [c for c in os.environ.get("MIPFLOW_NODE_CONN_IDS", "").split(",") if c]
DEFAULT_MODEL = os.environ.get("MIPFLOW_DEFAULT_DATA_MODEL", "stroke:0.1")

_ALT = Param("two-sided", type="string", enum=["two-sided", "less", "greater"], title="Alternative hypothesis")


def _alpha(default: float, title: str) -> Param:
    return Param(default, type="number", minimum=0, maximum=1, title=title)


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
    "anova": ("Two-way ANOVA (x: two nominal factors, with interaction)", False, True, True, {
        "sstype": Param(2, type="integer", enum=[1, 2], title="Type of sums of squares (1 or 2)")}),
    "pca": ("Principal component analysis (standardised variables)", True, False, False, {}),
    "pca_with_transformation": ("PCA after log / exp / center / standardize", True, False, False, {
        "data_transformation": Param({}, type=["object", "null"], title="Transformations",
                                     description='e.g. {"log": ["age"], "standardize": ["glucose_mmol"]}')}),
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
    params["min_nodes"] = Param(1, type="integer", minimum=1, title="Minimum contributing nodes")
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
        )

        @task(task_id="store_and_report")
        def store_and_report(outcome: dict) -> str:
            """Store the result with provenance and log a readable summary."""
            from mipflow.results import ResultStore, summary_lines

            run_id = get_current_context()["run_id"]
            path = ResultStore().save(run_id, outcome)
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
    params={"nodes": Param(DEFAULT_NODES, type="array", items={"type": "string"}, title="Node connections")},
    tags=["mipflow", "central"],
):

    @task
    def sync_metadata() -> dict:
        import json

        from hooks.mipflow_node import NodeHook
        from mipflow.results import central_home

        out = {}
        for conn_id in get_current_context()["params"]["nodes"]:
            client = NodeHook(conn_id).get_conn()
            try:
                meta = client.metadata()
                out[client.name] = {m["data_model"]: m["datasets"] for m in meta["data_models"]}
            except Exception as exc:  # noqa: BLE001 - one node down must not hide the others
                out[conn_id] = {"error": str(exc)}
            finally:
                client.close()
        path = central_home() / "federation_metadata.json"
        path.write_text(json.dumps(out, indent=2), encoding="utf-8")
        for node, models in out.items():
            print(f"{node}: {models}")
        return out

    sync_metadata()
