"""Fixtures of the :mod:`mipflow.central.report` tests."""
from __future__ import annotations

import pytest

from tests.mipflow.central.report.helpers import analysis_results


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return analysis_results()

