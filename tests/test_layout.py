"""Tests mirror the tree (issue 12): a unit test module sits beside the module it tests.

``tests/mipflow/<package>/test_<module>.py`` tests ``plugins/mipflow/<package>/<module>.py`` (or the
sub-package ``<module>/``), and ``tests/mipflow_airflow/`` mirrors the Airflow package
``plugins/mipflow_airflow/`` the same way. A test module may narrow its subject with a suffix, ``test_<module>_<aspect>.py``
(``test_kmeans_fast_paths.py``). A test module named after a module that does not exist fails, e.g.
after a rename. Cross-cutting suites are listed in ``CROSS_CUTTING`` with the source paths they
cover, which must exist too. Integration suites (``tests/integration/``), privacy attacks
(``tests/privacy/``) and DAG runs (``tests/dags/``) sit apart and are not checked here.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGINS = REPO_ROOT / "plugins"
TESTS = REPO_ROOT / "tests"

#: Test modules (relative to tests/mipflow) that cover several modules, with the source paths
#: (relative to plugins/mipflow) they cover. Keep it short; an entry named after a module anyway,
#: or whose test module is gone, fails ``test_cross_cutting_entries_are_still_needed``.
CROSS_CUTTING: dict[str, tuple[str, ...]] = {
    "test_architecture.py": (".",),  # import layers between all role packages
    "algorithms/test_exareme2_validation.py": ("algorithms",),  # Exareme2's suite over every algorithm
    "algorithms/test_federated_vs_pooled.py": ("algorithms",),  # property: federated == pooled, all algorithms
    "algorithms/test_anova_pca.py": ("algorithms/anova.py", "algorithms/pca.py"),
    # the first round's fast paths against the code they replaced (ADR 0049's amendment)
    "node/controls/test_first_round_fast_paths.py": ("node/controls/value_memory.py", "node/controls/pooled_counts.py",
                                                     "node/query/stamps.py"),
    # row accounting across the ingest passes, the DAG stages and the store's load (issue 15 item 7)
    "node/ingest/test_row_accounting.py": ("node/ingest/pipeline.py", "node/ingest/stages.py",
                                           "node/store/feature_store.py"),
    "algorithms/test_cox_fast_paths.py": ("algorithms/cox_regression.py", "algorithms/prepared.py",
                                          "algorithms/packed.py"),
    "algorithms/test_crossvalidation.py": ("algorithms/crossval.py", "algorithms/linear_regression_cv.py",
                                           "algorithms/logistic_regression_cv.py", "algorithms/naive_bayes.py"),
    # every iterate-weighted algorithm's row weights against its own sums (ADR 0054)
    "algorithms/test_row_weights.py": ("algorithms/contract.py", "algorithms/logistic_regression.py",
                                       "algorithms/logistic_regression_cv.py", "algorithms/gee.py"),
    "algorithms/test_privacy_capabilities.py": ("algorithms/contract.py", "algorithms/spec.py",
                                                "algorithms"),  # every algorithm's capabilities
    "secagg/test_federated_vs_pooled.py": ("secagg",),  # property: masked sums == pooled, all algorithms
    # consent epochs in every memory of releases (ADR 0061)
    "node/controls/test_consent_epochs.py": ("node/controls/ledger.py", "node/controls/groups.py",
                                             "node/controls/weighted_ledger.py", "node/controls/differencing.py"),
    "node/ingest/test_landing.py": ("node/files.py", "node/ingest/pipeline.py", "node/ingest/stages.py",
                                    "node/store"),  # no file names through the whole EHR pipeline
    "node/imaging/test_cli.py": ("cli.py", "node/imaging/batch.py"),  # `mipflow dicom deidentify`
    "node/imaging/test_property.py": ("node/imaging/deidentify.py",),  # property: no identifier survives
    # the longitudinal models' plots from real fits (gee, linear_mixed_model): issue 17 item 4
    "central/report/test_longitudinal_plots.py": ("central/report/plots.py", "algorithms/gee.py", "algorithms/lmm.py"),
}


#: The same for the Airflow package (relative to tests/mipflow_airflow and plugins/mipflow_airflow).
AIRFLOW_CROSS_CUTTING: dict[str, tuple[str, ...]] = {
    "test_provider_info.py": ("__init__.py",),  # get_provider_info() and the entry point
}
ROOTS = ((TESTS / "mipflow", PLUGINS / "mipflow", CROSS_CUTTING),
         (TESTS / "mipflow_airflow", PLUGINS / "mipflow_airflow", AIRFLOW_CROSS_CUTTING))


def _test_modules(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("test_*.py"))


def _mirrors(test_module: Path, source_root: Path, *, aspects: bool = True) -> bool:
    """Whether ``<dir>/test_<name>.py`` names ``<dir>/<name>.py`` or ``<dir>/<name>/`` (or, with
    ``aspects``, is ``<dir>/test_<module>_<aspect>.py`` of an existing ``<dir>/<module>.py``)."""
    folder = source_root / test_module.parent
    name = test_module.stem.removeprefix("test_")
    if (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file():
        return True
    return aspects and any(name.startswith(f"{module.stem}_") for module in folder.glob("*.py") if module.stem != "__init__")


def test_unit_test_modules_mirror_a_source_module():
    for tests_root, source_root, cross_cutting in ROOTS:
        stray = [str(p) for p in _test_modules(tests_root)
                 if str(p) not in cross_cutting and not _mirrors(p, source_root)]
        assert not stray, (f"test modules under tests/{tests_root.name}/ that mirror no module of "
                           f"plugins/{source_root.name}/ (rename them after the module they test, or list "
                           f"them as cross-cutting): {stray}")


def test_cross_cutting_entries_are_still_needed():
    for tests_root, source_root, cross_cutting in ROOTS:
        for test_module, covered in cross_cutting.items():
            assert (tests_root / test_module).is_file(), f"{test_module} is gone: remove its entry"
            assert not _mirrors(Path(test_module), source_root, aspects=False), (
                f"{test_module} mirrors a module by its name: remove its cross-cutting entry")
            missing = [path for path in covered if not (source_root / path).exists()]
            assert not missing, f"{test_module} covers plugins/{source_root.name}/{missing}, which no longer exist"


def test_test_folders_are_packages_mirroring_source_packages():
    """Each folder is a package (two ``test_cli.py`` must not collide) named after a source package."""
    for tests_root, source_root, _ in ROOTS:
        for folder in sorted(p for p in tests_root.rglob("*") if p.is_dir() and p.name != "__pycache__"):
            rel = folder.relative_to(tests_root)
            assert (folder / "__init__.py").is_file(), f"{folder.relative_to(TESTS)} has no __init__.py"
            assert (source_root / rel).is_dir(), f"tests/{folder.relative_to(TESTS)} mirrors no folder of plugins/"
