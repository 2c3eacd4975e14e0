"""``python -m tests.durations JUNIT.xml [...]``: write ``tests/durations.json``, the seconds each test
file took (the sum of its tests' times in the JUnit XML of a whole run, ``pytest --junitxml``), which
``tests/conftest.py`` uses to start the slowest files first under ``--dist loadfile``."""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).with_name("durations.json")
REPO_ROOT = Path(__file__).resolve().parents[1]


def file_seconds(junit_files: list[str]) -> dict[str, float]:
    """Test file (path from the repository root) -> seconds, summed over its test cases."""
    totals: dict[str, float] = defaultdict(float)
    for name in junit_files:
        for case in ET.parse(name).iter("testcase"):
            # classname: dotted module path (plus class names), e.g. tests.mipflow.test_cli
            parts = case.get("classname", "").split(".")
            for cut in range(len(parts), 0, -1):
                path = "/".join(parts[:cut]) + ".py"
                if (REPO_ROOT / path).is_file():
                    totals[path] += float(case.get("time", 0) or 0)
                    break
    return dict(totals)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    totals = file_seconds(argv)
    ranked = {path: round(sec, 1) for path, sec in sorted(totals.items(), key=lambda kv: -kv[1]) if sec >= 1.0}
    OUT.write_text(json.dumps(ranked, indent=1) + "\n", encoding="utf-8")
    print(f"{len(ranked)} files of {len(totals)} took a second or more; written to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
