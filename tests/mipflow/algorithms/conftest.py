"""Fixtures of the algorithm tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.mipflow.algorithms.helpers import read_dataset_csvs, split_by


def _family(dataset: str) -> str:
    for prefix in ("edsd", "ppmi", "desd-synthdata"):
        if dataset.startswith(prefix):
            return prefix
    return dataset


class ValidationNodes:
    """The shared CSVs of a data model, split into three nodes, loaded once."""

    FOLDERS = {"dementia:0.1": "dementia_v_0_1", "tbi:0.1": "tbi_v_0_1"}

    def __init__(self, shared_dir: Path, dementia_model) -> None:
        self.shared_dir = shared_dir
        self._cache = {"dementia:0.1": (dementia_model, None)}

    def get(self, key: str):
        from mipflow.protocol.datamodel import load_data_model

        model, nodes = self._cache.get(key, (None, None))
        if nodes is None:
            folder = self.shared_dir / "data" / self.FOLDERS[key]
            if model is None:
                model = load_data_model(folder / "CDEsMetadata.json")
            data = read_dataset_csvs(folder, model)
            if key == "dementia:0.1":
                # one node per dataset family: edsd*, ppmi*, desd-synthdata*
                nodes = split_by(data, data["dataset"].map(_family))
            else:
                # other models: three nodes by dataset, round robin
                names = sorted(data["dataset"].unique())
                node_of = {name: i % 3 for i, name in enumerate(names)}
                nodes = split_by(data, data["dataset"].map(node_of))
            self._cache[key] = (model, nodes)
        return model, nodes


@pytest.fixture(scope="session")
def validation_nodes(shared_dir, dementia_model) -> ValidationNodes:
    return ValidationNodes(shared_dir, dementia_model)

