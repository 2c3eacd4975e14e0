"""The longitudinal transformer at a node: the rows transformed (``transform_rows``), which
algorithms take it, and its catalogue entry."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mipflow.algorithms import ALGORITHMS, get_algorithm
from mipflow.algorithms.catalogue import describe
from mipflow.algorithms.longitudinal import COMPATIBLE, SPEC, transform_rows
from mipflow.exceptions import RequestError
from mipflow.protocol.request import AnalysisRequest
from tests.conftest import SHARED_DIR
from tests.mipflow.protocol.test_longitudinal import MODEL, doc


def rows() -> pd.DataFrame:
    """p1 complete; p2 without FL1; p3 twice at BL; p4 without mmse at BL; p5 without sex at BL;
    p6 only at FL2 (never looked at); p1 also in another dataset (another patient)."""
    data = [("d1", "p1", "BL", 20, 1.0, "F"), ("d1", "p1", "FL1", 23, 1.5, "M"),
            ("d1", "p2", "BL", 25, 2.0, "M"),
            ("d1", "p3", "BL", 21, 1.0, "F"), ("d1", "p3", "BL", 22, 1.0, "F"), ("d1", "p3", "FL1", 22, 1.0, "F"),
            ("d1", "p4", "BL", None, 3.0, "M"), ("d1", "p4", "FL1", 26, 3.5, "M"),
            ("d1", "p5", "BL", 28, 4.0, None), ("d1", "p5", "FL1", 27, 4.5, "F"),
            ("d1", "p6", "FL2", 29, 5.0, "F"),
            ("d2", "p1", "BL", 10, 6.0, "M"), ("d2", "p1", "FL1", 16, 6.5, "M")]
    frame = pd.DataFrame(data, columns=["dataset", "_pid", "visitid", "mmse", "volume", "sex"])
    frame["mmse"] = frame["mmse"].astype(np.float64)
    frame["_visit"] = frame["visitid"] + np.arange(len(frame)).astype(str)
    return frame


def test_one_row_per_patient_with_both_visits_and_the_values_needed() -> None:
    transformer = AnalysisRequest.from_dict(doc()).longitudinal  # mmse diff, volume first, sex second
    frame = rows()
    done = transform_rows(frame, transformer)
    # p5 has no sex at BL, but "second" reads FL1's: kept; p4 lacks mmse at BL, which diff needs
    assert list(zip(done.data["dataset"], done.data["_pid"])) == [("d1", "p1"), ("d2", "p1"), ("d1", "p5")]
    assert done.data["mmse_diff"].tolist() == [3.0, 6.0, -1.0]
    assert done.data["volume"].tolist() == [1.0, 6.0, 4.0] and done.data["sex"].tolist() == ["M", "M", "F"]
    assert done.data["mmse_diff"].dtype == np.float64 and done.data["sex"].dtype == object
    assert set(done.data["_visit"]) == {"BL>FL1"}
    assert done.patients_seen == 6 and done.patients_used == 3 and done.patients_dropped == 3  # p2, p3, p4
    kept = frame[done.used]
    assert sorted(zip(kept["dataset"], kept["_pid"])) == sorted([("d1", "p1")] * 2 + [("d2", "p1")] * 2 + [("d1", "p5")] * 2)
    assert done.candidates.sum() == 12  # every row at BL or FL1 (not p6's FL2)


def test_nobody_with_both_visits_gives_an_empty_frame() -> None:
    transformer = AnalysisRequest.from_dict(doc(visit2="FL2")).longitudinal
    done = transform_rows(rows()[lambda f: f["_pid"] != "p6"], transformer)
    assert len(done.data) == 0 and not done.used.any() and done.patients_seen == 6


def test_compatible_algorithms_are_exareme2s() -> None:
    import json

    path = SHARED_DIR / "exareme2" / "algorithms" / "longitudinal_transformer.json"
    if not path.is_file():
        pytest.skip("../shared is not present beside the project")
    theirs = json.loads(path.read_text())
    assert list(COMPATIBLE) == theirs["compatible_algorithms"]
    assert SPEC["parameters"] == theirs["parameters"] and SPEC["name"] == theirs["name"]
    assert set(COMPATIBLE) <= set(ALGORITHMS)


def test_an_incompatible_algorithm_refuses_a_transformer() -> None:
    request = AnalysisRequest.from_dict(doc())
    view = request.longitudinal.model_view(MODEL)
    with pytest.raises(RequestError, match="not available for algorithm 'pearson_correlation'"):
        get_algorithm("pearson_correlation").validate(request, view)
    get_algorithm("linear_regression").validate(request, view)  # the transformed names are the view's


def test_the_catalogue_offers_it_to_the_compatible_algorithms_only() -> None:
    for entry in describe():
        offered = entry["preprocessing"]
        assert (entry["name"] in COMPATIBLE) == bool(offered), entry["name"]
        if offered:
            form = offered["longitudinal_transformer"]["form"]
            assert form["type"] == ["object", "null"] and form["default"] is None
