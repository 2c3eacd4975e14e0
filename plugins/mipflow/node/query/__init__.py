"""How a node reads the rows an analysis needs: filters (:mod:`.filters`), reading frames and counts
(:mod:`.read`), PostgreSQL's binary COPY decoder (:mod:`.pgcopy`)."""
from __future__ import annotations

# mipflow.node.controls.differencing (another change is under way there) still reads ROW_MD5 from
# here; drop this line once it imports mipflow.node.query.pgcopy.ROW_MD5.
from mipflow.node.query.pgcopy import ROW_MD5 as ROW_MD5  # noqa: E402
