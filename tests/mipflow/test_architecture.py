"""The tree is the architecture: import rules between the role packages (ADR 0001).

Every module of the logic package is parsed (not imported) and each ``import`` it makes of
another ``mipflow`` module is checked against the layers below. Imports inside functions count
too: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
PACKAGE_ROOT = PLUGINS / "mipflow"
#: The one package that imports Airflow, and the plugin files Airflow scans (they define AirflowPlugins).
AIRFLOW_PACKAGE = PLUGINS / "mipflow_airflow"
PLUGIN_FILES = {"mipflow_node_api_plugin.py", "mipflow_ui_plugin.py"}

# Lower layers never import higher ones; packages on the same layer never import each other.
LAYERS: dict[str, int] = {
    "exceptions": 0,
    "protocol": 1,
    "algorithms": 2,
    "secagg": 3,
    "node": 4,
    "central": 4,
    "demo": 5,
    "cli": 6,
    "webui": 6,
    "lazyasgi": 1,
    "failures": 1,  # failure records of both sites' tasks
}
# Within the node: the API sits on the controls, which sit on the store and the query layer.
NODE_LAYERS: dict[str, int] = {
    "home": 0,
    "files": 0,
    "freshness": 1,
    "versions": 2,  # a data model's keyed data version (ADR 0043), read by the API
    "store": 1,
    "query": 2,
    "deid": 1,
    "imaging": 3,
    "ingest": 3,
    "ops": 4,
    "controls": 3,
    "api": 5,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from mipflow.node import ops`` imports the submodule ops
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _role(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "mipflow" or len(parts) < 2:
        return None
    return parts[1]


SOURCES = sorted(PACKAGE_ROOT.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    roles = {_role(_module_name(p)) for p in SOURCES} - {None}
    assert roles <= set(LAYERS), f"modules outside the declared layers: {sorted(roles - set(LAYERS))}"


def _problems(here: str, imports: list[tuple[int, str]]) -> list[str]:
    """What breaks the layers among ``imports`` (line, module) of module ``here``."""
    role = _role(here)
    problems = []
    for line, target in imports:
        if target.split(".")[0] in {"airflow", "mipflow_airflow"}:
            problems.append(f"line {line}: the logic package imports Airflow code ({target})")
            continue
        other = _role(target)
        if role is None or other is None or other == role or other not in LAYERS:
            if role == other == "node":
                sub_here, sub_there = here.split(".")[2:3], target.split(".")[2:3]
                if sub_here and sub_there and sub_here != sub_there:
                    a, b = NODE_LAYERS.get(sub_here[0]), NODE_LAYERS.get(sub_there[0])
                    if a is not None and b is not None and b > a:
                        problems.append(f"line {line}: node.{sub_here[0]} imports up into node.{sub_there[0]}")
            continue
        if LAYERS[other] >= LAYERS[role]:
            problems.append(f"line {line}: {role} (layer {LAYERS[role]}) imports {target} "
                            f"({other}, layer {LAYERS[other]})")
    return problems


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    problems = _problems(_module_name(path), _imports(path))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("here", "target", "broken"), [
    pytest.param("mipflow.central.rounds", "mipflow.node.store", True, id="central-imports-node"),
    pytest.param("mipflow.node.api.step", "mipflow.central.client", True, id="node-imports-central"),
    pytest.param("mipflow.algorithms.kmeans", "mipflow.secagg.policy", True, id="algorithms-import-secagg"),
    pytest.param("mipflow.protocol.request", "mipflow.algorithms.contract", True, id="protocol-imports-up"),
    pytest.param("mipflow.protocol.wire", "airflow.sdk", True, id="logic-imports-airflow"),
    pytest.param("mipflow.node.store", "mipflow.node.api.step", True, id="store-imports-api"),
    pytest.param("mipflow.node.controls.access", "mipflow.node.ops", True, id="controls-import-ops"),
    pytest.param("mipflow.node.api.step", "mipflow.node.controls.access", False, id="api-imports-controls"),
    pytest.param("mipflow.central.rounds", "mipflow.secagg", False, id="central-imports-secagg"),
    pytest.param("mipflow.cli", "mipflow.node.ops", False, id="cli-imports-node"),
])
def test_the_rules_catch_a_crossing(here: str, target: str, broken: bool) -> None:
    assert bool(_problems(here, [(1, target)])) is broken


def test_every_node_subpackage_has_a_layer() -> None:
    subs = {_module_name(p).split(".")[2] for p in SOURCES if _module_name(p).count(".") >= 2
            and _module_name(p).split(".")[1] == "node"}
    assert subs <= set(NODE_LAYERS), f"node modules without a layer: {sorted(subs - set(NODE_LAYERS))}"


def test_central_and_node_never_import_each_other() -> None:
    crossings = []
    for path in SOURCES:
        role = _role(_module_name(path))
        if role not in {"central", "node"}:
            continue
        for line, target in _imports(path):
            other = _role(target)
            if other in {"central", "node"} and other != role:
                crossings.append(f"{path.relative_to(PACKAGE_ROOT)}:{line} -> {target}")
    assert not crossings, "\n".join(crossings)


def test_only_the_airflow_package_and_the_plugin_files_import_airflow() -> None:
    """Under ``plugins/``, Airflow is imported by ``mipflow_airflow`` and the two plugin entry files only."""
    importers = set()
    for path in sorted(PLUGINS.rglob("*.py")):
        if path.is_relative_to(AIRFLOW_PACKAGE) or path.relative_to(PLUGINS).as_posix() in PLUGIN_FILES:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(name == "airflow" or name.startswith("airflow.") for name in names):
                importers.add(f"{path.relative_to(PLUGINS)}:{node.lineno}")
    assert not importers, f"Airflow imported outside plugins/mipflow_airflow: {sorted(importers)}"
    assert {p.name for p in PLUGINS.glob("*.py")} == PLUGIN_FILES
    assert sorted(p.name for p in PLUGINS.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "_")) and not p.name.endswith(".egg-info")) == [
        "mipflow", "mipflow_airflow"]
