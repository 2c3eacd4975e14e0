"""The imaging load stage: the dataset must be one the imaging data model enumerates."""
from __future__ import annotations

import pytest

from mipflow.node.home import NodeHome
from mipflow.node.imaging.load import extract_and_load


def test_unknown_dataset_is_refused(tmp_path):
    home = NodeHome.init(tmp_path / "elsewhere", "elsewhere")
    with pytest.raises(Exception, match="not one of the imaging:0.1 datasets"):
        extract_and_load(home, [])
