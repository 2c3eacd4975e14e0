from __future__ import annotations

import json

import pytest

from mipflow.protocol.datamodel import DataModel, load_data_model, parse_data_model_key
from mipflow.exceptions import DataModelError

SMALL = {
    "code": "tiny", "version": "1.0", "label": "Tiny",
    "variables": [{"code": "dataset", "sql_type": "text", "isCategorical": True,
                   "enumerations": [{"code": "a", "label": "A"}, {"code": "b", "label": "B"}]}],
    "groups": [{"code": "g", "label": "G", "variables": [
        {"code": "age", "sql_type": "real", "isCategorical": False, "minValue": 0, "maxValue": 130},
    ], "groups": [{"code": "h", "variables": [
        {"code": "score", "sql_type": "int", "isCategorical": False}]}]}],
}


def test_dementia_model_loads(dementia_model):
    assert dementia_model.key == "dementia:0.1"
    assert len(dementia_model) == 184
    gender = dementia_model.variable("gender")
    assert gender.is_categorical and gender.enumeration_codes == ("M", "F")
    mmse = dementia_model.variable("minimentalstate")
    assert (mmse.sql_type, mmse.min_value, mmse.max_value) == ("int", 0.0, 30.0)
    assert "edsd0" in dementia_model.dataset_codes
    assert dementia_model.table_name == "dm_dementia_0_1"


def test_nested_groups_and_paths():
    model = DataModel.from_dict(SMALL)
    assert [v.code for v in model] == ["dataset", "age", "score"]
    assert model.variable("score").group == "g/h"
    assert model.variable("age").is_numerical and not model.variable("dataset").is_numerical


@pytest.mark.parametrize("patch, message", [
    pytest.param({"code": "bad code"}, "identifier", id="bad-model-code"),
    pytest.param({"version": None}, "version", id="no-version"),
    pytest.param({"variables": [{"code": "x", "sql_type": "float"}]}, "sql_type", id="bad-sql-type"),
    pytest.param({"variables": [{"code": "x; drop", "sql_type": "int"}]}, "identifier", id="injection-in-code"),
    pytest.param({"variables": [{"code": "c", "sql_type": "text", "isCategorical": True}]}, "no enumerations",
                 id="categorical-without-enums"),
    pytest.param({"variables": [{"code": "x", "sql_type": "int", "minValue": 5, "maxValue": 1}]}, "minValue",
                 id="min-above-max"),
    pytest.param({"variables": [{"code": "x", "sql_type": "int"}, {"code": "x", "sql_type": "int"}]}, "twice",
                 id="duplicate-code"),
])
def test_invalid_models(patch, message):
    doc = dict(SMALL, **patch)
    with pytest.raises(DataModelError, match=message):
        DataModel.from_dict(doc)


def test_load_errors(tmp_path):
    with pytest.raises(DataModelError, match="does not exist"):
        load_data_model(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataModelError, match="not valid JSON"):
        load_data_model(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(SMALL))
    assert load_data_model(good).key == "tiny:1.0"


@pytest.mark.parametrize("key, expected", [("dementia:0.1", ("dementia", "0.1")), ("a:b:c", ("a", "b:c"))])
def test_parse_key(key, expected):
    assert parse_data_model_key(key) == expected


@pytest.mark.parametrize("key", ["dementia", ":0.1", "dementia:"])
def test_parse_key_errors(key):
    with pytest.raises(DataModelError, match="CODE:VERSION"):
        parse_data_model_key(key)
