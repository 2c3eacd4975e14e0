"""mipflow's Airflow layer, shaped like an Airflow provider.

Everything that imports Airflow lives here; the logic it drives is the
Airflow-free :mod:`mipflow` package (docs/adr/0001-architecture.md)::

    hooks/node.py               NodeHook: one node's connection (conn_type ``mipflow_node``)
    hooks/ehr.py                EhrDatabaseHook: a hospital's EHR database (common.sql DbApiHook)
    operators/federated.py      FederatedAnalysisOperator: one federated analysis
    notifications/failure.py    FailureNotifier: every task's ``on_failure_callback``
    exceptions.py               what the hook and operator raise
    settings.py                 operations settings from the environment
    dags.py                     what the DAG files share (default_args, pools, node Params)
    demo.py                     ``python -m mipflow_airflow.demo``: the demo federation through the DAGs

Importing this package is cheap (no Airflow, no mipflow logic): DAG files import
:mod:`mipflow_airflow.dags` at parse time.  :func:`get_provider_info` is the
``apache_airflow_provider`` entry point (``pyproject.toml``), so an installed
mipflow registers its connection type and notifier with Airflow's providers manager.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """The provider metadata Airflow reads (``airflow/provider_info.schema.json``).

    ``package-name`` must be the distribution's own name (``mipflow``): Airflow
    refuses a provider whose metadata names another package.
    """
    return {
        "package-name": "mipflow",
        "name": "mipflow",
        "description": "Federated analysis of hospital data: a hook per hospital node's aggregate API, "
                       "the federated analysis operator and mipflow's failure notifier.\n",
        "versions": [__version__],
        "integrations": [{"integration-name": "mipflow", "tags": ["service"]}],
        "hooks": [{"integration-name": "mipflow", "python-modules": ["mipflow_airflow.hooks.node"]}],
        "operators": [{"integration-name": "mipflow", "python-modules": ["mipflow_airflow.operators.federated"]}],
        "connection-types": [{"connection-type": "mipflow_node", "hook-name": "mipflow node",
                              "hook-class-name": "mipflow_airflow.hooks.node.NodeHook"}],
        "notifications": ["mipflow_airflow.notifications.failure.FailureNotifier"],
    }
