"""Secure aggregation: nodes mask their aggregates so the central site sees only the sum.

Each node holds a long-term X25519 key pair in its home (``secagg.key``, mode
0600).  For one step of an analysis, the central site sends every participant
the list of participants (node name and public key).  Each pair of nodes
``(i, j)`` derives a shared seed::

    shared   = X25519(private_i, public_j)
    context  = SHA-256(scheme, analysis_id, algorithm, round, request, state, participants)
    seed_ij  = HKDF-SHA256(shared, salt=scheme, info=context || sorted(public_i, public_j))

and expands it with ChaCha20 into a vector of integers mod ``2**RING_BITS``.
Node ``i`` releases ``encode(aggregate_i) + sum_j sign_ij * PRG(seed_ij)``
(``sign_ij = +1`` when ``public_i < public_j``, else ``-1``), so the masks
cancel in the sum over all participants and the central site learns the sum
of the aggregates and nothing else.  A node's masked vector on its own is
uniform in the ring.

Only additive quantities can be summed.  An algorithm takes part when its
aggregates are built from counts, sums and moments, which it declares itself
(``Algorithm.secure_aggregation``, :mod:`mipflow.algorithms.contract`;
:mod:`mipflow.secagg.policy`): a node rewrites every moments object ``{n, mean, m2}`` as its raw sums
``(n, n * mean, m2 + n * mean mean^T)`` in exact rational arithmetic, every
number is encoded in fixed point with :data:`~mipflow.secagg.codec.FRACTION_BITS` fractional bits,
and the central site turns the summed raw sums back into pooled centred
moments exactly (Python integers and fractions, no cancellation), then runs
the algorithm's own global step on that one pooled aggregate.

Two members of the algorithm contract adapt it:

* ``secure_aggregation_refusal(request) -> str | None``: why this request
  cannot be summed (e.g. k-means with Exareme2's initialisation releases
  per-node minima and maxima), checked centrally before any node is called
  and again by the node;
* ``secure_aggregates(aggregates, request, model) -> dict``: run by the node
  after its disclosure controls, before masking: rewrites the released
  aggregates into the form that is summed (descriptive statistics: the
  node's records pooled over its datasets; they are ``"explicit_only"``).

Precision and range (``RING_BITS = 192``, ``FRACTION_BITS = 64``): each
number a node releases is rounded to a multiple of ``2**-64`` (5.4e-20
absolute); a node refuses numbers of magnitude ``2**MAX_MAGNITUDE_BITS``
(``2**110``, about 1.3e33) or more, so the sum of up to ``2**16`` nodes stays
below ``2**190`` in the ring and decodes without wrapping.

Dropout: the masks of a participant set cancel only when every participant
answered.  A node that drops out after masking makes the round useless; the
central site re-runs the analysis without it.  The participant set is part
of the seed context, so the re-run uses fresh, independent masks and no seed
is ever revealed (see ``docs/adr/0014-secure-aggregation.md``).

Key authenticity: a node masks only when every other participant is pinned in
its trust store (``secagg_peers.json``) under exactly the announced key (policy
``pinned``, the default: this stops a malicious central site from substituting
keys or inventing peers); trust on first use (``tofu``) is a development setting
only, and keys it learned are refused once the policy is ``pinned`` again.

The package, by role: :mod:`~mipflow.secagg.codec` (ring, fixed point,
additive form), :mod:`~mipflow.secagg.crypto` (keys, seeds, masks),
:mod:`~mipflow.secagg.trust` (peers' keys), :mod:`~mipflow.secagg.policy`
(which analyses, from the algorithms' declarations),
:mod:`~mipflow.secagg.node_side` (a node's masked release),
:mod:`~mipflow.secagg.central_side` (sessions and the unmasked sum); the node API
serves the node's public key (:mod:`mipflow.node.api.describe`).  Other packages import
each name from the module that holds it.
"""
