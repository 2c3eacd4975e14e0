"""mipflow: federated analysis of hospital data on Apache Airflow.

The package holds the logic (data models, depersonalisation, validation,
feature store, algorithms, node API, CLI) and imports nothing from Airflow.
"""
from __future__ import annotations

__version__ = "0.1.0"
