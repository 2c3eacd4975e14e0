"""The simple auth manager with a ``user`` role that cannot delete DAGs (ADR 0045)."""
from __future__ import annotations

import configparser

import pytest
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

from mipflow_airflow.auth_manager import MipflowSimpleAuthManager, is_admin, parse_methods
from tests.conftest import REPO_ROOT

SETTING = "AIRFLOW__MIPFLOW__USER_ROLE_DAG_METHODS"


def allowed(manager, role: str, method: str, access_entity=None) -> bool:
    user = SimpleAuthManagerUser(username=f"a-{role}", role=role)
    return manager.is_authorized_dag(method=method, user=user, access_entity=access_entity,
                                     details=DagDetails(id="federated_linear_regression"))


@pytest.mark.parametrize(("role", "method", "expected"), [
    pytest.param("user", "DELETE", False, id="user-cannot-delete-a-dag"),
    pytest.param("user", "GET", True, id="user-reads"),
    pytest.param("user", "POST", True, id="user-triggers"),
    pytest.param("user", "PUT", True, id="user-pauses"),
    pytest.param("viewer", "GET", True, id="viewer-reads"),
    pytest.param("viewer", "POST", False, id="viewer-cannot-trigger"),
    pytest.param("op", "DELETE", True, id="op-deletes"),
    pytest.param("admin", "DELETE", True, id="admin-deletes"),
])
def test_the_user_role_cannot_delete_dags_by_default(monkeypatch, role, method, expected):
    monkeypatch.delenv(SETTING, raising=False)
    assert allowed(MipflowSimpleAuthManager(), role, method) is expected
    # the simple auth manager itself lets the user role delete: only DELETE by a user differs
    assert allowed(SimpleAuthManager(), role, method) is (expected or (role, method) == ("user", "DELETE"))


def test_the_user_role_keeps_what_it_may_do_to_runs(monkeypatch):
    monkeypatch.delenv(SETTING, raising=False)
    assert allowed(MipflowSimpleAuthManager(), "user", "POST", DagAccessEntity.RUN)
    assert allowed(MipflowSimpleAuthManager(), "user", "DELETE", DagAccessEntity.RUN)


def test_the_setting_chooses_the_user_roles_dag_methods(monkeypatch):
    monkeypatch.setenv(SETTING, "GET, POST, PUT, DELETE")
    assert allowed(MipflowSimpleAuthManager(), "user", "DELETE")
    monkeypatch.setenv(SETTING, "GET")
    assert not allowed(MipflowSimpleAuthManager(), "user", "POST")  # read-only researchers
    assert allowed(MipflowSimpleAuthManager(), "op", "POST")
    monkeypatch.setenv(SETTING, "GET, PATCH")
    with pytest.raises(ValueError, match="user_role_dag_methods"):
        allowed(MipflowSimpleAuthManager(), "user", "DELETE")


def test_parse_methods():
    assert parse_methods(" get,post ; PUT ") == {"GET", "POST", "PUT"}
    assert parse_methods("") == frozenset()


def test_airflow_cfg_uses_it_and_keeps_delete_from_the_user_role():
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "airflow.cfg")
    assert cfg["core"]["auth_manager"] == "mipflow_airflow.auth_manager.MipflowSimpleAuthManager"
    assert "DELETE" not in parse_methods(cfg["mipflow"]["user_role_dag_methods"])


@pytest.mark.parametrize(("user", "expected"), [
    pytest.param(SimpleAuthManagerUser(username="a", role="admin"), True, id="simple-admin"),
    pytest.param(SimpleAuthManagerUser(username="a", role="ADMIN"), True, id="simple-admin-upper"),
    pytest.param(SimpleAuthManagerUser(username="a", role="op"), False, id="simple-op"),
    pytest.param(SimpleAuthManagerUser(username="a", role=None), False, id="simple-no-role"),
    pytest.param(type("FabUser", (), {"roles": [type("Role", (), {"name": "Admin"})()]})(), True, id="fab-admin"),
    pytest.param(type("FabUser", (), {"roles": [type("Role", (), {"name": "User"})()]})(), False, id="fab-user"),
])
def test_is_admin(user, expected):
    assert is_admin(user) is expected
