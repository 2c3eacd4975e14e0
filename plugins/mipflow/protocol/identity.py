"""Who an analysis runs for: the researcher and project identities both sides check.

The central site refuses an analysis whose researcher or project is not a valid identity before it
calls any node (:func:`mipflow.central.rounds.run_analysis`); every node checks them again against
its own grants (:mod:`mipflow.node.controls.access`).
"""
from __future__ import annotations

import re

#: Researcher and project identities: an e-mail-like or login-like token.
IDENTITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+\-]{0,127}$")
