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


def test_explore_labels_keep_their_noise_sd_and_the_block_pools_it():
    """Explore mode (ADR 0032): each node's sd per block, and the sd of a value summed over the nodes."""
    def label(sd_counts: float, sd_sum: float | None = None) -> dict:
        noise_sd = {"overall": {"sd": sd_counts, "unit": "count"}}
        if sd_sum is not None:
            noise_sd["age/sum"] = {"sd": sd_sum, "unit": "sum"}
        return {"mechanism": "laplace", "epsilon": 1.0, "delta": 0.0, "rho": None, "clamped": {},
                "neighbouring": "add or remove one row", "mode": "explore", "keyed": True, "noise_sd": noise_sd}

    block = privacy_block({"a": [label(3.0, 10.0)], "b": [label(4.0)], "c": [label(12.0)]}, ["a", "b"])
    assert block["noisy_nodes"]["a"]["mode"] == "explore" and block["noisy_nodes"]["a"]["keyed"] is True
    assert block["noisy_nodes"]["b"]["noise_sd"] == {"overall": {"sd": 4.0, "unit": "count"}}
    assert block["pooled_noise_sd"] == {"overall": {"sd": 5.0, "unit": "count", "nodes": 2},  # sqrt(9 + 16)
                                        "age/sum": {"sd": 10.0, "unit": "sum", "nodes": 1}}
    # a standard DP label states no sd: nothing pooled
    plain = {k: v for k, v in label(1.0).items() if k not in ("mode", "keyed", "noise_sd")}
    assert "pooled_noise_sd" not in privacy_block({"a": [plain]}, ["a"])
