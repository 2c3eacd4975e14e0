"""How a node reads the rows an analysis needs: filters (:mod:`.filters`), reading frames and counts
(:mod:`.read`), PostgreSQL's binary COPY decoder (:mod:`.pgcopy`)."""
