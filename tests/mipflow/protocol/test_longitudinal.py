"""The longitudinal transformer as a request carries it: parsed, checked from the request and the
data model alone, the data model's view (``mipflow.protocol.longitudinal``)."""
from __future__ import annotations

import pytest

from mipflow.exceptions import RequestError
from mipflow.protocol.datamodel import DataModel
from mipflow.protocol.request import AnalysisRequest

MODEL = DataModel.from_dict({"code": "visits", "version": "1", "variables": [
    {"code": "dataset", "sql_type": "text", "isCategorical": True, "enumerations": [{"code": "d1"}]},
    {"code": "visitid", "sql_type": "text", "isCategorical": True,
     "enumerations": [{"code": "BL"}, {"code": "FL1"}, {"code": "FL2"}]},
    {"code": "mmse", "sql_type": "int", "isCategorical": False, "minValue": 0, "maxValue": 30},
    {"code": "volume", "sql_type": "real", "isCategorical": False},
    {"code": "sex", "sql_type": "text", "isCategorical": True, "enumerations": [{"code": "F"}, {"code": "M"}]},
]})


def doc(strategies=None, **transformer) -> dict:
    params = {"visit1": "BL", "visit2": "FL1",
              "strategies": strategies if strategies is not None else {"mmse": "diff", "volume": "first", "sex": "second"}}
    params.update(transformer)
    return {"inputdata": {"data_model": "visits:1", "datasets": ["d1"], "y": ["mmse"], "x": ["volume", "sex"]},
            "parameters": {}, "preprocessing": {"longitudinal_transformer": params}}


def test_the_algorithm_sees_the_transformed_names_and_the_wire_form_round_trips() -> None:
    request = AnalysisRequest.from_dict(doc())
    assert request.y == ("mmse_diff",) and request.x == ("volume", "sex")
    wire = request.to_dict()
    assert wire["inputdata"]["y"] == ["mmse"] and wire["preprocessing"] == doc()["preprocessing"]
    assert AnalysisRequest.from_dict(wire) == request
    assert request.longitudinal.describe()["variables"] == {"mmse": "mmse_diff", "volume": "volume", "sex": "sex"}


def test_no_preprocessing_leaves_the_request_as_before() -> None:
    plain = doc()
    del plain["preprocessing"]
    request = AnalysisRequest.from_dict(plain)
    assert request.longitudinal is None and "preprocessing" not in request.to_dict()
    assert AnalysisRequest.from_dict({**plain, "preprocessing": None}) == request


@pytest.mark.parametrize("change, message", [
    (lambda d: d["preprocessing"].update(other={}), "unknown transformer 'other'"),
    (lambda d: d["preprocessing"]["longitudinal_transformer"]["strategies"].pop("sex"),
     "a strategy must be given for every variable in x and y"),
    (lambda d: d["preprocessing"]["longitudinal_transformer"]["strategies"].update(age="first"),
     "not requested: age"),
    (lambda d: d["preprocessing"]["longitudinal_transformer"]["strategies"].update(sex="mean"),
     "must be one of diff, first, second"),
    (lambda d: d["preprocessing"]["longitudinal_transformer"].update(visit2="BL"), "two different visits"),
    (lambda d: d["preprocessing"]["longitudinal_transformer"].pop("visit1"), "needs the parameter 'visit1'"),
    (lambda d: d["preprocessing"]["longitudinal_transformer"].update(seed=1), "has no parameter 'seed'"),
    (lambda d: d.update(preprocessing=["longitudinal_transformer"]), "'preprocessing' must be an object"),
])
def test_refused_by_the_request_alone(change, message) -> None:
    bad = doc()
    change(bad)
    with pytest.raises(RequestError, match=message):
        AnalysisRequest.from_dict(bad)


def test_model_view_adds_the_differences_with_their_bounds() -> None:
    view = AnalysisRequest.from_dict(doc()).longitudinal.model_view(MODEL)
    diff = view.variables["mmse_diff"]
    assert diff.is_numerical and (diff.min_value, diff.max_value) == (-30.0, 30.0)
    assert view.key == MODEL.key and view.table_name == MODEL.table_name
    assert "mmse_diff" not in MODEL
    unbounded = AnalysisRequest.from_dict(doc({"mmse": "first", "volume": "diff", "sex": "first"}))
    assert unbounded.longitudinal.model_view(MODEL).variables["volume_diff"].min_value is None


@pytest.mark.parametrize("strategies, transformer, message", [
    ({"mmse": "diff", "volume": "first", "sex": "diff"}, {}, "cannot take the difference of the nominal variable 'sex'"),
    (None, {"visit2": "FL9"}, "visit2 'FL9' is not a visit of visits:1 \\(BL, FL1, FL2\\)"),
])
def test_refused_against_the_data_model(strategies, transformer, message) -> None:
    request = AnalysisRequest.from_dict(doc(strategies, **transformer))
    with pytest.raises(RequestError, match=message):
        request.longitudinal.model_view(MODEL)


def test_a_data_model_without_visits_refuses_it() -> None:
    model = DataModel.from_dict({"code": "visits", "version": "1", "variables": [
        {"code": v.code, "sql_type": v.sql_type, "isCategorical": v.is_categorical,
         "enumerations": [{"code": c} for c in v.enumeration_codes]} for v in MODEL if v.code != "visitid"]})
    with pytest.raises(RequestError, match="no categorical 'visitid'"):
        AnalysisRequest.from_dict(doc()).longitudinal.model_view(model)
