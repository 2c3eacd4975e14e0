"""Results of several algorithms and an HTML cell parser, shared by the report and web UI tests."""
from __future__ import annotations

from html.parser import HTMLParser

from mipflow.algorithms import get_algorithm, run_in_process
from tests.mipflow.algorithms.synthetic import MODEL, make_data, request

CASES = {
    "linear_regression": request(x=["x1", "age", "grp"], y=["y"]),
    "logistic_regression": request(x=["x1", "sex"], y=["outcome"], positive_class="yes"),
    "pearson_correlation": request(y=["y", "x1", "age"], alpha=0.95),
    "anova_oneway": request(x=["grp"], y=["y"]),
    "multiple_histograms": request(x=["grp"], y=["score"], bins=10),
    "descriptive_stats": request(x=["grp"], y=["y", "x1"]),
    "ttest_onesample": request(y=["y"], mu=3.0),
}


def analysis_results() -> dict[str, dict]:
    """The result of every case, computed in process over three synthetic nodes."""
    frames = [make_data(seed, 250) for seed in (11, 12, 13)]
    return {name: run_in_process(get_algorithm(name), frames, req, MODEL) for name, req in CASES.items()}


def numeric_leaves(value, path=()):
    """Every number in a result, with its path (lists of records included)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from numeric_leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numeric_leaves(v, (*path, i))


class Cells(HTMLParser):
    """Collects (data-value, shown text) of numeric cells and the text of every <svg> comment."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str]] = []
        self._value: str | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-value" in attrs:
            self._value, self._text = attrs["data-value"], ""

    def handle_data(self, data):
        if self._value is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._value is not None:
            self.cells.append((self._value, self._text))
            self._value = None


def cells_of(html_text: str) -> list[tuple[str, str]]:
    parser = Cells()
    parser.feed(html_text)
    return parser.cells

