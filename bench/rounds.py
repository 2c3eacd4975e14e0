"""Per-round timing of a federated run for the benchmarks: wall time of each node call,
bytes on the wire, and the time the node itself spent in the step (from its audit log)."""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence


class RoundLog:
    """Wraps the HTTP client of each :class:`mipflow.federation.NodeClient` to record every step call."""

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

    def table(self, homes: Sequence[Any], algorithm: str) -> str:
        """One line per round: slowest node call, the node's own step time, bytes each way (largest node)."""
        from mipflow.audit import AUDIT_FILE, read_records

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
        lines = ["  round  call s (slowest node)  node step s  sent kB  received kB"]
        for r, calls in sorted(per_round.items()):
            step_s = max(node_ms.get((c["node"], r), float("nan")) for c in calls) / 1000.0
            lines.append(f"  {r:5d}  {max(c['seconds'] for c in calls):20.3f}  {step_s:11.3f}  "
                         f"{max(c['sent'] for c in calls) / 1e3:7.1f}  {max(c['received'] for c in calls) / 1e3:11.1f}")
        return "\n".join(lines)
