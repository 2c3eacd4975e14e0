"""The imaging load stage: the dataset must be one the imaging data model enumerates."""
from __future__ import annotations

import pytest

from mipflow.node.imaging.load import extract_and_load
from tests.nodes import standard_home


def test_unknown_dataset_is_refused(tmp_path):
    home = standard_home(tmp_path / "elsewhere", "elsewhere")
    with pytest.raises(Exception, match="not one of the imaging:0.1 datasets"):
        extract_and_load(home, [])
