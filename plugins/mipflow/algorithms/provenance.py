"""Code approval: which step code a node runs, as SHA-256 digests.

The digest of an algorithm covers the source of the module that defines it
and, transitively, of every ``mipflow.algorithms`` module it uses (the shared
base, moments, filters ...): a change to any of them changes the digest.  The
catalogue version is the package version plus a digest over every
algorithm's digest.  Nodes report both in every audit record and every reply,
and the central site records them in a result's provenance, so a result says
exactly which vetted code produced each node's aggregates.

Generic over :data:`mipflow.algorithms.ALGORITHMS`: a new algorithm module is
covered as soon as it is registered there.
"""
from __future__ import annotations

import hashlib
import inspect
import sys
import types
from functools import lru_cache
from typing import Any

from mipflow import __version__

PACKAGE = "mipflow.algorithms"


def _module_dependencies(module: types.ModuleType) -> set[str]:
    """Names of ``mipflow.algorithms`` modules ``module`` refers to at its top level."""
    out = set()
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and name.startswith(PACKAGE + ".") and name != module.__name__:
            out.add(name)
    return out


def _closure(name: str) -> list[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_module_dependencies(sys.modules[current]) - seen)
    return sorted(seen)


@lru_cache(maxsize=None)
def _source_digest(module_name: str) -> str:
    path = inspect.getsourcefile(sys.modules[module_name])
    if path is None:  # pragma: no cover - compiled modules are not part of the catalogue
        raise RuntimeError(f"no source for {module_name}")
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def algorithm_code(algorithm: Any) -> dict[str, Any]:
    """SHA-256 of one algorithm's step code and the modules it covers."""
    modules = _closure(type(algorithm).__module__)
    lines = "".join(f"{name} {_source_digest(name)}\n" for name in modules)
    return {"sha256": hashlib.sha256(lines.encode()).hexdigest(), "modules": modules}


@lru_cache(maxsize=1)
def catalogue() -> dict[str, Any]:
    """The catalogue of this process: version, digest and each algorithm's code digest."""
    from mipflow.algorithms import ALGORITHMS

    algorithms = {name: algorithm_code(alg) for name, alg in sorted(ALGORITHMS.items())}
    digest = hashlib.sha256("".join(f"{n} {a['sha256']}\n" for n, a in algorithms.items()).encode()).hexdigest()
    return {"version": f"{__version__}+{digest[:12]}", "sha256": digest, "algorithms": algorithms}


def code_of(name: str) -> dict[str, str]:
    """What a node reports about the code of algorithm ``name``: catalogue version and step digest."""
    cat = catalogue()
    return {"catalogue_version": cat["version"], "algorithm_sha256": cat["algorithms"][name]["sha256"]}
