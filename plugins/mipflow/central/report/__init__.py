"""Results and node data quality as HTML pages, CSV and inline SVG plots (no Airflow imports).

Any result renders: :func:`.tables.result_tables` turns the JSON of any algorithm into
tables by the shapes it finds (scalars, parallel lists, matrices keyed by
``variables``, lists of records, dicts of dicts), so algorithms added later need
no code here.  Some shapes also get a plot (:func:`.plots.result_plots`): coefficients
with confidence intervals (regressions), histograms, a correlation heat-map,
Kaplan-Meier curves (any dict holding ``timeline`` (or ``time``) and ``survival`` lists), odds and hazard ratios and a PCA
scree plot (``eigen_vals``).  Plots are drawn server-side with matplotlib (Agg)
and inlined as SVG: no front-end build.  :mod:`.pages` puts them together.

Every number shown keeps its exact stored value in a ``data-value`` attribute,
so a reader (or a test) can check the page against the stored result.
"""
from __future__ import annotations
