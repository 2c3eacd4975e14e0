"""The privacy block of a central result (mipflow.protocol.privacy), from the nodes' labels."""
from __future__ import annotations

from mipflow.protocol.privacy import privacy_block


def test_privacy_block_names_noisy_and_exact_nodes():
    label = {"mechanism": "laplace", "epsilon": 0.5, "delta": 0.0, "rho": None, "clamped": {"age": [18.0, 90.0]},
             "neighbouring": "add or remove one row"}
    block = privacy_block({"a": [label], "c": [label]}, ["a", "b"])  # c did not contribute
    assert block["approximate"] is True and block["exact_nodes"] == ["b"]
    assert block["noisy_nodes"] == {"a": {**label, "releases": 1}}
    assert privacy_block({}, ["a", "b"]) == {}
