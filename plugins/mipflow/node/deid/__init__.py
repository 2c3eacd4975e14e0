"""Depersonalisation of EHR export rows: pseudonyms, profile rules, tabular depersonalisation.

Hospital nodes ingest EHR CSV exports (read with ``dtype=str``).  Before
anything is stored, every row is depersonalised according to the ``"deid"``
section of its source profile, a :class:`~mipflow.node.deid.profile.DeidProfile`:

* the patient identifier column is replaced by a keyed pseudonym
  (HMAC-SHA256 under the node secret, see :class:`Pseudonymiser`);
* direct identifiers and free-text columns are dropped;
* date columns are turned into ages, day counts, per-patient shifted dates or
  years (:class:`DateRule`); raw dates never pass through unshifted;
* quasi-identifiers are truncated, top-coded or dropped (:class:`QuasiRule`);
* every other column passes through unchanged.

Rows that cannot be depersonalised completely (missing patient identifier,
unparseable date, birth after the reference date, non-numeric value to
top-code) are reported in :attr:`DeidResult.row_errors` with a short reason.
Reasons and log messages name columns and formats only, never a cell value:
cell values are patient data.

Modules: :mod:`.pseudonyms` (:class:`Pseudonymiser`), :mod:`.rules` (:class:`DateRule`,
:class:`QuasiRule`), :mod:`.profile` (:class:`DeidProfile`), :mod:`.tabular`
(:func:`depersonalise`, :class:`DeidResult`).  They are pure pandas and standard library and import nothing from
Airflow.
"""
from __future__ import annotations
