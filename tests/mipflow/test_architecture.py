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
    "store": 1,
    "query": 2,
    "deid": 1,
    "imaging": 3,
    "ingest": 3,
    "ops": 4,
    "controls": 3,
    "api": 5,
}
# Crossings still being taken apart (issue 12). Each entry is (module, imported module); the list
# only shrinks, and an entry that no longer occurs fails the test so that it is removed.
KNOWN_CROSSINGS: set[tuple[str, str]] = {
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


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    here = _module_name(path)
    role = _role(here)
    problems = []
    known = {target for module, target in KNOWN_CROSSINGS if module == here}
    seen_known: set[str] = set()
    for line, target in _imports(path):
        hits = {k for k in known if target == k or target.startswith(k + ".")}
        if hits:
            seen_known |= hits
            continue
        top = target.split(".")[0]
        if top in {"airflow", "mipflow_airflow"}:
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
    stale = known - seen_known
    assert not stale, f"KNOWN_CROSSINGS lists imports {here} no longer makes: remove {sorted(stale)}"
    assert not problems, "\n".join(problems)


def test_central_and_node_never_import_each_other() -> None:
    crossings = []
    for path in SOURCES:
        role = _role(_module_name(path))
        if role not in {"central", "node"}:
            continue
        for line, target in _imports(path):
            other = _role(target)
            if (_module_name(path), ".".join(target.split(".")[:4])) in KNOWN_CROSSINGS:
                continue
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
