"""Imaging at the node: DICOM de-identification (PS3.15 Annex E), features, and the ingest pipeline.

De-identification: :mod:`~mipflow.node.imaging.deidentify` (the :class:`Deidentifier`, one
instance or file) over :mod:`~mipflow.node.imaging.options`, :mod:`~mipflow.node.imaging.quarantine`,
:mod:`~mipflow.node.imaging.plan` and :mod:`~mipflow.node.imaging.actions` (Table E.1-1, as data in
:mod:`~mipflow.node.imaging.profile_table`), :mod:`~mipflow.node.imaging.uids`,
:mod:`~mipflow.node.imaging.dates`, :mod:`~mipflow.node.imaging.descriptors`,
:mod:`~mipflow.node.imaging.fileio` and :mod:`~mipflow.node.imaging.part10`.  Per-series image
features: :mod:`~mipflow.node.imaging.features`.  The node's ingest: :mod:`~mipflow.node.imaging.pipeline`.

Nothing here imports Airflow.
"""
