"""Test-only shim for a development virtualenv that has celery 5.7 instead of the pinned 5.6.3.

apache-airflow-providers-celery 3.26.0 imports ``retry`` from ``celery.backends.database``,
which celery 5.7.0 removed (its ``DatabaseBackend`` retries through the base backend now), so
``airflow scheduler`` and ``airflow celery worker`` fail at import with that celery.
``requirements.txt`` pins ``celery[redis]==5.6.3`` (what CI and the images install, no shim).
``tests/test_celery_deployment.py`` puts this folder on the services' ``PYTHONPATH`` only when
the installed celery lacks ``retry``. The shim adds celery 5.6.3's decorator (three tries on
database errors) to the module when it is first imported; it imports nothing eagerly.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "celery.backends.database"


def _add_retry(module) -> None:
    if hasattr(module, "retry"):
        return
    from functools import wraps

    errors = (module.DatabaseError, module.InvalidRequestError, module.StaleDataError)

    def retry(fun):
        @wraps(fun)
        def _inner(*args, **kwargs):
            max_retries = kwargs.pop("max_retries", 3)
            for attempt in range(max_retries):
                try:
                    return fun(*args, **kwargs)
                except errors:
                    module.logger.warning("Failed operation %s. Retrying %s more times.", fun.__name__,
                                          max_retries - attempt - 1, exc_info=True)
                    if attempt + 1 == max_retries:
                        raise
        return _inner

    module.retry = retry


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _add_retry(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


sys.meta_path.insert(0, _Finder())
