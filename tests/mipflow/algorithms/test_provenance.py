"""Code approval: a digest per algorithm over the source of the modules it runs (:mod:`mipflow.algorithms.provenance`)."""
from __future__ import annotations

import hashlib
import inspect
import sys

from mipflow.algorithms.provenance import algorithm_code, catalogue, code_of


def test_algorithm_digest_covers_its_module_and_the_algorithm_modules_it_uses():
    from mipflow.algorithms import ALGORITHMS

    cat = catalogue()
    assert set(cat["algorithms"]) == set(ALGORITHMS)  # generic over the registry
    for name, algorithm in ALGORITHMS.items():
        item = cat["algorithms"][name]
        assert type(algorithm).__module__ in item["modules"] and "mipflow.algorithms.contract" in item["modules"]
        lines = ""
        for module in item["modules"]:
            with open(inspect.getsourcefile(sys.modules[module]), "rb") as handle:
                lines += f"{module} {hashlib.sha256(handle.read()).hexdigest()}\n"
        assert item["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
        assert code_of(name) == {"catalogue_version": cat["version"], "algorithm_sha256": item["sha256"]}
    # one digest per distinct body of code (two algorithms may share a module, e.g. naive Bayes)
    code_sets = {tuple(item["modules"]) for item in cat["algorithms"].values()}
    assert len({item["sha256"] for item in cat["algorithms"].values()}) == len(code_sets) > 1
    assert cat["version"].endswith("+" + cat["sha256"][:12])


def test_digest_changes_with_the_code(tmp_path, monkeypatch):
    """A module whose source changes gets another digest (a new module under the package)."""
    import importlib

    import mipflow.algorithms as package

    source = ("from mipflow.algorithms.contract import Step\n\nclass Toy:\n    name = 'toy'\n    VERSION = {v}\n")
    folder = tmp_path / "pkg"
    folder.mkdir()
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    digests = []
    for version in (1, 2):
        (folder / "toy_for_digest.py").write_text(source.format(v=version))
        sys.modules.pop("mipflow.algorithms.toy_for_digest", None)
        importlib.invalidate_caches()
        module = importlib.import_module("mipflow.algorithms.toy_for_digest")
        from mipflow.algorithms import provenance as cat_module

        cat_module._source_digest.cache_clear()
        digests.append(algorithm_code(module.Toy())["sha256"])
        assert algorithm_code(module.Toy())["modules"] == ["mipflow.algorithms.contract",
                                                             "mipflow.algorithms.toy_for_digest"]
    sys.modules.pop("mipflow.algorithms.toy_for_digest", None)
    from mipflow.algorithms import provenance as cat_module

    cat_module._source_digest.cache_clear()
    assert digests[0] != digests[1]
