"""ADR 0062, amendment 17, at the node: the noisy releases of descriptive statistics, linear regression,
Pearson correlation and histograms (differential privacy, ADR 0015 / 0021; explore mode, ADR 0032) read the selection left on
disk a chunk at a time and release what the SQL read's frame gave, byte for byte: the exact sums the noise is
added to are the same floats (recorded at the noise, compared by their hex: the noise's grid would hide a
last-bit difference in the reply), so the same keyed noise gives the same reply, rows count, label and charges."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mipflow.node.api.step import answer_step
from mipflow.node.controls.explore import KeyedNoise
from tests.mipflow.node.api.test_step import RESEARCHER, body
# the streamed exact tests' rows and node (one secret: the same explore noise key at every home)
from tests.mipflow.node.api.test_step_streamed_stats import _closed_contexts, _node, _rows  # noqa: F401
from tests.privacy.conftest import rule, where


class Recorded(KeyedNoise):
    """Keyed noise that records the exact values it is given (block, part, each value's hex)."""

    seen: list = []

    def add(self, values, sensitivity, *, block, part="", integer=False):
        Recorded.seen.append((block, part, [float(v).hex() for v in np.asarray(values, dtype=float)],
                              repr(float(sensitivity)), bool(integer)))
        return super().add(values, sensitivity, block=block, part=part, integer=integer)


def _fixed_noise(monkeypatch) -> None:
    """DP's drawn noise and explore's keyed noise made one keyed noise for every home (a fixed key, query and
    data version), recording what it is given."""
    import mipflow.node.controls.dp as dp
    import mipflow.node.controls.explore as explore

    def query_noise(mechanism, epsilon, delta, blocks, rho=None):
        return Recorded(mechanism, epsilon, delta, blocks, key=b"k" * 32, query=b"q", version=b"v", rho=rho)

    monkeypatch.setattr(dp, "QueryNoise", query_noise)
    monkeypatch.setattr(explore, "KeyedNoise", Recorded)
    monkeypatch.setattr(explore, "version_of", lambda *args, **kwargs: b"one version")


ALGORITHMS = [
    pytest.param("descriptive_stats", ["age", "glucose_mmol", "diabetes", "nihss_admission"], ["sex"],
                 id="descriptive"),
    pytest.param("linear_regression", ["glucose_mmol"], ["age", "sex", "nihss_admission"], id="linear"),
    pytest.param("pearson_correlation", ["age"], ["glucose_mmol", "nihss_admission"], id="pearson"),
    # integer counts: values clamped into the declared range, per level of the grouping variables
    pytest.param("multiple_histograms", ["glucose_mmol"], ["sex", "diabetes"], id="histogram"),
    pytest.param("multiple_histograms", ["stroke_type"], ["diabetes"], id="histogram-nominal"),
]
SELECTIONS = [
    pytest.param(None, None, id="every-row"),
    pytest.param(where(rule("age", "greater", 40)), None, id="age-filter"),
    pytest.param(where(rule("sex", "equal", "F")), ["hospital_a", "hospital_c"], id="level-filter-two-datasets"),
]
MODES = [pytest.param("dp", {"dp_enabled": True}, id="dp"),
         pytest.param("explore", {"default_mode": "explore"}, id="explore")]


@pytest.mark.parametrize("chunk", [7, None], ids=["chunks-of-7", "one-chunk"])
@pytest.mark.parametrize("mode, settings", MODES)
@pytest.mark.parametrize("filters, datasets", SELECTIONS)
@pytest.mark.parametrize("name, y, x", ALGORITHMS)
def test_noisy_releases_of_rows_on_disk_are_the_frames(name, y, x, filters, datasets, mode, settings, chunk,
                                                       tmp_path, monkeypatch) -> None:
    import mipflow.algorithms.dp_streamed as dp_streamed
    from mipflow.node.query.snapshot_rows import SnapshotRows

    _fixed_noise(monkeypatch)
    if chunk is not None:
        monkeypatch.setattr(dp_streamed, "CHUNK_ROWS", chunk)
    replies, kept, seen, audit, spent = {}, {}, {}, {}, {}
    for case, store in (("disk", {}), ("sql", {"columnar_snapshot": 0})):
        Recorded.seen = []
        context = _node(tmp_path / case, min_row_count=1, **settings, **store)
        replies[case] = answer_step(context, "central", name,
                                    body(context, y=y, x=x, filters=filters, datasets=datasets,
                                         analysis_id=mode))
        kept[case] = [type(v[1]).__name__ for v in context.selections._kept.values()]
        seen[case] = list(Recorded.seen)
        records = [r for r in context.audit.records() if r.get("decision") == "allowed"]
        audit[case] = [(r.get("rows"), r.get("cohort"), json.dumps(r.get("dp"), sort_keys=True)) for r in records]
        spent[case] = context.privacy.ledger.spent(RESEARCHER, 1e-6)
    assert kept == {"disk": [SnapshotRows.__name__], "sql": ["DataFrame"]}
    # the exact sums and counts the noise was added to: the same floats, in the same order
    assert seen["disk"] == seen["sql"] and sum(len(hexes) for _, _, hexes, _, _ in seen["disk"]) >= 6
    assert any(h != "0x0.0p+0" for _, _, hexes, _, _ in seen["disk"] for h in hexes)  # not vacuous
    assert json.dumps(replies["disk"], sort_keys=True, default=str) == \
        json.dumps(replies["sql"], sort_keys=True, default=str)
    assert replies["disk"]["rows"] == replies["sql"]["rows"]
    # the exact rows count kept at the node (the audit record), the same cohort digest and label
    assert audit["disk"] == audit["sql"] and len(audit["disk"]) == 1 and audit["disk"][0][0] > 0
    assert spent["disk"] == spent["sql"]


@pytest.mark.parametrize("mode, settings", MODES)
@pytest.mark.parametrize("name, y, x", ALGORITHMS)
def test_a_noisy_step_on_disk_reads_no_frame(name, y, x, mode, settings, tmp_path, monkeypatch) -> None:
    """The selection stays on disk: no frame read (``select_frame``), the selection kept as rows on disk, and
    the release's sums read in chunks of ``CHUNK_ROWS``."""
    import mipflow.algorithms.dp_streamed as dp_streamed
    import mipflow.node.query.read as read
    from mipflow.node.query.snapshot_rows import SnapshotRows

    _fixed_noise(monkeypatch)
    context = _node(tmp_path, min_row_count=1, **settings)

    def no_frame(*args, **kwargs):
        raise AssertionError("a frame was read")

    monkeypatch.setattr(read, "select_frame", no_frame)
    monkeypatch.setattr(dp_streamed, "CHUNK_ROWS", 16)
    chunks: list[int] = []
    inner = dp_streamed._chunks

    def counting(source, codes, chunk=None):
        for values in inner(source, codes, chunk):
            chunks.append(len(values[0]))
            yield values

    monkeypatch.setattr(dp_streamed, "_chunks", counting)
    reply = answer_step(context, "central", name, body(context, y=y, x=x, analysis_id=mode))
    assert reply["rows"] > 0 and "aggregates" in reply
    assert [type(v[1]).__name__ for v in context.selections._kept.values()] == [SnapshotRows.__name__]
    if name != "multiple_histograms":  # the release read its rows in chunks (histograms: the counting pass)
        assert chunks and max(chunks) == 16
