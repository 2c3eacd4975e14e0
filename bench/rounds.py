"""Per-round timing of a federated run for the benchmarks: wall time of each node call,
bytes on the wire, and the time the node itself spent in the step (from its audit log)."""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence


class RoundLog:
    """Wraps the HTTP client of each :class:`mipflow.central.client.NodeClient` to record every step call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def attach(self, client: Any) -> None:
        http = client._http
        original = http.request

        def request(method: str, path: str, **kwargs: Any) -> Any:
            started = time.perf_counter()
            response = original(method, path, **kwargs)
            if path.startswith("/v1/steps/"):
                self.calls.append({"node": client.name, "seconds": time.perf_counter() - started,
                                   "sent": len(kwargs.get("content") or b""), "received": len(response.content)})
            return response

        http.request = request

    def table(self, homes: Sequence[Any], algorithm: str, summary: bool = False) -> str:
        """One line per round: slowest node call, the node's own step time, bytes each way (largest node);
        with ``summary`` the first round, then the median and largest of the later rounds."""
        from mipflow.node.controls.audit import AUDIT_FILE, read_records

        node_ms: dict[tuple[str, int], float] = {}
        for home in homes:
            for rec in read_records(Path(home.root) / AUDIT_FILE):
                if rec.get("algorithm") == algorithm and rec.get("decision") == "allowed" and "ms" in rec:
                    node_ms[(home.name, int(rec["round"]))] = float(rec["ms"])
        per_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
        seen: dict[str, int] = defaultdict(int)
        for call in self.calls:
            per_round[seen[call["node"]]].append(call)
            seen[call["node"]] += 1
        rows = []
        for r, calls in sorted(per_round.items()):
            step_s = max(node_ms.get((c["node"], r), float("nan")) for c in calls) / 1000.0
            rows.append((str(r), max(c["seconds"] for c in calls), step_s, max(c["sent"] for c in calls) / 1e3,
                         max(c["received"] for c in calls) / 1e3))
        if summary and len(rows) > 2:
            import numpy as np

            later = np.array([r[1:] for r in rows[1:]])
            rows = [rows[0], (f"1-{len(rows) - 1} median", *np.median(later, axis=0)),
                    (f"1-{len(rows) - 1} max", *later.max(axis=0))]
        lines = ["  round           call s (slowest node)  node step s  sent kB  received kB"]
        lines += [f"  {r:>14}  {call:22.3f}  {step:11.3f}  {sent:7.1f}  {received:11.1f}"
                  for r, call, step, sent, received in rows]
        return "\n".join(lines)
