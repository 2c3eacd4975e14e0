"""The central Airflow's pool for calls to nodes (``mipflow central pools``).

An Airflow task instance occupies slots of exactly one pool, and a federated
analysis is one task that calls every node of the run (its rounds loop inside
the task).  So per-node pools cannot gate it: the central tasks that call
nodes share one pool, ``mipflow_federation``, and because each such task has at
most one call in flight per node (one call per node per round, and metadata
calls one per node), the pool's slot count is also the most concurrent calls
any one node receives from the central Airflow.  Give it the smallest
concurrency any node of the federation accepts.  See docs/adr/0017-operability.md.

The pool is created with Airflow's own CLI (``airflow pools set``), so this
module needs no Airflow import.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

DEFAULT_POOL = "mipflow_federation"  # the same default as mipflow_airflow.dags.DEFAULT_POOL (a test checks)
DEFAULT_SLOTS = 4


@dataclass(frozen=True)
class PoolSpec:
    """One Airflow pool: name, slots and description."""

    name: str
    slots: int
    description: str

    def argv(self, airflow: str = "airflow") -> list[str]:
        """The ``airflow pools set`` command that creates or updates this pool."""
        return [airflow, "pools", "set", self.name, str(self.slots), self.description]


def federation_pool(slots: int = DEFAULT_SLOTS, name: str = DEFAULT_POOL) -> PoolSpec:
    """The pool of central tasks that call nodes (``slots``: most concurrent calls per node)."""
    from mipflow.exceptions import ConfigError

    if slots < 1:
        raise ConfigError(f"a pool needs at least 1 slot, not {slots}")
    if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ConfigError(f"pool name {name!r} must be letters, digits, '_', '-' or '.'")
    return PoolSpec(name, slots, f"mipflow: central tasks that call nodes; at most {slots} concurrent "
                                 "call(s) per node")


def airflow_executable() -> str:
    """The ``airflow`` next to this Python (a virtualenv), else the one on PATH."""
    beside = Path(sys.executable).parent / "airflow"
    return str(beside) if beside.exists() else (shutil.which("airflow") or "airflow")


def create_pools(specs: Sequence[PoolSpec], *, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 airflow: str | None = None) -> list[list[str]]:
    """Create or update ``specs`` in the Airflow of this environment (``AIRFLOW_HOME``); returns the commands."""
    from mipflow.exceptions import ConfigError

    commands = [spec.argv(airflow or airflow_executable()) for spec in specs]
    for argv in commands:
        done = run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"`{' '.join(argv[:4])}` failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return commands
