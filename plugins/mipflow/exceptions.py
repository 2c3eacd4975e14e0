"""Exceptions raised by mipflow.

Kept small on purpose: callers branch on these types, and each message says
what went wrong and what to do about it.
"""
from __future__ import annotations


class MipflowError(Exception):
    """Base class of every error mipflow raises on purpose."""


class ConfigError(MipflowError):
    """A node home, setting or federation file is missing or invalid."""


class DataModelError(MipflowError):
    """A CDE data model file is malformed, or a variable is unknown."""


class InputFileError(MipflowError):
    """An input export cannot be read at all (encoding, format, still being written)."""


class ProfileError(MipflowError):
    """A depersonalisation or harmonisation profile is invalid for its input."""


class StoreError(MipflowError):
    """The feature store refused an operation."""


class RequestError(MipflowError):
    """An analysis request is invalid (unknown variable, bad filter, bad parameter)."""


class DisclosureError(MipflowError):
    """A node's disclosure controls refuse to release an aggregate."""

    def __init__(self, message: str, *, control: str = "") -> None:
        super().__init__(message)
        self.control = control


class FederationError(MipflowError):
    """A federated analysis cannot produce a result (too few nodes, all refused).

    ``excluded``: the nodes left out and why (node -> reason), where known.
    """

    def __init__(self, message: str, *, excluded: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.excluded = dict(excluded or {})


class DataModelNotHeld(MipflowError):
    """The node holds no data of the request's data model: it is left out of the
    analysis (HTTP 404, control ``data_model``), the request itself is not invalid."""
