"""Fixtures of the :mod:`mipflow.node.deid` tests."""
from __future__ import annotations

import pytest

from mipflow.node.deid.pseudonyms import Pseudonymiser

from tests.mipflow.node.deid.helpers import KEY


@pytest.fixture
def pseudonymiser() -> Pseudonymiser:
    return Pseudonymiser(KEY)

