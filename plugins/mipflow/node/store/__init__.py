"""The node's feature store (SQLite by default, PostgreSQL by URL).

One table per data model (``dm_<code>_<version>``), generated from its CDE
variables, keyed on ``(_pid, dataset, _visit)`` with lineage columns
(``_batch_id``, ``_source_sha256``, ``_loaded_at``), and bookkeeping tables
(:mod:`mipflow.node.store.tables`).  Loads are idempotent upserts, one
transaction per batch (:class:`mipflow.node.store.feature_store.FeatureStore`,
opened by :func:`mipflow.node.store.feature_store.open_store`).
"""
