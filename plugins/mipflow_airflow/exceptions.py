"""What mipflow's hook and operator raise.

The operator turns mipflow's domain errors into these or into Airflow's
``AirflowFailException``: a request a node refuses or rejects, or a connection
that lacks its credential, fails the task at once (retrying cannot help);
:class:`NodesUnavailableError` is an ordinary task failure, so Airflow retries it
(``MIPFLOW_TASK_RETRIES``).  Messages are ours and carry no data values, so the
failure notifier records them.
"""
from __future__ import annotations

from airflow.sdk.exceptions import AirflowException


class MipflowAirflowError(AirflowException):
    """Base class of the errors mipflow's Airflow layer raises."""


class NodeConnectionError(MipflowAirflowError):
    """A node's Airflow connection lacks what the hook needs (fix the connection; a retry cannot help)."""


class NodesUnavailableError(MipflowAirflowError):
    """Too few nodes could be reached for the analysis; a later try may reach them (retryable)."""
